"""Upsampling / skip-layer fusion blocks of SED and CAT-Seg style decoders."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import ops
from ..ops.runtime import operand_dtype
from .norms import group_norm

__all__ = ["Conv2dReLU", "ConvTranspose2dReLU", "DoubleConv", "SkipFusion", "shared_input_conv3x3"]


class Conv2dReLU(nn.Conv2d):
    """``relu(conv(x))``; a ``Conv2d`` subclass, so its parameters are plain
    ``weight``/``bias`` (the official ``Sequential(Conv2d, ReLU)`` names them ``0.*``)."""

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(super().forward(x))


class ConvTranspose2dReLU(nn.ConvTranspose2d):
    """``relu(conv_transpose(x))``; see :class:`Conv2dReLU`. The ``k = s = 2`` case runs
    as :func:`sed_d2.ops.conv_transpose_2x2`."""

    def forward(self, x: Tensor, output_size: list[int] | None = None) -> Tensor:
        if output_size is None and _is_plain_2x2(self):
            return ops.conv_transpose_2x2(x, self.weight, self.bias, relu=True)
        return F.relu(super().forward(x, output_size))


def _is_plain_2x2(conv: nn.ConvTranspose2d) -> bool:
    return (
        conv.kernel_size == (2, 2)
        and conv.stride == (2, 2)
        and conv.padding == (0, 0)
        and conv.output_padding == (0, 0)
        and conv.dilation == (1, 1)
        and conv.groups == 1
    )


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

    def forward(self, x: Tensor, shared: Tensor | None = None, shared_at: int = 0) -> Tensor:
        """
        Args:
            x: ``(N, C, H, W)`` input; without ``shared``, ``C = in_channels``.
            shared: optional ``(B, S, H, W)`` input channels common to groups of ``N / B``
                consecutive samples (sample ``n`` uses ``shared[n // (N / B)]``), which sit
                at channels ``shared_at .. shared_at + S`` of the conv input; ``x`` then
                holds the other ``in_channels - S`` channels. The result equals
                ``forward(cat([x[:, :shared_at], shared.repeat_interleave(N // B, 0),
                x[:, shared_at:]], 1))``, but the shared part of the first convolution
                (which has no bias) runs once per ``B`` and is broadcast: the repeated
                tensor is never built.

        Any memory layout; channels-last in, channels-last out.
        """
        y, addend = shared_input_conv3x3(self.conv1, x, shared, shared_at)
        y = group_norm(y, self.norm1, relu=True, addend=addend)
        return group_norm(ops.conv3x3_no_bias(y, self.conv2.weight), self.norm2, relu=True)


def shared_input_conv3x3(
    conv: nn.Conv2d, x: Tensor, shared: Tensor | None = None, shared_at: int = 0
) -> tuple[Tensor, Tensor | None]:
    """The bias-free 3x3 ``conv`` of ``(N, C, H, W)`` maps, some of whose input channels are
    common to groups of samples: returns ``(y, addend)`` with ``y + addend`` (``addend``
    broadcast over each group, see :func:`~sed_d2.layers.group_norm`) equal to
    ``conv(cat([x[:, :shared_at], shared.repeat_interleave(N // B, 0), x[:, shared_at:]], 1))``.

    ``shared``: optional ``(B, S, H, W)``; sample ``n`` uses ``shared[n // (N / B)]``. Its share
    of the convolution runs once per ``B`` and the repeated tensor is never built. With
    autograd the shared term is already added (``addend`` None); at inference it is returned
    as ``addend`` so that the GroupNorm that follows adds it while it reads ``y``.
    """
    # conv3x3_no_bias: the Triton kernel where it beats cuDNN (16 output channels, at
    # inference), else F.conv2d -- the same function as the modules' own calls
    if shared is None:
        return ops.conv3x3_no_bias(x, conv.weight), None
    width = shared.shape[1]
    if x.shape[1] + width != conv.in_channels or not 0 <= shared_at <= x.shape[1]:
        raise ValueError(
            f"{x.shape[1]} + {width} shared channels at {shared_at} do not make the "
            f"{conv.in_channels} input channels"
        )
    weight = conv.weight
    own = torch.cat([weight[:, :shared_at], weight[:, shared_at + width :]], dim=1)
    y = ops.conv3x3_no_bias(x, own)
    common = F.conv2d(shared, weight[:, shared_at : shared_at + width], None, conv.stride, conv.padding, conv.dilation)
    common = common.to(y.dtype)
    if torch.is_grad_enabled():
        return (y.unflatten(0, (shared.shape[0], -1)) + common.unsqueeze(1)).flatten(0, 1), None
    # inference: the norm adds the shared term while it reads y (no separate pass over y;
    # on CUDA both GroupNorm kernels read y + common)
    return y, common


class SkipFusion(nn.Module):
    """Skip-layer fusion on a class-batched map (SED "SFM"; CAT-Seg ``Up`` without the
    aggregation blocks).

    1. ``upsample``: ``ConvTranspose2d(in, in - skip_channels, k=2, s=2)`` per class map;
    2. concatenate on channels ``[upsampled, skip guidance repeated for every class,
       cost guidance]`` (the official order);
    3. :class:`DoubleConv` to ``out_channels``.

    The skip guidance is shared by the classes of an image: the part of the first
    convolution that reads it runs once per image and is broadcast over the classes
    (:meth:`DoubleConv.forward` with ``shared``), so it is never repeated in memory.

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
        if (skip is not None) != (self.skip_channels > 0) or (cost is not None) != (self.cost_channels > 0):
            raise ValueError("skip / cost guidance must be given exactly when their channels are > 0")
        up = self.upsample
        x = x.flatten(0, 1)
        if cost is not None and _is_plain_2x2(up) and not torch.is_grad_enabled():
            x = self._upsample_and_concat(x, cost.flatten(0, 1))
        else:
            parts = [ops.conv_transpose_2x2(x, up.weight, up.bias) if _is_plain_2x2(up) else up(x)]
            if cost is not None:
                parts.append(cost.flatten(0, 1))
            x = torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]
        # The skip guidance enters the first convolution as a shared input: its share of
        # that convolution runs once per image instead of once per class.
        x = self.double_conv(x, skip, shared_at=self.upsample.out_channels)
        return x.unflatten(0, (batch, num_classes))

    def _upsample_and_concat(self, x: Tensor, cost: Tensor) -> Tensor:
        """``cat([upsample(x), cost], 1)`` (inference): the pixel shuffle of the upsampling
        and the cost guidance are written straight into one channels-last buffer, which
        saves ``torch.cat``'s extra read and write of both parts."""
        up = self.upsample
        batch, _, height, width = x.shape
        # the dtype torch.cat of the two parts would have: F.linear's result (the autocast
        # dtype under autocast) promoted with the cost guidance's
        fused = torch.empty(
            (batch, up.out_channels + cost.shape[1], 2 * height, 2 * width),
            dtype=torch.promote_types(operand_dtype(x), cost.dtype),
            device=x.device,
            memory_format=torch.channels_last,
        )
        ops.conv_transpose_2x2(x, up.weight, up.bias, out=fused[:, : up.out_channels])
        fused[:, up.out_channels :].copy_(cost)
        return fused
