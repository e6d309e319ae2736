"""Datasets (registered on import), the embedded synthetic dataset, and training mappers.

Registration needs detectron2; without it (e.g. a prepare script on a bare machine) this
package still imports and only the registration is skipped.
"""
from . import datasets  # noqa: F401  (registration only)
from .synthetic import register_synthetic_datasets

try:
    import detectron2  # noqa: F401
except ImportError:
    pass
else:
    register_synthetic_datasets()
