"""Pair images with label maps by file stem, and say clearly when a dataset is not ready.

``load_sem_seg_pairs`` does what detectron2's ``load_sem_seg`` does (list two folders, pair
files whose relative path minus the ending is equal, return ``file_name`` /
``sem_seg_file_name`` dicts sorted by stem), but instead of warning and silently using the
intersection it checks the folders against how the split is defined:

* a missing image or label folder raises ``DatasetNotFoundError`` naming
  ``$DETECTRON2_DATASETS`` (and its current value), the expected folder, what to download
  and the prepare script to run;
* an empty label folder, labels without their image, and -- where the image folder *is* the
  split (COCO, ADE, Cityscapes) -- images without their label raise
  ``IncompleteDatasetError`` with the counts and a few example stems: a half-prepared
  folder is never used as if it were the benchmark;
* where the labels define the split (VOC and Context, whose ``JPEGImages`` hold every
  image of the release) extra images are expected and ignored;
* a pair count different from the official split size is logged as a warning (subsets for
  debugging stay possible, but never unnoticed).

Needs no detectron2.
"""

import logging
import os
from typing import Dict, List, Optional

__all__ = [
    "DATASETS_ENV_VAR",
    "DatasetNotFoundError",
    "IncompleteDatasetError",
    "file_suffix",
    "list_by_stem",
    "load_sem_seg_pairs",
]

logger = logging.getLogger(__name__)

DATASETS_ENV_VAR = "DETECTRON2_DATASETS"
_MAX_EXAMPLES = 5


class DatasetNotFoundError(FileNotFoundError):
    """A registered dataset's folder does not exist under ``$DETECTRON2_DATASETS``."""


class IncompleteDatasetError(RuntimeError):
    """A registered dataset's folders exist but do not hold a complete, paired split."""


def file_suffix(ext: str) -> str:
    """The file-name ending after the shared stem.

    A bare extension is given without its dot, as detectron2's ``load_sem_seg`` takes it
    (``"png"`` -> ``".png"``); a longer ending is used as is
    (``"_gtFine_labelTrainIds.png"``).
    """
    return ext if ext.startswith((".", "_")) else "." + ext


def list_by_stem(folder: str, suffix: str, recursive: bool = False) -> Dict[str, str]:
    """``{relative path minus suffix: path}`` of the files of ``folder`` ending in ``suffix``.

    Hidden files (the prepare scripts' temporary files) are skipped.
    """
    found: Dict[str, str] = {}
    if recursive:
        for directory, subdirs, files in os.walk(folder):
            subdirs.sort()
            for name in files:
                if name.endswith(suffix) and not name.startswith("."):
                    path = os.path.join(directory, name)
                    relative = os.path.relpath(path, folder).replace(os.sep, "/")
                    found[relative[: -len(suffix)]] = path
        return found
    for entry in os.scandir(folder):
        if entry.name.endswith(suffix) and not entry.name.startswith(".") and entry.is_file():
            found[entry.name[: -len(suffix)]] = entry.path
    return found


def _examples(stems) -> str:
    stems = sorted(stems)
    shown = ", ".join(stems[:_MAX_EXAMPLES])
    return shown + (", ..." if len(stems) > _MAX_EXAMPLES else "")


def _raise_if_unpaired(unpaired, dataset: str, files_without_partner: str, advice: str) -> None:
    """Raise ``IncompleteDatasetError`` when some files lack their partner in the other folder.

    The message: ``"<dataset>: <N> of the <files_without_partner> (e.g. <stems>); <advice>"``.
    """
    if unpaired:
        raise IncompleteDatasetError(
            f"{dataset}: {len(unpaired)} of the {files_without_partner} "
            f"(e.g. {_examples(unpaired)}); {advice}"
        )


def load_sem_seg_pairs(
    dataset_name: str,
    *,
    image_root: str,
    gt_root: str,
    image_ext: str,
    gt_ext: str,
    split_defined_by: str,
    prepare_script: str,
    datasets_root: str,
    download: str,
    official_size: Optional[int] = None,
    recursive: bool = False,
) -> List[dict]:
    """Image/label pairs of a prepared semantic-segmentation split.

    Args:
        dataset_name: registered name, quoted in every message.
        image_root, gt_root: the two folders.
        image_ext, gt_ext: file-name endings after the shared stem (see ``file_suffix``).
        split_defined_by: ``"images"`` when the image folder holds exactly the split,
            ``"labels"`` when it holds more images than the split (VOC, Context).
        prepare_script: the script that writes ``gt_root`` (repo-relative path).
        datasets_root: the ``$DETECTRON2_DATASETS`` value the registration read.
        download: what to download, for the not-found message.
        official_size: number of images of the official split (warning when different).
        recursive: look into sub-folders (Cityscapes' city folders); stems keep them.

    Returns:
        ``[{"file_name": image path, "sem_seg_file_name": label path}, ...]`` sorted by stem.
    """
    if split_defined_by not in ("images", "labels"):
        raise ValueError(f"split_defined_by must be 'images' or 'labels', got {split_defined_by!r}")
    where = (
        f"Datasets are looked up under ${DATASETS_ENV_VAR} (now {datasets_root!r}, absolute "
        f"{os.path.abspath(datasets_root)!r}; unset means ./datasets)."
    )
    run = f"python {prepare_script}"
    if not os.path.isdir(image_root):
        raise DatasetNotFoundError(
            f"Dataset '{dataset_name}' not found: the image folder {image_root} does not exist.\n"
            f"{where}\nDownload {download} under that root (see datasets/README.md), then run: "
            f"{run}"
        )
    if not os.path.isdir(gt_root):
        raise DatasetNotFoundError(
            f"Dataset '{dataset_name}' is not prepared: the label folder {gt_root} does not "
            f"exist.\n{where}\nRun: {run}  (it converts {download} into that folder)"
        )
    image_suffix, gt_suffix = file_suffix(image_ext), file_suffix(gt_ext)
    images = list_by_stem(image_root, image_suffix, recursive)
    labels = list_by_stem(gt_root, gt_suffix, recursive)
    if not labels:
        raise IncompleteDatasetError(
            f"Dataset '{dataset_name}': the label folder {gt_root} holds no *{gt_suffix} file; "
            f"the preparation has not run or was interrupted. Run: {run}"
        )
    if not images:
        raise IncompleteDatasetError(
            f"Dataset '{dataset_name}': the image folder {image_root} holds no *{image_suffix} "
            f"file. Download {download} under ${DATASETS_ENV_VAR} (see datasets/README.md)."
        )
    _raise_if_unpaired(
        labels.keys() - images.keys(),
        f"Dataset '{dataset_name}'",
        f"{len(labels)} label files in {gt_root} have no image in {image_root}",
        f"the images are incomplete or from another release. Re-download {download}.",
    )
    if split_defined_by == "images":
        _raise_if_unpaired(
            images.keys() - labels.keys(),
            f"Dataset '{dataset_name}' is half-prepared",
            f"{len(images)} images in {image_root} have no label in {gt_root}",
            f"only {len(labels)} labels exist. Rerun: {run}  (finished files are skipped)",
        )
    stems = sorted(labels)
    if official_size is not None and len(stems) != official_size:
        logger.warning(
            "Dataset '%s': %d image/label pairs in %s, the official split has %d. If the "
            "preparation was interrupted, rerun: %s",
            dataset_name,
            len(stems),
            gt_root,
            official_size,
            run,
        )
    return [{"file_name": images[s], "sem_seg_file_name": labels[s]} for s in stems]
