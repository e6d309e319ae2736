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

import label_remap as lr
import numpy as np
from label_remap import pu

ANNOTATIONS = lr.AnnotationFolders(
    "ADEChallengeData2016",
    {"training": 20210, "validation": 2000},
    what=("ADE20K-150 {split} annotations", "ADE20K-150 {split} images"),
    hint="Download http://data.csail.mit.edu/places/ADEchallenge/ADEChallengeData2016.zip and "
    "unzip it into <root> (see datasets/README.md).",
)
NUM_CLASSES = 150
IGNORE_LABEL = 255
LUT = (np.arange(256, dtype=np.int64) - 1).astype(np.uint8)  # 0 -> 255, k -> k - 1
REMAP = lr.LutRemap(
    LUT,
    frozenset(range(NUM_CLASSES + 1)),  # raw values defined: 0 = other, 1..150
    frozenset(range(NUM_CLASSES)) | {IGNORE_LABEL},
    "raw value {value} is above the 150 classes (written as value - 1)",
)
main = ANNOTATIONS.main(
    __file__,
    __doc__,
    desc="ADE20K-150",
    output_dirname="annotations_detectron2",
    remap=REMAP,
    default_splits=("validation",),
)

if __name__ == "__main__":
    pu.run_main(main)
