"""CC12M image-caption pairs (SynSeg's training set) from a local img2dataset download.

Layouts read (``$DETECTRON2_DATASETS/cc12m``), both written by img2dataset:

* ``--output_format files``: shard folders ``00000/000000001.jpg`` + ``000000001.txt``
  (caption) (+ ``.json`` metadata, ignored);
* ``--output_format webdataset``: shard archives ``00000.tar`` holding the same members.

``datasets/prepare/prepare_cc12m.py`` writes one JSON-lines index per shard,
``cc12m/sed_d2_index/<shard>.jsonl``, with the caption and the noun phrases of every sample
(plus the tar offsets of its image, so that loading needs no scan of the archives). With the
index, every record carries ``nouns``; without any index the loader reads the captions from
the shards (slow for the full set) and records have no ``nouns``; a partial index (some shards
indexed, others not) is an error, never silently half-used.

Records (``load_cc12m``):
  ``file_name``  image path, or the ``.tar`` path for webdataset shards;
  ``tar_member``, ``tar_offset``, ``tar_size``  (webdataset only) the image member, its data
                 offset and size inside the archive: ``open_cc12m_image`` reads it directly;
  ``image_id``   the img2dataset key (e.g. ``"000000001"``);
  ``caption``    the caption as downloaded (CC12M writes ``<PERSON>`` for person names);
  ``nouns``      (with the index) noun phrases, see ``prepare_cc12m.py``.

This module needs no detectron2; ``builtin.py`` registers ``cc12m_train`` with it.
"""

import io
import json
import logging
import os
import re
import tarfile
from dataclasses import dataclass
from typing import Dict, Iterator, List, Optional, Tuple

from .sem_seg_loader import DATASETS_ENV_VAR, DatasetNotFoundError, IncompleteDatasetError

__all__ = [
    "CC12M_DIRNAME",
    "INDEX_DIRNAME",
    "IMAGE_EXTENSIONS",
    "Shard",
    "ShardSample",
    "list_shards",
    "iter_shard_samples",
    "load_cc12m",
    "open_cc12m_image",
]

logger = logging.getLogger(__name__)

CC12M_DIRNAME = "cc12m"
INDEX_DIRNAME = "sed_d2_index"
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp")
CAPTION_EXTENSION = ".txt"
_SHARD_FOLDER = re.compile(r"^\d+$")
_SHARD_TAR = re.compile(r"^(\d+)\.tar$")


@dataclass(frozen=True)
class Shard:
    """One img2dataset shard: ``name`` ("00000"), ``path``, ``kind`` ("folder" or "tar")."""

    name: str
    path: str
    kind: str


@dataclass(frozen=True)
class ShardSample:
    """One sample of a shard; ``image`` holds the record's image keys (paths relative to the
    dataset folder), ``problem`` says why the sample is unusable (then it is skipped)."""

    key: str
    caption: Optional[str]
    image: Optional[Dict[str, object]]
    problem: Optional[str] = None


def list_shards(dataset_dir: str) -> List[Shard]:
    """Shard folders and tar archives of a download, sorted by name."""
    shards: Dict[str, Shard] = {}
    for entry in sorted(os.scandir(dataset_dir), key=lambda e: e.name):
        if entry.is_dir() and _SHARD_FOLDER.match(entry.name):
            shard = Shard(entry.name, entry.path, "folder")
        elif entry.is_file() and _SHARD_TAR.match(entry.name):
            shard = Shard(_SHARD_TAR.match(entry.name).group(1), entry.path, "tar")
        else:
            continue
        if shard.name in shards:
            raise ValueError(
                f"CC12M shard {shard.name} exists twice in {dataset_dir} "
                f"({shards[shard.name].path} and {shard.path}); keep one layout"
            )
        shards[shard.name] = shard
    return list(shards.values())


