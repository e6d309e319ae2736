#!/usr/bin/env python
"""Segment any image with any words.

    python tools/demo.py --config-file configs/sed/convnextB_768.yaml \\
        --input photo.jpg more/*.png --output out/ \\
        --vocabulary "cat|kitten,dog,grass,sky" \\
        --opts MODEL.WEIGHTS model_final.pth

The vocabulary is either ``--vocabulary`` (classes separated by ",", synonyms of one class by
"|") or ``--dataset NAME`` (that dataset's ``stuff_classes``); by default it is the config's
first test dataset. For every input ``<stem>.<ext>`` the output folder receives:

* ``<stem>_overlay.png``: the image with a colour per class and a legend of the classes present;
* ``<stem>_labels.png``: the class index per pixel (uint8 PNG, uint16 with more than 255 classes);
* ``<stem>_classes.json``: the vocabulary and the pixel count of every class.

Images are segmented ``TEST.IMS_PER_BATCH`` at a time. An input that cannot be read or
segmented is reported by name and the others still run; the exit code is then 1. A folder
without images is refused before the model is built. The demo is a command line over :class:`sed_d2.OpenVocabPredictor`, which does the same from Python.
"""

import argparse
import glob
import json
import logging
import os
import sys
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
from detectron2.utils.logger import setup_logger
from PIL import Image
from tqdm import tqdm

# Run from a source checkout without `pip install -e .` too.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from sed_d2 import OpenVocabPredictor  # noqa: E402  (importing sed_d2 registers methods and datasets)
from sed_d2.config import get_cfg  # noqa: E402
from sed_d2.data.io import read_image  # noqa: E402
from sed_d2.data.vocabulary import vocabulary_of  # noqa: E402
from sed_d2.utils.visualization import count_class_pixels, render_segmentation  # noqa: E402

logger = logging.getLogger("sed_d2.demo")

# On the command line "," already separates classes, so synonyms use "|"; the model (like the
# datasets' class lists) joins the synonyms of one class with ", ".
CLI_CLASS_SEPARATOR = ","
CLI_SYNONYM_SEPARATOR = "|"
MODEL_SYNONYM_SEPARATOR = ", "
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


def parse_vocabulary(text: str) -> List[str]:
    """``"cat|kitten, dog"`` -> ``["cat, kitten", "dog"]``; raises on empty or repeated names.

    Used as an argparse ``type``, so its ``ArgumentTypeError`` becomes a usage error.
    """
    classes, seen = [], {}
    for position, entry in enumerate(text.split(CLI_CLASS_SEPARATOR), start=1):
        synonyms = [s.strip() for s in entry.split(CLI_SYNONYM_SEPARATOR)]
        if not entry.strip() or not all(synonyms):
            raise argparse.ArgumentTypeError(
                f"class {position} of {text!r} is empty or has an empty synonym ({entry!r}); "
                f"separate classes with '{CLI_CLASS_SEPARATOR}' and synonyms with "
                f"'{CLI_SYNONYM_SEPARATOR}', e.g. \"cat|kitten,dog\""
            )
        for synonym in synonyms:
            # A name given twice would split its pixels between two classes at random.
            key = synonym.lower()
            if key in seen:
                raise argparse.ArgumentTypeError(
                    f"{synonym!r} appears twice in the vocabulary (classes {seen[key]} and "
                    f"{position}); every class and synonym must be unique"
                )
            seen[key] = position
        classes.append(MODEL_SYNONYM_SEPARATOR.join(synonyms))
    return classes


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config-file", required=True, metavar="FILE", help="model config")
    parser.add_argument(
        "--input",
        required=True,
        nargs="+",
        metavar="IMG",
        help="image files, folders of images, or glob patterns such as 'photos/*.jpg'",
    )
    parser.add_argument("--output", required=True, metavar="DIR", help="folder for the results")
    vocabulary = parser.add_mutually_exclusive_group()
    vocabulary.add_argument(
        "--vocabulary",
        type=parse_vocabulary,
        metavar="NAMES",
        help="classes separated by ',', synonyms of one class by '|': \"cat|kitten,dog,grass\"",
    )
    vocabulary.add_argument(
        "--dataset",
        metavar="NAME",
        help="use the class names of this registered dataset, e.g. ade20k_150_test_sem_seg",
    )
    parser.add_argument(
        "--alpha", type=float, default=0.5, help="opacity of the class colours in the overlay"
    )
    parser.add_argument(
        "--opts",
        default=[],
        nargs=argparse.REMAINDER,
        metavar="KEY VALUE",
        help="config overrides, last on the line: --opts MODEL.WEIGHTS model.pth MODEL.DEVICE cpu",
    )
    return parser


def resolve_vocabulary(args: argparse.Namespace, cfg, parser: argparse.ArgumentParser):
    """``(class names, what the predictor is given)`` from --vocabulary, --dataset, or the
    config's first test dataset; a dataset is given by name, so that the predictor keeps its
    background rule (VOC-21, COCO-Object: background scored, not prompted)."""
    if args.vocabulary is not None:
        return args.vocabulary, args.vocabulary
    dataset = args.dataset
    if dataset is None:
        if not cfg.DATASETS.TEST:
            parser.error("give --vocabulary or --dataset: the config's DATASETS.TEST is empty")
        dataset = cfg.DATASETS.TEST[0]
    try:
        return vocabulary_of(dataset), dataset
    except KeyError as e:
        parser.error(str(e.args[0]))


