"""The built-in synthetic dataset: procedurally drawn scenes of eight named "stuff" classes.

It is the embedded default that lets ``tools/train_net.py`` train and evaluate a tiny
random-init model on a laptop CPU with no download. Every class has its own colour
distribution *and* texture (streaks, waves, grains, bricks, leaf clumps...). Per-image colour
jitter and the textures' own shading widen each class's colour range until related classes
overlap (grass/tree, sand/brick wall), so colour alone leaves pixels ambiguous that a
small conv net, which also sees texture, gets right.

Scenes are layouts of 2-5 classes (wavy horizontal bands, Voronoi cells, or a background with
polygons and ellipses, optionally with shapes layered on top). Some images mark their region
borders as ignore (255): the image is slightly blurred, so those pixels are genuinely mixed.

Image ``i`` of split ``s`` depends only on ``(seed, s, i)``: each sample has its own numpy
Generator, and the label geometry uses integer arithmetic and OpenCV's integer rasterisers only,
so every machine draws the same labels (and the same images up to float rounding of textures).

On first use the files are written to ``<root>/sed_d2_synthetic/``::

    manifest.json                  generator version, seed, classes, per-image id/height/width
    images/{train,val}/<id>.jpg    RGB, JPEG quality 95
    labels/{train,val}/<id>.png    'L' PNG, values 0..C-1 and 255 (ignore)

The training split also exists as an image-caption set, ``sed_d2_synthetic_train_captions``
(the same images; each record's noun phrases are the names of the classes its label map
shows, in class order, and no label file): the embedded default of methods that train from
captions (SynSeg), evaluated on ``sed_d2_synthetic_val`` like every other method.

The folder is generated in a temporary sibling and renamed into place, so a reader never sees a
half-written dataset and concurrent processes (DDP ranks) can race safely: the loser of the
rename accepts the winner's folder. ``root`` is ``$SED_D2_SYNTHETIC_ROOT`` if set, else
``$DETECTRON2_DATASETS`` (default ``./datasets``).
"""

import functools
import json
import logging
import os
import shutil
import time
import uuid
from typing import Callable, Dict, List, Mapping, Optional, Tuple

import cv2
import numpy as np
from PIL import Image

__all__ = [
    "SYNTHETIC_CLASSES",
    "SYNTHETIC_DATASET_NAMES",
    "DEFAULT_NUM_IMAGES",
    "DEFAULT_SEED",
    "GENERATOR_VERSION",
    "draw_synthetic_sample",
    "generate_synthetic_dataset",
    "ensure_synthetic_dataset",
    "load_synthetic_dataset",
    "synthetic_dataset_dir",
    "register_synthetic_datasets",
    "SYNTHETIC_CAPTION_DATASET_NAME",
    "load_synthetic_caption_dataset",
    "register_synthetic_caption_dataset",
]

logger = logging.getLogger(__name__)

# Bump whenever the drawing code changes what it draws: existing folders are then regenerated.
GENERATOR_VERSION = 1
DEFAULT_SEED = 0
DEFAULT_NUM_IMAGES: Dict[str, int] = {"train": 240, "val": 48}
SYNTHETIC_DATASET_NAMES: Dict[str, str] = {
    "train": "sed_d2_synthetic_train",
    "val": "sed_d2_synthetic_val",
}
# The training split as image-caption pairs (phrases = the names of the classes in each image).
SYNTHETIC_CAPTION_DATASET_NAME = "sed_d2_synthetic_train_captions"
DATASET_DIRNAME = "sed_d2_synthetic"
MANIFEST_NAME = "manifest.json"
IGNORE_LABEL = 255
# Marks manifests written by this module, so only our own folders are ever deleted.
_GENERATOR_ID = "sed_d2.data.synthetic"
# Each side of an image is drawn from this range (inclusive), so resizing code paths see
# non-square images of varying sizes.
_SIDE_RANGE = (128, 192)
# Part of the per-sample seed; a new split must get a new code, never reuse one.
_SPLIT_CODES = {"train": 0, "val": 1}
# A temporary folder untouched for this long belongs to a crashed process and is removed.
_ABANDONED_TEMP_AGE_S = 3600.0


