"""sed_d2.engine.metrics on hand-made confusion matrices and label maps."""
import math

import numpy as np
import pytest

from sed_d2.engine.metrics import accumulate_confusion, label_boundaries, segmentation_metrics

NAMES = ["a", "b", "c"]


def test_hand_made_matrix():
    # rows = predicted, columns = ground truth. Class c never occurs in the ground truth but
    # is predicted on 2 pixels of class a.
    confusion = np.array(
        [
            [6, 1, 0],
            [0, 3, 0],
            [2, 0, 0],
        ]
    )
    m = segmentation_metrics(confusion, NAMES)
    # a: TP 6, GT 8, PRED 7 -> IoU 6/9; b: TP 3, GT 4, PRED 3 -> IoU 3/4; c: absent -> NaN
    assert m["IoU-a"] == pytest.approx(100 * 6 / 9)
    assert m["IoU-b"] == pytest.approx(100 * 3 / 4)
    assert math.isnan(m["IoU-c"]) and math.isnan(m["ACC-c"])
    assert m["mIoU"] == pytest.approx(100 * (6 / 9 + 3 / 4) / 2)
    # detectron2 v0.6: the predicted-but-absent class c adds a zero to the mean
    assert m["mIoU_d2v06"] == pytest.approx(100 * (6 / 9 + 3 / 4) / 3)
    assert m["mACC"] == pytest.approx(100 * (6 / 8 + 3 / 4) / 2)
    assert m["pACC"] == pytest.approx(100 * 9 / 12)
    assert m["fwIoU"] == pytest.approx(100 * (8 / 12 * 6 / 9 + 4 / 12 * 3 / 4))


def test_absent_and_never_predicted_class_changes_neither_rule():
    confusion = np.array([[5, 0, 0], [1, 4, 0], [0, 0, 0]])
    m = segmentation_metrics(confusion, NAMES)
    assert m["mIoU"] == pytest.approx(m["mIoU_d2v06"])
    assert m["mIoU"] == pytest.approx(100 * (5 / 6 + 4 / 5) / 2)


def test_perfect_prediction_and_empty_matrix():
    perfect = segmentation_metrics(np.diag([3, 2, 1]), NAMES)
    assert perfect["mIoU"] == perfect["pACC"] == perfect["mACC"] == perfect["fwIoU"] == 100.0
    empty = segmentation_metrics(np.zeros((3, 3), dtype=np.int64), NAMES)
    assert all(math.isnan(empty[k]) for k in ("mIoU", "mIoU_d2v06", "fwIoU", "mACC", "pACC"))


def test_equals_current_detectron2_formula_on_random_matrices():
    rng = np.random.default_rng(0)
    for _ in range(5):
        confusion = rng.integers(0, 50, size=(6, 6))
        confusion[:, 2] = 0  # a class absent from the ground truth
        # detectron2 (post-0.6) SemSegEvaluator.evaluate, written out on the same matrix
        tp = np.diag(confusion).astype(float)
        pos_gt = confusion.sum(0).astype(float)
        pos_pred = confusion.sum(1).astype(float)
        valid = pos_gt > 0
        iou = tp[valid] / (pos_gt + pos_pred - tp)[valid]
        m = segmentation_metrics(confusion, list("abcdef"))
        assert m["mIoU"] == pytest.approx(100 * iou.mean())
        assert m["fwIoU"] == pytest.approx(100 * (iou * pos_gt[valid] / pos_gt.sum()).sum())
        assert m["mIoU_d2v06"] == pytest.approx(100 * iou.sum() / ((pos_gt + pos_pred) > 0).sum())


def test_accumulate_skips_ignore_and_rejects_out_of_range():
    confusion = np.zeros((3, 3), dtype=np.int64)
    gt = np.array([[0, 1], [255, 2]])
    pred = np.array([[0, 2], [1, 2]])
    accumulate_confusion(confusion, pred, gt, ignore_label=255)
    expected = np.zeros((3, 3), dtype=np.int64)
    expected[0, 0] = expected[2, 1] = expected[2, 2] = 1
    np.testing.assert_array_equal(confusion, expected)
    with pytest.raises(ValueError, match=r"ground-truth labels \[7\] are outside 0..2"):
        accumulate_confusion(confusion, pred, np.array([[0, 7], [1, 2]]), ignore_label=255)
    with pytest.raises(ValueError, match="differ in shape"):
        accumulate_confusion(confusion, pred, gt[:1], ignore_label=255)


def test_label_boundaries_golden():
    labels = np.zeros((50, 50), dtype=np.int64)
    labels[:, 25:] = 1  # d = round(0.02 * 70.7) = 1
    boundary = label_boundaries(labels)
    expected = np.zeros((50, 50), dtype=bool)
    expected[:, 24:26] = True  # both sides of the class edge
    expected[[0, -1], :] = True  # the image border
    expected[:, [0, -1]] = True
    np.testing.assert_array_equal(boundary, expected)
    # symmetric in the class order (detectron2's erosion misses edges towards higher ids)
    np.testing.assert_array_equal(label_boundaries(1 - labels), boundary)


def test_boundary_iou_from_boundary_confusion():
    names = ["a", "b"]
    gt = np.zeros((50, 50), dtype=np.int64)
    gt[:, 25:] = 1
    pred = gt.copy()
    none = len(names)
    b_conf = np.zeros((3, 3), dtype=np.int64)
    b_gt = np.where(label_boundaries(gt), gt, none)
    b_pred = np.where(label_boundaries(pred), pred, none)
    accumulate_confusion(b_conf, b_pred, b_gt, ignore_label=255)
    m = segmentation_metrics(np.diag([1250, 1250]), names, boundary_confusion=b_conf)
    assert m["BoundaryIoU-a"] == m["BoundaryIoU-b"] == m["mBoundaryIoU"] == 100.0
    with pytest.raises(ValueError, match=r"expected \(3, 3\)"):
        segmentation_metrics(np.diag([1, 1]), names, boundary_confusion=np.zeros((2, 2)))
