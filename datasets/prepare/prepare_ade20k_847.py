#!/usr/bin/env python3
"""ADE20K-847 (ADE20K_2021_17_01, the full ADE20K release): images + ``_seg.png`` -> 847 classes.

Registers as ``ade20k_full_sem_seg_freq_val_all`` (validation, 2,000 images). The official
script is called ``prepare_ade20k_full.py`` (its README says ``prepare_ade20k_847.py``).

Input, under $DETECTRON2_DATASETS/ADE20K_2021_17_01 (ADE20K_2021_17_01.zip, after sign-in):
  index_ade20k.pkl                                   the dataset index (keys filename, folder)
  images/ADE/{training,validation}/<scene...>/ADE_val_00000001.jpg
  images/ADE/.../ADE_val_00000001_seg.png           RGB: class = (R // 10) * 256 + G
Output (flat folders, as the official script):
  images_detectron2/validation/ADE_val_00000001.jpg
  annotations_detectron2/validation/ADE_val_00000001.tif   uint16 (PIL I;16), 0..846, 65535

Exactly the official conversion:
* class ids (index in ``objectnames`` + 1; 0 = unlabeled) found in the 847-class table map to
  their position in it (frequency order; ``class_names/ade20k_847_ade_ids.json``); anything
  else, 0 included, becomes 65535 (the registered ignore value);
* when the short side exceeds 512 the image is resized so the short side is 512 and the long
  side ``round(long / short * 512)``, bilinear (OpenCV) for the image, nearest for the labels;
* the image is always re-encoded with PIL's default JPEG settings (quality 75), even when not
  resized. The pixels differ from the download, but scores are comparable with the papers'
  only with these exact inputs.
Only validation is converted by default; entries are assigned to a split by their index
folder (``.../validation/...``), not by the official file-name heuristic.
"""

import importlib.util
import pickle
import sys
from pathlib import Path

import numpy as np

if importlib.util.find_spec("sed_d2") is None:  # not pip-installed yet: use this checkout
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from sed_d2.data import prepare_utils as pu  # noqa: E402

try:
    import cv2
except ImportError:  # reported by main(); the resize must be OpenCV's for parity
    cv2 = None

SPLITS = ("training", "validation")
DEFAULT_SPLITS = ("validation",)
OFFICIAL_SIZES = {"training": 25574, "validation": 2000}
DATASET_DIRNAME = "ADE20K_2021_17_01"
MAX_SHORT_SIDE = 512
IGNORE_LABEL = 65535
ADE_IDS = pu.read_class_names("ade20k_847_ade_ids.json")  # ADE class id of each trainId
# (R // 10) * 256 + G is at most 25 * 256 + 255; one table entry per possible value.
LUT = pu.make_lut(
    {ade_id: train_id for train_id, ade_id in enumerate(ADE_IDS)},
    size=26 * 256,
    default=IGNORE_LABEL,
    dtype=np.uint16,
)
ALLOWED_OUTPUT_VALUES = frozenset(range(len(ADE_IDS))) | {IGNORE_LABEL}
HINT = (
    "Request ADE20K_2021_17_01.zip at https://groups.csail.mit.edu/vision/datasets/ADE20K/"
    "request_data/ and unzip it into <root>; it contains index_ade20k.pkl (see datasets/README.md)."
)


def official_resized_shape(height: int, width: int):
    """(h, w) after the official rule, or None when the image keeps its size."""
    if width >= height > MAX_SHORT_SIDE:
        return MAX_SHORT_SIDE, round(width / float(height) * MAX_SHORT_SIDE)
    if height >= width > MAX_SHORT_SIDE:
        return round(height / float(width) * MAX_SHORT_SIDE), MAX_SHORT_SIDE
    return None


