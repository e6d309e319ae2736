"""Multi-Category Contrastive Learning (MCCL, SynSeg) on per-category synergy vectors.

Each image ``i`` has ``K_i`` categories (caption noun phrases); category ``k`` has a
foreground vector ``f_k``, a background vector ``b_k`` (the Feature Synergy Structure's) and
its text anchor ``t_k``. The paper's equations 3-9 were lost in extraction; the
reconstruction (``reference/synseg_spec.md`` §2.2-2.3) is:

* cosine ``c(u, v) = u.v / (|u| |v| + 1e-8)`` and a bounded similarity ``s`` in (0, 1), so
  that every logarithm is finite (:func:`bounded_similarity`);
* ``L1`` intra-category alignment: ``mean_k -log s(f_k, t_k)``;
* ``L2`` intra-category separation: ``mean_k [c(f_k, b_k) > threshold] * -log(1 - s(f_k, b_k))``
  (the gate stops repelling pairs that are already apart);
* ``L3`` inter-category alignment: ``mean_{j<k} -log s(b_j, b_k)``;
* ``L4`` inter-category separation: ``mean_{j<k} -log(1 - s(f_j, f_k))``;
* ``L = w1 L1 + w2 L2 + w3 L3 + w4 L4``.

Every term compares vectors of one image only (no cross-image negatives, no temperature).
Batch reduction: each loss is averaged per image over its terms, then over the images that
have at least one term (an image with one category has no L3 / L4 term); with no such image
the loss is an exact zero that stays connected to the inputs' graph. Under data parallelism
(``count_reduce``: a sum over the processes) the count of such images is the global one and
each process's loss is scaled so that the averaged gradients equal one process's on the
whole batch.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

__all__ = [
    "MCCL_LOSS_NAMES",
    "SIMILARITY_MAPS",
    "bounded_similarity",
    "cosine_similarity",
    "mccl_losses",
    "per_image_mean",
]

# Loss names in the order of the paper's L1..L4 (and of the weights).
MCCL_LOSS_NAMES = ("loss_intra_align", "loss_intra_sep", "loss_inter_align", "loss_inter_sep")
# How a cosine becomes a similarity in (0, 1): "affine" (clamp to [-1+eps, 1-eps], then
# (c + 1) / 2), "clamp" (CCAM: clamp to [eps, 1-eps]; no gradient below eps) or "scale"
# ((1 + (1-eps) c) / 2: the same range as "affine" without its clamp, so nearly parallel
# vectors, e.g. every foreground at initialisation, still get a repelling gradient).
SIMILARITY_MAPS = ("affine", "clamp", "scale")
SEPARATION_NORMALIZATIONS = ("all", "active")
# Sum of a tensor over the data-parallel processes (e.g. a detached all_reduce), or None.
CountReduce = Callable[[Tensor], Tensor] | None


def cosine_similarity(u: Tensor, v: Tensor) -> Tensor:
    """``u.v / (|u| |v| + 1e-8)`` along the last axis (broadcast); 0 for a zero vector."""
    return (u * v).sum(-1) / (u.norm(dim=-1) * v.norm(dim=-1) + 1e-8)


def bounded_similarity(cosine: Tensor, eps: float = 5e-4, mode: str = "affine") -> Tensor:
    """A cosine mapped into ``[eps / 2, 1 - eps / 2]`` ("affine", "scale") or ``[eps, 1 - eps]``
    ("clamp"), so ``log s`` and ``log(1 - s)`` are finite."""
    if mode == "affine":
        return (cosine.clamp(-1.0 + eps, 1.0 - eps) + 1.0) / 2.0
    if mode == "scale":
        return (1.0 + (1.0 - eps) * cosine) / 2.0  # |c| <= 1 up to rounding, which eps absorbs
    if mode == "clamp":
        return cosine.clamp(eps, 1.0 - eps)
    raise ValueError(f"similarity map must be one of {SIMILARITY_MAPS}, got {mode!r}")


def per_image_mean(
    terms: Tensor, term_image: Tensor, num_images: int, counts: Tensor | None = None, count_reduce: CountReduce = None
) -> Tensor:
    """``sum_i mean_i / #{i: count_i > 0}``: ``terms`` (N,) averaged per image
    (``term_image`` (N,) its image index; ``counts`` (num_images,) the divisor per image,
    default the number of terms), then over the images with a positive count. No such image:
    ``0 * terms.sum()`` (zero, still connected to the graph).

    ``count_reduce`` (data parallelism): sums ``[images with a term, 1]`` over the processes;
    the result is then ``world_size * sum_i mean_i / global count``, whose gradients averaged
    over the processes (DDP) are those of the whole batch in one process."""
    sums = terms.new_zeros(num_images).index_add(0, term_image, terms)
    if counts is None:
        counts = torch.bincount(term_image, minlength=num_images).to(terms.dtype)
    valid = counts > 0
    per_image = sums / counts.clamp(min=1)
    num_valid = valid.sum().to(terms.dtype)
    world_size = 1.0
    if count_reduce is not None:
        num_valid, world_size = count_reduce(torch.stack([num_valid, torch.ones_like(num_valid)]).detach())
    return torch.where(
        num_valid > 0, (per_image * valid).sum() * world_size / num_valid.clamp(min=1), terms.sum() * 0.0
    )


def mccl_losses(
    fg: Tensor,
    bg: Tensor,
    text: Tensor,
    pair_image: Tensor,
    num_images: int,
    *,
    weights: Sequence[float] = (1.0, 1.0, 1.0, 1.0),
    sep_threshold: float = 0.1,
    sep_normalize: str = "all",
    eps: float = 5e-4,
    sim_map: str = "affine",
    count_reduce: CountReduce = None,
) -> dict[str, Tensor]:
    """The four weighted MCCL losses (see the module docstring), float32.

    Args:
        fg, bg: ``(M, C)`` foreground / background vectors of the ``M`` (image, category) pairs.
        text: ``(M, C)`` the text anchor of each pair.
        pair_image: ``(M,)`` int64 image index of each pair, in ``[0, num_images)``.
        num_images: images in the batch.
        weights: ``(w1, w2, w3, w4)`` of L1..L4 (the paper's values are lost; CCAM: equal).
        sep_threshold: L2 acts on a pair only while ``c(f_k, b_k)`` exceeds it (paper: 0.1).
        sep_normalize: L2's divisor per image, ``"all"`` its ``K_i`` categories or
            ``"active"`` its gated-on pairs.
        eps: bound of the similarity (:func:`bounded_similarity`).
        sim_map: see :data:`SIMILARITY_MAPS`.
        count_reduce: under data parallelism, the sum over processes (see :func:`per_image_mean`).

    Returns:
        ``{name: weighted loss}`` for the names of :data:`MCCL_LOSS_NAMES`.
    """
    if len(weights) != 4:
        raise ValueError(f"MCCL needs 4 loss weights (L1..L4), got {tuple(weights)}")
    if sep_normalize not in SEPARATION_NORMALIZATIONS:
        raise ValueError(f"sep_normalize must be one of {SEPARATION_NORMALIZATIONS}, got {sep_normalize!r}")
    fg, bg, text = fg.float(), bg.float(), text.float()

    def sim(c: Tensor) -> Tensor:
        return bounded_similarity(c, eps, sim_map)

    # L1: each foreground towards its category's text.
    intra_align = per_image_mean(
        -torch.log(sim(cosine_similarity(fg, text))), pair_image, num_images, count_reduce=count_reduce
    )

    # L2: foreground away from its own background, gated on the raw cosine.
    fg_bg = cosine_similarity(fg, bg)
    active = (fg_bg > sep_threshold).to(fg_bg.dtype)
    counts = None
    if sep_normalize == "active":
        counts = fg_bg.new_zeros(num_images).index_add(0, pair_image, active)
    intra_sep = per_image_mean(active * -torch.log1p(-sim(fg_bg)), pair_image, num_images, counts, count_reduce)

    # L3 / L4 over the unordered pairs of categories of one image (s is symmetric).
    first, second = torch.triu_indices(len(pair_image), len(pair_image), offset=1, device=pair_image.device)
    same_image = pair_image[first] == pair_image[second]
    first, second = first[same_image], second[same_image]
    pair_of = pair_image[first]
    inter_align = per_image_mean(
        -torch.log(sim(cosine_similarity(bg[first], bg[second]))), pair_of, num_images, count_reduce=count_reduce
    )
    inter_sep = per_image_mean(
        -torch.log1p(-sim(cosine_similarity(fg[first], fg[second]))), pair_of, num_images, count_reduce=count_reduce
    )
    if len(first) == 0:  # keep the graph through fg / bg (DDP expects every parameter used)
        inter_align = inter_align + bg.sum() * 0.0
        inter_sep = inter_sep + fg.sum() * 0.0

    values = (intra_align, intra_sep, inter_align, inter_sep)
    return {name: weight * value for name, weight, value in zip(MCCL_LOSS_NAMES, weights, values)}