def expand_inputs(patterns: Sequence[str]) -> List[str]:
    """Files, folders (their images, sorted) and glob patterns -> paths, in the order given.

    A folder without images or a glob pattern that matches no file is an error
    (``ValueError`` naming it), found before any work; a plain path is kept as is, so that
    reading it fails with its name.
    """
    paths = []
    for pattern in patterns:
        pattern = os.path.expanduser(pattern)
        if os.path.isdir(pattern):
            images = sorted(
                os.path.join(pattern, name)
                for name in os.listdir(pattern)
                if name.lower().endswith(IMAGE_EXTENSIONS)
            )
            if not images:
                raise ValueError(
                    f"folder {pattern} holds no images (looked for {', '.join(IMAGE_EXTENSIONS)})"
                )
            paths += images
        elif not os.path.exists(pattern) and any(c in pattern for c in "*?["):
            matches = sorted(path for path in glob.glob(pattern) if os.path.isfile(path))
            if not matches:
                raise ValueError(f"pattern {pattern} matches no files")
            paths += matches
        else:
            paths.append(pattern)
    return paths


def unique_stems(paths: Sequence[str]) -> List[str]:
    """Output names: the file stem, suffixed "-2", "-3"... when two inputs share one."""
    stems, used = [], set()
    for path in paths:
        base = os.path.splitext(os.path.basename(path))[0] or "image"
        stem, copy = base, 1
        while stem in used:
            copy += 1
            stem = f"{base}-{copy}"
        used.add(stem)
        stems.append(stem)
    return stems


def save_outputs(
    output_dir: str,
    stem: str,
    input_path: str,
    image: np.ndarray,
    labels: np.ndarray,
    vocabulary: Sequence[str],
    alpha: float,
) -> Dict[str, str]:
    """Write the overlay, label map and class summary of one image; return their paths."""
    paths = {
        kind: os.path.join(output_dir, f"{stem}_{kind}.{ext}")
        for kind, ext in (("overlay", "png"), ("labels", "png"), ("classes", "json"))
    }
    Image.fromarray(render_segmentation(image, labels, vocabulary, alpha=alpha)).save(
        paths["overlay"]
    )
    # uint8 while every index fits below 255 (the usual ignore value), else 16-bit PNG.
    label_dtype = np.uint8 if len(vocabulary) <= 255 else np.uint16
    Image.fromarray(labels.astype(label_dtype)).save(paths["labels"])
    counts = count_class_pixels(labels, len(vocabulary))
    summary = {
        "input": os.path.abspath(input_path),
        "height": int(labels.shape[0]),
        "width": int(labels.shape[1]),
        "labels": os.path.basename(paths["labels"]),
        "vocabulary": list(vocabulary),
        "classes": [
            {"index": i, "name": name, "pixel_count": int(count)}
            for i, (name, count) in enumerate(zip(vocabulary, counts))
        ],
    }
    with open(paths["classes"], "w") as f:
        json.dump(summary, f, indent=2)
    return paths


def segment_and_save(
    predictor: OpenVocabPredictor,
    batch: Sequence[Tuple[str, str, np.ndarray]],
    output_dir: str,
    vocabulary: Sequence[str],
    alpha: float,
) -> List[str]:
    """Segment ``(path, stem, image)`` inputs in one call and save each one's outputs; return
    the paths that failed (each logged with its error) while the others are saved."""
    results = None
    if len(batch) > 1:
        try:
            results = predictor([image for _, _, image in batch])
        except Exception:  # find the input at fault one by one (and what a batch's OOM needs)
            pass
    failed = []
    for index, (path, stem, image) in enumerate(batch):
        try:
            result = results[index] if results is not None else predictor(image)
            save_outputs(output_dir, stem, path, image, result.labels, vocabulary, alpha)
        except Exception as e:  # one input's failure (e.g. out of memory) must not stop the others
            logger.error("Cannot segment %s: %s: %s", path, type(e).__name__, e)
            failed.append(path)
    return failed


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the demo; returns the exit code (1 if any input failed)."""
    parser = get_parser()
    args = parser.parse_args(argv)
    setup_logger(name="sed_d2")
    cfg = get_cfg(args.config_file, args.opts)
    vocabulary, predictor_vocabulary = resolve_vocabulary(args, cfg, parser)
    try:
        paths = expand_inputs(args.input)
    except ValueError as e:
        parser.error(str(e))
    logger.info("Vocabulary (%d classes): %s", len(vocabulary), "; ".join(vocabulary))

    predictor = OpenVocabPredictor(cfg, vocabulary=predictor_vocabulary)
    os.makedirs(args.output, exist_ok=True)
    failed, batch = [], []  # batch: (path, stem, image) read but not yet segmented
    inputs = list(zip(paths, unique_stems(paths)))
    for position, (path, stem) in enumerate(tqdm(inputs, desc="demo", unit="image"), start=1):
        try:
            batch.append((path, stem, read_image(path)))
        except (OSError, ValueError) as e:  # missing, unreadable or not an image; names the file
            logger.error("Cannot read input image %s: %s", path, e)
            failed.append(path)
        if batch and (len(batch) == predictor.batch_size or position == len(inputs)):
            failed += segment_and_save(predictor, batch, args.output, vocabulary, args.alpha)
            batch = []

    done = len(paths) - len(failed)
    logger.info("Segmented %d of %d inputs into %s", done, len(paths), args.output)
    if failed:
        logger.error("%d input(s) failed: %s", len(failed), ", ".join(failed))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
