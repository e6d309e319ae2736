"""Per-image class subsets: which classes of a vocabulary an image keeps, and the padded
``(B, C_max)`` index form the class-batched decoders run on.

* :func:`select_categories`: DCP-CLIP's dynamic category selection (DCS) from CLIP scores:
  image-level scores of the class token, patch scores damped by them, the union of every
  patch's best class and the classes whose image-level score exceeds a threshold;
* :func:`top_n_selection`: exactly ``n`` classes per image (the benchmark's fixed-count
  stand-in for a learned selection);
* :func:`present_classes`: the classes labelled in each training target;
* :func:`pad_class_subsets`: ``(B, T)`` keep masks -> ascending class ids padded to the
  largest subset of the batch, with a validity mask;
* :func:`scatter_class_subsets`: subset results back on the full class axis.

The padded form keeps every image's computation independent of its batch mates: per-class
layers never mix classes, and class-mixing layers take the validity mask as a key-padding
mask, so a padded batch equals its images run one by one.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "category_scores",
    "pad_class_subsets",
    "present_classes",
    "scatter_class_subsets",
    "select_categories",
    "top_n_selection",
]


def category_scores(
    patch_embeddings: Tensor, class_embedding: Tensor, text: Tensor, temperature: float
) -> tuple[Tensor, Tensor]:
    """DCS's scores (DCP-CLIP Eq. 1-2).

    Args:
        patch_embeddings: ``(B, D, h, w)`` dense CLIP embeddings (``F_patch``).
        class_embedding: ``(B, D)`` CLIP image embedding (``F_cls``).
        text: ``(T, D)`` one embedding per class.
        temperature: ``tau`` of the image-level softmax (CLIP's logit scale, 100).

    Returns:
        ``(refined (B, N, T), image (B, T))``: the image-level softmax
        ``S_img = softmax(tau * cos(F_cls, E))`` and the patch cosines damped by it,
        ``S_ref = cos(F_patch, E) * (1 - S_img)`` (a class that dominates the image is
        pushed down in every patch, so the patch argmax reaches the others).
    """
    text = F.normalize(text.float(), dim=-1)
    patches = F.normalize(patch_embeddings.float().flatten(2), dim=1)  # (B, D, N)
    patch_scores = torch.einsum("td,bdn->bnt", text, patches)
    image = (temperature * F.normalize(class_embedding.float(), dim=-1) @ text.T).softmax(dim=-1)
    return patch_scores * (1 - image).unsqueeze(1), image


def select_categories(
    patch_embeddings: Tensor,
    class_embedding: Tensor,
    text: Tensor,
    *,
    temperature: float,
    threshold: float,
    max_classes: int = 0,
) -> Tensor:
    """DCP-CLIP's dynamic category selection: ``(B, T)`` bool, the classes each image keeps.

    ``C_final = {argmax_t S_ref(i, t) : every patch i} U {t : S_img(t) > threshold}``
    (Eq. 3-5, :func:`category_scores`). ``threshold <= 0`` keeps every class (the paper's
    "theta = 0 includes all categories"; a strict ``S_img > 0`` would drop classes whose
    softmax underflowed to 0). ``max_classes > 0`` keeps at most that many per image, the
    image-level ones first, then those of highest maximum ``S_ref``. No gradient.
    """
    with torch.no_grad():
        batch, num_classes = class_embedding.shape[0], text.shape[0]
        if threshold <= 0:
            return torch.ones(batch, num_classes, dtype=torch.bool, device=text.device)
        refined, image = category_scores(patch_embeddings, class_embedding, text, temperature)
        keep = image > threshold
        _mark(keep, refined.argmax(dim=-1))
        if 0 < max_classes < num_classes:
            priority = torch.where(image > threshold, float("inf"), refined.amax(dim=1))
            priority = priority.masked_fill(~keep, float("-inf"))
            capped = _mark(torch.zeros_like(keep), priority.topk(max_classes, dim=1).indices)
            keep &= capped
        return keep


def top_n_selection(patch_embeddings: Tensor, class_embedding: Tensor, text: Tensor, *, temperature: float, n: int) -> Tensor:
    """``(B, T)`` bool: exactly ``min(n, T)`` classes per image, those of highest maximum
    damped patch score ``S_ref`` (the image's dominant class first). Measures the cost of a
    known subset size where random weights make :func:`select_categories` keep arbitrary
    numbers of classes."""
    with torch.no_grad():
        refined, image = category_scores(patch_embeddings, class_embedding, text, temperature)
        priority = refined.amax(dim=1) + image
        top = priority.topk(min(n, text.shape[0]), dim=1).indices
        return _mark(torch.zeros_like(image, dtype=torch.bool), top)


def present_classes(targets: Tensor, num_classes: int, ignore_value: int) -> Tensor:
    """``(B, H, W)`` labels -> ``(B, T)`` bool: the classes labelled in each image."""
    # ignored pixels write to an extra column that is dropped (every write is True: no
    # order dependence among duplicate indices)
    labels = torch.where(targets != ignore_value, targets, num_classes).flatten(1)
    present = torch.zeros(targets.shape[0], num_classes + 1, dtype=torch.bool, device=targets.device)
    return _mark(present, labels)[:, :num_classes]


def _mark(mask: Tensor, index: Tensor) -> Tensor:
    """``mask.scatter_(1, index, True)`` with a tensor source (fvcore's JIT tracer, which
    ``tools/benchmark.py --flops`` uses, rejects a boolean scalar there)."""
    return mask.scatter_(1, index, torch.ones_like(index, dtype=torch.bool))


def pad_class_subsets(keep: Tensor) -> tuple[Tensor, Tensor]:
    """``(B, T)`` keep masks -> ``(class_ids (B, C_max), valid (B, C_max))``.

    Row ``b`` holds image ``b``'s kept classes in ascending order, then (``valid`` False)
    the lowest of its other classes up to ``C_max``, the largest subset of the batch: a
    padded row still names distinct classes, so :func:`scatter_class_subsets` can write a
    whole row. ``C_max`` is read on the host (one synchronisation)."""
    if keep.dim() != 2 or keep.dtype != torch.bool:
        raise ValueError(f"keep must be a (B, T) bool tensor, got {tuple(keep.shape)} {keep.dtype}")
    width = max(int(keep.sum(dim=1).max()), 1)
    order = torch.sort((~keep).to(torch.uint8), dim=1, stable=True).indices[:, :width]
    return order, keep.gather(1, order)


def scatter_class_subsets(
    values: Tensor, class_ids: Tensor, valid: Tensor, num_classes: int, fill: float = float("-inf")
) -> Tensor:
    """Subset results ``(B, C_max, *rest)`` back on the class axis: ``(B, T, *rest)`` with
    ``fill`` for every class an image did not keep (padding included)."""
    filled = values.masked_fill(~valid.view(*valid.shape, *([1] * (values.dim() - 2))), fill)
    output = values.new_full((values.shape[0], num_classes, *values.shape[2:]), fill)
    index = class_ids.view(*class_ids.shape, *([1] * (values.dim() - 2))).expand_as(values)
    return output.scatter_(1, index, filled)
