"""What the chunked per-class losses share (:mod:`.segmentation`'s BCE, :mod:`.softmax_dice`'s
CE + Dice): the dtype they accumulate in and the walk over class chunks, which upsamples only
one chunk of logits at a time so that T full-resolution maps never exist at once."""
from __future__ import annotations

from typing import Iterator, Optional, Tuple

import torch
from torch import Tensor

from ..ops import bilinear_resize

__all__ = ["upsampled_class_chunks", "work_dtype"]


def work_dtype(logits: Tensor) -> torch.dtype:
    """float32, or float64 for float64 logits."""
    return torch.promote_types(logits.dtype, torch.float32)


def upsampled_class_chunks(
    logits: Tensor, targets: Tensor, valid: Tensor, chunk_classes: int, with_logits: bool = True
) -> Iterator[Tuple[int, Optional[Tensor], Tensor]]:
    """Yield ``(first class, upsampled logits or None, one-hot of valid pixels)`` per chunk of
    ``chunk_classes`` classes, in :func:`work_dtype`: ``logits`` (B, T, h, w) resized
    (bilinear) to the label size of ``targets`` (B, H, W); ``valid`` (B, H, W) masks the
    one-hot."""
    size = tuple(targets.shape[-2:])
    work = work_dtype(logits)
    num_classes = logits.shape[1]
    for start in range(0, num_classes, chunk_classes):
        stop = min(start + chunk_classes, num_classes)
        classes = torch.arange(start, stop, device=targets.device).view(1, -1, 1, 1)
        one_hot = ((targets.unsqueeze(1) == classes) & valid.unsqueeze(1)).to(work)
        up = bilinear_resize(logits[:, start:stop].to(work), size) if with_logits else None
        yield start, up, one_hot