def _split_key(name: str) -> Tuple[str, str]:
    # webdataset convention: the key is the base name up to its first dot.
    base = name.rsplit("/", 1)[-1]
    key, _, ext = base.partition(".")
    prefix = name[: len(name) - len(base)]
    return prefix + key, "." + ext.lower() if ext else ""


def _decode_caption(data: bytes, where: str) -> Tuple[Optional[str], Optional[str]]:
    try:
        return data.decode("utf-8").strip(), None
    except UnicodeDecodeError as e:
        return None, f"{where}: caption is not UTF-8 ({e})"


def iter_shard_samples(shard: Shard, dataset_dir: str) -> Iterator[ShardSample]:
    """The samples of a shard in key order; raises OSError/tarfile.TarError on a broken shard."""
    if shard.kind == "folder":
        groups: Dict[str, Dict[str, str]] = {}
        for entry in os.scandir(shard.path):
            if entry.name.startswith(".") or not entry.is_file():
                continue
            key, ext = _split_key(entry.name)
            groups.setdefault(key, {})[ext] = entry.name
        for key in sorted(groups):
            files = groups[key]
            image = next((files[e] for e in IMAGE_EXTENSIONS if e in files), None)
            caption, problem = None, None
            if CAPTION_EXTENSION in files:
                path = os.path.join(shard.path, files[CAPTION_EXTENSION])
                with open(path, "rb") as f:
                    caption, problem = _decode_caption(f.read(), path)
            if image is None and caption is None and problem is None:
                continue  # e.g. a lone .json of a failed download
            if problem is None and image is None:
                problem = f"{shard.path}/{key}: caption without image"
            if problem is None and caption is None:
                problem = f"{shard.path}/{key}: image without caption"
            ref = (
                {"image": os.path.relpath(os.path.join(shard.path, image), dataset_dir)}
                if image
                else None
            )
            yield ShardSample(key, caption, ref, problem)
        return

    groups_tar: Dict[str, Dict[str, tarfile.TarInfo]] = {}
    with tarfile.open(shard.path, mode="r:") as archive:
        members = archive.getmembers()
        for member in members:
            if not member.isfile():
                continue
            key, ext = _split_key(member.name)
            groups_tar.setdefault(key, {})[ext] = member
        for key in sorted(groups_tar):
            files = groups_tar[key]
            image = next((files[e] for e in IMAGE_EXTENSIONS if e in files), None)
            caption, problem = None, None
            if CAPTION_EXTENSION in files:
                where = f"{shard.path}:{files[CAPTION_EXTENSION].name}"
                caption, problem = _decode_caption(
                    archive.extractfile(files[CAPTION_EXTENSION]).read(), where
                )
            if image is None and caption is None and problem is None:
                continue
            if problem is None and image is None:
                problem = f"{shard.path}:{key}: caption without image"
            if problem is None and caption is None:
                problem = f"{shard.path}:{key}: image without caption"
            ref = None
            if image is not None:
                ref = {
                    "tar": os.path.relpath(shard.path, dataset_dir),
                    "member": image.name,
                    "offset": image.offset_data,
                    "size": image.size,
                }
            yield ShardSample(key, caption, ref, problem)


def _record(dataset_dir: str, key: str, caption: str, image: Dict[str, object]) -> dict:
    if "tar" in image:
        return {
            "file_name": os.path.join(dataset_dir, str(image["tar"])),
            "tar_member": image["member"],
            "tar_offset": int(image["offset"]),
            "tar_size": int(image["size"]),
            "image_id": key,
            "caption": caption,
        }
    return {
        "file_name": os.path.join(dataset_dir, str(image["image"])),
        "image_id": key,
        "caption": caption,
    }


def _not_found(
    dataset_name: str, dataset_dir: str, datasets_root: str, prepare_script: str, what: str
):
    return DatasetNotFoundError(
        f"Dataset '{dataset_name}': {what}.\n"
        f"Datasets are looked up under ${DATASETS_ENV_VAR} (now {datasets_root!r}, "
        f"absolute {os.path.abspath(datasets_root)!r}); expected folder: {dataset_dir}.\n"
        "Download CC12M with img2dataset (https://github.com/rom1504/img2dataset, dataset "
        "example cc12m) into that folder with --output_format files or webdataset, then run: "
        f"python {prepare_script}"
    )


