"""Evaluation: one semantic-segmentation evaluator per test dataset, one summary table for all.

The metrics are computed by :mod:`sed_d2.engine.metrics` from this evaluator's own confusion
matrices, so they do not change with the installed detectron2 version (whose rule for classes
absent from the ground truth changed after v0.6). Only detectron2's public evaluator interface
(``DatasetEvaluator``), catalogs and ``comm`` are used.
"""
import json
import logging
import os
from collections import OrderedDict
from typing import Dict, Optional

import numpy as np
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.evaluation import DatasetEvaluator
from detectron2.utils import comm
from tabulate import tabulate

from ..data.io import read_label_map
from .metrics import accumulate_confusion, label_boundaries, segmentation_metrics

__all__ = [
    "OpenVocabSemSegEvaluator",
    "build_sem_seg_evaluator",
    "format_summary_table",
]

logger = logging.getLogger(__name__)


class OpenVocabSemSegEvaluator(DatasetEvaluator):
    """Confusion-matrix evaluation of one registered semantic-segmentation dataset.

    * ``background_index``: the VOC-20b protocol of the official SED/CAT-Seg code -- the model
      predicts over a vocabulary whose names from ``background_index`` on are background
      proxies; every such prediction counts as the background class ``background_index``, and
      metrics are over ``background_index + 1`` classes.
    * A ground-truth value outside the classes (other than the dataset's ``ignore_label``) is
      an error naming the file, as it is in training.
    * The argmax runs on the model's device; the per-image JSON of predictions (COCO-stuff RLE
      per class, slow for 847 classes) is only written when ``save_predictions`` is set.
    * ``boundary_iou``: also accumulate boundary confusion matrices (``mBoundaryIoU``).
    """

    def __init__(
        self,
        dataset_name: str,
        *,
        distributed: bool = True,
        output_dir: Optional[str] = None,
        background_index: Optional[int] = None,
        save_predictions: bool = False,
        boundary_iou: bool = True,
    ):
        meta = MetadataCatalog.get(dataset_name)
        self._dataset_name = dataset_name
        self._distributed = distributed
        self._output_dir = output_dir
        self._save_predictions = save_predictions
        self._boundary_iou = boundary_iou
        self._background_index = background_index
        self._ignore_label = meta.ignore_label
        class_names = list(meta.stuff_classes)
        if background_index is not None:
            class_names = class_names[:background_index] + ["background"]
        self._class_names = class_names
        self._num_classes = len(class_names)
        self._gt_file = {r["file_name"]: r["sem_seg_file_name"] for r in DatasetCatalog.get(dataset_name)}
        c2d = getattr(meta, "stuff_dataset_id_to_contiguous_id", None)
        self._contiguous_to_dataset_id = {v: k for k, v in c2d.items()} if c2d else None
        self.reset()

    def reset(self):
        k = self._num_classes
        self._confusion = np.zeros((k, k), dtype=np.int64)
        # last index: pixels on no class boundary
        self._boundary_confusion = np.zeros((k + 1, k + 1), dtype=np.int64)
        self._predictions = []

    def process(self, inputs, outputs):
        for input, output in zip(inputs, outputs):
            pred = output["sem_seg"].argmax(dim=0)
            if self._background_index is not None:
                pred = pred.clamp(max=self._background_index)
            pred = pred.cpu().numpy().astype(np.int64)
            gt_path = self._gt_file[input["file_name"]]
            gt = read_label_map(gt_path)
            if gt.shape != pred.shape:
                raise ValueError(
                    f"label file {gt_path} is {gt.shape[1]}x{gt.shape[0]} but the prediction for "
                    f"{input['file_name']} is {pred.shape[1]}x{pred.shape[0]} (height/width of the input dict?)"
                )
            bad = (gt != self._ignore_label) & ((gt < 0) | (gt >= self._num_classes))
            if bad.any():
                raise ValueError(
                    f"label file {gt_path} has values outside the {self._num_classes} classes of "
                    f"'{self._dataset_name}' (ignore label {self._ignore_label}): "
                    f"{np.unique(gt[bad]).tolist()[:10]}"
                )
            accumulate_confusion(self._confusion, pred, gt, self._ignore_label)
            if self._boundary_iou:
                none = self._num_classes
                b_gt = np.where(label_boundaries(gt), gt, none)
                b_gt[gt == self._ignore_label] = self._ignore_label
                b_pred = np.where(label_boundaries(pred), pred, none)
                accumulate_confusion(self._boundary_confusion, b_pred, b_gt, self._ignore_label)
            if self._save_predictions:
                self._predictions.extend(self._encode_json(pred, input["file_name"]))

    def _encode_json(self, pred: np.ndarray, file_name: str):
        import pycocotools.mask as mask_util

        records = []
        for label in np.unique(pred):
            category = int(label)
            if self._contiguous_to_dataset_id is not None:
                category = self._contiguous_to_dataset_id[category]
            rle = mask_util.encode(np.asfortranarray((pred == label)[:, :, None].astype(np.uint8)))[0]
            rle["counts"] = rle["counts"].decode("utf-8")
            records.append({"file_name": file_name, "category_id": category, "segmentation": rle})
        return records

    def evaluate(self):
        if self._distributed:
            comm.synchronize()
            confusions = comm.all_gather(self._confusion)
            boundary_confusions = comm.all_gather(self._boundary_confusion)
            predictions = comm.all_gather(self._predictions)
            if not comm.is_main_process():
                return None
            confusion = sum(confusions)
            boundary_confusion = sum(boundary_confusions)
            predictions = [p for part in predictions for p in part]
        else:
            confusion, boundary_confusion, predictions = (
                self._confusion,
                self._boundary_confusion,
                self._predictions,
            )
        if self._output_dir and self._save_predictions:
            os.makedirs(self._output_dir, exist_ok=True)
            with open(os.path.join(self._output_dir, "sem_seg_predictions.json"), "w") as f:
                json.dump(predictions, f)
        metrics = segmentation_metrics(
            confusion, self._class_names, boundary_confusion if self._boundary_iou else None
        )
        logged = _SUMMARY_METRICS + ((_BOUNDARY_METRIC,) if self._boundary_iou else ())
        logger.info("%s: %s", self._dataset_name, {k: metrics[k] for k in logged})
        return OrderedDict({"sem_seg": metrics})


