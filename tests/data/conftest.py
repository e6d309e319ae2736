"""Tiny raw copies of every dataset, in the exact formats of the official downloads.

Each ``write_<dataset>_raw(root)`` writes a few-pixel version of the download under ``root``
(the ``$DETECTRON2_DATASETS`` folder) and returns the hand-computed outputs the prepare
script must produce: ``{path relative to root: expected label array}``. The arrays are
written out literally, value by value (COCO's as one hand-written raw value -> label table
for the fixture maps), from the conversion rules in ``datasets/README.md`` -- never computed
with the code under test.

The prepare scripts are loaded from ``datasets/prepare/`` by path (``load_prepare_script``).
"""

import importlib.util
import io
import json
import pickle
import sys
import tarfile
from pathlib import Path
from typing import Dict

import numpy as np
import pytest
from PIL import Image

REPO_ROOT = Path(__file__).resolve().parents[2]
PREPARE_DIR = REPO_ROOT / "datasets" / "prepare"


def load_prepare_script(name: str):
    """Import ``datasets/prepare/<name>.py`` as a module (cached in ``sys.modules``).

    Registered under a unique module name so that forked pool workers find its converter.
    Its folder goes on ``sys.path``, as when the script is run, for its sibling imports
    (``label_remap``).
    """
    module_name = f"_sed_d2_test_{name}"
    if module_name in sys.modules:
        return sys.modules[module_name]
    if str(PREPARE_DIR) not in sys.path:
        sys.path.append(str(PREPARE_DIR))
    spec = importlib.util.spec_from_file_location(module_name, PREPARE_DIR / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    spec.loader.exec_module(module)
    return module


def run_prepare(name: str, root: Path, *extra: str, workers: int = 1) -> int:
    return load_prepare_script(name).main(["--root", str(root), "--workers", str(workers), *extra])


# ----------------------------------------------------------------------------- file writers


def write_jpeg(path: Path, height: int, width: int, seed: int = 0) -> np.ndarray:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, format="JPEG", quality=95)
    return pixels


def write_png_l(path: Path, array) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(array, dtype=np.uint8)).save(path, format="PNG")


def voc_palette() -> list:
    """The standard PASCAL VOC colour map (bit-interleaved), 256 RGB entries."""
    palette = []
    for index in range(256):
        r = g = b = 0
        c = index
        for shift in range(7, -1, -1):
            r |= ((c >> 0) & 1) << shift
            g |= ((c >> 1) & 1) << shift
            b |= ((c >> 2) & 1) << shift
            c >>= 3
        palette += [r, g, b]
    return palette


def write_png_p(path: Path, array) -> None:
    """A palette PNG like VOC's SegmentationClass: indices + the VOC colour map."""
    path.parent.mkdir(parents=True, exist_ok=True)
    indices = np.ascontiguousarray(array, dtype=np.uint8)
    image = Image.frombytes("P", (indices.shape[1], indices.shape[0]), indices.tobytes())
    image.putpalette(voc_palette())
    image.save(path, format="PNG")


def read_label(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image).copy()


def read_mode(path: Path) -> str:
    with Image.open(path) as image:
        return image.mode


def assert_label_pngs(root: Path, expected: Dict[str, np.ndarray]) -> None:
    """Every ``{path relative to root: array}`` of ``expected`` is an ``L`` PNG holding it."""
    for relative, array in expected.items():
        path = root / relative
        assert path.is_file(), relative
        assert read_mode(path) == "L", relative
        np.testing.assert_array_equal(read_label(path), array, err_msg=relative)


def assert_prepares(name: str, root: Path, expected: Dict[str, np.ndarray], *extra: str, **kw):
    """``run_prepare(name, root, *extra, **kw)`` succeeds and writes ``expected`` (as above)."""
    assert run_prepare(name, root, *extra, **kw) == 0
    assert_label_pngs(root, expected)


# ----------------------------------------------------------------------------- COCO-Stuff


