"""OpenVocabSemSegEvaluator: metrics from its own confusion matrix, VOC-20b background clamp,
clear errors on bad label files."""
import uuid

import numpy as np
import pytest
import torch
from PIL import Image

from tests.conftest import requires_detectron2

pytestmark = requires_detectron2


def _register(tmp_path, labels, classes, evaluator_type="sem_seg", **meta):
    from detectron2.data import DatasetCatalog, MetadataCatalog

    name = f"test_eval_{uuid.uuid4().hex[:8]}"
    records = []
    for index, label in enumerate(labels):
        path = str(tmp_path / f"{index}.png")
        Image.fromarray(np.asarray(label, dtype=np.uint8)).save(path)
        records.append({"file_name": f"image{index}.jpg", "sem_seg_file_name": path})
    DatasetCatalog.register(name, lambda: records)
    MetadataCatalog.get(name).set(stuff_classes=classes, ignore_label=255, evaluator_type=evaluator_type, **meta)
    return name


def _scores(pred, num_classes):
    """(T, H, W) scores whose argmax is ``pred``."""
    return torch.nn.functional.one_hot(torch.as_tensor(np.asarray(pred, dtype=np.int64)), num_classes).permute(2, 0, 1).float()


def _evaluate(evaluator, preds, num_classes):
    evaluator.reset()
    for index, pred in enumerate(preds):
        evaluator.process([{"file_name": f"image{index}.jpg"}], [{"sem_seg": _scores(pred, num_classes)}])
    return evaluator.evaluate()["sem_seg"]


def test_metrics_golden(tmp_path):
    from sed_d2.engine.evaluation import OpenVocabSemSegEvaluator

    gt = [[0, 0, 1, 255], [0, 0, 1, 1]]
    pred = [[0, 1, 1, 2], [0, 0, 2, 1]]  # class 2 predicted but absent from the ground truth
    name = _register(tmp_path, [gt], ["a", "b", "c"])
    m = _evaluate(OpenVocabSemSegEvaluator(name, distributed=False, boundary_iou=False), [pred], 3)
    # a: TP 3, GT 4, PRED 3 -> 3/4; b: TP 2, GT 3, PRED 3 -> 2/4 (the ignored pixel is skipped)
    assert m["IoU-a"] == pytest.approx(75.0) and m["IoU-b"] == pytest.approx(50.0)
    assert m["mIoU"] == pytest.approx(62.5)
    assert m["mIoU_d2v06"] == pytest.approx(125.0 / 3)
    assert m["pACC"] == pytest.approx(100 * 5 / 7)


def test_voc_background_clamp(tmp_path):
    from sed_d2.engine.evaluation import build_sem_seg_evaluator

    # vocabulary: 2 object classes, then 2 background proxies; label 2 = background
    gt = [[0, 1, 2, 2]]
    pred = [[0, 1, 3, 2]]  # proxy 3 counts as background
    name = _register(
        tmp_path, [gt], ["cat", "dog", "sky", "wall"], evaluator_type="sem_seg_background", background_index=2
    )
    evaluator = build_sem_seg_evaluator(name, distributed=False)
    m = _evaluate(evaluator, [pred], 4)
    assert m["mIoU"] == 100.0 and "IoU-background" in m and "IoU-sky" not in m


def test_voc_background_clamp_counts_every_proxy_as_background_golden(tmp_path):
    from sed_d2.engine.evaluation import build_sem_seg_evaluator

    gt = [[0, 2, 2, 2]]  # cat, then background (label 2 = background_index)
    pred = [[3, 2, 0, 4]]  # proxies 3 and 4 (sky, wall) are background
    name = _register(
        tmp_path, [gt], ["cat", "dog", "sky", "wall", "floor"], evaluator_type="sem_seg_background",
        background_index=2,
    )
    evaluator = build_sem_seg_evaluator(name, distributed=False)
    m = _evaluate(evaluator, [pred], 5)
    # clamped pred [2, 2, 0, 2]: cat TP 0 of GT 1 + PRED 1; background TP 2, GT 3, PRED 3
    assert m["IoU-cat"] == 0.0 and m["IoU-background"] == pytest.approx(50.0)
    assert sorted(k for k in m if k.startswith("IoU-")) == ["IoU-background", "IoU-cat", "IoU-dog"]
    assert m["pACC"] == pytest.approx(50.0)
    assert np.isnan(m["IoU-dog"]) and m["mIoU"] == pytest.approx(25.0)  # dog: in neither map


def test_background_evaluator_needs_the_background_index(tmp_path):
    from sed_d2.engine.evaluation import build_sem_seg_evaluator

    name = _register(tmp_path, [[[0, 1]]], ["cat", "sky"], evaluator_type="sem_seg_background")
    with pytest.raises(KeyError, match=f"'{name}' is 'sem_seg_background' without 'background_index'"):
        build_sem_seg_evaluator(name)


def test_out_of_range_label_is_an_error_naming_the_file(tmp_path):
    from sed_d2.engine.evaluation import OpenVocabSemSegEvaluator

    name = _register(tmp_path, [[[0, 7]]], ["a", "b"])
    evaluator = OpenVocabSemSegEvaluator(name, distributed=False)
    with pytest.raises(ValueError, match=r"0.png has values outside the 2 classes .*\[7\]"):
        _evaluate(evaluator, [[[0, 1]]], 2)


def test_boundary_iou_perfect_prediction(tmp_path):
    from sed_d2.engine.evaluation import OpenVocabSemSegEvaluator

    gt = np.zeros((20, 20), dtype=np.uint8)
    gt[:, 10:] = 1
    name = _register(tmp_path, [gt], ["a", "b"])
    m = _evaluate(OpenVocabSemSegEvaluator(name, distributed=False), [gt], 2)
    assert m["mBoundaryIoU"] == 100.0 and m["mIoU"] == 100.0
