#!/usr/bin/env python3
"""PASCAL-Context 59 and 60 (with background) from ``trainval_merged.json``.

Registers as ``context_59_test_sem_seg`` (SED/CAT-Seg "PC-59"; SynSeg's "Context") and
``context_60_val_bg_sem_seg`` (GroupViT/TCL "Context" with background).

Input, under $DETECTRON2_DATASETS/VOCdevkit/VOC2010:
  JPEGImages/*.jpg          VOCtrainval_03-May-2010.tar
  trainval_merged.json      PASCAL in Detail annotations (codalabuser.blob.core.windows.net)
Output (val phase, 5,104 images):
  annotations_detectron2/pc59_val/<stem>.png   uint8 L: 0..58, 255 = background/other (ignored)
  annotations_detectron2/pc60_val/<stem>.png   uint8 L: 0 = background, 1..59

Each val image starts from zeros and every annotation's RLE mask is painted with its
``category_id`` (459-class numbering) in JSON order, like Detail ``getMask`` and the official
script. The 60 raw values {0 (background), 2, 9, ...} sorted give the classes: PC-59 maps the
k-th non-zero value to k - 1 and everything else to 255 (official SED/CAT-Seg output, equal
to MMSeg's Context-59 after ``reduce_zero_label``); PC-60 maps it to k, with 0 and every id
outside the 59 classes as background 0 (MMSeg ``SegmentationClassContext``; its converter
asserts that no other id occurs, here such ids are counted in the summary). Unlike the
official script, an image without annotations is written (all background) instead of
raising, and masks are decoded one image at a time.
"""

import importlib.util
import json
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

if importlib.util.find_spec("sed_d2") is None:  # not pip-installed yet: use this checkout
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from sed_d2.data import prepare_utils as pu  # noqa: E402

try:
    from pycocotools import mask as mask_utils
except ImportError:  # reported by main()
    mask_utils = None

OFFICIAL_VAL_SIZE = 5104
# The 459-class ids of the 59 PASCAL-Context classes, plus 0 = background, ascending.
CONTEXT_60_RAW_IDS = (
    0,
    2,
    9,
    18,
    19,
    22,
    23,
    25,
    31,
    33,
    34,
    44,
    45,
    46,
    59,
    65,
    68,
    72,
    80,
    85,
    98,
    104,
    105,
    113,
    115,
    144,
    158,
    159,
    162,
    187,
    189,
    207,
    220,
    232,
    258,
    259,
    260,
    284,
    295,
    296,
    308,
    324,
    326,
    347,
    349,
    354,
    355,
    360,
    366,
    368,
    397,
    415,
    416,
    420,
    424,
    427,
    440,
    445,
    454,
    458,
)
MAX_RAW_ID = 459
IGNORE_LABEL = 255
BACKGROUND = 0
CONTEXT_60_RAW_ID_SET = frozenset(CONTEXT_60_RAW_IDS)
LUT_59 = pu.make_lut(
    {raw: k - 1 for k, raw in enumerate(CONTEXT_60_RAW_IDS) if raw != 0},
    size=MAX_RAW_ID + 1,
    default=IGNORE_LABEL,
)
LUT_60 = pu.make_lut(
    {raw: k for k, raw in enumerate(CONTEXT_60_RAW_IDS)}, size=MAX_RAW_ID + 1, default=BACKGROUND
)
VARIANTS = {
    # output folder: (lookup table, values the registration accepts)
    "pc59_val": (LUT_59, frozenset(range(59)) | {IGNORE_LABEL}),
    "pc60_val": (LUT_60, frozenset(range(60))),
}
HINT = (
    "Download https://codalabuser.blob.core.windows.net/public/trainval_merged.json into "
    "<root>/VOCdevkit/VOC2010/ and the VOC2010 images from http://host.robots.ox.ac.uk/pascal/"
    "VOC/voc2010/VOCtrainval_03-May-2010.tar (see datasets/README.md)."
)


def decode_segmentation(segmentation, height: int, width: int) -> np.ndarray:
    """Binary H x W mask of one annotation (compressed RLE as stored; polygons tolerated)."""
    if isinstance(segmentation, list):  # polygons
        rle = mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width))
    elif isinstance(segmentation.get("counts"), list):  # uncompressed RLE
        rle = mask_utils.frPyObjects(segmentation, height, width)
    else:
        rle = segmentation
    return mask_utils.decode(rle)


