"""Tag validation (DCP-CLIP Eq. 17): a predicted class that training never saw is checked
against CLIP's own reading of the region it covers, and relabelled when CLIP ranks it low.

* :func:`seen_class_mask`: which test classes count as seen in training (exact names);
* :func:`tag_validation`: the check and the relabelling on one image's score maps.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["seen_class_mask", "tag_validation"]

# Separator of synonyms inside one class name (as sed_d2.clip.text).
_SYNONYM_SEPARATOR = ", "


def seen_class_mask(test_vocabulary: Sequence[str], train_vocabulary: Sequence[str]) -> list[bool]:
    """Per test class: any of its synonyms (stripped) equals a training class's synonym.

    Exact names on purpose: ADE's "water" and "sidewalk" are not COCO-Stuff names
    ("water-other", "pavement"), and the paper's examples relabel exactly such classes."""
    seen = {synonym.strip() for name in train_vocabulary for synonym in name.split(_SYNONYM_SEPARATOR)}
    return [any(s.strip() in seen for s in name.split(_SYNONYM_SEPARATOR)) for name in test_vocabulary]


def tag_validation(scores: Tensor, patch_embeddings: Tensor, text: Tensor, seen: Tensor, k: int) -> Tensor:
    """Relabel the regions of unseen classes that CLIP ranks below ``k``.

    Args:
        scores: ``(T, H, W)`` class scores of one image (the prediction is their argmax).
        patch_embeddings: ``(D, h, w)`` dense CLIP embeddings of the whole image.
        text: ``(T, D)`` one embedding per class.
        seen: ``(T,)`` bool, classes seen in training (never checked).
        k: a class survives when at most ``k - 1`` classes score higher than it.

    For every predicted class ``c`` that is not seen: its region ``M_c`` (the pixels whose
    argmax is ``c``) is area-averaged to the ``(h, w)`` grid, the embeddings are pooled
    with those coverage weights, and every class is scored by cosine with the pooled
    feature. If ``c`` ranks below ``k`` (``1 + #{c' : r_c' > r_c} > k``), the scores of
    ``c`` and of the best-ranked class are swapped inside ``M_c``, so the argmax there
    becomes that class and every other pixel is untouched. Returns a new tensor.
    """
    num_classes = scores.shape[0]
    labels = scores.argmax(dim=0)  # (H, W)
    predicted = torch.zeros(num_classes, dtype=torch.bool, device=scores.device)
    predicted[labels.flatten()] = True
    candidates = (predicted & ~seen.to(scores.device)).nonzero().squeeze(1)
    result = scores.clone()
    if candidates.numel() == 0 or k >= num_classes:
        return result
    masks = (labels.unsqueeze(0) == candidates.view(-1, 1, 1)).float()  # (n, H, W)
    coverage = F.adaptive_avg_pool2d(masks.unsqueeze(0), patch_embeddings.shape[-2:])[0].flatten(1)  # (n, hw)
    pooled = coverage @ patch_embeddings.float().flatten(1).T / coverage.sum(dim=1, keepdim=True).clamp_min(1e-12)
    relevance = F.normalize(pooled, dim=-1) @ F.normalize(text.float(), dim=-1).T  # (n, T)
    own = relevance.gather(1, candidates.unsqueeze(1))
    rank = 1 + (relevance > own).sum(dim=1)
    for index in (rank > k).nonzero().squeeze(1).tolist():
        old, new = int(candidates[index]), int(relevance[index].argmax())
        region = masks[index].bool()
        result[old][region], result[new][region] = scores[new][region], scores[old][region]
    return result
