"""A DetectionCheckpointer that loads safely, converts official checkpoints on the fly, never
leaves a truncated file under a final name and never saves non-finite parameters."""
import logging
import os
import pickle
from typing import List

import torch
from detectron2.checkpoint import DetectionCheckpointer

from ..checkpoint import convert_official, official_layout

__all__ = ["ConvertingCheckpointer", "IncompleteWeightsError", "atomic_write", "non_finite_parameters"]

logger = logging.getLogger(__name__)


class IncompleteWeightsError(RuntimeError):
    """A weights file leaves model parameters missing or shape-mismatched."""


def atomic_write(path: str, write) -> None:
    """``write(file)`` into a temporary file beside ``path``, flush and fsync it, then rename it
    over ``path``: a kill at any moment leaves either the old file or the new one, never a
    truncated file under the final name."""
    directory = os.path.dirname(os.path.abspath(path))
    temporary = os.path.join(directory, f".{os.path.basename(path)}.tmp{os.getpid()}")
    try:
        with open(temporary, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)


def non_finite_parameters(model: torch.nn.Module) -> List[str]:
    """Names of the parameters of ``model`` holding a NaN or an infinity, and of its buffers
    holding a NaN (buffers may hold infinities on purpose, e.g. CLIP's causal attention mask)."""
    bad = [n for n, p in model.named_parameters() if p.is_floating_point() and not bool(torch.isfinite(p).all())]
    return bad + [n for n, b in model.named_buffers() if b.is_floating_point() and bool(torch.isnan(b).any())]


def _describe_unreadable(path: str, error: Exception) -> str:
    """Which kind of bad file ``path`` is, from its first bytes and ``torch.load``'s error."""
    with open(path, "rb") as f:
        head = f.read(512)
    if "Weights only load failed" in str(error) and (head.startswith(b"PK\x03\x04") or head[:1] == b"\x80"):
        return (
            f"{path} is a PyTorch file that holds objects beyond tensors (an unsafe pickle): "
            "torch.load(weights_only=True) refuses it and sed_d2 never unpickles arbitrary code. If you "
            "trust the file, re-save its state_dict of tensors (tools/convert_checkpoint.py --trust-file)."
        )
    if head.startswith(b"PK\x03\x04"):
        return f"{path} is a truncated or corrupt PyTorch checkpoint (zip archive unreadable: {error})"
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        text = None
    if text is not None and text.strip() and all(c.isprintable() or c.isspace() for c in text):
        first = text.strip().splitlines()[0][:60]
        return f"{path} is a text file, not a checkpoint (it starts with {first!r})"
    return f"{path} is not a PyTorch checkpoint: unknown binary content (garbage bytes?) ({type(error).__name__})"


class ConvertingCheckpointer(DetectionCheckpointer):
    """``DetectionCheckpointer`` + two things:

    * ``torch.load(..., weights_only=True)`` always (the safe loader; default since torch 2.6):
      a checkpoint that needs arbitrary unpickling is refused with a message, never executed.
    * a checkpoint of an official implementation (any layout in
      :data:`sed_d2.checkpoint.OFFICIAL_CONVERTERS`, e.g. the SED authors' ``model_final.pth``)
      is converted to this package's key names first, so ``MODEL.WEIGHTS`` takes official
      files directly.
    * an unreadable file is named with what it is: truncated, a text file, garbage bytes, an
      unsafe pickle.
    * ``strict`` (default): a file that leaves model parameters or buffers missing or
      shape-mismatched raises :class:`IncompleteWeightsError` (``MODEL.OVSEG.ALLOW_PARTIAL_WEIGHTS``
      turns it off for fine-tuning); every load logs how many tensors were loaded.
    * ``save`` writes atomically (temporary file, fsync, rename; ``last_checkpoint`` too) and
      refuses non-finite parameters, so ``--resume`` always restarts from a good state.
    """

    def __init__(self, model, save_dir: str = "", *, strict: bool = True, **checkpointables):
        super().__init__(model, save_dir, **checkpointables)
        self.strict = strict

    def _torch_load(self, f):
        if not os.path.isfile(f):
            raise FileNotFoundError(f"checkpoint {f} does not exist")
        try:
            return torch.load(f, map_location="cpu", weights_only=True)
        except (pickle.UnpicklingError, RuntimeError, KeyError, EOFError, ValueError) as e:
            raise RuntimeError(_describe_unreadable(f, e)) from e

    def _load_model(self, checkpoint):
        state_dict = checkpoint["model"]
        if official_layout(state_dict) is not None:
            layout, checkpoint["model"] = convert_official(state_dict)
            logger.info(f"Converted an official {layout} checkpoint to sed_d2 key names")
        expected = self.model.state_dict()
        incompatible = super()._load_model(checkpoint)
        mismatched = [key for key, *_ in incompatible.incorrect_shapes]
        # detectron2 drops shape-mismatched tensors before loading: they also show as missing
        missing = [key for key in incompatible.missing_keys if key not in mismatched]
        loaded = len(expected) - len(missing) - len(mismatched)
        logger.info(
            f"Loaded {loaded} of {len(expected)} model tensors; {len(missing)} missing, "
            f"{len(mismatched)} shape-mismatched, {len(incompatible.unexpected_keys)} unexpected in the file"
        )
        if self.strict and (missing or mismatched):
            shapes = ", ".join(f"{k} {tuple(a)} in file vs {tuple(b)} in model" for k, a, b in incompatible.incorrect_shapes[:5])
            raise IncompleteWeightsError(
                f"the weights leave {len(missing)} model tensors missing "
                f"({', '.join(missing[:5])}{', ...' if len(missing) > 5 else ''}) and "
                f"{len(mismatched)} shape-mismatched ({shapes}{', ...' if len(mismatched) > 5 else ''}): "
                "is it the checkpoint of this config? Set MODEL.OVSEG.ALLOW_PARTIAL_WEIGHTS True to load "
                "it partially (fine-tuning)."
            )
        return incompatible

    def save(self, name: str, **kwargs) -> None:
        if not self.save_dir or not self.save_to_disk:
            return
        bad = non_finite_parameters(self.model)
        if bad:
            last = self.get_checkpoint_file() or "none yet"
            raise FloatingPointError(
                f"not saving checkpoint {name}: {len(bad)} parameters/buffers are not finite "
                f"({', '.join(bad[:5])}{', ...' if len(bad) > 5 else ''}); the last checkpoint with "
                f"finite parameters is {last}"
            )
        data = {"model": self.model.state_dict()}
        for key, obj in self.checkpointables.items():
            data[key] = obj.state_dict()
        data.update(kwargs)
        basename = f"{name}.pth"
        path = os.path.join(self.save_dir, basename)
        self.logger.info(f"Saving checkpoint to {path}")
        atomic_write(path, lambda f: torch.save(data, f))
        self.tag_last_checkpoint(basename)

    def tag_last_checkpoint(self, last_filename_basename: str) -> None:
        path = os.path.join(self.save_dir, "last_checkpoint")
        atomic_write(path, lambda f: f.write(last_filename_basename.encode("utf-8")))
