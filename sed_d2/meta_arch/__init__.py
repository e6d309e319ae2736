"""Detectron2 meta-architectures, one thin module per method (importing registers them)."""
from .base import OpenVocabSegmentor
from .inference import InferenceProtocol, SlidingWindow, WholeImage, build_inference_protocol
from .catseg import CATSeg
from .clip_hbd import CLIPHBD
from .dcp_clip import DCPCLIP
from .fgaseg import FGASeg
from .sed import SED
from .synseg import SynSeg

__all__ = [
    "CATSeg",
    "CLIPHBD",
    "DCPCLIP",
    "FGASeg",
    "InferenceProtocol",
    "OpenVocabSegmentor",
    "SED",
    "SlidingWindow",
    "SynSeg",
    "WholeImage",
    "build_inference_protocol",
]
