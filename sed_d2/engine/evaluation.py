"""Evaluation: one SemSegEvaluator per test dataset, and one summary table for all of them."""
import logging
from typing import Dict, Optional

import numpy as np
from detectron2.data import MetadataCatalog
from detectron2.evaluation import SemSegEvaluator
from tabulate import tabulate

__all__ = ["OpenVocabSemSegEvaluator", "build_sem_seg_evaluator", "format_summary_table"]

logger = logging.getLogger(__name__)


class OpenVocabSemSegEvaluator(SemSegEvaluator):
    """detectron2's ``SemSegEvaluator`` (same confusion matrix and metrics), plus:

    * ``background_index``: the VOC-20b protocol of the official SED/CAT-Seg code -- the model
      predicts over a vocabulary whose names from ``background_index`` on are background
      proxies; every such prediction counts as the background class ``background_index``, and
      metrics are over ``background_index + 1`` classes.
    * the argmax runs on the model's device, and the per-image JSON of predictions (RLE per
      class, slow for 847 classes) is only built when ``save_predictions`` is set.
    """

    def __init__(
        self,
        dataset_name: str,
        *,
        distributed: bool = True,
        output_dir: Optional[str] = None,
        background_index: Optional[int] = None,
        save_predictions: bool = False,
    ):
        super().__init__(dataset_name, distributed=distributed, output_dir=output_dir)
        self._background_index = background_index
        self._save_predictions = save_predictions
        if background_index is not None:
            self._class_names = list(self._class_names[:background_index]) + ["background"]
            self._num_classes = background_index + 1
            self._compute_boundary_iou = self._num_classes < 255

    def process(self, inputs, outputs):
        for input, output in zip(inputs, outputs):
            pred = output["sem_seg"].argmax(dim=0)
            if self._background_index is not None:
                pred = pred.clamp(max=self._background_index)
            pred = pred.to(self._cpu_device).numpy().astype(np.int64)
            gt = self.sem_seg_loading_fn(self.input_file_to_gt_file[input["file_name"]], dtype=int)
            gt[gt == self._ignore_label] = self._num_classes
            valid = gt <= self._num_classes
            if not valid.all():
                raise ValueError(
                    f"label file for {input['file_name']} has values above the "
                    f"{self._num_classes} classes of the evaluation: "
                    f"{np.unique(gt[~valid]).tolist()[:10]}"
                )
            self._conf_matrix += np.bincount(
                (self._num_classes + 1) * pred.reshape(-1) + gt.reshape(-1),
                minlength=self._conf_matrix.size,
            ).reshape(self._conf_matrix.shape)
            if self._compute_boundary_iou:
                b_gt = self._mask_to_boundary(gt.astype(np.uint8))
                b_pred = self._mask_to_boundary(pred.astype(np.uint8))
                self._b_conf_matrix += np.bincount(
                    (self._num_classes + 1) * b_pred.reshape(-1) + b_gt.reshape(-1),
                    minlength=self._conf_matrix.size,
                ).reshape(self._conf_matrix.shape)
            if self._save_predictions:
                self._predictions.extend(self.encode_json_sem_seg(pred, input["file_name"]))

    def evaluate(self):
        if not self._save_predictions:
            # SemSegEvaluator writes the (empty) prediction JSON when output_dir is set.
            output_dir, self._output_dir = self._output_dir, None
            try:
                return super().evaluate()
            finally:
                self._output_dir = output_dir
        return super().evaluate()


def build_sem_seg_evaluator(dataset_name: str, output_dir: Optional[str] = None):
    """The evaluator of a registered dataset, chosen by its metadata ``evaluator_type``."""
    meta = MetadataCatalog.get(dataset_name)
    kind = getattr(meta, "evaluator_type", None)
    if kind == "sem_seg":
        return OpenVocabSemSegEvaluator(dataset_name, output_dir=output_dir)
    if kind == "sem_seg_background":
        background_index = getattr(meta, "background_index", None)
        if background_index is None:
            raise KeyError(f"dataset '{dataset_name}' is 'sem_seg_background' without 'background_index'")
        return OpenVocabSemSegEvaluator(
            dataset_name, output_dir=output_dir, background_index=background_index
        )
    raise NotImplementedError(
        f"dataset '{dataset_name}' has evaluator_type {kind!r}; sed_d2 evaluates 'sem_seg' and "
        "'sem_seg_background'"
    )


_SUMMARY_METRICS = ("mIoU", "fwIoU", "mACC", "pACC")


def format_summary_table(results: Dict[str, Dict[str, Dict[str, float]]]) -> str:
    """One row per dataset with mIoU / fwIoU / mACC / pACC (the paper's tables use mIoU)."""
    rows = []
    for dataset_name, result in results.items():
        metrics = result.get("sem_seg", {})
        rows.append([dataset_name] + [metrics.get(m, float("nan")) for m in _SUMMARY_METRICS])
    return tabulate(
        rows, headers=["dataset", *_SUMMARY_METRICS], tablefmt="pipe", floatfmt=".2f"
    )