def decode_class_mask(seg_rgb: np.ndarray) -> np.ndarray:
    """ADE ``_seg.png`` encoding: class = (R // 10) * 256 + G (B holds instance ids)."""
    red = seg_rgb[..., 0].astype(np.int32)
    green = seg_rgb[..., 1].astype(np.int32)
    return (red // 10) * 256 + green


def convert(task: pu.Task) -> pu.TaskResult:
    image_path = Path(task.source)
    seg_path = image_path.with_name(image_path.name.replace(".jpg", "_seg.png"))
    image = pu.read_image_array(image_path, ("RGB", "L"))
    seg = pu.read_image_array(seg_path, ("RGB", "RGBA"))
    if seg.shape[:2] != image.shape[:2]:
        raise pu.CorruptInputError(
            f"{seg_path}: size {seg.shape[1]}x{seg.shape[0]} differs from the image "
            f"{image.shape[1]}x{image.shape[0]}"
        )
    class_mask = decode_class_mask(seg)
    notes = ()
    shape = official_resized_shape(*image.shape[:2])
    if shape is not None:
        height, width = shape
        image = cv2.resize(image, (width, height), interpolation=cv2.INTER_LINEAR)
        class_mask = cv2.resize(class_mask, (width, height), interpolation=cv2.INTER_NEAREST)
        notes = (f"resized to short side {MAX_SHORT_SIDE}",)
    label = LUT[class_mask]
    image_out, label_out = task.outputs
    pu.save_jpeg(image, Path(image_out))
    pu.save_label_tiff(label, Path(label_out))
    return pu.TaskResult(values=pu.unique_values(label), notes=notes)


def entry_split(folder: str, filename: str) -> str:
    parts = Path(folder).parts
    if "validation" in parts:
        return "validation"
    if "training" in parts:
        return "training"
    # The official script's test (ADE_val_00000001.jpg -> "val").
    return "validation" if filename.split("_")[1:2] == ["val"] else "training"


def load_index(index_path: Path):
    print(f"loading {index_path} (about 780 MB for the full release)...", file=sys.stderr)
    try:
        with open(index_path, "rb") as f:
            index = pickle.load(f)
        filenames, folders = index["filename"], index["folder"]
    except (OSError, pickle.UnpicklingError, EOFError, KeyError, TypeError) as e:
        raise pu.InputMissingError(
            f"ADE20K index {index_path} is unreadable or lacks the 'filename'/'folder' keys "
            f"({type(e).__name__}: {e}); re-download it.\n{HINT}"
        ) from e
    if len(filenames) != len(folders):
        raise pu.InputMissingError(
            f"ADE20K index {index_path}: {len(filenames)} file names but {len(folders)} folders"
        )
    return [(str(folder), str(name)) for folder, name in zip(folders, filenames)]


def main(argv=None) -> int:
    parser = pu.build_argument_parser(__doc__, splits=SPLITS, default_splits=DEFAULT_SPLITS)
    parser.add_argument(
        "--index",
        type=Path,
        default=None,
        help=f"index pickle (default: <root>/{DATASET_DIRNAME}/index_ade20k.pkl)",
    )
    args = parser.parse_args(argv)
    root = pu.resolve_root(args.root)
    dataset_dir = root / DATASET_DIRNAME
    splits = pu.parse_splits(args.splits, SPLITS)
    if cv2 is None:
        raise pu.InputMissingError(
            "OpenCV is needed (the official resize is cv2.resize): "
            "pip install opencv-python-headless"
        )
    pu.require_dir(dataset_dir, "ADE20K full release", HINT)
    index_path = pu.require_file(
        args.index or dataset_dir / "index_ade20k.pkl", "ADE20K index", HINT
    )

    tasks, outputs = [], {}
    per_split = {split: 0 for split in splits}
    for folder, filename in load_index(index_path):
        split = entry_split(folder, filename)
        if split not in per_split:
            continue
        per_split[split] += 1
        # Index folders start with "ADE20K_2021_17_01/", so they are relative to the root.
        base = root if Path(folder).parts[:1] == (DATASET_DIRNAME,) else dataset_dir
        stem = filename[: -len(".jpg")] if filename.endswith(".jpg") else Path(filename).stem
        tasks.append(
            pu.Task(
                split,
                str(base / folder / filename),
                (
                    str(dataset_dir / "images_detectron2" / split / filename),
                    str(dataset_dir / "annotations_detectron2" / split / f"{stem}.tif"),
                ),
            )
        )
    for split in splits:
        pu.check_input_count(
            f"{index_path} ({split} entries)", per_split[split], OFFICIAL_SIZES[split]
        )
        outputs[split] = pu.SplitOutput(
            dataset_dir / "annotations_detectron2" / split,
            ".tif",
            OFFICIAL_SIZES[split],
            ALLOWED_OUTPUT_VALUES,
        )

    return pu.run_and_summarize(
        "prepare_ade20k_847", tasks, convert, outputs, args, desc="ADE20K-847"
    )


if __name__ == "__main__":
    pu.run_main(main)
