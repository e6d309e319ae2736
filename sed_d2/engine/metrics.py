"""Semantic segmentation metrics computed by sed_d2 itself, from confusion matrices.

Why not detectron2's ``SemSegEvaluator.evaluate``: its rule for classes absent from the
ground truth changed after v0.6 (commit f3c1bc19), so the same predictions give a different
mIoU depending on the installed detectron2. Here the rules are fixed and documented, and the
v0.6 value is reported beside the main one so numbers can be compared with papers evaluated
on detectron2 v0.6 (SED, CAT-Seg and most OVSS papers of 2023-2024).

Conventions. ``confusion[p, g]`` counts pixels predicted as class ``p`` whose ground truth is
class ``g``, for ``p, g`` in ``0..K-1``; ignored ground-truth pixels are never counted.

* ``IoU_c = TP_c / (GT_c + PRED_c - TP_c)`` and ``ACC_c = TP_c / GT_c``.
* **Classes absent from the ground truth** (``GT_c = 0``) have no IoU and no accuracy (NaN in
  the per-class results) and are left out of ``mIoU``, ``mACC`` and ``fwIoU``, even if they
  were predicted (their false positives still lower the IoU of the true classes of those
  pixels). This is detectron2's rule since 2022.
* ``mIoU_d2v06``: detectron2 v0.6's rule: the sum of the IoUs of the classes present in the
  ground truth divided by the number of classes present in the ground truth **or** predicted,
  so each predicted-but-absent class adds a 0 to the mean.
* ``fwIoU = sum_c (GT_c / sum GT) IoU_c``, ``pACC = sum TP / sum GT``.
* **Boundary IoU** (Cheng et al., CVPR 2021) per class, from a second confusion matrix over
  boundary pixels only: a pixel is on the boundary of its class in a label map when another
  label (or the image border) lies within ``d = max(1, round(0.02 * diagonal))`` pixels
  (square neighbourhood). Pixels off every boundary fall in an extra "none" row/column.
  This differs from detectron2's ``_mask_to_boundary``, which subtracts an erosion of the
  whole label map and so misses boundaries towards higher class indices and counts every
  interior pixel as class 0.
"""
from __future__ import annotations

from typing import Dict, Optional, Sequence

import numpy as np

__all__ = [
    "BOUNDARY_DILATION_RATIO",
    "accumulate_confusion",
    "label_boundaries",
    "segmentation_metrics",
]

BOUNDARY_DILATION_RATIO = 0.02


def accumulate_confusion(confusion: np.ndarray, pred: np.ndarray, gt: np.ndarray, ignore_label: int) -> None:
    """Add one image to ``confusion`` ((K, K) or (K+1, K+1) int64, in place).

    ``pred`` and ``gt`` are integer label maps of one shape. Pixels whose ``gt`` equals
    ``ignore_label`` are skipped. A ``gt`` or ``pred`` value outside ``0..K-1`` (``0..K`` for
    a (K+1, K+1) matrix, whose last index is "none") raises ``ValueError``.
    """
    if pred.shape != gt.shape:
        raise ValueError(f"prediction {pred.shape} and ground truth {gt.shape} differ in shape")
    size = confusion.shape[0]
    valid = gt != ignore_label
    pred = pred[valid].astype(np.int64, copy=False)
    gt = gt[valid].astype(np.int64, copy=False)
    for name, labels in (("ground-truth", gt), ("predicted", pred)):
        if labels.size and (labels.min() < 0 or labels.max() >= size):
            bad = np.unique(labels[(labels < 0) | (labels >= size)])[:10].tolist()
            raise ValueError(f"{name} labels {bad} are outside 0..{size - 1} (ignore label {ignore_label})")
    confusion += np.bincount(size * pred + gt, minlength=size * size).reshape(size, size)


