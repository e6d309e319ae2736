"""Training mapper for image-caption pairs (SynSeg): image + the noun phrases of its caption.

A record (``cc12m_train``: ``sed_d2/data/datasets/cc12m.py``; the synthetic caption set:
``sed_d2/data/synthetic.py``) carries ``file_name`` (+ ``tar_member`` / ``tar_offset`` /
``tar_size`` for webdataset shards), ``image_id``, ``caption`` and ``nouns``, the noun
phrases ``datasets/prepare/prepare_cc12m.py`` extracted. The mapper

1. cleans the phrases (stripped, empty ones dropped, duplicates removed in order) and, when
   there are more than ``max_phrases``, keeps a random subset (in caption order);
2. reads the image (from its file or straight from its tar offset) and squashes it to
   ``image_size`` (the CLIP resolution: the paper resizes every image to one size; a crop
   could cut away the object a phrase names), bicubic as CLIP's own preprocessing;
3. flips it horizontally with probability 0.5 when ``flip`` is on (off in the paper recipe).

The random draws come from ``np.random``, which :class:`~sed_d2.data.loader.
PositionSeededDataset` seeds from ``(SEED, stream position)`` for every sample (as for the
semantic mapper's augmentations): the phrases of a position are the same in every run, so
``--resume`` continues with exactly the batches an uninterrupted run would see.

An unreadable image, or a record whose phrases are not a list of strings, raises an error
naming the record (its ``image_id`` and file).
"""
from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import torch
from detectron2.config import configurable
from PIL import Image

from .datasets.cc12m import open_cc12m_image
from .io import read_image

__all__ = ["ImageCaptionMapper", "clean_phrases"]

logger = logging.getLogger(__name__)


def _describe(record: dict) -> str:
    where = record.get("file_name", "?")
    if "tar_member" in record:
        where = f"{where}:{record['tar_member']}"
    return f"caption record {record.get('image_id', '?')!r} ({where})"


def clean_phrases(record: dict) -> list[str]:
    """The record's noun phrases: stripped, non-empty, first occurrence of each kept.

    Raises:
        ValueError: the record has no ``nouns`` (an index-less CC12M load: run the prepare
            script) or they are not a list of strings; the message names the record.
    """
    if "nouns" not in record:
        raise ValueError(
            f"{_describe(record)} has no noun phrases ('nouns'); run "
            "python datasets/prepare/prepare_cc12m.py to index the captions"
        )
    nouns = record["nouns"]
    if isinstance(nouns, str) or not isinstance(nouns, Sequence) or not all(isinstance(n, str) for n in nouns):
        raise ValueError(f"{_describe(record)} has unreadable noun phrases {nouns!r}: expected a list of strings")
    return list(dict.fromkeys(n.strip() for n in nouns if n.strip()))


class ImageCaptionMapper:
    """Record -> ``{"image": uint8 (3, H, W), "nouns": [...], "caption", "image_id", ...}``
    (see the module docstring).

    Args:
        image_size: ``(H, W)`` every image is squashed to.
        max_phrases: phrases per image at most (a random subset beyond).
        flip: random horizontal flip.
        image_format: "RGB" or "BGR" (``INPUT.FORMAT``).
    """

    @configurable
    def __init__(self, *, image_size: Sequence[int], max_phrases: int, flip: bool = False, image_format: str = "RGB"):
        if max_phrases < 1:
            raise ValueError(f"max_phrases must be >= 1, got {max_phrases}")
        self.image_size = tuple(int(s) for s in image_size)
        self.max_phrases = int(max_phrases)
        self.flip = bool(flip)
        self.image_format = image_format

    @classmethod
    def from_config(cls, cfg):
        if cfg.INPUT.RANDOM_FLIP not in ("none", "horizontal"):
            raise ValueError(f"image-caption training flips horizontally or not at all, got INPUT.RANDOM_FLIP {cfg.INPUT.RANDOM_FLIP!r}")
        return {
            "image_size": tuple(cfg.MODEL.OVSEG.CLIP_RESOLUTION),
            "max_phrases": cfg.MODEL.SYNSEG.MAX_CATEGORIES,
            "flip": cfg.INPUT.RANDOM_FLIP == "horizontal",
            "image_format": cfg.INPUT.FORMAT,
        }

    def select_records(self, records: list[dict]) -> list[dict]:
        """The records this mapper can train on: those with at least one phrase (an image
        without categories gives no loss term). Raises on a record without readable phrases."""
        kept = [r for r in records if clean_phrases(r)]
        if len(kept) < len(records):
            logger.info("Dropped %d of %d image-caption records without noun phrases", len(records) - len(kept), len(records))
        if not kept:
            raise ValueError(f"none of the {len(records)} image-caption records has a noun phrase")
        return kept

    def sample_phrases(self, record: dict) -> list[str]:
        """The cleaned phrases, or ``max_phrases`` of them drawn with ``np.random`` (caption order kept)."""
        phrases = clean_phrases(record)
        if len(phrases) > self.max_phrases:
            keep = np.sort(np.random.choice(len(phrases), self.max_phrases, replace=False))
            phrases = [phrases[i] for i in keep]
        return phrases

    def read_image(self, record: dict) -> np.ndarray:
        """(H, W, 3) uint8 in ``image_format`` at ``image_size``; errors name the record."""
        try:
            if "tar_member" in record:
                image = open_cc12m_image(record)
            else:
                image = Image.fromarray(read_image(record["file_name"], format="RGB"))
            height, width = self.image_size
            if image.size != (width, height):
                image = image.resize((width, height), Image.BICUBIC)
            array = np.asarray(image.convert("RGB"))
        except Exception as e:
            raise OSError(f"cannot read the image of {_describe(record)}: {type(e).__name__}: {e}") from e
        return np.ascontiguousarray(array[:, :, ::-1]) if self.image_format == "BGR" else array

    def __call__(self, record: dict) -> dict:
        phrases = self.sample_phrases(record)
        if not phrases:
            raise ValueError(f"{_describe(record)} has no noun phrase (select_records drops such records)")
        image = self.read_image(record)
        if self.flip and np.random.rand() < 0.5:
            image = image[:, ::-1]
        out = {k: v for k, v in record.items() if k != "nouns"}
        out["image"] = torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1)))
        out["nouns"] = phrases
        return out
