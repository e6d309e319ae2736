"""Datasets (registered on import), the embedded synthetic dataset, and training mappers.

Registration needs detectron2; without it (e.g. a prepare script on a bare machine) this
package still imports and only the registration is skipped.
"""
from ..utils.optional_dependencies import HAS_DETECTRON2
from . import datasets  # noqa: F401  (registration only)
from .synthetic import register_synthetic_caption_dataset, register_synthetic_datasets
from .vocabulary import vocabulary_of

__all__ = ["vocabulary_of"]

if HAS_DETECTRON2:
    register_synthetic_datasets()
    register_synthetic_caption_dataset()