def build_sem_seg_evaluator(
    dataset_name: str, output_dir: Optional[str] = None, *, distributed: bool = True, boundary_iou: bool = False
):
    """The evaluator of a registered dataset, chosen by its metadata ``evaluator_type``.
    ``boundary_iou`` (``TEST.BOUNDARY_IOU``): also report ``mBoundaryIoU`` and
    ``BoundaryIoU-<class>`` (:mod:`sed_d2.engine.metrics`)."""
    meta = MetadataCatalog.get(dataset_name)
    kind = getattr(meta, "evaluator_type", None)
    if kind == "sem_seg":
        return OpenVocabSemSegEvaluator(
            dataset_name, output_dir=output_dir, distributed=distributed, boundary_iou=boundary_iou
        )
    if kind == "sem_seg_background":
        background_index = getattr(meta, "background_index", None)
        if background_index is None:
            raise KeyError(f"dataset '{dataset_name}' is 'sem_seg_background' without 'background_index'")
        return OpenVocabSemSegEvaluator(
            dataset_name,
            output_dir=output_dir,
            background_index=background_index,
            distributed=distributed,
            boundary_iou=boundary_iou,
        )
    raise NotImplementedError(
        f"dataset '{dataset_name}' has evaluator_type {kind!r}; sed_d2 evaluates 'sem_seg' and "
        "'sem_seg_background'"
    )


_SUMMARY_METRICS = ("mIoU", "fwIoU", "mACC", "pACC", "mIoU_d2v06")
# Reported beside the summary metrics when some dataset's results have it (TEST.BOUNDARY_IOU).
_BOUNDARY_METRIC = "mBoundaryIoU"


def format_summary_table(results: Dict[str, Dict[str, Dict[str, float]]]) -> str:
    """One row per dataset with mIoU / fwIoU / mACC / pACC, and mIoU under detectron2 v0.6's
    rule (see :mod:`sed_d2.engine.metrics`; papers of 2023-2024 report that one); plus
    ``mBoundaryIoU`` when it was computed for any dataset (NaN for the others)."""
    columns = _SUMMARY_METRICS
    if any(_BOUNDARY_METRIC in result.get("sem_seg", {}) for result in results.values()):
        columns = (*columns, _BOUNDARY_METRIC)
    rows = []
    for dataset_name, result in results.items():
        metrics = result.get("sem_seg", {})
        rows.append([dataset_name] + [metrics.get(m, float("nan")) for m in columns])
    return tabulate(rows, headers=["dataset", *columns], tablefmt="pipe", floatfmt=".2f")
