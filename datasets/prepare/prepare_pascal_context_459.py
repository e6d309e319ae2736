#!/usr/bin/env python3
"""PASCAL-Context 459 ("PC-459"): ``trainval/<stem>.mat`` -> 16-bit TIFF labels.

Registers as ``context_459_test_sem_seg``.

Input, under $DETECTRON2_DATASETS/VOCdevkit/VOC2010:
  JPEGImages/*.jpg        VOCtrainval_03-May-2010.tar
  trainval/<stem>.mat     trainval.tar.gz (cs.stanford.edu/~roozbeh/pascal-context): key
                          ``LabelMap``, uint16 H x W, ids 1..459 of its labels.txt
  pascalcontext_val.txt   optional: the 5,104 val stems; the copy shipped with sed_d2
                          (sed_d2/data/datasets/splits/pascal_context_val.txt) is used when
                          absent, so nothing has to be copied by hand
Output:
  annotations_detectron2/pc459_val/<stem>.tif   uint16 (PIL I;16): 0..458, 65535 = ignore

``LabelMap - 1`` as the official script, whose uint16 subtraction also turns a 0 (unlabeled,
if it ever occurs) into 65535; the registration declares 65535 as the ignore value (the
official one says 459, a value no pixel has). Never treat 255 as ignore here: it is the
class "monkey". A val stem without its .mat file is reported, not skipped silently.
"""

import importlib.util
import sys
from pathlib import Path

import numpy as np

if importlib.util.find_spec("sed_d2") is None:  # not pip-installed yet: use this checkout
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from sed_d2.data import prepare_utils as pu  # noqa: E402

try:
    import scipy.io
except ImportError:  # reported by main()
    scipy = None

SPLIT = "pc459_val"
OFFICIAL_VAL_SIZE = 5104
NUM_CLASSES = 459
IGNORE_LABEL = 65535
ALLOWED_OUTPUT_VALUES = frozenset(range(NUM_CLASSES)) | {IGNORE_LABEL}
SHIPPED_VAL_LIST = pu.SPLITS_DIR / "pascal_context_val.txt"
HINT = (
    "Download https://www.cs.stanford.edu/~roozbeh/pascal-context/trainval.tar.gz and unpack it "
    "into <root>/VOCdevkit/VOC2010/ so that trainval/<stem>.mat exists (see datasets/README.md)."
)


def convert(task: pu.Task) -> pu.TaskResult:
    try:
        mat = scipy.io.loadmat(task.source)
    except FileNotFoundError as e:
        raise pu.CorruptInputError(f"{task.source}: missing") from e
    except Exception as e:
        raise pu.CorruptInputError(f"{task.source}: cannot read ({type(e).__name__}: {e})") from e
    if "LabelMap" not in mat:
        keys = sorted(k for k in mat if not k.startswith("__"))
        raise pu.CorruptInputError(f"{task.source}: no 'LabelMap' key (keys: {keys})")
    label_map = np.asarray(mat["LabelMap"])
    if label_map.ndim != 2 or not np.issubdtype(label_map.dtype, np.number):
        raise pu.CorruptInputError(
            f"{task.source}: LabelMap is {label_map.dtype} {label_map.shape}"
        )
    ids = label_map.astype(np.int64)
    if not np.array_equal(ids, label_map) or ids.min() < 0 or ids.max() > NUM_CLASSES:
        raise pu.CorruptInputError(
            f"{task.source}: LabelMap values outside the integers 0..459 "
            f"(min {label_map.min()}, max {label_map.max()})"
        )
    label = np.where(ids == 0, IGNORE_LABEL, ids - 1).astype(np.uint16)
    pu.save_label_tiff(label, Path(task.outputs[0]))
    notes = (
        ("LabelMap contains 0 (unlabeled), written as 65535 (ignore)",) if (ids == 0).any() else ()
    )
    return pu.TaskResult(values=pu.unique_values(label), notes=notes)


def main(argv=None) -> int:
    parser = pu.build_argument_parser(__doc__)
    parser.add_argument(
        "--val-list",
        type=Path,
        default=None,
        help="val stems, one per line (default: <VOC2010>/pascalcontext_val.txt if present, "
        "else the copy shipped with sed_d2)",
    )
    args = parser.parse_args(argv)
    voc_dir = pu.resolve_root(args.root) / "VOCdevkit" / "VOC2010"
    if scipy is None:
        raise pu.InputMissingError("scipy is needed to read the .mat files: pip install scipy")
    mat_dir = pu.require_dir(voc_dir / "trainval", "PASCAL-Context .mat label maps", HINT)
    pu.warn_if_missing(voc_dir / "JPEGImages", "VOC2010 JPEGImages")
    val_list = args.val_list
    if val_list is None:
        local = voc_dir / "pascalcontext_val.txt"
        val_list = local if local.is_file() else SHIPPED_VAL_LIST
    stems = pu.read_split_list(pu.require_file(val_list, "PASCAL-Context val list", HINT))
    pu.check_input_count(str(val_list), len(stems), OFFICIAL_VAL_SIZE)

    out_dir = voc_dir / "annotations_detectron2" / SPLIT
    tasks = [pu.Task(SPLIT, str(mat_dir / f"{s}.mat"), (str(out_dir / f"{s}.tif"),)) for s in stems]
    outputs = {SPLIT: pu.SplitOutput(out_dir, ".tif", OFFICIAL_VAL_SIZE, ALLOWED_OUTPUT_VALUES)}
    return pu.run_and_summarize(
        "prepare_pascal_context_459", tasks, convert, outputs, args, desc="PASCAL-Context 459"
    )


if __name__ == "__main__":
    pu.run_main(main)
