#!/usr/bin/env python3
"""PASCAL VOC 2012: official segmentation masks -> three label layouts of the val split.

Input, under $DETECTRON2_DATASETS/VOCdevkit/VOC2012 (VOCtrainval_11-May-2012.tar):
  JPEGImages/*.jpg
  ImageSets/Segmentation/{train,val}.txt
  SegmentationClass/<stem>.png   palette (P) PNG: 0 = background, 1..20 classes, 255 = void
Output (``<split>`` = val by default):
  annotations_detectron2/val/<stem>.png      ``voc_2012_test_sem_seg`` (VOC-20):
                                              0..19, background and void -> 255
  annotations_detectron2_bg/val/<stem>.png   ``voc_2012_test_background_sem_seg`` (VOC-20b,
                                              SED/CAT-Seg): 0..19, background -> 20, void 255
  annotations_detectron2_bg0/val/<stem>.png  ``voc_2012_val_bg21_sem_seg`` (VOC-21,
                                              GroupViT/TCL/SynSeg): 0 = background, 1..20, 255
All uint8 L. The first two are the official SED/CAT-Seg outputs. The official script reads
the same val stems from the DeepLab ``SegmentationClassAug`` masks (an extra Dropbox
download believed identical on val); ``--masks SegmentationClassAug`` does that. Unlike the
official script, a mask that is all void after mapping is still written (none is in VOC val).
"""

import label_remap as lr
from label_remap import pu

SPLITS = ("train", "val")
DEFAULT_SPLITS = ("val",)
OFFICIAL_SIZES = {"train": 1464, "val": 1449}
IGNORE_LABEL = 255
NUM_CLASSES = 20


def _layout(mapping, num_classes):
    """A VOC output layout: ``mapping`` (VOC index -> label; 255 elsewhere) and its classes."""
    return lr.LutRemap(
        pu.make_lut(mapping, size=256, default=IGNORE_LABEL),
        frozenset(range(NUM_CLASSES + 1)) | {255},  # raw: 0 = background, 1..20, 255 = void
        frozenset(range(num_classes)) | {IGNORE_LABEL},
        "raw value {value} is not a VOC index (written as 255)",
    )


CLASSES_FROM_0 = {k: k - 1 for k in range(1, NUM_CLASSES + 1)}  # VOC index k -> k - 1
OUTPUT_LAYOUTS = {  # output folder: its table (the task payload names the folder)
    "annotations_detectron2": _layout(CLASSES_FROM_0, NUM_CLASSES),
    "annotations_detectron2_bg": _layout({0: NUM_CLASSES, **CLASSES_FROM_0}, NUM_CLASSES + 1),
    "annotations_detectron2_bg0": _layout({k: k for k in range(NUM_CLASSES + 1)}, NUM_CLASSES + 1),
}
HINT = (
    "Download http://host.robots.ox.ac.uk/pascal/VOC/voc2012/VOCtrainval_11-May-2012.tar and "
    "unpack it into <root> so that <root>/VOCdevkit/VOC2012 exists (see datasets/README.md)."
)


def convert(task: pu.Task) -> pu.TaskResult:
    return OUTPUT_LAYOUTS[task.payload](task)


def add_options(parser) -> None:
    parser.add_argument(
        "--masks",
        choices=("SegmentationClass", "SegmentationClassAug"),
        default="SegmentationClass",
        help="folder of the source masks (default: the official SegmentationClass)",
    )
    parser.add_argument(
        "--layouts",
        default=",".join(OUTPUT_LAYOUTS),
        help=f"comma-separated output folders among {', '.join(OUTPUT_LAYOUTS)} (default: all)",
    )


def main(argv=None) -> int:
    args, voc_dir, splits = lr.parse_dataset_args(
        __doc__, argv, "VOCdevkit/VOC2012", SPLITS, DEFAULT_SPLITS, add_options
    )
    layouts = pu.parse_splits(args.layouts, tuple(OUTPUT_LAYOUTS), option="--layouts")
    mask_dir = pu.require_dir(voc_dir / args.masks, f"VOC2012 {args.masks} masks", HINT)
    pu.warn_if_missing(voc_dir / "JPEGImages", "VOC2012 JPEGImages")

    tasks, outputs = [], {}
    for split in splits:
        list_path = pu.require_file(
            voc_dir / "ImageSets" / "Segmentation" / f"{split}.txt", f"VOC2012 {split} list", HINT
        )
        stems = pu.read_split_list(list_path)
        pu.check_input_count(str(list_path), len(stems), OFFICIAL_SIZES[split])
        for layout in layouts:
            out_dir = voc_dir / layout / split
            key = f"{layout}/{split}"
            tasks += [
                pu.Task(key, str(mask_dir / f"{s}.png"), (str(out_dir / f"{s}.png"),), layout)
                for s in stems
            ]
            outputs[key] = pu.SplitOutput(
                out_dir, ".png", OFFICIAL_SIZES[split], OUTPUT_LAYOUTS[layout].allowed_values
            )

    return pu.run_and_summarize(
        "prepare_voc", tasks, convert, outputs, args, desc="PASCAL VOC 2012"
    )


if __name__ == "__main__":
    pu.run_main(main)
