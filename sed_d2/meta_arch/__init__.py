"""Detectron2 meta-architectures, one thin module per method (importing registers them)."""
from .base import OpenVocabSegmentor, vocabulary_of
from .sed import SED

__all__ = ["OpenVocabSegmentor", "SED", "vocabulary_of"]
