"""Fusion of a coarse auxiliary feature map (e.g. a CLIP ViT layer) into a backbone feature map."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["FEATURE_FUSION_WEIGHTS", "FeatureFusion"]

# How FeatureFusion weighs the backbone feature F against the projected auxiliary one G.
FEATURE_FUSION_WEIGHTS = ("scalar", "spatial", "residual")


class FeatureFusion(nn.Module):
    """``E = mix(F, G)`` with ``G = Up(Conv1x1(aux))`` (CLIP-HBD's Feature Fusion Module).

    ``G``: the auxiliary map projected to the backbone's channels by a 1x1 convolution and
    bilinearly resized (``align_corners=False``) to the backbone map's size. The projection
    runs *before* the resize: a 1x1 convolution and a bilinear resize commute exactly (the
    interpolation weights sum to 1), and the coarse grid is the cheaper side. Either step is
    skipped when it would be the identity (equal channels: no convolution; equal sizes: no
    resize), the paper's bypass rule.

    Args:
        aux_channels: channels of the auxiliary map.
        channels: channels of the backbone map (and of the result).
        weight: ``"scalar"``: ``E = a F + (1 - a) G`` with one learnable ``a``;
            ``"spatial"``: ``a = sigmoid(Conv1x1([F, G]))`` per pixel, same mix;
            ``"residual"``: ``E = F + a G``.
        alpha_init: initial ``a`` of ``"scalar"`` and ``"residual"``.

    ``forward(feature (B, channels, H, W), aux (B, aux_channels, h, w)) -> (B, channels, H, W)``.
    """

    def __init__(self, aux_channels: int, channels: int, *, weight: str = "scalar", alpha_init: float = 0.5) -> None:
        super().__init__()
        if weight not in FEATURE_FUSION_WEIGHTS:
            raise ValueError(f"weight must be one of {FEATURE_FUSION_WEIGHTS}, got {weight!r}")
        self.weight = weight
        self.projection = nn.Identity() if aux_channels == channels else nn.Conv2d(aux_channels, channels, 1)
        if weight == "spatial":
            self.gate = nn.Conv2d(2 * channels, 1, 1)
        else:
            self.alpha = nn.Parameter(torch.tensor(float(alpha_init)))

    def forward(self, feature: Tensor, aux: Tensor) -> Tensor:
        projected = self.projection(aux)
        if tuple(projected.shape[-2:]) != tuple(feature.shape[-2:]):
            projected = F.interpolate(projected, size=feature.shape[-2:], mode="bilinear", align_corners=False)
        projected = projected.to(feature.dtype)
        if feature.is_contiguous(memory_format=torch.channels_last):
            # keep the backbone's layout (its fast path runs channels-last) for the mix and after
            projected = projected.contiguous(memory_format=torch.channels_last)
        if self.weight == "residual":
            return feature + self.alpha.to(feature.dtype) * projected
        if self.weight == "spatial":
            alpha = torch.sigmoid(self.gate(torch.cat([feature, projected], dim=1))).to(feature.dtype)
        else:
            alpha = self.alpha.to(feature.dtype)
        return projected + alpha * (feature - projected)
