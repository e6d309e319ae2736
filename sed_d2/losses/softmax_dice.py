"""Softmax cross-entropy and Dice of class logits against a label map (pure PyTorch).

:func:`softmax_ce_dice_loss` returns both terms of CLIP-HBD's segmentation loss from one
upsampling of the logits:

* ``ce``: softmax cross-entropy over the ``T`` classes, mean over the valid pixels;
* ``dice``: ``1 - (2 sum p g + s) / (sum p + sum g + s)`` per image and class, with ``p`` the
  softmax probability and ``g`` the one-hot target summed over the image's valid pixels and
  ``s`` the smoothing; the mean over the (image, class) pairs of the classes *present* in that
  image's labels (``dice_classes="present"``) or over all pairs (``"all"``). Present only,
  by default: with all 171 COCO-Stuff classes, an absent class scores about
  ``sum p / (sum p + s)``, close to 1, and the ~160 absent classes would swamp the term.

The logits are bilinearly upsampled (``align_corners=False``) to the labels' size, as in
:mod:`.segmentation`. With ``chunk_classes > 0`` the same values and gradients are computed
that many classes at a time by :class:`UpsampledSoftmaxCEDice`, which keeps only the logits,
the labels and per-pixel / per-class sums for the backward pass: at 384x384 with 171 classes
the plain path keeps several (B, 171, 384, 384) float32 tensors alive.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ..ops import bilinear_resize
from .class_chunks import upsampled_class_chunks, work_dtype

__all__ = ["DICE_CLASSES", "UpsampledSoftmaxCEDice", "softmax_ce_dice_loss"]

DICE_CLASSES = ("present", "all")


def softmax_ce_dice_loss(
    logits: Tensor,
    targets: Tensor,
    ignore_value: int,
    *,
    dice_classes: str = "present",
    dice_smooth: float = 1.0,
    chunk_classes: int = 0,
) -> tuple[Tensor, Tensor]:
    """``(ce, dice)`` scalars (see the module docstring).

    Args:
        logits: ``(B, T, h, w)`` class logits.
        targets: ``(B, H, W)`` int64 labels in ``[0, T)`` or ``ignore_value``.
        ignore_value: label of pixels that count in neither term.
        dice_classes: ``"present"`` or ``"all"``.
        dice_smooth: ``s``.
        chunk_classes: ``0``: plain autograd; ``> 0``: :class:`UpsampledSoftmaxCEDice` with
            chunks of that many classes (float32 work, float64 for float64 logits).

    Both are 0 when no pixel is valid (and no class is present, for Dice).
    """
    if logits.dim() != 4 or targets.dim() != 3 or logits.shape[0] != targets.shape[0]:
        raise ValueError(
            f"expected logits (B, T, h, w) and targets (B, H, W), got {tuple(logits.shape)} and {tuple(targets.shape)}"
        )
    if dice_classes not in DICE_CLASSES:
        raise ValueError(f"dice_classes must be one of {DICE_CLASSES}, got {dice_classes!r}")
    if chunk_classes > 0:
        ce, dice = UpsampledSoftmaxCEDice.apply(
            logits, targets, ignore_value, dice_classes == "all", float(dice_smooth), int(chunk_classes)
        )
        return ce, dice
    work = work_dtype(logits)
    up = bilinear_resize(logits.to(work), tuple(targets.shape[-2:]))
    valid = targets != ignore_value
    index = torch.where(valid, targets, torch.zeros_like(targets)).unsqueeze(1)
    mask = valid.unsqueeze(1).to(work)
    log_probs = F.log_softmax(up, dim=1)
    ce = -(log_probs.gather(1, index) * mask).sum() / mask.sum().clamp_min(1)
    probs = log_probs.exp() * mask
    one_hot = torch.zeros_like(up).scatter_(1, index, mask)
    intersection, prob_sum, target_sum = (t.sum(dim=(2, 3)) for t in (probs * one_hot, probs, one_hot))
    return ce, _dice_mean(intersection, prob_sum, target_sum, dice_smooth, dice_classes == "all")


def _dice_mean(intersection, prob_sum, target_sum, smooth, all_classes) -> Tensor:
    dice = 1 - (2 * intersection + smooth) / (prob_sum + target_sum + smooth)
    counted = torch.ones_like(dice) if all_classes else (target_sum > 0).to(dice.dtype)
    return (dice * counted).sum() / counted.sum().clamp_min(1)


class UpsampledSoftmaxCEDice(torch.autograd.Function):
    """:func:`softmax_ce_dice_loss` class chunk by class chunk, with a hand-written backward.

    ``apply(logits, targets, ignore_value, all_classes, smooth, chunk_classes) -> (ce, dice)``.

    Forward: a first pass over the chunks accumulates each pixel's log-sum-exp and target
    logit (CE); a second one the Dice sums ``sum p g``, ``sum p``, ``sum g`` per image and
    class. Backward, with ``q_c = dL/dp_c`` of Dice (``a g + k`` per image and class):
    a pass accumulates ``r = sum_c p_c q_c`` per pixel, a last one forms
    ``dL/dz_c = valid * (grad_ce (p_c - g_c) / N + p_c (q_c - r))`` and maps it back through
    the adjoint of the upsampling. Saved: logits, targets, the log-sum-exp map and the
    ``(B, T)`` sums. Not twice differentiable.
    """

    @staticmethod
    def forward(ctx, logits, targets, ignore_value, all_classes, smooth, chunk_classes):
        valid = targets != ignore_value
        work = work_dtype(logits)
        mask = valid.to(work)
        log_sum_exp = torch.full(targets.shape, float("-inf"), dtype=work, device=logits.device)
        target_logit = torch.zeros(targets.shape, dtype=work, device=logits.device)
        with torch.no_grad():
            for start, up, _ in upsampled_class_chunks(logits, targets, valid, chunk_classes):
                log_sum_exp = torch.logaddexp(log_sum_exp, up.logsumexp(dim=1))
                inside = (targets >= start) & (targets < start + up.shape[1])
                local = (targets - start).clamp(0, up.shape[1] - 1).unsqueeze(1)
                target_logit += torch.where(inside, up.gather(1, local)[:, 0], 0)
            ce = ((log_sum_exp - target_logit) * mask).sum() / mask.sum().clamp_min(1)
            sums = [[], [], []]
            for _, up, one_hot in upsampled_class_chunks(logits, targets, valid, chunk_classes):
                probs = (up - log_sum_exp.unsqueeze(1)).exp() * mask.unsqueeze(1)
                for total, part in zip(sums, (probs * one_hot, probs, one_hot)):
                    total.append(part.sum(dim=(2, 3)))
            intersection, prob_sum, target_sum = (torch.cat(parts, dim=1) for parts in sums)
            dice = _dice_mean(intersection, prob_sum, target_sum, smooth, all_classes)
        ctx.save_for_backward(logits, targets, log_sum_exp, intersection, prob_sum, target_sum)
        ctx.options = (ignore_value, all_classes, smooth, chunk_classes)
        return ce, dice

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_ce, grad_dice):
        logits, targets, log_sum_exp, intersection, prob_sum, target_sum = ctx.saved_tensors
        ignore_value, all_classes, smooth, chunk_classes = ctx.options
        valid = targets != ignore_value
        work = log_sum_exp.dtype
        mask = valid.to(work).unsqueeze(1)
        ce_scale = grad_ce.to(work) / mask.sum().clamp_min(1)
        # dL/dp of Dice at a valid pixel of image b, class c: (a g + k) * counted / pairs
        denominator = prob_sum + target_sum + smooth
        counted = torch.ones_like(denominator) if all_classes else (target_sum > 0).to(work)
        weight = grad_dice.to(work) * counted / counted.sum().clamp_min(1)
        slope = (-2 / denominator * weight)[..., None, None]  # a, for g = 1
        offset = ((2 * intersection + smooth) / denominator**2 * weight)[..., None, None]  # k

        def dice_gradient(start, probs, one_hot):
            stop = start + one_hot.shape[1]
            return slope[:, start:stop] * one_hot + offset[:, start:stop]

        weighted_sum = torch.zeros_like(log_sum_exp).unsqueeze(1)  # r = sum_c p_c q_c
        for start, up, one_hot in upsampled_class_chunks(logits, targets, valid, chunk_classes):
            probs = (up - log_sum_exp.unsqueeze(1)).exp()
            weighted_sum += (probs * dice_gradient(start, probs, one_hot)).sum(dim=1, keepdim=True)

        grad = torch.empty_like(logits)
        size = tuple(targets.shape[-2:])
        for start, _, one_hot in upsampled_class_chunks(logits, targets, valid, chunk_classes, with_logits=False):
            stop = start + one_hot.shape[1]
            part = logits[:, start:stop].detach().to(work).requires_grad_(True)
            with torch.enable_grad():
                up = bilinear_resize(part, size)
            probs = (up.detach() - log_sum_exp.unsqueeze(1)).exp()
            grad_up = ce_scale * (probs - one_hot) + probs * (dice_gradient(start, probs, one_hot) - weighted_sum)
            (grad_part,) = torch.autograd.grad(up, part, grad_up * mask)
            grad[:, start:stop] = grad_part
        return grad, None, None, None, None, None
