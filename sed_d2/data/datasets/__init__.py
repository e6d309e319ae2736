"""Every benchmark and training set of the five methods, registered once on import.

Importing this package registers all names (see ``builtin.py`` for the list and the metadata
keys) under ``$DETECTRON2_DATASETS`` as it is at import time. Importing it again, or reloading
``builtin``, does not register twice. Without detectron2 nothing is registered (there is no
catalog to register into); the loaders (``sem_seg_loader``, ``cc12m``) and the class lists
(``builtin_meta``) work without it.
"""

from ...utils.optional_dependencies import HAS_DETECTRON2

if HAS_DETECTRON2:
    from . import builtin  # noqa: F401  (registration only)
