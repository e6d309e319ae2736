"""A DetectionCheckpointer that loads safely and converts official checkpoints on the fly."""
import logging
import pickle

import torch
from detectron2.checkpoint import DetectionCheckpointer

from ..checkpoint import convert_official, official_layout

__all__ = ["ConvertingCheckpointer"]

logger = logging.getLogger(__name__)


class ConvertingCheckpointer(DetectionCheckpointer):
    """``DetectionCheckpointer`` + two things:

    * ``torch.load(..., weights_only=True)`` always (the safe loader; default since torch 2.6):
      a checkpoint that needs arbitrary unpickling is refused with a message, never executed.
    * a checkpoint of an official implementation (any layout in
      :data:`sed_d2.checkpoint.OFFICIAL_CONVERTERS`, e.g. the SED authors' ``model_final.pth``)
      is converted to this package's key names first, so ``MODEL.WEIGHTS`` takes official
      files directly.
    """

    def _torch_load(self, f):
        try:
            return torch.load(f, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as e:
            raise RuntimeError(
                f"{f} holds objects that torch.load(weights_only=True) refuses to unpickle; "
                "sed_d2 never unpickles arbitrary code. If you trust the file, re-save its "
                "state_dict of tensors (tools/convert_checkpoint.py --trust-file does this)."
            ) from e

    def _load_model(self, checkpoint):
        state_dict = checkpoint["model"]
        if official_layout(state_dict) is not None:
            layout, checkpoint["model"] = convert_official(state_dict)
            logger.info(f"Converted an official {layout} checkpoint to sed_d2 key names")
        return super()._load_model(checkpoint)
