"""The vocabulary of a registered dataset: its class names, as data."""
from __future__ import annotations

from typing import List, Optional

__all__ = ["IMAGE_CAPTION_TASK", "training_vocabulary_of", "unprompted_background_index", "vocabulary_of"]

# Metadata ``task`` of image-caption training sets (cc12m_train, the synthetic captions): their
# categories are per-image noun phrases, so a class list is optional.
IMAGE_CAPTION_TASK = "image_caption"


def vocabulary_of(dataset_name: str) -> List[str]:
    """The class names (``stuff_classes``) of a registered dataset (synonyms of one class are
    joined by ", " inside its name)."""
    from detectron2.data import MetadataCatalog

    meta = MetadataCatalog.get(dataset_name)
    classes = getattr(meta, "stuff_classes", None)
    if not classes:
        raise KeyError(
            f"dataset '{dataset_name}' has no 'stuff_classes' in its MetadataCatalog entry; "
            "is it registered by sed_d2 (import sed_d2) or by your own code?"
        )
    return list(classes)


def training_vocabulary_of(dataset_name: str) -> Optional[List[str]]:
    """:func:`vocabulary_of` a training set, or None for an image-caption set without class
    names (metadata ``task`` :data:`IMAGE_CAPTION_TASK`)."""
    from detectron2.data import MetadataCatalog

    meta = MetadataCatalog.get(dataset_name)
    if meta.get("task", None) == IMAGE_CAPTION_TASK and not meta.get("stuff_classes", None):
        return None
    return vocabulary_of(dataset_name)


def unprompted_background_index(dataset_name: str) -> Optional[int]:
    """The index of the background class that is scored but not prompted (metadata
    ``background_handling`` "unprompted_class": VOC-21, COCO-Object), else None."""
    from detectron2.data import MetadataCatalog

    meta = MetadataCatalog.get(dataset_name)
    if meta.get("background_handling", "none") != "unprompted_class":
        return None
    return int(meta.background_index)
