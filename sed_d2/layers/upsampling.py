"""Upsampling / skip-layer fusion blocks of SED and CAT-Seg style decoders."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["Conv2dReLU", "ConvTranspose2dReLU", "DoubleConv", "SkipFusion"]


class Conv2dReLU(nn.Conv2d):
    """``relu(conv(x))``; a ``Conv2d`` subclass, so its parameters are plain
    ``weight``/``bias`` (the official ``Sequential(Conv2d, ReLU)`` names them ``0.*``)."""

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(super().forward(x))


class ConvTranspose2dReLU(nn.ConvTranspose2d):
    """``relu(conv_transpose(x))``; see :class:`Conv2dReLU`."""

    def forward(self, x: Tensor, output_size: list[int] | None = None) -> Tensor:
        return F.relu(super().forward(x, output_size))


class DoubleConv(nn.Module):
    """``(conv3x3 without bias -> GroupNorm -> ReLU) x 2`` (U-Net style).

    Args:
        in_channels, out_channels: channels in / out.
        num_groups: GroupNorm groups; default ``out_channels // 16`` (the official value),
            which must be >= 1.

    Parameters (official ``double_conv.{0,1,3,4}`` -> ours ``conv1``, ``norm1``, ``conv2``,
    ``norm2``).
    """

    def __init__(self, in_channels: int, out_channels: int, *, num_groups: int | None = None) -> None:
        super().__init__()
        groups = out_channels // 16 if num_groups is None else num_groups
        if groups < 1 or out_channels % groups != 0:
            raise ValueError(
                f"invalid GroupNorm groups {groups} for {out_channels} channels "
                "(the default out_channels // 16 needs out_channels >= 16)"
            )
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False)
        self.norm1 = nn.GroupNorm(groups, out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.norm2 = nn.GroupNorm(groups, out_channels)

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(self.norm1(self.conv1(x)))
        return F.relu(self.norm2(self.conv2(x)))


class SkipFusion(nn.Module):
    """Skip-layer fusion on a class-batched map (SED "SFM"; CAT-Seg ``Up`` without the
    aggregation blocks).

    1. ``upsample``: ``ConvTranspose2d(in, in - skip_channels, k=2, s=2)`` per class map;
    2. concatenate on channels ``[upsampled, skip guidance repeated for every class,
       cost guidance]`` (the official order);
    3. :class:`DoubleConv` to ``out_channels``.

    The skip guidance is shared by the classes of an image: it is broadcast with
    ``expand`` and written straight into the concatenation, never repeated in memory.

    Args:
        in_channels: channels of the input map.
        out_channels: output channels.
        skip_channels: channels of the per-image skip guidance (0 = none).
        cost_channels: channels of the per-class cost guidance (0 = none; CAT-Seg).

    ``forward(x (B, T, in, H, W), skip (B, skip_channels, 2H, 2W) | None,
    cost (B, T, cost_channels, 2H, 2W) | None) -> (B, T, out, 2H, 2W)``.
    """

    def __init__(self, in_channels: int, out_channels: int, *, skip_channels: int, cost_channels: int = 0) -> None:
        super().__init__()
        if not 0 <= skip_channels < in_channels:
            raise ValueError(f"skip_channels {skip_channels} must be in [0, in_channels={in_channels})")
        self.skip_channels = skip_channels
        self.cost_channels = cost_channels
        self.upsample = nn.ConvTranspose2d(in_channels, in_channels - skip_channels, kernel_size=2, stride=2)
        self.double_conv = DoubleConv(in_channels + cost_channels, out_channels)

    def forward(self, x: Tensor, skip: Tensor | None = None, cost: Tensor | None = None) -> Tensor:
        batch, num_classes = x.shape[:2]
        parts = [self.upsample(x.flatten(0, 1)).unflatten(0, (batch, num_classes))]
        if (skip is not None) != (self.skip_channels > 0) or (cost is not None) != (self.cost_channels > 0):
            raise ValueError("skip / cost guidance must be given exactly when their channels are > 0")
        if skip is not None:
            parts.append(skip.unsqueeze(1).expand(batch, num_classes, *skip.shape[1:]))
        if cost is not None:
            parts.append(cost)
        x = torch.cat(parts, dim=2) if len(parts) > 1 else parts[0]
        return self.double_conv(x.flatten(0, 1)).unflatten(0, (batch, num_classes))
