"""The vocabulary of a registered dataset: its class names, as data."""
from __future__ import annotations

from typing import List

__all__ = ["vocabulary_of"]


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