# --------------------------------------------------------------------------- textures
def _smooth_noise(rng: np.random.Generator, h: int, w: int, cell_y: int, cell_x: int):
    """Roughly unit-variance noise that varies over ``cell_y`` x ``cell_x`` pixels."""
    grid = rng.standard_normal((h // cell_y + 2, w // cell_x + 2)).astype(np.float32)
    return cv2.resize(grid, (w, h), interpolation=cv2.INTER_CUBIC)


def _jitter_colour(rng: np.random.Generator, rgb, channel_sigma: float, brightness: float):
    """Per-instance colour: a per-channel shift (hue/saturation drift) and a brightness scale."""
    shift = rng.normal(0.0, channel_sigma, size=3)
    scale = rng.uniform(1.0 - brightness, 1.0 + brightness)
    return (np.asarray(rgb, np.float32) + shift.astype(np.float32)) * np.float32(scale)


def _shade(colour, shade):
    """Multiply a colour by ``1 + shade`` per pixel: (h, w) shade -> (h, w, 3) float image."""
    return colour[None, None, :] * (1.0 + shade[..., None])


def _paint_sky(rng, h, w):
    # Smooth: a top-to-bottom brightening gradient plus a very faint, large-scale haze.
    colour = _jitter_colour(rng, (112, 166, 226), 8, 0.08)
    yy = np.arange(h, dtype=np.float32)[:, None] / h
    shade = 0.10 - 0.22 * yy + 0.04 * _smooth_noise(rng, h, w, 48, 48)
    return _shade(colour, np.broadcast_to(shade, (h, w)))


def _paint_grass(rng, h, w):
    # Blades: noise stretched vertically (tall, thin streaks) over a fine grain.
    colour = _jitter_colour(rng, (78, 150, 52), 10, 0.12)
    streaks = _smooth_noise(rng, h, w, int(rng.integers(8, 14)), 2)
    grain = rng.standard_normal((h, w)).astype(np.float32)
    return _shade(colour, 0.22 * streaks + 0.05 * grain)


def _paint_water(rng, h, w):
    # Horizontal waves of period 7-11 px whose crests wobble sideways.
    colour = _jitter_colour(rng, (38, 96, 138), 8, 0.12)
    period = rng.uniform(7.0, 11.0)
    yy = np.arange(h, dtype=np.float32)[:, None]
    wobble = 3.0 * _smooth_noise(rng, h, w, 16, 24)
    waves = np.sin((yy + wobble) * np.float32(2 * np.pi / period) + rng.uniform(0, 2 * np.pi))
    return _shade(colour, 0.20 * waves + 0.04 * _smooth_noise(rng, h, w, 32, 32))


def _paint_sand(rng, h, w):
    # Speckle: 2x2 px dark grains (large enough to survive downsampling) on a fine grain.
    colour = _jitter_colour(rng, (214, 190, 136), 8, 0.10)
    grains = (rng.random(((h + 1) // 2, (w + 1) // 2)) < 0.08).astype(np.float32)
    grains = np.repeat(np.repeat(grains, 2, axis=0), 2, axis=1)[:h, :w]
    fine = rng.standard_normal((h, w)).astype(np.float32)
    return _shade(colour, 0.06 * fine - 0.30 * grains + 0.05 * _smooth_noise(rng, h, w, 24, 24))


def _paint_brick_wall(rng, h, w):
    # Running-bond bricks (each with its own shade) separated by 2 px light mortar lines.
    brick = _jitter_colour(rng, (158, 68, 48), 10, 0.12)
    mortar = _jitter_colour(rng, (196, 188, 176), 6, 0.08)
    brick_h, brick_w = int(rng.integers(10, 15)), int(rng.integers(22, 31))
    yy, xx = np.mgrid[0:h, 0:w]
    yy = yy + int(rng.integers(0, brick_h))
    row = yy // brick_h
    xx = xx + int(rng.integers(0, brick_w)) + (row % 2) * (brick_w // 2)
    col = xx // brick_w
    per_brick = rng.normal(0.0, 0.08, size=(int(row.max()) + 1, int(col.max()) + 1))
    shade = per_brick[row, col].astype(np.float32) + 0.04 * rng.standard_normal((h, w))
    image = _shade(brick, shade.astype(np.float32))
    is_mortar = ((yy % brick_h) < 2) | ((xx % brick_w) < 2)
    image[is_mortar] = mortar
    return image


def _paint_snow(rng, h, w):
    # Nearly white with soft blue-grey drifts and a few 2x2 px sparkles.
    colour = _jitter_colour(rng, (236, 240, 247), 4, 0.05)
    drifts = _smooth_noise(rng, h, w, 20, 32)
    sparkles = (rng.random(((h + 1) // 2, (w + 1) // 2)) < 0.02).astype(np.float32)
    sparkles = np.repeat(np.repeat(sparkles, 2, axis=0), 2, axis=1)[:h, :w]
    return _shade(colour, 0.05 * drifts - 0.06 * np.abs(drifts) + 0.08 * sparkles)


def _paint_road(rng, h, w):
    # Asphalt: strong isotropic grain at 1-2 px, plus larger worn patches.
    colour = _jitter_colour(rng, (88, 88, 92), 4, 0.15)
    grain = _smooth_noise(rng, h, w, 2, 2)
    patches = _smooth_noise(rng, h, w, 40, 40)
    return _shade(colour, 0.16 * grain + 0.07 * patches)


def _paint_tree(rng, h, w):
    # Foliage: 5-8 px leaf clumps with dark gaps between them (blobs, not streaks as in grass).
    colour = _jitter_colour(rng, (46, 96, 38), 8, 0.12)
    cell = int(rng.integers(5, 9))
    clumps = np.tanh(2.0 * _smooth_noise(rng, h, w, cell, cell))
    return _shade(colour, 0.35 * clumps)


# name -> painter(rng, h, w) returning a float (h, w, 3) RGB image in about 0-255.
# The order fixes the label ids: index i is class id i.
_CLASS_PAINTERS: Dict[str, Callable[[np.random.Generator, int, int], np.ndarray]] = {
    "sky": _paint_sky,
    "grass": _paint_grass,
    "water": _paint_water,
    "sand": _paint_sand,
    "brick wall": _paint_brick_wall,
    "snow": _paint_snow,
    "road": _paint_road,
    "tree": _paint_tree,
}
SYNTHETIC_CLASSES: List[str] = list(_CLASS_PAINTERS)


# --------------------------------------------------------------------------- layouts
# Each layout returns an int32 (h, w) map of region indices 0..R-1, drawn with integer
# arithmetic only so that every platform rasterises the same labels.
def _wavy_band_layout(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """2-4 horizontal bands whose borders follow smoothed integer random walks."""
    num_borders = int(rng.integers(1, 4))
    bases = np.sort(rng.choice(np.arange(h // 6, h - h // 6), size=num_borders, replace=False))
    borders = []
    for base in bases:
        walk = np.cumsum(rng.integers(-2, 3, size=w + 8))
        smooth = np.convolve(walk, np.ones(9, dtype=np.int64), mode="valid") // 9
        borders.append(np.clip(base + smooth[:w] - smooth[w // 2], 1, h - 1))
    borders = np.sort(np.stack(borders), axis=0)  # borders may cross: keep them ordered
    rows = np.arange(h)[:, None, None]
    return (rows >= borders.T[None, :, :]).sum(axis=-1).astype(np.int32)


def _voronoi_layout(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """2-6 Voronoi cells; the two axes get different integer weights for elongated cells."""
    num_cells = int(rng.integers(2, 7))
    seeds_y = rng.integers(0, h, size=num_cells)
    seeds_x = rng.integers(0, w, size=num_cells)
    weight_y, weight_x = rng.integers(1, 4, size=2)
    yy = np.arange(h, dtype=np.int64)[None, :, None]
    xx = np.arange(w, dtype=np.int64)[None, None, :]
    dist = (
        weight_y * (yy - seeds_y[:, None, None]) ** 2
        + weight_x * (xx - seeds_x[:, None, None]) ** 2
    )
    return np.argmin(dist, axis=0).astype(np.int32)


def _draw_shape(rng: np.random.Generator, region_map: np.ndarray, region: int) -> None:
    """Draw a random convex polygon or ellipse of index ``region`` into ``region_map``."""
    h, w = region_map.shape
    cy, cx = int(rng.integers(h // 8, h - h // 8)), int(rng.integers(w // 8, w - w // 8))
    ry, rx = int(rng.integers(h // 8, h // 3)), int(rng.integers(w // 8, w // 3))
    if rng.random() < 0.5:
        points = np.stack(
            [
                rng.integers(cx - rx, cx + rx + 1, size=8),
                rng.integers(cy - ry, cy + ry + 1, size=8),
            ],
            axis=1,
        ).astype(np.int32)
        cv2.fillPoly(region_map, [cv2.convexHull(points)], int(region))
    else:
        angle = int(rng.integers(0, 180))
        cv2.ellipse(region_map, (cx, cy), (rx, ry), angle, 0, 360, int(region), thickness=-1)


def _shapes_layout(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A background region with 1-3 polygons/ellipses on top."""
    region_map = np.zeros((h, w), np.int32)
    for region in range(1, int(rng.integers(2, 5))):
        _draw_shape(rng, region_map, region)
    return region_map


_LAYOUTS = (_wavy_band_layout, _voronoi_layout, _shapes_layout)


def _draw_label_map(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A (h, w) uint8 map of class ids with 2-5 distinct classes (before ignore borders)."""
    num_classes = len(SYNTHETIC_CLASSES)
    while True:  # a retry is rare (e.g. two Voronoi seeds on one pixel); still deterministic
        region_map = _LAYOUTS[int(rng.integers(len(_LAYOUTS)))](rng, h, w)
        if rng.random() < 0.4:  # layer 1-2 shapes over any layout
            first_new = int(region_map.max()) + 1
            for region in range(first_new, first_new + int(rng.integers(1, 3))):
                _draw_shape(rng, region_map, region)
        num_regions = int(region_map.max()) + 1
        wanted = int(rng.integers(2, 6))
        chosen = rng.choice(num_classes, size=min(wanted, num_regions), replace=False)
        # The first regions take distinct classes so each chosen class gets a region;
        # further regions reuse a chosen class (like two patches of grass).
        extra = rng.choice(chosen, size=num_regions - len(chosen))
        region_to_class = np.concatenate([chosen, extra]).astype(np.uint8)
        labels = region_to_class[region_map]
        if len(np.unique(labels)) >= 2:
            return labels


def _border_mask(labels: np.ndarray) -> np.ndarray:
    """1 px wide mask of pixels whose left or upper neighbour has another class."""
    border = np.zeros(labels.shape, bool)
    border[:, 1:] |= labels[:, 1:] != labels[:, :-1]
    border[1:, :] |= labels[1:, :] != labels[:-1, :]
    return border


def _check_split(split: str) -> None:
    if split not in _SPLIT_CODES:
        raise ValueError(f"unknown synthetic split {split!r}; expected one of {list(_SPLIT_CODES)}")


def _sample_rng(seed: int, split: str, index: int) -> np.random.Generator:
    _check_split(split)
    return np.random.Generator(np.random.PCG64([int(seed), _SPLIT_CODES[split], int(index)]))


def draw_synthetic_sample(
    index: int, split: str = "train", seed: int = DEFAULT_SEED
) -> Tuple[np.ndarray, np.ndarray]:
    """Draw one scene; depends only on ``(seed, split, index)``.

    Returns:
        image: (H, W, 3) uint8 RGB.
        labels: (H, W) uint8 class ids in ``[0, len(SYNTHETIC_CLASSES))`` or 255 (ignore).
    """
    rng = _sample_rng(seed, split, index)
    h, w = (int(s) for s in rng.integers(_SIDE_RANGE[0], _SIDE_RANGE[1] + 1, size=2))
    labels = _draw_label_map(rng, h, w)

    image = np.zeros((h, w, 3), np.float32)
    for class_id in np.unique(labels):
        painter = _CLASS_PAINTERS[SYNTHETIC_CLASSES[class_id]]
        mask = labels == class_id
        image[mask] = painter(rng, h, w)[mask]
    # A slight blur and sensor noise blend the borders like a camera would.
    image = cv2.GaussianBlur(image, (3, 3), sigmaX=0.7)
    image += rng.normal(0.0, 2.0, size=image.shape).astype(np.float32)
    image = np.clip(np.rint(image), 0, 255).astype(np.uint8)

    # Half of the images mark their (blurred, hence mixed) borders as ignore.
    if rng.random() < 0.5:
        labels[_border_mask(labels)] = IGNORE_LABEL
    return image, labels


# --------------------------------------------------------------------------- files
def _sample_id(index: int) -> str:
    return f"{index:06d}"


def generate_synthetic_dataset(
    dataset_dir: str, split: str, num_images: Optional[int] = None, seed: int = DEFAULT_SEED
) -> List[Dict]:
    """Write the images and labels of one split into ``dataset_dir`` (not atomically).

    ``ensure_synthetic_dataset`` is the safe entry point; this one is the building block (and
    lets tests write a few images anywhere).

    Args:
        dataset_dir: receives ``images/<split>/<id>.jpg`` and ``labels/<split>/<id>.png``.
        split: "train" or "val".
        num_images: how many images; default ``DEFAULT_NUM_IMAGES[split]``.
        seed: dataset seed.

    Returns:
        One ``{"id", "height", "width"}`` record per image, in index order.
    """
    _check_split(split)
    if num_images is None:
        num_images = DEFAULT_NUM_IMAGES[split]
    image_dir = os.path.join(dataset_dir, "images", split)
    label_dir = os.path.join(dataset_dir, "labels", split)
    os.makedirs(image_dir, exist_ok=True)
    os.makedirs(label_dir, exist_ok=True)
    records = []
    for index in range(num_images):
        image, labels = draw_synthetic_sample(index, split, seed)
        sample_id = _sample_id(index)
        Image.fromarray(image).save(os.path.join(image_dir, sample_id + ".jpg"), quality=95)
        Image.fromarray(labels).save(os.path.join(label_dir, sample_id + ".png"))
        records.append({"id": sample_id, "height": labels.shape[0], "width": labels.shape[1]})
    return records


def synthetic_dataset_dir(root: Optional[str] = None) -> str:
    """``<root>/sed_d2_synthetic``; root defaults to $SED_D2_SYNTHETIC_ROOT, $DETECTRON2_DATASETS."""
    if root is None:
        root = os.getenv("SED_D2_SYNTHETIC_ROOT") or os.getenv("DETECTRON2_DATASETS", "datasets")
    return os.path.join(os.path.expanduser(root), DATASET_DIRNAME)


def _resolve_counts(num_images: Optional[Mapping[str, int]]) -> Dict[str, int]:
    counts = dict(DEFAULT_NUM_IMAGES)
    if num_images:
        unknown = sorted(set(num_images) - set(_SPLIT_CODES))
        if unknown:
            raise ValueError(f"num_images names unknown splits {unknown}; use {list(_SPLIT_CODES)}")
        counts.update({split: int(n) for split, n in num_images.items()})
    bad = {split: n for split, n in counts.items() if n < 1}
    if bad:
        raise ValueError(f"every split needs at least one image, got {bad}")
    return counts


def _read_manifest(dataset_dir: str) -> Optional[Dict]:
    """The parsed manifest, or None when the folder has none or it is not one of ours."""
    path = os.path.join(dataset_dir, MANIFEST_NAME)
    try:
        with open(path) as f:
            manifest = json.load(f)
    except (OSError, ValueError):
        return None
    if not isinstance(manifest, dict) or manifest.get("generator") != _GENERATOR_ID:
        return None
    return manifest


def _manifest_problem(dataset_dir: str, manifest: Dict, counts: Dict[str, int], seed: int):
    """Why this (our own) folder cannot be used as is, or None if it matches and is complete."""
    expected = {
        "generator_version": GENERATOR_VERSION,
        "seed": seed,
        "classes": SYNTHETIC_CLASSES,
        "num_images": counts,
    }
    for key, value in expected.items():
        if manifest.get(key) != value:
            return f"manifest.json has {key}={manifest.get(key)!r}, expected {value!r}"
    for split, count in counts.items():
        records = manifest.get("images", {}).get(split, [])
        if len(records) != count:
            return f"manifest.json lists {len(records)} {split} images, expected {count}"
        for folder, ext in (("images", ".jpg"), ("labels", ".png")):
            try:
                present = set(os.listdir(os.path.join(dataset_dir, folder, split)))
            except OSError:
                present = set()
            missing = [r["id"] + ext for r in records if r["id"] + ext not in present]
            if missing:
                return f"{len(missing)} files missing from {folder}/{split}, e.g. {missing[0]}"
    return None


def _remove_abandoned_temp_dirs(parent: str) -> None:
    """Delete temporary folders left by crashed generators (never one still being written)."""
    now = time.time()
    for name in os.listdir(parent):
        if not name.startswith(f".{DATASET_DIRNAME}."):
            continue
        path = os.path.join(parent, name)
        try:
            if now - os.path.getmtime(path) > _ABANDONED_TEMP_AGE_S:
                shutil.rmtree(path, ignore_errors=True)
        except OSError:
            pass  # another process removed it first


def _generate_atomically(dataset_dir: str, counts: Dict[str, int], seed: int) -> None:
    """Generate into a temporary sibling folder, then rename it to ``dataset_dir``."""
    parent = os.path.dirname(os.path.abspath(dataset_dir))
    os.makedirs(parent, exist_ok=True)
    _remove_abandoned_temp_dirs(parent)
    temp_dir = os.path.join(parent, f".{DATASET_DIRNAME}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    logger.info(
        "Generating the synthetic dataset (%s) into %s; this happens once and takes seconds.",
        ", ".join(f"{n} {split}" for split, n in counts.items()),
        dataset_dir,
    )
    try:
        os.makedirs(temp_dir)
        images = {
            split: generate_synthetic_dataset(temp_dir, split, count, seed)
            for split, count in counts.items()
        }
        manifest = {
            "generator": _GENERATOR_ID,
            "generator_version": GENERATOR_VERSION,
            "seed": seed,
            "classes": SYNTHETIC_CLASSES,
            "num_images": counts,
            "images": images,
        }
        # The manifest is written last inside the temporary folder: a folder that carries it
        # was completely written before it got its final name.
        with open(os.path.join(temp_dir, MANIFEST_NAME), "w") as f:
            json.dump(manifest, f, indent=1)
        try:
            os.rename(temp_dir, dataset_dir)
        except OSError:
            if not os.path.isdir(dataset_dir):
                raise
            # Another process (e.g. another DDP rank) renamed its copy first; the caller
            # validates the winner's folder.
            logger.info("Another process generated %s first; using its copy.", dataset_dir)
    finally:
        shutil.rmtree(temp_dir, ignore_errors=True)


def _discard_stale(dataset_dir: str) -> None:
    """Move our own stale folder out of the way (atomically), then delete it."""
    trash = os.path.join(
        os.path.dirname(os.path.abspath(dataset_dir)),
        f".{DATASET_DIRNAME}.stale-{os.getpid()}-{uuid.uuid4().hex[:8]}",
    )
    try:
        os.rename(dataset_dir, trash)
    except FileNotFoundError:
        return  # another process discarded it already
    shutil.rmtree(trash, ignore_errors=True)


def ensure_synthetic_dataset(
    root: Optional[str] = None,
    num_images: Optional[Mapping[str, int]] = None,
    seed: int = DEFAULT_SEED,
) -> str:
    """Make sure ``<root>/sed_d2_synthetic`` holds a complete, current dataset; return its path.

    A missing folder is generated. A folder of ours that is stale (other generator version,
    seed or counts) or incomplete (files deleted) is regenerated. A folder without our
    manifest is not ours: it is reported, never deleted or half-used.

    Args:
        root: parent folder; see ``synthetic_dataset_dir``.
        num_images: per-split counts overriding ``DEFAULT_NUM_IMAGES`` (e.g. ``{"train": 8}``).
        seed: dataset seed.
    """
    dataset_dir = synthetic_dataset_dir(root)
    counts = _resolve_counts(num_images)
    for _ in range(3):  # a second pass only follows a regeneration; a third means trouble
        if not os.path.exists(dataset_dir):
            _generate_atomically(dataset_dir, counts, seed)
        manifest = _read_manifest(dataset_dir)
        if manifest is None:
            raise RuntimeError(
                f"{dataset_dir} exists but has no {MANIFEST_NAME} written by sed_d2, so it is not "
                "a synthetic dataset this version can use. Delete the folder to have it "
                "regenerated, or point SED_D2_SYNTHETIC_ROOT at another folder."
            )
        problem = _manifest_problem(dataset_dir, manifest, counts, seed)
        if problem is None:
            return dataset_dir
        logger.warning("Regenerating the synthetic dataset in %s: %s", dataset_dir, problem)
        _discard_stale(dataset_dir)
    raise RuntimeError(
        f"could not produce a usable synthetic dataset in {dataset_dir}: {problem}. "
        "Is another program writing to it?"
    )


def load_synthetic_dataset(
    split: str,
    root: Optional[str] = None,
    num_images: Optional[Mapping[str, int]] = None,
    seed: int = DEFAULT_SEED,
) -> List[Dict]:
    """Detectron2 semantic-segmentation dicts of one split, generating the files if needed."""
    _check_split(split)
    dataset_dir = ensure_synthetic_dataset(root, num_images, seed)
    manifest = _read_manifest(dataset_dir)
    return [
        {
            "file_name": os.path.join(dataset_dir, "images", split, r["id"] + ".jpg"),
            "sem_seg_file_name": os.path.join(dataset_dir, "labels", split, r["id"] + ".png"),
            "height": r["height"],
            "width": r["width"],
            "image_id": r["id"],
        }
        for r in manifest["images"][split]
    ]


# dataset name -> the arguments it was registered with, so registering again is a no-op.
_REGISTERED: Dict[str, Tuple] = {}


def register_synthetic_datasets(
    root: Optional[str] = None,
    num_images: Optional[Mapping[str, int]] = None,
    seed: int = DEFAULT_SEED,
) -> None:
    """Register ``sed_d2_synthetic_{train,val}`` in detectron2's catalogs.

    Nothing is generated here: the files are written the first time ``DatasetCatalog.get``
    loads either split. Calling this again with the same arguments does nothing; with other
    arguments (another root, counts or seed) the two names are registered anew.

    Args:
        root: parent folder of ``sed_d2_synthetic``; see ``synthetic_dataset_dir``.
        num_images: per-split counts overriding ``DEFAULT_NUM_IMAGES``.
        seed: dataset seed.
    """
    try:
        from detectron2.data import DatasetCatalog, MetadataCatalog
    except ImportError as e:
        raise ImportError(
            "register_synthetic_datasets needs detectron2 (DatasetCatalog, MetadataCatalog), "
            "which is not importable; install it from https://github.com/facebookresearch/"
            "detectron2. generate_synthetic_dataset works without it."
        ) from e

    dataset_dir = synthetic_dataset_dir(root)
    counts = _resolve_counts(num_images)
    for split, name in SYNTHETIC_DATASET_NAMES.items():
        arguments = (os.path.abspath(dataset_dir), tuple(sorted(counts.items())), seed)
        if name in DatasetCatalog.list():
            if _REGISTERED.get(name) == arguments:
                continue
            # Registered by an earlier import or with other arguments: replace it, since
            # detectron2 refuses both a second registration and a changed metadata value.
            DatasetCatalog.remove(name)
        if name in MetadataCatalog.list():
            MetadataCatalog.remove(name)
        DatasetCatalog.register(
            name,
            functools.partial(
                load_synthetic_dataset, split, os.path.dirname(dataset_dir), counts, seed
            ),
        )
        MetadataCatalog.get(name).set(
            stuff_classes=list(SYNTHETIC_CLASSES),
            ignore_label=IGNORE_LABEL,
            evaluator_type="sem_seg",
            image_root=os.path.join(dataset_dir, "images", split),
            sem_seg_root=os.path.join(dataset_dir, "labels", split),
            gt_ext="png",
            image_ext="jpg",
            prepare_script="(generated automatically on first use)",
        )
        _REGISTERED[name] = arguments


def load_synthetic_caption_dataset(
    root: Optional[str] = None,
    num_images: Optional[Mapping[str, int]] = None,
    seed: int = DEFAULT_SEED,
) -> List[Dict]:
    """The training split as image-caption records: ``file_name``, ``height``, ``width``,
    ``image_id``, ``nouns`` (the names of the classes present in the image's label map, in
    class order, ignore excluded) and ``caption`` (those names joined); no label file."""
    records = []
    for record in load_synthetic_dataset("train", root, num_images, seed):
        present = np.unique(np.asarray(Image.open(record.pop("sem_seg_file_name"))))
        nouns = [SYNTHETIC_CLASSES[int(c)] for c in present if c != IGNORE_LABEL]
        records.append({**record, "nouns": nouns, "caption": "a picture of " + " and ".join(nouns)})
    return records


def register_synthetic_caption_dataset(
    root: Optional[str] = None,
    num_images: Optional[Mapping[str, int]] = None,
    seed: int = DEFAULT_SEED,
) -> None:
    """Register ``sed_d2_synthetic_train_captions`` (see :func:`load_synthetic_caption_dataset`;
    arguments as :func:`register_synthetic_datasets`). Its metadata marks it as an
    image-caption set (``task``) and lists the classes its phrases come from."""
    from detectron2.data import DatasetCatalog, MetadataCatalog

    from .vocabulary import IMAGE_CAPTION_TASK

    name = SYNTHETIC_CAPTION_DATASET_NAME
    dataset_dir = synthetic_dataset_dir(root)
    counts = _resolve_counts(num_images)
    arguments = (os.path.abspath(dataset_dir), tuple(sorted(counts.items())), seed)
    if name in DatasetCatalog.list():
        if _REGISTERED.get(name) == arguments:
            return
        DatasetCatalog.remove(name)
    if name in MetadataCatalog.list():
        MetadataCatalog.remove(name)
    DatasetCatalog.register(
        name, functools.partial(load_synthetic_caption_dataset, os.path.dirname(dataset_dir), counts, seed)
    )
    MetadataCatalog.get(name).set(
        task=IMAGE_CAPTION_TASK,
        stuff_classes=list(SYNTHETIC_CLASSES),
        image_root=os.path.join(dataset_dir, "images", "train"),
        prepare_script="(generated automatically on first use)",
    )
    _REGISTERED[name] = arguments
