#!/usr/bin/env python3
"""ADE20K-150 (ADEChallengeData2016): raw annotations -> ``annotations_detectron2``.

Registers as ``ade20k_150_test_sem_seg`` (validation, 2,000 images; also SynSeg's "ADE").

Input, under $DETECTRON2_DATASETS/ADEChallengeData2016 (ADEChallengeData2016.zip, unzipped):
  images/{training,validation}/*.jpg
  annotations/{training,validation}/*.png     uint8 L: 0 = other/unlabeled, 1..150 classes
Output:
  annotations_detectron2/{training,validation}/<same name>.png   uint8 L, 0..149, 255 = ignore

Mapping (official SED/CAT-Seg script, detectron2's ``prepare_ade20k_sem_seg.py``, MMSeg's
``reduce_zero_label``): ``label - 1`` in uint8, so 0 wraps to 255 and k becomes k - 1. Only
validation is converted by default, as in the official script.
"""

import importlib.util
import sys
from pathlib import Path

import numpy as np

if importlib.util.find_spec("sed_d2") is None:  # not pip-installed yet: use this checkout
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from sed_d2.data import prepare_utils as pu  # noqa: E402

SPLITS = ("training", "validation")
DEFAULT_SPLITS = ("validation",)
OFFICIAL_SIZES = {"training": 20210, "validation": 2000}
NUM_CLASSES = 150
IGNORE_LABEL = 255
LUT = (np.arange(256, dtype=np.int64) - 1).astype(np.uint8)  # 0 -> 255, k -> k - 1
KNOWN_RAW_VALUES = frozenset(range(NUM_CLASSES + 1))
ALLOWED_OUTPUT_VALUES = frozenset(range(NUM_CLASSES)) | {IGNORE_LABEL}
HINT = (
    "Download http://data.csail.mit.edu/places/ADEchallenge/ADEChallengeData2016.zip and unzip "
    "it into <root> (see datasets/README.md)."
)


def convert(task: pu.Task) -> pu.TaskResult:
    return pu.remap_label_png(
        task.source,
        task.outputs[0],
        LUT,
        known_raw_values=KNOWN_RAW_VALUES,
        unknown_note="raw value {value} is above the 150 classes (written as value - 1)",
    )


def main(argv=None) -> int:
    parser = pu.build_argument_parser(__doc__, splits=SPLITS, default_splits=DEFAULT_SPLITS)
    args = parser.parse_args(argv)
    dataset_dir = pu.resolve_root(args.root) / "ADEChallengeData2016"
    splits = pu.parse_splits(args.splits, SPLITS)

    tasks, outputs = pu.annotation_folder_tasks(
        dataset_dir,
        splits,
        "annotations_detectron2",
        what="ADE20K-150 {split} annotations",
        images_what="ADE20K-150 {split} images",
        hint=HINT,
        official_sizes=OFFICIAL_SIZES,
        allowed_values=ALLOWED_OUTPUT_VALUES,
    )
    return pu.run_and_summarize(
        "prepare_ade20k_150", tasks, convert, outputs, args, desc="ADE20K-150"
    )


if __name__ == "__main__":
    pu.run_main(main)
