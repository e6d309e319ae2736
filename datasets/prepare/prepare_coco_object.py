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

import importlib.util
import sys
from pathlib import Path

if importlib.util.find_spec("sed_d2") is None:  # not pip-installed yet: use this checkout
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from sed_d2.data import prepare_utils as pu  # noqa: E402

SPLITS = ("train2017", "val2017")
DEFAULT_SPLITS = ("val2017",)  # the benchmark is val only
OFFICIAL_SIZES = {"train2017": 118287, "val2017": 5000}
UNUSED_RAW_VALUES = (11, 25, 28, 29, 44, 65, 67, 68, 70, 82, 90)
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
KNOWN_RAW_VALUES = frozenset(THING_RAW_VALUES) | frozenset(STUFF_RAW_VALUES) | {255}
ALLOWED_OUTPUT_VALUES = frozenset(range(len(THING_RAW_VALUES) + 1))
HINT = (
    "COCO-Object is derived from the COCO-Stuff stuff-thing maps: download "
    "http://calvin.inf.ed.ac.uk/wp-content/uploads/data/cocostuffdataset/"
    "stuffthingmaps_trainval2017.zip into <root>/coco-stuff/annotations (see datasets/README.md)."
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
    parser = pu.build_argument_parser(__doc__, splits=SPLITS, default_splits=DEFAULT_SPLITS)
    args = parser.parse_args(argv)
    dataset_dir = pu.resolve_root(args.root) / "coco-stuff"
    splits = pu.parse_splits(args.splits, SPLITS)

    tasks, outputs = pu.annotation_folder_tasks(
        dataset_dir,
        splits,
        "annotations_detectron2_object",
        what="COCO-Stuff {split} stuff-thing maps",
        images_what="COCO {split} images",
        hint=HINT,
        official_sizes=OFFICIAL_SIZES,
        allowed_values=ALLOWED_OUTPUT_VALUES,
        # *_labelTrainIds.png / *_instanceTrainIds.png: other tools' outputs, not raw maps.
        skip_names_containing="TrainIds",
    )
    return pu.run_and_summarize(
        "prepare_coco_object", tasks, convert, outputs, args, desc="COCO-Object"
    )


if __name__ == "__main__":
    pu.run_main(main)
