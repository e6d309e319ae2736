"""Whether optional dependencies are installed, checked in one place.

Found, not imported: a detectron2 that is installed but broken fails loudly where it is
imported, instead of silently turning the integration off.
"""
from __future__ import annotations

import importlib.util

# detectron2: needed for registration (datasets, meta-architectures) and the engine; the
# pure-PyTorch parts (clip, layers, losses, models) and the dataset loaders work without it.
HAS_DETECTRON2 = importlib.util.find_spec("detectron2") is not None
