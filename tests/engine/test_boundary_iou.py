"""Boundary IoU per class and its mean: golden values on hand-made maps, asked for with
TEST.BOUNDARY_IOU for any method's evaluation, and shown in the summary table."""
import numpy as np
import pytest

from tests.conftest import requires_detectron2
from tests.engine.test_evaluation import _evaluate, _register

pytestmark = requires_detectron2


def _halves(split):
    """10x10 map: class 0 left of column ``split``, class 1 from it on."""
    labels = np.zeros((10, 10), dtype=np.uint8)
    labels[:, split:] = 1
    return labels


def test_boundary_iou_golden_by_hand(tmp_path):
    from sed_d2.engine.evaluation import build_sem_seg_evaluator

    # d = max(1, round(0.02 * diagonal)) = 1: a class's boundary is its pixels next to another
    # class or to the image border.
    # gt (split 5): class 0 boundary = columns 0 and 4 + rows 0 and 9 of columns 1-3 = 26 pixels,
    # class 1 likewise 26. pred (split 6): class 0 = columns 0, 5 + rows 0, 9 of 1-4 = 28;
    # class 1 = columns 6, 9 + rows 0, 9 of 7-8 = 24.
    # class 0: both = column 0 (10) + rows 0, 9 of columns 1-4 (8) = 18 -> 18 / (26 + 28 - 18)
    # class 1: both = column 9 (10) + rows 0, 9 of columns 6-8 (6) = 16 -> 16 / (26 + 24 - 16)
    name = _register(tmp_path, [_halves(5)], ["a", "b"])
    metrics = _evaluate(build_sem_seg_evaluator(name, distributed=False, boundary_iou=True), [_halves(6)], 2)
    assert metrics["BoundaryIoU-a"] == pytest.approx(100 * 18 / 36)
    assert metrics["BoundaryIoU-b"] == pytest.approx(100 * 16 / 34)
    assert metrics["mBoundaryIoU"] == pytest.approx(50 * (18 / 36 + 16 / 34))
    # the region IoU of the same prediction is much higher: a one-column shift is a boundary error
    assert metrics["mIoU"] == pytest.approx(50 * (50 / 60 + 40 / 50))


def test_ignored_pixels_and_classes_without_ground_truth(tmp_path):
    from sed_d2.engine.evaluation import build_sem_seg_evaluator

    gt = _halves(5)
    gt[:, 5:] = 255  # class b is never in the ground truth: no boundary IoU, left out of the mean
    pred = _halves(6)
    name = _register(tmp_path, [gt], ["a", "b", "c"])
    metrics = _evaluate(build_sem_seg_evaluator(name, distributed=False, boundary_iou=True), [pred], 3)
    assert np.isnan(metrics["BoundaryIoU-b"]) and np.isnan(metrics["BoundaryIoU-c"])
    # class a's boundary in gt: columns 0 and 4 (next to the ignored region) and rows 0, 9 -> 26;
    # pred's class-a boundary on non-ignored pixels: columns 0 and rows 0, 9 of 1-4 -> 18, all shared
    assert metrics["mBoundaryIoU"] == pytest.approx(metrics["BoundaryIoU-a"]) == pytest.approx(100 * 18 / 26)


def test_asked_for_by_the_config_key_for_every_method(tmp_path):
    from sed_d2.engine import Trainer
    from tests.d2_helpers import tiny_cfg_for

    name = _register(tmp_path, [_halves(5)], ["a", "b"])
    for config_file in ("configs/sed/tiny.yaml", "configs/catseg/tiny.yaml", "configs/clip_hbd/tiny.yaml"):
        for asked in (False, True):
            cfg = tiny_cfg_for(config_file, "TEST.BOUNDARY_IOU", str(asked))
            metrics = _evaluate(Trainer.build_evaluator(cfg, name), [_halves(5)], 2)
            assert ("mBoundaryIoU" in metrics) == asked
            assert metrics["mIoU"] == 100.0
    from sed_d2.config import get_cfg

    assert get_cfg().TEST.BOUNDARY_IOU is False  # off unless asked (a CPU pass per image)


def test_summary_table_shows_the_mean_when_computed():
    from sed_d2.engine.evaluation import format_summary_table

    plain = {"sem_seg": {"mIoU": 50.0, "fwIoU": 1.0, "mACC": 2.0, "pACC": 3.0, "mIoU_d2v06": 4.0}}
    with_boundary = {"sem_seg": {**plain["sem_seg"], "mBoundaryIoU": 12.5}}
    assert "mBoundaryIoU" not in format_summary_table({"x": plain})
    table = format_summary_table({"x": with_boundary, "y": plain})
    header, _, row_x, row_y = table.splitlines()
    assert header.split("|")[-2].strip() == "mBoundaryIoU"
    assert row_x.split("|")[-2].strip() == "12.50" and row_y.split("|")[-2].strip() == "nan"
