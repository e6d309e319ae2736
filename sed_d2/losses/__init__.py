"""Training losses shared by the methods, one family per module (pure PyTorch).

* :mod:`.segmentation`: per-pixel losses on class logits against a label map
  (:func:`one_hot_bce_loss`: SED's main and auxiliary heads, CAT-Seg and the methods on it).
* :mod:`.alignment`: alignment maps against downsampled labels (:func:`alignment_loss`:
  FGAseg's T2P loss).
* :mod:`.contrastive`: SynSeg's Multi-Category Contrastive Learning on per-category
  foreground / background vectors (:func:`mccl_losses`).

* :mod:`.boundary`: edges derived from a label map and the class-balanced boundary BCE
  (:func:`boundary_loss`: CLIP-HBD).
* :mod:`.softmax_dice`: softmax cross-entropy and Dice over the classes present per image,
  chunked over classes (:func:`softmax_ce_dice_loss`: CLIP-HBD).

:mod:`.class_chunks` holds what the two chunked per-class losses share (their work dtype and
the walk over class chunks). A loss that a second method needs lives here, not in the
method's model file.
"""
from .contrastive import MCCL_LOSS_NAMES, bounded_similarity, cosine_similarity, mccl_losses
from .alignment import ALIGNMENT_LOSSES, alignment_loss, downsampled_one_hot
from .segmentation import TRAINING_CHUNK_CLASSES, UpsampledOneHotBCE, one_hot_bce_loss
from .boundary import balanced_boundary_bce, boundary_loss, boundary_targets
from .softmax_dice import UpsampledSoftmaxCEDice, softmax_ce_dice_loss

__all__ = [
    "UpsampledSoftmaxCEDice",
    "balanced_boundary_bce",
    "boundary_loss",
    "boundary_targets",
    "softmax_ce_dice_loss",
    "MCCL_LOSS_NAMES",
    "bounded_similarity",
    "cosine_similarity",
    "mccl_losses",
    "TRAINING_CHUNK_CLASSES",
    "UpsampledOneHotBCE",
    "one_hot_bce_loss",
    "ALIGNMENT_LOSSES",
    "alignment_loss",
    "downsampled_one_hot",
]
