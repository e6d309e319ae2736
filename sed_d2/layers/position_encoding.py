"""Fixed position encodings of a 2-D grid (no parameters)."""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["sine_position_embedding"]


def sine_position_embedding(
    height: int,
    width: int,
    channels: int,
    *,
    temperature: float = 10000.0,
    scale: float = 2 * math.pi,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """DETR / Mask2Former ``PositionEmbeddingSine(channels // 2, temperature, normalize=True,
    scale)`` of an unpadded ``height x width`` grid: ``(channels, height, width)``.

    Row ``y`` (0-based) is at ``(y + 1) / (height + 1e-6) * scale``, column ``x`` likewise;
    feature ``i`` of each half divides it by ``temperature ** (2 * (i // 2) / (channels // 2))``
    and takes the sine (even ``i``) or cosine (odd ``i``). The first half encodes rows, the
    second columns. Computed in float32 (as the reference) and cast to ``dtype``; a few
    thousand values, so it is recomputed per call (no host synchronisation: capturable).
    """
    if channels % 4 != 0:
        raise ValueError(f"sine position embedding needs channels divisible by 4, got {channels}")
    features = channels // 2
    eps = 1e-6
    rows = torch.arange(1, height + 1, dtype=torch.float32, device=device) / (height + eps) * scale
    cols = torch.arange(1, width + 1, dtype=torch.float32, device=device) / (width + eps) * scale
    dim_t = torch.arange(features, dtype=torch.float32, device=device)
    dim_t = temperature ** (2 * torch.div(dim_t, 2, rounding_mode="floor") / features)

    def encode(positions: Tensor) -> Tensor:  # (n,) -> (n, features), sin/cos interleaved
        angles = positions[:, None] / dim_t
        return torch.stack((angles[:, 0::2].sin(), angles[:, 1::2].cos()), dim=2).flatten(1)

    pos_y = encode(rows)[:, None, :].expand(height, width, features)
    pos_x = encode(cols)[None, :, :].expand(height, width, features)
    return torch.cat((pos_y, pos_x), dim=2).permute(2, 0, 1).to(dtype)
