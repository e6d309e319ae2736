"""Training losses shared by the methods, one family per module (pure PyTorch).

* :mod:`.segmentation`: per-pixel losses on class logits against a label map
  (:func:`one_hot_bce_loss`: SED's main and auxiliary heads, CAT-Seg and the methods on it).

A loss that a second method needs lives here, not in the method's model file.
"""
from .segmentation import TRAINING_CHUNK_CLASSES, UpsampledOneHotBCE, one_hot_bce_loss

__all__ = ["TRAINING_CHUNK_CLASSES", "UpsampledOneHotBCE", "one_hot_bce_loss"]
