#!/usr/bin/env python3
"""Cityscapes, 19 classes: ``*_gtFine_labelIds.png`` -> ``*_gtFine_labelTrainIds.png``.

Registers as ``cityscapes_19_val_sem_seg`` (SynSeg's "City"; GroupViT/TCL protocol).

Input, under $DETECTRON2_DATASETS/cityscapes (after sign-in at cityscapes-dataset.com):
  leftImg8bit/{train,val}/<city>/<city>_<seq>_<frame>_leftImg8bit.png   leftImg8bit_trainvaltest.zip
  gtFine/{train,val}/<city>/<same>_gtFine_labelIds.png                  gtFine_trainvaltest.zip
Output, next to the input (the file cityscapesScripts' createTrainIdLabelImgs.py and MMSeg's
converter write, so detectron2's own ``cityscapes_fine_sem_seg_val`` can use it too):
  gtFine/{train,val}/<city>/<same>_gtFine_labelTrainIds.png   uint8 L: 0..18, 255 = ignore

The official tool draws the polygons of ``*_gtFine_polygons.json``; this script maps the
``labelIds`` PNG through the same id -> trainId table (road 7 -> 0, ..., bicycle 33 -> 18,
everything else 255), which needs no cityscapesScripts. The two are expected to be equal
(see datasets/README.md: worth checking on one city of the real data).
"""

import label_remap as lr
from label_remap import pu

SPLITS = ("train", "val")
DEFAULT_SPLITS = ("val",)
OFFICIAL_SIZES = {"train": 2975, "val": 500}
IGNORE_LABEL = 255
LABEL_ID_SUFFIX = "_gtFine_labelIds.png"
TRAIN_ID_SUFFIX = "_gtFine_labelTrainIds.png"
# cityscapesScripts labels.py: (label id -> train id) of the 19 evaluated classes.
LABEL_ID_TO_TRAIN_ID = {
    7: 0,  # road
    8: 1,  # sidewalk
    11: 2,  # building
    12: 3,  # wall
    13: 4,  # fence
    17: 5,  # pole
    19: 6,  # traffic light
    20: 7,  # traffic sign
    21: 8,  # vegetation
    22: 9,  # terrain
    23: 10,  # sky
    24: 11,  # person
    25: 12,  # rider
    26: 13,  # car
    27: 14,  # truck
    28: 15,  # bus
    31: 16,  # train
    32: 17,  # motorcycle
    33: 18,  # bicycle
}
LUT = pu.make_lut(LABEL_ID_TO_TRAIN_ID, size=256, default=IGNORE_LABEL)
REMAP = lr.LutRemap(
    LUT,
    frozenset(range(34)),  # raw values defined: the label ids 0..33
    frozenset(range(19)) | {IGNORE_LABEL},
    "raw value {value} is not a Cityscapes label id (written as 255)",
    modes=("L",),
)
HINT = (
    "Download gtFine_trainvaltest.zip and leftImg8bit_trainvaltest.zip from "
    "https://www.cityscapes-dataset.com/downloads/ (sign-in needed) and unzip both into "
    "<root>/cityscapes (see datasets/README.md)."
)


def main(argv=None) -> int:
    args, dataset_dir, splits = lr.parse_dataset_args(
        __doc__, argv, "cityscapes", SPLITS, DEFAULT_SPLITS
    )
    tasks, outputs = [], {}
    for split in splits:
        gt_dir = pu.require_dir(dataset_dir / "gtFine" / split, f"Cityscapes gtFine/{split}", HINT)
        pu.warn_if_missing(dataset_dir / "leftImg8bit" / split, f"Cityscapes leftImg8bit/{split}")
        sources = sorted(gt_dir.glob(f"*/*{LABEL_ID_SUFFIX}"))
        pu.check_input_count(f"{gt_dir}/*/*{LABEL_ID_SUFFIX}", len(sources), OFFICIAL_SIZES[split])
        for src in sources:
            out = src.with_name(src.name[: -len(LABEL_ID_SUFFIX)] + TRAIN_ID_SUFFIX)
            tasks.append(pu.Task(split, str(src), (str(out),)))
        outputs[split] = pu.SplitOutput(
            gt_dir, TRAIN_ID_SUFFIX, OFFICIAL_SIZES[split], REMAP.allowed_values, recursive=True
        )
    return pu.run_and_summarize(
        "prepare_cityscapes", tasks, REMAP, outputs, args, desc="Cityscapes"
    )


if __name__ == "__main__":
    pu.run_main(main)
