"""Losses shared by the methods (pure PyTorch).

Which method uses what:

* :func:`one_hot_bce_loss`: SED (main + 3 auxiliary heads, ``loss_sem_seg_{0..3}``),
  FGAseg / CAT-Seg style methods (main and auxiliary BCE terms).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["one_hot_bce_loss"]


def one_hot_bce_loss(
    logits: Tensor,
    targets: Tensor,
    ignore_value: int,
    ignore_as_negative: bool = True,
) -> Tensor:
    """Per-pixel sigmoid binary cross-entropy against one-hot class targets.

    Args:
        logits: ``(B, T, h, w)`` per-class logits; bilinearly upsampled
            (``align_corners=False``) to the target size when ``(h, w) != (H, W)``.
        targets: ``(B, H, W)`` int64 class indices in ``[0, T)`` or ``ignore_value``.
        ignore_value: label of unlabelled pixels (255, 65535, 459, ...).
        ignore_as_negative: ``True`` (the official SED / CAT-Seg / FGAseg code): ignored
            pixels get an all-zero target and count as negatives; the loss is the mean over
            all ``B*H*W*T`` elements. ``False`` (the papers' description): ignored pixels are
            excluded; the loss is the sum over valid pixels divided by ``valid_pixels * T``
            (0 when no pixel is valid).

    Returns:
        Scalar loss.
    """
    if logits.dim() != 4 or targets.dim() != 3 or logits.shape[0] != targets.shape[0]:
        raise ValueError(
            f"expected logits (B, T, h, w) and targets (B, H, W), got {tuple(logits.shape)} "
            f"and {tuple(targets.shape)}"
        )
    size = tuple(targets.shape[-2:])
    if tuple(logits.shape[-2:]) != size:
        logits = F.interpolate(logits, size=size, mode="bilinear", align_corners=False)
    valid = targets != ignore_value
    index = torch.where(valid, targets, torch.zeros_like(targets)).unsqueeze(1)
    one_hot = torch.zeros_like(logits).scatter_(1, index, valid.unsqueeze(1).to(logits.dtype))
    if ignore_as_negative:
        return F.binary_cross_entropy_with_logits(logits, one_hot)
    weight = valid.unsqueeze(1).to(logits.dtype)
    total = F.binary_cross_entropy_with_logits(logits, one_hot, weight=weight, reduction="sum")
    count = valid.sum().clamp_min(1) * logits.shape[1]
    return total / count
