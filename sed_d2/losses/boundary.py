"""Boundary supervision from a label map (pure PyTorch, on the labels' device).

* :func:`boundary_targets`: the binary edge map of a label map and the pixels that count;
* :func:`balanced_boundary_bce`: class-balanced (HED-style) binary cross-entropy of boundary
  logits against it;
* :func:`boundary_loss`: both, for a training batch (CLIP-HBD's ``loss_boundary``).

Rules (CLIP-HBD gives none; the choices are its config keys):

* A pixel is an edge when it is valid (not the ignore label) and a *valid* pixel of another
  label lies in its ``kernel x kernel`` neighbourhood. With ``kernel = 3`` both sides of a
  class border are marked: a 2-pixel band.
* Ignored pixels weigh 0 and, by default (``ignore_edges="exclude"``), never make an edge:
  COCO-Stuff's unlabelled regions and the crop padding are not object borders. With
  ``"as_label"`` the ignore label counts as one more label for its valid neighbours (they
  become edges); ignored pixels still weigh 0.
* The image border is not an edge.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ..ops import bilinear_resize

__all__ = ["BOUNDARY_IGNORE_EDGES", "BOUNDARY_WEIGHTINGS", "balanced_boundary_bce", "boundary_loss", "boundary_targets"]

BOUNDARY_IGNORE_EDGES = ("exclude", "as_label")
BOUNDARY_WEIGHTINGS = ("balanced", "fixed")


def boundary_targets(
    labels: Tensor, ignore_value: int, kernel: int = 3, ignore_edges: str = "exclude"
) -> tuple[Tensor, Tensor]:
    """Edges of a batch of label maps (module docstring).

    Args:
        labels: ``(B, H, W)`` integer labels (any values; ``ignore_value`` marks unlabelled).
        ignore_value: the ignore label.
        kernel: odd neighbourhood size (3: a 2-pixel band across every border).
        ignore_edges: ``"exclude"`` or ``"as_label"``.

    Returns:
        ``(edge, valid)``, both ``(B, H, W)`` bool; ``edge`` is False wherever ``valid`` is.
    """
    if labels.dim() != 3:
        raise ValueError(f"expected labels (B, H, W), got {tuple(labels.shape)}")
    if kernel < 1 or kernel % 2 != 1:
        raise ValueError(f"kernel must be odd and positive, got {kernel}")
    if ignore_edges not in BOUNDARY_IGNORE_EDGES:
        raise ValueError(f"ignore_edges must be one of {BOUNDARY_IGNORE_EDGES}, got {ignore_edges!r}")
    valid = labels != ignore_value
    # float64 holds every int32 label exactly; max pooling pads with -inf (no border edges)
    values = labels.to(torch.float64).unsqueeze(1)
    counted = torch.ones_like(valid) if ignore_edges == "as_label" else valid
    counted = counted.unsqueeze(1)
    lowest = torch.finfo(torch.float64).min
    highest_neighbour = _neighbourhood_max(torch.where(counted, values, lowest), kernel)
    lowest_neighbour = -_neighbourhood_max(torch.where(counted, -values, lowest), kernel)
    differs = (highest_neighbour != values) | (lowest_neighbour != values)
    return differs.squeeze(1) & valid, valid


def _neighbourhood_max(x: Tensor, kernel: int) -> Tensor:
    return F.max_pool2d(x, kernel, stride=1, padding=kernel // 2)


def balanced_boundary_bce(
    logits: Tensor,
    edge: Tensor,
    valid: Tensor,
    weighting: str = "balanced",
    pos_weight: float = 1.0,
    neg_weight: float = 1.0,
) -> Tensor:
    """``sum_j w_j * BCE(logit_j, edge_j) / N`` over the ``N`` valid pixels of the batch.

    Args:
        logits: ``(B, 1, h, w)`` or ``(B, h, w)`` boundary logits, bilinearly resized to the
            targets' ``(H, W)`` when they differ.
        edge, valid: ``(B, H, W)`` bool, from :func:`boundary_targets`.
        weighting: ``"balanced"``: per image, edges weigh ``|non-edges| / N_b`` and
            non-edges ``|edges| / N_b`` over its ``N_b`` valid pixels (HED); ``"fixed"``:
            ``pos_weight`` / ``neg_weight``.

    Returns a float32 scalar (float64 for float64 logits); 0 (with a gradient of 0) when no
    pixel is valid.
    """
    if weighting not in BOUNDARY_WEIGHTINGS:
        raise ValueError(f"weighting must be one of {BOUNDARY_WEIGHTINGS}, got {weighting!r}")
    if logits.dim() == 4:
        if logits.shape[1] != 1:
            raise ValueError(f"expected one boundary channel, got {tuple(logits.shape)}")
        logits = logits[:, 0]
    if edge.shape != valid.shape or edge.dim() != 3 or logits.shape[0] != edge.shape[0]:
        raise ValueError(
            f"expected logits (B, [1,] h, w) and edge / valid (B, H, W), got {tuple(logits.shape)}, "
            f"{tuple(edge.shape)} and {tuple(valid.shape)}"
        )
    work = torch.promote_types(logits.dtype, torch.float32)
    logits = bilinear_resize(logits.to(work).unsqueeze(1), tuple(edge.shape[-2:]))[:, 0]
    target = edge.to(work)
    mask = valid.to(work)
    if weighting == "balanced":
        count = mask.sum(dim=(1, 2), keepdim=True).clamp_min(1)
        positives = target.sum(dim=(1, 2), keepdim=True)
        weight = torch.where(edge, (count - positives) / count, positives / count)
    else:
        weight = torch.where(edge, torch.full_like(target, pos_weight), torch.full_like(target, neg_weight))
    total = F.binary_cross_entropy_with_logits(logits, target, weight=weight * mask, reduction="sum")
    return total / mask.sum().clamp_min(1)


def boundary_loss(
    logits: Tensor,
    labels: Tensor,
    ignore_value: int,
    *,
    kernel: int = 3,
    ignore_edges: str = "exclude",
    weighting: str = "balanced",
    pos_weight: float = 1.0,
    neg_weight: float = 1.0,
) -> Tensor:
    """:func:`balanced_boundary_bce` of ``logits`` against :func:`boundary_targets` of
    ``labels`` (``(B, H, W)``)."""
    edge, valid = boundary_targets(labels, ignore_value, kernel, ignore_edges)
    return balanced_boundary_bce(logits, edge, valid, weighting, pos_weight, neg_weight)
