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

import importlib.util
import sys
from pathlib import Path

if importlib.util.find_spec("sed_d2") is None:  # not pip-installed yet: use this checkout
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from sed_d2.data import prepare_utils as pu  # noqa: E402

SPLITS = ("train2017", "val2017")
OFFICIAL_SIZES = {"train2017": 118287, "val2017": 5000}
# Raw values (COCO ids - 1) of the 11 thing ids that COCO defines without any mask.
UNUSED_RAW_VALUES = (11, 25, 28, 29, 44, 65, 67, 68, 70, 82, 90)
CLASS_RAW_VALUES = tuple(v for v in range(182) if v not in UNUSED_RAW_VALUES)
IGNORE_LABEL = 255
LUT = pu.make_lut(
    {raw: i for i, raw in enumerate(CLASS_RAW_VALUES)}, size=256, default=IGNORE_LABEL
)
KNOWN_RAW_VALUES = frozenset(CLASS_RAW_VALUES) | {255}
ALLOWED_OUTPUT_VALUES = frozenset(range(len(CLASS_RAW_VALUES))) | {IGNORE_LABEL}
HINT = (
    "Download http://calvin.inf.ed.ac.uk/wp-content/uploads/data/cocostuffdataset/"
    "stuffthingmaps_trainval2017.zip and unzip it into <root>/coco-stuff/annotations, and the "
    "COCO 2017 images into <root>/coco-stuff/images (see datasets/README.md)."
)


def convert(task: pu.Task) -> pu.TaskResult:
    return pu.remap_label_png(
        task.source,
        task.outputs[0],
        LUT,
        known_raw_values=KNOWN_RAW_VALUES,
        unknown_note="raw value {value} is not a COCO-Stuff class (written as 255)",
    )


def main(argv=None) -> int:
    parser = pu.build_argument_parser(__doc__, splits=SPLITS)
    args = parser.parse_args(argv)
    dataset_dir = pu.resolve_root(args.root) / "coco-stuff"
    splits = pu.parse_splits(args.splits, SPLITS)

    tasks, outputs = pu.annotation_folder_tasks(
        dataset_dir,
        splits,
        "annotations_detectron2",
        what="COCO-Stuff {split} stuff-thing maps",
        images_what="COCO {split} images",
        hint=HINT,
        official_sizes=OFFICIAL_SIZES,
        allowed_values=ALLOWED_OUTPUT_VALUES,
        # MMSeg/GroupViT converters write *_labelTrainIds.png / *_instanceTrainIds.png next
        # to the raw maps; those are outputs of other tools, not raw maps.
        skip_names_containing="TrainIds",
    )
    return pu.run_and_summarize(
        "prepare_coco_stuff", tasks, convert, outputs, args, desc="COCO-Stuff"
    )


if __name__ == "__main__":
    pu.run_main(main)
