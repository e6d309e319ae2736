"""Pure-PyTorch method implementations (tensors in, logits / losses out; no detectron2)."""

from .parameter_groups import PARAMETER_GROUP_NAMES, assign_parameter_groups, match_parameter_groups
from .sed import SEDDecoder, SEDModel, SEDOutput, SEDStage, build_sed_decoder_for

__all__ = [
    "PARAMETER_GROUP_NAMES",
    "SEDDecoder",
    "SEDModel",
    "SEDOutput",
    "SEDStage",
    "assign_parameter_groups",
    "build_sed_decoder_for",
    "match_parameter_groups",
]
