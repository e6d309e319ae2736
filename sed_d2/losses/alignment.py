"""Pixel-text alignment losses: per-class alignment maps trained against the label map at
their own (lower) resolution (pure PyTorch).

* :func:`alignment_loss`: FGAseg's T2P loss (``loss_align``): the one-hot labels are
  downsampled (nearest) to the alignment logits, never the logits upsampled.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["ALIGNMENT_LOSSES", "alignment_loss", "downsampled_one_hot"]

# "bce": sigmoid BCE with logits (the official FGAseg code); "mse": mean squared error of the
# sigmoid probabilities (the paper's Eq. 8, which does not say on what; our reading).
ALIGNMENT_LOSSES = ("bce", "mse")


def downsampled_one_hot(targets: Tensor, num_classes: int, size: tuple[int, int], ignore_value: int) -> Tensor:
    """``(B, H, W)`` labels -> ``(B, num_classes, h, w)`` float one-hot at ``size``, sampled
    nearest (``F.interpolate(mode="nearest")``: row ``i`` reads label row ``floor(i * H / h)``,
    the pixels the official nearest downsampling of its one-hot tensor reads); ignored
    pixels (``ignore_value``) are all-zero rows."""
    if tuple(targets.shape[-2:]) != tuple(size):
        # labels up to 2**24 are exact in float32 (ADE-847 ignores 65535)
        targets = F.interpolate(targets[:, None].float(), size=size, mode="nearest")[:, 0].long()
    valid = targets != ignore_value
    classes = torch.arange(num_classes, device=targets.device).view(1, -1, 1, 1)
    return ((targets.unsqueeze(1) == classes) & valid.unsqueeze(1)).float()


def alignment_loss(logits: Tensor, targets: Tensor, ignore_value: int, *, kind: str = "bce") -> Tensor:
    """Mean over all ``B*T*h*w`` elements of the loss of alignment ``logits`` ``(B, T, h, w)``
    against :func:`downsampled_one_hot` of ``targets`` ``(B, H, W)`` (ignored pixels are
    negatives for every class, as in the official code). ``kind``: :data:`ALIGNMENT_LOSSES`.
    Computed in float32 (float64 for float64 logits)."""
    if kind not in ALIGNMENT_LOSSES:
        raise ValueError(f"alignment loss must be one of {ALIGNMENT_LOSSES}, got {kind!r}")
    if logits.dim() != 4 or targets.dim() != 3 or logits.shape[0] != targets.shape[0]:
        raise ValueError(
            f"expected logits (B, T, h, w) and targets (B, H, W), got {tuple(logits.shape)} and {tuple(targets.shape)}"
        )
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
    one_hot = downsampled_one_hot(targets, logits.shape[1], tuple(logits.shape[-2:]), ignore_value).to(logits.dtype)
    if kind == "bce":
        return F.binary_cross_entropy_with_logits(logits, one_hot)
    return F.mse_loss(logits.sigmoid(), one_hot)