def paint_category_mask(height: int, width: int, annotations, source: str) -> np.ndarray:
    """The 459-id category map of one image: zeros painted in annotation order."""
    mask = np.zeros((height, width), dtype=np.uint16)
    for category_id, segmentation in annotations:
        if not 0 < category_id <= MAX_RAW_ID:
            raise pu.CorruptInputError(f"{source}: category_id {category_id} outside 1..459")
        try:
            binary = decode_segmentation(segmentation, height, width)
        except Exception as e:
            raise pu.CorruptInputError(f"{source}: undecodable segmentation ({e})") from e
        if binary.shape != (height, width):
            raise pu.CorruptInputError(
                f"{source}: segmentation of size {binary.shape} for a {height}x{width} image"
            )
        mask[binary != 0] = category_id
    return mask


def convert(task: pu.Task) -> pu.TaskResult:
    variant, height, width, annotations = task.payload
    category_mask = paint_category_mask(height, width, annotations, task.source)
    lut, _ = VARIANTS[variant]
    label = lut[category_mask]
    pu.save_label_png(label, Path(task.outputs[0]))
    notes = []
    if not annotations:
        notes.append("image without any annotation (written as all background)")
    outside = [int(v) for v in np.unique(category_mask) if v not in CONTEXT_60_RAW_ID_SET]
    for raw in outside:
        notes.append(f"category id {raw} is not one of the 59 classes (PC-59: 255, PC-60: 0)")
    return pu.TaskResult(values=pu.unique_values(label), notes=tuple(notes))


def load_val_annotations(json_path: Path):
    """``{stem: (height, width, [(category_id, segmentation), ...])}`` of the val phase."""
    print(f"loading {json_path}...", file=sys.stderr)
    try:
        with open(json_path, encoding="utf-8") as f:
            data = json.load(f)
        images = {im["image_id"]: im for im in data["images"] if im.get("phase") == "val"}
        per_image = defaultdict(list)
        for ann in data["annos_segmentation"]:
            if ann["image_id"] in images:
                per_image[ann["image_id"]].append((int(ann["category_id"]), ann["segmentation"]))
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise pu.InputMissingError(
            f"{json_path} is unreadable or not the PASCAL in Detail format "
            f"(needs images[].image_id/file_name/height/width/phase and "
            f"annos_segmentation[].image_id/category_id/segmentation): {type(e).__name__}: {e}"
        ) from e
    result = {}
    for image_id, im in images.items():
        stem = Path(im["file_name"]).stem
        result[stem] = (int(im["height"]), int(im["width"]), per_image.get(image_id, []))
    return result


def main(argv=None) -> int:
    parser = pu.build_argument_parser(__doc__, splits=tuple(VARIANTS))
    args = parser.parse_args(argv)
    voc_dir = pu.resolve_root(args.root) / "VOCdevkit" / "VOC2010"
    variants = pu.parse_splits(args.splits, tuple(VARIANTS))
    if mask_utils is None:
        raise pu.InputMissingError(
            "pycocotools is needed to decode the RLE masks: pip install pycocotools"
        )
    json_path = pu.require_file(
        voc_dir / "trainval_merged.json", "PASCAL in Detail annotations", HINT
    )
    pu.warn_if_missing(voc_dir / "JPEGImages", "VOC2010 JPEGImages")

    val = load_val_annotations(json_path)
    pu.check_input_count(f"{json_path} (val images)", len(val), OFFICIAL_VAL_SIZE)
    tasks, outputs = [], {}
    for variant in variants:
        out_dir = voc_dir / "annotations_detectron2" / variant
        for stem, (height, width, annotations) in sorted(val.items()):
            tasks.append(
                pu.Task(
                    variant,
                    f"{json_path} [{stem}]",
                    (str(out_dir / f"{stem}.png"),),
                    (variant, height, width, annotations),
                )
            )
        outputs[variant] = pu.SplitOutput(out_dir, ".png", OFFICIAL_VAL_SIZE, VARIANTS[variant][1])

    return pu.run_and_summarize(
        "prepare_pascal_context_59", tasks, convert, outputs, args, desc="PASCAL-Context 59/60"
    )


if __name__ == "__main__":
    pu.run_main(main)