COCO_VAL_139 = [
    [0, 0, 12, 12, 91, 91],
    [0, 0, 12, 12, 91, 91],
    [181, 181, 255, 255, 89, 89],
    [181, 181, 255, 255, 89, 89],
]
COCO_VAL_285 = [
    [11, 24, 26],
    [90, 200, 255],
]
COCO_TRAIN_9 = [[0, 181]]
COCO_RAW_MAPS = [  # (split, stem, raw stuff-thing map)
    ("val2017", "000000000139", COCO_VAL_139),
    ("val2017", "000000000285", COCO_VAL_285),
    ("train2017", "000000000009", COCO_TRAIN_9),
]
# Each raw value of the maps above -> (COCO-Stuff-171 label, COCO-Object label), by hand.
# COCO-Stuff: rank among the 171 class values (the 11 maskless thing values are holes);
# holes, 200 and 255 -> 255. COCO-Object: thing -> rank among the 80 things + 1; stuff
# (91..181) and 255 -> 0 = background; holes and 200 -> 255.
COCO_EXPECTED_BY_RAW = {
    0: (0, 1),
    11: (255, 255),  # hole
    12: (11, 12),  # after the hole 11
    24: (23, 24),
    26: (24, 25),  # after the hole 25
    89: (79, 80),  # the last thing
    90: (255, 255),  # hole
    91: (80, 0),  # the first stuff value
    181: (170, 0),  # the last stuff value
    200: (255, 255),  # not a COCO-Stuff value
    255: (255, 0),  # unlabeled
}


def write_coco_stuff_raw(root: Path) -> None:
    base = root / "coco-stuff"
    for split, stem, label in COCO_RAW_MAPS:
        h, w = np.asarray(label).shape
        write_png_l(base / "annotations" / split / f"{stem}.png", label)
        write_jpeg(base / "images" / split / f"{stem}.jpg", h, w)


def _expected_coco(output_dirname: str, column: int, splits) -> Dict[str, np.ndarray]:
    return {
        f"coco-stuff/{output_dirname}/{split}/{stem}.png": np.array(
            [[COCO_EXPECTED_BY_RAW[v][column] for v in row] for row in label]
        )
        for split, stem, label in COCO_RAW_MAPS
        if split in splits
    }


def expected_coco_stuff() -> Dict[str, np.ndarray]:
    return _expected_coco("annotations_detectron2", 0, ("train2017", "val2017"))


def expected_coco_object() -> Dict[str, np.ndarray]:
    return _expected_coco("annotations_detectron2_object", 1, ("val2017",))


# ----------------------------------------------------------------------------- ADE20K-150


ADE150_VAL_1 = [[0, 1, 150], [37, 0, 2]]
ADE150_VAL_2 = [[150, 149], [1, 1]]


def write_ade20k_150_raw(root: Path) -> None:
    base = root / "ADEChallengeData2016"
    for stem, label in [("ADE_val_00000001", ADE150_VAL_1), ("ADE_val_00000002", ADE150_VAL_2)]:
        h, w = np.asarray(label).shape
        write_png_l(base / "annotations" / "validation" / f"{stem}.png", label)
        write_jpeg(base / "images" / "validation" / f"{stem}.jpg", h, w)
    write_png_l(base / "annotations" / "training" / "ADE_train_00000001.png", [[3]])
    write_jpeg(base / "images" / "training" / "ADE_train_00000001.jpg", 1, 1)


def expected_ade20k_150() -> Dict[str, np.ndarray]:
    d = "ADEChallengeData2016/annotations_detectron2/validation"
    return {
        f"{d}/ADE_val_00000001.png": np.array([[255, 0, 149], [36, 255, 1]]),
        f"{d}/ADE_val_00000002.png": np.array([[149, 148], [0, 0]]),
    }


# ----------------------------------------------------------------------------- ADE20K-847


