"""Datasets (registered on import), the embedded synthetic dataset, and training mappers."""
from . import datasets  # noqa: F401  (registration only)
from .synthetic import register_synthetic_datasets

register_synthetic_datasets()
