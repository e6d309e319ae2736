#!/usr/bin/env python3
"""COCO-Stuff 164k, 171 classes: stuff-thing maps -> ``annotations_detectron2``.

Registers as ``coco_2017_train_stuff_all_sem_seg`` (train2017) and
``coco_2017_test_stuff_all_sem_seg`` (val2017; also the "Stuff" benchmark of SynSeg).

Input, under $DETECTRON2_DATASETS/coco-stuff (official downloads, unzipped):
  images/{train2017,val2017}/*.jpg        train2017.zip, val2017.zip (images.cocodataset.org)
  annotations/{train2017,val2017}/*.png   stuffthingmaps_trainval2017.zip (cocostuff)
Output:
  annotations_detectron2/{train2017,val2017}/<same name>.png   uint8 L, 0..170, 255 = ignore

A raw map value is the COCO-Stuff id minus 1 (0 = person, 255 = unlabeled). The 171 raw
values that are classes (0..181 except the 11 thing ids that have no masks) map to their rank
0..170; every other value, 255 included, maps to 255. This is the official SED/CAT-Seg
conversion (a lookup table here instead of its per-value loop) and equals MMSeg's
``*_labelTrainIds.png`` on real data.
"""

import label_remap as lr
from label_remap import pu

# Raw values (COCO ids - 1) of the 11 thing ids that COCO defines without any mask.
UNUSED_RAW_VALUES = (11, 25, 28, 29, 44, 65, 67, 68, 70, 82, 90)
CLASS_RAW_VALUES = tuple(v for v in range(182) if v not in UNUSED_RAW_VALUES)
IGNORE_LABEL = 255
# The input of this script and of prepare_coco_object.py.
STUFF_THING_MAPS = lr.AnnotationFolders(
    "coco-stuff",
    {"train2017": 118287, "val2017": 5000},
    what=("COCO-Stuff {split} stuff-thing maps", "COCO {split} images"),
    hint="Download http://calvin.inf.ed.ac.uk/wp-content/uploads/data/cocostuffdataset/"
    "stuffthingmaps_trainval2017.zip and unzip it into <root>/coco-stuff/annotations, and the "
    "COCO 2017 images into <root>/coco-stuff/images (see datasets/README.md).",
    # MMSeg/GroupViT converters write *_labelTrainIds.png / *_instanceTrainIds.png next
    # to the raw maps; those are outputs of other tools, not raw maps.
    skip_names_containing="TrainIds",
)
LUT = pu.make_lut(
    {raw: i for i, raw in enumerate(CLASS_RAW_VALUES)}, size=256, default=IGNORE_LABEL
)
REMAP = lr.LutRemap(
    LUT,
    frozenset(CLASS_RAW_VALUES) | {255},  # raw values defined
    frozenset(range(len(CLASS_RAW_VALUES))) | {IGNORE_LABEL},
    "raw value {value} is not a COCO-Stuff class (written as 255)",
)
main = STUFF_THING_MAPS.main(
    __file__,
    __doc__,
    desc="COCO-Stuff",
    output_dirname="annotations_detectron2",
    remap=REMAP,
)

if __name__ == "__main__":
    pu.run_main(main)
