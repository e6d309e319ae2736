"""Per-pixel losses on class logits against a label map (pure PyTorch).

* :func:`one_hot_bce_loss`: SED (main + 3 auxiliary heads, ``loss_sem_seg_{0..3}``),
  CAT-Seg and the methods built on it (main and auxiliary BCE terms).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ..ops import bilinear_resize
from .class_chunks import upsampled_class_chunks, work_dtype

__all__ = ["TRAINING_CHUNK_CLASSES", "UpsampledOneHotBCE", "one_hot_bce_loss"]

# The chunk of classes the methods' training losses use (see one_hot_bce_loss): the same value,
# so the same memory saving, for every method; 0 would keep all upsampled logits for backward.
TRAINING_CHUNK_CLASSES = 32


def one_hot_bce_loss(
    logits: Tensor,
    targets: Tensor,
    ignore_value: int,
    ignore_as_negative: bool = True,
    chunk_classes: int = 0,
) -> Tensor:
    """Per-pixel sigmoid binary cross-entropy against one-hot class targets.

    Args:
        logits: ``(B, T, h, w)`` per-class logits; bilinearly upsampled
            (``align_corners=False``) to the target size when ``(h, w) != (H, W)``, by
            :func:`~sed_d2.ops.bilinear_resize` (matrix products; PyTorch's upsampling
            backward is slow).
        targets: ``(B, H, W)`` int64 class indices in ``[0, T)`` or ``ignore_value``.
        ignore_value: label of unlabelled pixels (255, 65535, 459, ...).
        ignore_as_negative: ``True`` (the official SED / CAT-Seg / FGAseg code): ignored
            pixels get an all-zero target and count as negatives; the loss is the mean over
            all ``B*H*W*T`` elements. ``False`` (the papers' description): ignored pixels are
            excluded; the loss is the sum over valid pixels divided by ``valid_pixels * T``
            (0 when no pixel is valid).
        chunk_classes: ``0``: the plain computation (upsampled logits, one-hot targets and
            autograd's saved tensors for all ``T`` classes at the target size). ``> 0``:
            the same loss and gradient computed ``chunk_classes`` classes at a time by
            :class:`UpsampledOneHotBCE`, which saves only ``logits`` and ``targets`` for
            the backward pass and recomputes the rest per chunk: at a 768x768 crop with
            171 classes that is 4 x 0.4 GB per image less memory per loss term. Its
            upsampling and loss run in float32 (float64 for float64 logits) whatever the
            dtype of ``logits``.

    Returns:
        Scalar loss (with ``chunk_classes``: float32, or float64 for float64 logits).
    """
    if logits.dim() != 4 or targets.dim() != 3 or logits.shape[0] != targets.shape[0]:
        raise ValueError(
            f"expected logits (B, T, h, w) and targets (B, H, W), got {tuple(logits.shape)} "
            f"and {tuple(targets.shape)}"
        )
    if chunk_classes > 0:
        return UpsampledOneHotBCE.apply(logits, targets, ignore_value, ignore_as_negative, chunk_classes)
    size = tuple(targets.shape[-2:])
    logits = bilinear_resize(logits, size)
    valid = targets != ignore_value
    index = torch.where(valid, targets, torch.zeros_like(targets)).unsqueeze(1)
    one_hot = torch.zeros_like(logits).scatter_(1, index, valid.unsqueeze(1).to(logits.dtype))
    if ignore_as_negative:
        return F.binary_cross_entropy_with_logits(logits, one_hot)
    weight = valid.unsqueeze(1).to(logits.dtype)
    total = F.binary_cross_entropy_with_logits(logits, one_hot, weight=weight, reduction="sum")
    count = valid.sum().clamp_min(1) * logits.shape[1]
    return total / count


class UpsampledOneHotBCE(torch.autograd.Function):
    """:func:`one_hot_bce_loss` class chunk by class chunk, with a hand-written backward.

    ``apply(logits, targets, ignore_value, ignore_as_negative, chunk_classes)``. Forward
    sums the per-element BCE of each chunk (upsampled logits vs. its one-hot slice);
    backward recomputes each chunk's upsampled logits, forms the exact BCE gradient
    ``weight * (sigmoid(x) - y) / count`` and maps it back through the adjoint of the
    bilinear upsampling. Only ``logits`` and ``targets`` are saved. Not twice
    differentiable.
    """

    @staticmethod
    def forward(ctx, logits, targets, ignore_value, ignore_as_negative, chunk_classes):
        valid = targets != ignore_value
        total = torch.zeros((), dtype=work_dtype(logits), device=logits.device)
        with torch.no_grad():
            for start, up, one_hot in upsampled_class_chunks(logits, targets, valid, chunk_classes):
                weight = None if ignore_as_negative else valid.unsqueeze(1).to(up.dtype)
                total += F.binary_cross_entropy_with_logits(up, one_hot, weight=weight, reduction="sum")
        count = _bce_count(logits, valid, ignore_as_negative)
        ctx.save_for_backward(logits, targets)
        ctx.options = (ignore_value, ignore_as_negative, chunk_classes)
        return total / count

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_output):
        logits, targets = ctx.saved_tensors
        ignore_value, ignore_as_negative, chunk_classes = ctx.options
        valid = targets != ignore_value
        scale = grad_output.to(work_dtype(logits)) / _bce_count(logits, valid, ignore_as_negative)
        grad = torch.empty_like(logits)
        size = tuple(targets.shape[-2:])
        for start, _, one_hot in upsampled_class_chunks(logits, targets, valid, chunk_classes, with_logits=False):
            part = logits[:, start : start + one_hot.shape[1]].detach().to(one_hot.dtype).requires_grad_(True)
            with torch.enable_grad():
                up = bilinear_resize(part, size)
            grad_up = (up.detach().sigmoid() - one_hot) * scale
            if not ignore_as_negative:
                grad_up *= valid.unsqueeze(1)
            (grad_part,) = torch.autograd.grad(up, part, grad_up)
            grad[:, start : start + one_hot.shape[1]] = grad_part
        return grad, None, None, None, None


def _bce_count(logits: Tensor, valid: Tensor, ignore_as_negative: bool) -> Tensor:
    dtype = work_dtype(logits)
    if ignore_as_negative:
        return torch.tensor(float(valid.numel() * logits.shape[1]), dtype=dtype, device=logits.device)
    return (valid.sum().clamp_min(1) * logits.shape[1]).to(dtype)