def label_boundaries(labels: np.ndarray, dilation_ratio: float = BOUNDARY_DILATION_RATIO) -> np.ndarray:
    """``(H, W)`` bool: pixels within ``d`` (square neighbourhood) of another label or of the
    image border, ``d = max(1, round(dilation_ratio * sqrt(H^2 + W^2)))``."""
    import cv2  # detectron2's dependency as well; imported here so the rest needs numpy only

    if labels.ndim != 2:
        raise ValueError(f"label_boundaries expects a 2-D label map, got shape {labels.shape}")
    height, width = labels.shape
    dilation = max(1, int(round(dilation_ratio * np.sqrt(height**2 + width**2))))
    kernel = np.ones((2 * dilation + 1, 2 * dilation + 1), dtype=np.uint8)
    values = labels.astype(np.float32)
    # The border counts as another label: pad with values no class has.
    low = cv2.erode(values, kernel, borderType=cv2.BORDER_CONSTANT, borderValue=-1.0)
    high = cv2.dilate(values, kernel, borderType=cv2.BORDER_CONSTANT, borderValue=float(2**24))
    return (low != values) | (high != values)


def _safe_div(num: np.ndarray, den: np.ndarray, valid: np.ndarray) -> np.ndarray:
    out = np.full(num.shape, np.nan, dtype=float)
    out[valid] = num[valid] / den[valid]
    return out


def segmentation_metrics(
    confusion: np.ndarray,
    class_names: Sequence[str],
    boundary_confusion: Optional[np.ndarray] = None,
) -> Dict[str, float]:
    """Metrics (in percent) of a (K, K) confusion matrix; see the module docstring for the rules.

    Returns ``mIoU``, ``mIoU_d2v06``, ``fwIoU``, ``mACC``, ``pACC``, ``IoU-<name>`` and
    ``ACC-<name>`` per class and, with ``boundary_confusion`` ((K+1, K+1), last index "none"),
    ``mBoundaryIoU`` and ``BoundaryIoU-<name>``. Means over an empty set are NaN.
    """
    num_classes = len(class_names)
    if confusion.shape != (num_classes, num_classes):
        raise ValueError(f"confusion matrix is {confusion.shape}, expected ({num_classes}, {num_classes})")
    confusion = confusion.astype(float)
    tp = np.diag(confusion)
    pos_gt = confusion.sum(axis=0)
    pos_pred = confusion.sum(axis=1)
    present = pos_gt > 0
    union = pos_gt + pos_pred - tp
    iou = _safe_div(tp, union, present)
    acc = _safe_div(tp, pos_gt, present)
    total = pos_gt.sum()

    def mean(values: np.ndarray, count: int) -> float:
        return float(values.sum() / count) if count else float("nan")

    results = {
        "mIoU": 100 * mean(iou[present], int(present.sum())),
        "mIoU_d2v06": 100 * mean(iou[present], int((pos_gt + pos_pred > 0).sum())),
        "fwIoU": 100 * float((iou[present] * pos_gt[present]).sum() / total) if total else float("nan"),
        "mACC": 100 * mean(acc[present], int(present.sum())),
        "pACC": 100 * float(tp.sum() / total) if total else float("nan"),
    }
    for index, name in enumerate(class_names):
        results[f"IoU-{name}"] = 100 * iou[index]
    for index, name in enumerate(class_names):
        results[f"ACC-{name}"] = 100 * acc[index]
    if boundary_confusion is not None:
        if boundary_confusion.shape != (num_classes + 1, num_classes + 1):
            raise ValueError(
                f"boundary confusion matrix is {boundary_confusion.shape}, "
                f"expected ({num_classes + 1}, {num_classes + 1})"
            )
        b = boundary_confusion.astype(float)
        b_tp = np.diag(b)[:num_classes]
        b_gt = b.sum(axis=0)[:num_classes]
        b_union = b_gt + b.sum(axis=1)[:num_classes] - b_tp
        b_iou = _safe_div(b_tp, b_union, b_gt > 0)
        results["mBoundaryIoU"] = 100 * mean(b_iou[b_gt > 0], int((b_gt > 0).sum()))
        for index, name in enumerate(class_names):
            results[f"BoundaryIoU-{name}"] = 100 * b_iou[index]
    return results
