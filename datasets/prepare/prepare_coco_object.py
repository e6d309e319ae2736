#!/usr/bin/env python3
"""COCO-Object, 80 things + background (GroupViT/TCL protocol; SynSeg's "Object" benchmark).

Registers as ``coco_object_val_sem_seg``.

Input, under $DETECTRON2_DATASETS/coco-stuff: the same stuff-thing maps as COCO-Stuff
(``annotations/val2017/*.png``, from stuffthingmaps_trainval2017.zip; the GroupViT/TCL
converter reads these maps, not the instance JSON their READMEs mention) and the images in
``images/val2017``.
Output:
  annotations_detectron2_object/val2017/<same name>.png   uint8 L, 0 = background, 1..80

Mapping (GroupViT/TCL ``convert_coco_object.py``): a thing raw value (0..89) becomes its rank
among the 80 thing values plus 1; every stuff value (91..181) and 255 (unlabeled) becomes 0,
the background, so no pixel is ignored. The 11 raw values of thing ids without masks never
occur in real maps; the official converter would pass them through unchanged, here they are
written as 255 (ignore) and counted in the summary. The file names keep the image stems (the
official ``<stem>_instanceTrainIds.png`` naming cannot be paired by detectron2).
"""

import dataclasses

import label_remap as lr
from label_remap import pu
from prepare_coco_stuff import STUFF_THING_MAPS, UNUSED_RAW_VALUES

THING_RAW_VALUES = tuple(v for v in range(90) if v not in UNUSED_RAW_VALUES)
STUFF_RAW_VALUES = tuple(range(91, 182))
BACKGROUND = 0
IGNORE_LABEL = 255
LUT = pu.make_lut(
    {
        **{raw: i + 1 for i, raw in enumerate(THING_RAW_VALUES)},
        **{raw: BACKGROUND for raw in STUFF_RAW_VALUES},
        255: BACKGROUND,
    },
    size=256,
    default=IGNORE_LABEL,
)
REMAP = lr.LutRemap(
    LUT,
    frozenset(THING_RAW_VALUES) | frozenset(STUFF_RAW_VALUES) | {255},  # raw values defined
    frozenset(range(len(THING_RAW_VALUES) + 1)),
    "raw value {value} is not a COCO-Stuff class (written as 255)",
)
HINT = (
    "COCO-Object is derived from the COCO-Stuff stuff-thing maps: download "
    "http://calvin.inf.ed.ac.uk/wp-content/uploads/data/cocostuffdataset/"
    "stuffthingmaps_trainval2017.zip into <root>/coco-stuff/annotations (see datasets/README.md)."
)
main = dataclasses.replace(STUFF_THING_MAPS, hint=HINT).main(
    __file__,
    __doc__,
    desc="COCO-Object",
    output_dirname="annotations_detectron2_object",
    remap=REMAP,
    default_splits=("val2017",),  # the benchmark is val only
)

if __name__ == "__main__":
    pu.run_main(main)
