"""sed_d2: open-vocabulary semantic segmentation methods as a detectron2 project.

Importing the package registers its meta-architectures and datasets with detectron2.
The pure-PyTorch parts (``sed_d2.clip``, ``sed_d2.layers``, ``sed_d2.losses``,
``sed_d2.models``) import without detectron2.
"""
__version__ = "0.1.0"

from .utils.optional_dependencies import HAS_DETECTRON2

if HAS_DETECTRON2:
    from . import data  # noqa: F401  (registration only: datasets)
    from . import meta_arch  # noqa: F401  (registration only: META_ARCH_REGISTRY)
    from .config import add_sed_d2_config  # noqa: F401
    from .predictor import OpenVocabPredictor  # noqa: F401