def ade_seg_pixel(class_id: int, red_extra: int = 0, instance: int = 0):
    """The ``_seg.png`` RGB of a class: R = 10 * (c // 256) (+ 0..9), G = c % 256."""
    return [10 * (class_id // 256) + red_extra, class_id % 256, instance]


# 3 x 4 class ids of the small validation image: wall 2978 -> 0, building 312 -> 1,
# car 401 -> 14, adding machine 3148 -> 846; 0 (unlabeled) and 5 (not in the 847 table)
# -> 65535. Some wall pixels have R = 113 instead of 110: R // 10 is still 11.
ADE847_SMALL_IDS = [[2978, 2978, 312, 0], [5, 401, 3148, 2978], [312, 312, 0, 401]]
ADE847_SMALL_RED_EXTRA = [[0, 3, 0, 0], [0, 0, 0, 9], [0, 0, 0, 0]]
ADE847_SMALL_EXPECTED = [[0, 0, 1, 65535], [65535, 14, 846, 0], [1, 1, 65535, 14]]
ADE847_LARGE_SHAPE = (520, 700)  # short side > 512: resized to 512 x round(700/520*512) = 689


def write_ade20k_847_raw(root: Path) -> Dict[str, object]:
    base = root / "ADE20K_2021_17_01"
    folders = [
        "ADE20K_2021_17_01/images/ADE/validation/cultural/apse__indoor",
        "ADE20K_2021_17_01/images/ADE/validation/home_or_hotel/kitchen",
        "ADE20K_2021_17_01/images/ADE/training/home_or_hotel/kitchen",
    ]
    filenames = ["ADE_val_00000001.jpg", "ADE_val_00000002.jpg", "ADE_train_00000001.jpg"]
    ids = np.array(ADE847_SMALL_IDS)
    seg = np.zeros(ids.shape + (3,), dtype=np.uint8)
    for (y, x), c in np.ndenumerate(ids):
        seg[y, x] = ade_seg_pixel(int(c), ADE847_SMALL_RED_EXTRA[y][x], instance=(y * 4 + x) % 7)
    write_jpeg(root / folders[0] / filenames[0], 3, 4, seed=1)
    Image.fromarray(seg).save(root / folders[0] / "ADE_val_00000001_seg.png")

    h, w = ADE847_LARGE_SHAPE
    large_seg = np.zeros((h, w, 3), dtype=np.uint8)
    large_seg[:, : w // 2] = ade_seg_pixel(2978)  # left half wall -> 0
    large_seg[:, w // 2 :] = ade_seg_pixel(312)  # right half building -> 1
    write_jpeg(root / folders[1] / filenames[1], h, w, seed=2)
    Image.fromarray(large_seg).save(root / folders[1] / "ADE_val_00000002_seg.png")

    write_jpeg(root / folders[2] / filenames[2], 2, 2, seed=3)
    Image.fromarray(np.zeros((2, 2, 3), np.uint8)).save(
        root / folders[2] / "ADE_train_00000001_seg.png"
    )
    index = {
        "filename": filenames,
        "folder": np.array(folders, dtype=object),
        "objectnames": np.array(["-"] * 3688, dtype=object),
        "scene": ["apse", "kitchen", "kitchen"],
    }
    with open(base / "index_ade20k.pkl", "wb") as f:
        pickle.dump(index, f)
    with Image.open(root / folders[0] / filenames[0]) as image:
        small_decoded = np.asarray(image).copy()
    return {
        "small_image_path": root / folders[0] / filenames[0],
        "small_decoded": small_decoded,
        "large_image_path": root / folders[1] / filenames[1],
    }


# ----------------------------------------------------------------------------- PASCAL-Context


def rle(binary) -> dict:
    from pycocotools import mask as mask_utils

    encoded = mask_utils.encode(np.asfortranarray(np.asarray(binary, dtype=np.uint8)))
    encoded["counts"] = encoded["counts"].decode("ascii")  # as stored in the JSON
    return encoded


def _box(height, width, rows, cols):
    binary = np.zeros((height, width), dtype=np.uint8)
    binary[rows, cols] = 1
    return binary


def write_pascal_context_59_raw(root: Path) -> None:
    voc = root / "VOCdevkit" / "VOC2010"
    voc.mkdir(parents=True, exist_ok=True)
    h, w = 4, 5
    annotations = [
        # (category_id in the 459 numbering, mask), painted in this order
        (2, _box(h, w, slice(0, 2), slice(0, 2))),  # aeroplane
        (397, _box(h, w, slice(2, 4), slice(0, 3))),  # table -> "diningtable"
        (458, _box(h, w, slice(0, 1), slice(3, 5))),  # wood
        (1, _box(h, w, slice(3, 4), slice(4, 5))),  # accordion: not one of the 59
        (9, _box(h, w, slice(2, 3), slice(0, 1))),  # bag, painted over the table pixel
    ]
    data = {
        "info": {"description": "tiny PASCAL in Detail"},
        "images": [
            {
                "image_id": 2008000002,
                "file_name": "2008_000002.jpg",
                "height": h,
                "width": w,
                "phase": "val",
            },
            {
                "image_id": 2008000003,
                "file_name": "2008_000003.jpg",
                "height": 2,
                "width": 3,
                "phase": "val",
            },
            {
                "image_id": 2008000008,
                "file_name": "2008_000008.jpg",
                "height": 2,
                "width": 2,
                "phase": "train",
            },
        ],
        "annos_segmentation": [
            {
                "id": i + 1,
                "image_id": 2008000002,
                "category_id": c,
                "segmentation": rle(m),
                "iscrowd": 0,
                "area": int(m.sum()),
                "bbox": [0, 0, 1, 1],
                "parts": [],
            }
            for i, (c, m) in enumerate(annotations)
        ]
        + [
            {
                "id": 99,
                "image_id": 2008000008,
                "category_id": 2,
                "segmentation": rle(np.ones((2, 2))),
                "iscrowd": 0,
                "area": 4,
                "bbox": [0, 0, 2, 2],
                "parts": [],
            }
        ],
        "categories": [{"category_id": 2, "name": "aeroplane"}],
    }
    with open(voc / "trainval_merged.json", "w") as f:
        json.dump(data, f)
    for stem, (hh, ww) in [
        ("2008_000002", (h, w)),
        ("2008_000003", (2, 3)),
        ("2008_000008", (2, 2)),
        ("2008_000100", (2, 2)),
    ]:
        write_jpeg(voc / "JPEGImages" / f"{stem}.jpg", hh, ww)


def expected_pascal_context() -> Dict[str, np.ndarray]:
    # sorted 60 raw ids: 0 bg, 2 (k=1), 9 (k=2), ..., 397 (k=50), ..., 458 (k=59).
    # PC-59: k -> k - 1, bg and others -> 255. PC-60: k -> k, bg and others -> 0.
    d = "VOCdevkit/VOC2010/annotations_detectron2"
    return {
        f"{d}/pc59_val/2008_000002.png": np.array(
            [
                [0, 0, 255, 58, 58],
                [0, 0, 255, 255, 255],
                [1, 49, 49, 255, 255],
                [49, 49, 49, 255, 255],
            ]
        ),
        f"{d}/pc59_val/2008_000003.png": np.full((2, 3), 255),
        f"{d}/pc60_val/2008_000002.png": np.array(
            [
                [1, 1, 0, 59, 59],
                [1, 1, 0, 0, 0],
                [2, 50, 50, 0, 0],
                [50, 50, 50, 0, 0],
            ]
        ),
        f"{d}/pc60_val/2008_000003.png": np.zeros((2, 3)),
    }


def write_pascal_context_459_raw(root: Path, with_missing: bool = True) -> None:
    import scipy.io

    voc = root / "VOCdevkit" / "VOC2010"
    (voc / "trainval").mkdir(parents=True, exist_ok=True)
    scipy.io.savemat(
        voc / "trainval" / "2008_000002.mat",
        {"LabelMap": np.array([[1, 2, 3], [256, 459, 2]], dtype=np.uint16)},
    )
    scipy.io.savemat(
        voc / "trainval" / "2008_000003.mat", {"LabelMap": np.array([[0, 5]], dtype=np.uint16)}
    )
    scipy.io.savemat(
        voc / "trainval" / "2008_000008.mat",  # train: not in the val list
        {"LabelMap": np.array([[7]], dtype=np.uint16)},
    )
    stems = ["2008_000002", "2008_000003"] + (["2008_000007"] if with_missing else [])
    (voc / "pascalcontext_val.txt").write_text("\n".join(stems))  # no trailing newline, as upstream
    (voc / "labels.txt").write_text("1: accordion\n2: aeroplane\n")
    for stem, (h, w) in [("2008_000002", (2, 3)), ("2008_000003", (1, 2)), ("2008_000007", (1, 1))]:
        write_jpeg(voc / "JPEGImages" / f"{stem}.jpg", h, w)


def expected_pascal_context_459() -> Dict[str, np.ndarray]:
    # LabelMap - 1 (1 -> 0, 256 -> 255 = "monkey", 459 -> 458); 0 -> 65535.
    d = "VOCdevkit/VOC2010/annotations_detectron2/pc459_val"
    return {
        f"{d}/2008_000002.tif": np.array([[0, 1, 2], [255, 458, 1]]),
        f"{d}/2008_000003.tif": np.array([[65535, 4]]),
    }


# ----------------------------------------------------------------------------- VOC 2012


VOC_33 = [[0, 1, 15], [20, 255, 0]]
VOC_42 = [[0, 5], [5, 0]]


def write_voc_raw(root: Path, aug: bool = False) -> None:
    voc = root / "VOCdevkit" / "VOC2012"
    for stem, label in [("2007_000033", VOC_33), ("2007_000042", VOC_42), ("2007_000061", [[3]])]:
        write_png_p(voc / "SegmentationClass" / f"{stem}.png", label)
        if aug:
            write_png_l(voc / "SegmentationClassAug" / f"{stem}.png", label)
        h, w = np.asarray(label).shape
        write_jpeg(voc / "JPEGImages" / f"{stem}.jpg", h, w)
    write_jpeg(voc / "JPEGImages" / "2007_000001.jpg", 2, 2)  # in no segmentation split
    sets = voc / "ImageSets" / "Segmentation"
    sets.mkdir(parents=True, exist_ok=True)
    (sets / "val.txt").write_text("2007_000033\n2007_000042\n")
    (sets / "train.txt").write_text("2007_000061\n")


def expected_voc() -> Dict[str, np.ndarray]:
    d = "VOCdevkit/VOC2012"
    return {
        # VOC-20: bg -> 255, k -> k - 1
        f"{d}/annotations_detectron2/val/2007_000033.png": np.array([[255, 0, 14], [19, 255, 255]]),
        f"{d}/annotations_detectron2/val/2007_000042.png": np.array([[255, 4], [4, 255]]),
        # VOC-20b: bg -> 20
        f"{d}/annotations_detectron2_bg/val/2007_000033.png": np.array(
            [[20, 0, 14], [19, 255, 20]]
        ),
        f"{d}/annotations_detectron2_bg/val/2007_000042.png": np.array([[20, 4], [4, 20]]),
        # VOC-21 (TCL): unchanged indices
        f"{d}/annotations_detectron2_bg0/val/2007_000033.png": np.array([[0, 1, 15], [20, 255, 0]]),
        f"{d}/annotations_detectron2_bg0/val/2007_000042.png": np.array([[0, 5], [5, 0]]),
    }


# ----------------------------------------------------------------------------- Cityscapes


CITYSCAPES_FRANKFURT = [[7, 8, 26], [33, 0, 1], [24, 23, 4]]
CITYSCAPES_LINDAU = [[11, 12, 13, 17], [19, 20, 21, 22], [25, 27, 28, 31], [32, 6, 9, 10]]


def write_cityscapes_raw(root: Path) -> None:
    base = root / "cityscapes"
    for city, prefix, label in [
        ("frankfurt", "frankfurt_000000_000294", CITYSCAPES_FRANKFURT),
        ("lindau", "lindau_000000_000019", CITYSCAPES_LINDAU),
    ]:
        h, w = np.asarray(label).shape
        gt = base / "gtFine" / "val" / city
        write_png_l(gt / f"{prefix}_gtFine_labelIds.png", label)
        write_png_l(gt / f"{prefix}_gtFine_color.png", np.zeros((h, w)))
        # instanceIds are 16-bit PNGs (id * 1000 + instance for things)
        Image.fromarray(np.full((h, w), 26001, dtype=np.uint16)).save(
            gt / f"{prefix}_gtFine_instanceIds.png"
        )
        (gt / f"{prefix}_gtFine_polygons.json").write_text(
            json.dumps({"imgHeight": h, "imgWidth": w, "objects": []})
        )
        image_dir = base / "leftImg8bit" / "val" / city
        image_dir.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((h, w, 3), 128, np.uint8)).save(
            image_dir / f"{prefix}_leftImg8bit.png"
        )


def expected_cityscapes() -> Dict[str, np.ndarray]:
    d = "cityscapes/gtFine/val"
    return {
        f"{d}/frankfurt/frankfurt_000000_000294_gtFine_labelTrainIds.png": np.array(
            [[0, 1, 13], [18, 255, 255], [11, 10, 255]]
        ),
        f"{d}/lindau/lindau_000000_000019_gtFine_labelTrainIds.png": np.array(
            [[2, 3, 4, 5], [6, 7, 8, 9], [12, 14, 15, 16], [17, 255, 255, 255]]
        ),
    }


# ----------------------------------------------------------------------------- CC12M

CC12M_CAPTIONS = {
    "000000000": "A black dog running on the beach at sunset",
    "000000001": "Close up of <PERSON> holding a red umbrella in the rain, stock photo",
    "000010000": "Vector illustration of a cute cat sitting on a wooden table",
}
# Hand-derived with the heuristic-v1 rules (boundaries: function words, -ing verbs, punctuation;
# "close" is a generic phrase, "stock photo"/"vector"/"illustration" excluded substrings).
CC12M_HEURISTIC_NOUNS = {
    "000000000": ["black dog", "beach", "sunset"],
    "000000001": ["person", "red umbrella", "rain"],
    "000010000": ["cute cat", "wooden table"],
}


def _jpeg_bytes(seed: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.full((4, 5, 3), seed * 40, np.uint8)).save(buffer, format="JPEG")
    return buffer.getvalue()


def write_cc12m_raw(root: Path) -> Path:
    """Shard 00000 in the img2dataset "files" layout, shard 00001 as a webdataset tar."""
    base = root / "cc12m"
    shard = base / "00000"
    shard.mkdir(parents=True)
    for i, key in enumerate(["000000000", "000000001"]):
        (shard / f"{key}.jpg").write_bytes(_jpeg_bytes(i))
        (shard / f"{key}.txt").write_text(CC12M_CAPTIONS[key])
        (shard / f"{key}.json").write_text(json.dumps({"key": key, "status": "success"}))
    (shard / "000000002.txt").write_text("caption whose image failed to download")
    (shard / "000000003.jpg").write_bytes(_jpeg_bytes(3))  # image without caption
    (base / "00000_stats.json").write_text("{}")
    with tarfile.open(base / "00001.tar", "w") as archive:
        for name, data in [
            ("000010000.jpg", _jpeg_bytes(5)),
            ("000010000.txt", CC12M_CAPTIONS["000010000"].encode()),
            ("000010000.json", b"{}"),
        ]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return base


@pytest.fixture
def datasets_root(tmp_path) -> Path:
    root = tmp_path / "datasets"
    root.mkdir()
    return root


@pytest.fixture
def raw():
    """This module: the raw-data writers, expected outputs and script helpers above."""
    return sys.modules[__name__]