def load_cc12m(
    dataset_name: str, dataset_dir: str, *, datasets_root: str, prepare_script: str
) -> List[dict]:
    """Records of every usable sample (see the module docstring)."""
    if not os.path.isdir(dataset_dir):
        raise _not_found(
            dataset_name,
            dataset_dir,
            datasets_root,
            prepare_script,
            f"folder {dataset_dir} does not exist",
        )
    shards = list_shards(dataset_dir)
    if not shards:
        raise _not_found(
            dataset_name,
            dataset_dir,
            datasets_root,
            prepare_script,
            f"no img2dataset shard (00000/ folder or 00000.tar) in {dataset_dir}",
        )
    index_dir = os.path.join(dataset_dir, INDEX_DIRNAME)
    indexed = [s for s in shards if os.path.isfile(os.path.join(index_dir, f"{s.name}.jsonl"))]
    records: List[dict] = []
    if indexed and len(indexed) < len(shards):
        missing = [s.name for s in shards if s not in indexed]
        raise IncompleteDatasetError(
            f"Dataset '{dataset_name}': the noun-phrase index {index_dir} covers {len(indexed)} "
            f"of {len(shards)} shards (missing e.g. {', '.join(missing[:5])}); the preparation "
            f"was interrupted or new shards were added. Rerun: python {prepare_script} "
            "(finished shards are skipped)."
        )
    if indexed:
        for shard in shards:
            path = os.path.join(index_dir, f"{shard.name}.jsonl")
            with open(path, encoding="utf-8") as f:
                for line_number, line in enumerate(f, 1):
                    if not line.strip():
                        continue
                    try:
                        entry = json.loads(line)
                        record = _record(
                            dataset_dir, entry["key"], entry["caption"], entry["image"]
                        )
                        record["nouns"] = list(entry["nouns"])
                    except (ValueError, KeyError, TypeError) as e:
                        raise IncompleteDatasetError(
                            f"{path}:{line_number}: not a sed_d2 CC12M index line ({e}); "
                            f"rerun python {prepare_script} --overwrite"
                        ) from e
                    records.append(record)
        logger.info("Loaded %d CC12M samples with noun phrases from %s", len(records), index_dir)
        return records

    logger.warning(
        "Dataset '%s': no noun-phrase index in %s; reading captions from the %d shards "
        "(records have no 'nouns'). Run python %s once to index them.",
        dataset_name,
        index_dir,
        len(shards),
        prepare_script,
    )
    problems = 0
    for shard in shards:
        for sample in iter_shard_samples(shard, dataset_dir):
            if sample.problem is not None:
                problems += 1
                continue
            records.append(_record(dataset_dir, sample.key, sample.caption, sample.image))
    if problems:
        logger.warning(
            "Dataset '%s': skipped %d samples without image or caption", dataset_name, problems
        )
    if not records:
        raise IncompleteDatasetError(
            f"Dataset '{dataset_name}': the {len(shards)} shards in {dataset_dir} hold no "
            "image with a caption"
        )
    return records


def open_cc12m_image(record: dict):
    """The record's image as an RGB ``PIL.Image``, from a file or straight from its tar offset."""
    from PIL import Image

    if "tar_member" in record:
        with open(record["file_name"], "rb") as f:
            f.seek(record["tar_offset"])
            data = f.read(record["tar_size"])
        if len(data) != record["tar_size"]:
            raise OSError(
                f"{record['file_name']}: truncated member {record['tar_member']} "
                f"(read {len(data)} of {record['tar_size']} bytes)"
            )
        image = Image.open(io.BytesIO(data))
    else:
        image = Image.open(record["file_name"])
    return image.convert("RGB")
