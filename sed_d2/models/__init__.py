"""Pure-PyTorch method implementations (tensors in, logits / losses out; no detectron2)."""

from .parameter_groups import FROZEN_GROUP, LR_MULTIPLIER_KEYS, assign_parameter_groups, match_parameter_groups
from .sed import SEDDecoder, SEDModel, SEDOutput, SEDStage, build_sed_decoder_for

__all__ = [
    "FROZEN_GROUP",
    "LR_MULTIPLIER_KEYS",
    "SEDDecoder",
    "SEDModel",
    "SEDOutput",
    "SEDStage",
    "assign_parameter_groups",
    "build_sed_decoder_for",
    "match_parameter_groups",
]
