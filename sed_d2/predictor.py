"""Segment images with your own words from Python: :class:`OpenVocabPredictor`.

    from sed_d2 import OpenVocabPredictor

    predictor = OpenVocabPredictor("configs/sed/convnextB_768.yaml", "sed_convnextB.pth")
    result = predictor("photo.jpg", vocabulary=["cat, kitten", "dog", "grass", "sky"])
    result.labels  # (H, W) class index per pixel, result.classes[i] names class i
    result.scores  # (H, W) score of that class

Any registered method is built from its config file the way ``tools/train_net.py`` builds it
(:func:`sed_d2.config.get_cfg`, :func:`~sed_d2.config.apply_runtime_flags`); images go through
the detectron2 test resize (``INPUT.MIN_SIZE_TEST`` / ``MAX_SIZE_TEST``) and the method's test
protocol, exactly as in evaluation. Label maps come back at each image's own size with
bounded memory: the per-class scores are resized in chunks of classes and reduced to the
winning class as they go, so a 12-megapixel photo with 847 classes never holds 847
full-size maps.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F
from detectron2.config import CfgNode
from detectron2.data import transforms as T
from detectron2.modeling import build_model
from PIL import Image

from .config import apply_runtime_flags, get_cfg
from .data.io import read_image
from .engine.checkpointer import ConvertingCheckpointer

__all__ = ["OpenVocabPredictor", "Segmentation", "resized_argmax", "rgb_array"]

logger = logging.getLogger(__name__)

ImageInput = Union[str, "os.PathLike[str]", np.ndarray, Image.Image, torch.Tensor]

# Values resized at once when label maps are brought to the image's size: 2^26 float32
# values are 256 MiB, whatever the image size and the vocabulary.
DEFAULT_MAX_RESIZE_ELEMENTS = 2**26


@dataclass
class Segmentation:
    """The result for one image, at the image's own size."""

    labels: np.ndarray  # (H, W) int64: index of the winning class of each pixel
    scores: np.ndarray  # (H, W) float32: that class's score (the method's probability)
    classes: List[str]  # the vocabulary: classes[i] is the name of label i


def rgb_array(image: ImageInput) -> np.ndarray:
    """(H, W, 3) uint8 RGB from a file path, a PIL image, an (H, W, 3) / (H, W) uint8 array or
    a (3, H, W) uint8 tensor (torchvision's layout). Other dtypes are refused rather than
    guessed (is a float image 0-1 or 0-255?)."""
    if isinstance(image, (str, os.PathLike)):
        return read_image(os.fspath(image))  # errors name the file
    if isinstance(image, Image.Image):
        if image.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
            raise ValueError(
                f"a PIL image of mode {image.mode!r} (16/32-bit) is not an 8-bit picture; pass its "
                "file path (16-bit files are scaled to 8 bits) or convert it to 8-bit RGB"
            )
        return np.asarray(image.convert("RGB"))
    if isinstance(image, torch.Tensor):
        if image.dim() != 3 or image.shape[0] != 3 or image.dtype != torch.uint8:
            raise ValueError(
                f"an image tensor must be (3, H, W) uint8 RGB, got {tuple(image.shape)} {image.dtype}"
            )
        return np.ascontiguousarray(image.permute(1, 2, 0).cpu().numpy())
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or not (image.ndim == 2 or (image.ndim == 3 and image.shape[2] == 3)):
            raise ValueError(
                f"an image array must be (H, W, 3) RGB or (H, W) grey uint8, got {image.shape} {image.dtype}"
            )
        return np.repeat(image[:, :, None], 3, axis=2) if image.ndim == 2 else image
    raise TypeError(f"cannot read an image from a {type(image).__name__}; pass a path, PIL image, array or tensor")


def resized_argmax(
    scores: torch.Tensor, size: Tuple[int, int], max_elements: int = DEFAULT_MAX_RESIZE_ELEMENTS
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Winning class and its score per pixel of ``scores`` (T, h, w) resized (bilinear) to
    ``size``: ``F.interpolate(scores[None], size)[0].max(0)`` (the first class on ties), but at
    most ``max_elements`` resized values exist at a time (chunks of classes). Bit-identical
    when all classes fit in one chunk; otherwise the resize's last bit may differ on CPU,
    where it can depend on how many maps are resized together."""
    height, width = size
    chunk = max(1, max_elements // (height * width))
    best = labels = None
    for start in range(0, scores.shape[0], chunk):
        part = F.interpolate(
            scores[None, start : start + chunk].float(), size=(height, width), mode="bilinear", align_corners=False
        )[0]
        value, index = part.max(0)
        if best is None:
            best, labels = value, index
        else:
            better = value > best  # strict: an earlier class keeps a tie, as argmax does
            best = torch.where(better, value, best)
            labels = torch.where(better, index + start, labels)
    return labels, best


class OpenVocabPredictor:
    """A method built from a config file and weights; images and a vocabulary in,
    :class:`Segmentation` out.

    Args:
        config: a config file (``configs/<method>/...yaml``) or a detectron2 ``CfgNode``
            with sed_d2's keys (:func:`sed_d2.config.get_cfg`).
        weights: checkpoint file (sed_d2 or an official layout); None = ``MODEL.WEIGHTS`` of
            the config. Without any, the model is randomly initialised (with a warning).
        opts: ``KEY VALUE ...`` config overrides, as on the command line (``MODEL.DEVICE
            cpu``).
        vocabulary: class names (synonyms of one class joined by ", "); None = the config's
            first test dataset's classes. :meth:`set_vocabulary` or a call's ``vocabulary``
            changes it.
        max_resize_elements: bound on the values resized at once when label maps are
            brought to an image's size (memory, not results).
    """

    def __init__(
        self,
        config: Union[str, CfgNode],
        weights: Optional[str] = None,
        *,
        opts: Sequence[str] = (),
        vocabulary: Optional[Sequence[str]] = None,
        max_resize_elements: int = DEFAULT_MAX_RESIZE_ELEMENTS,
    ):
        if isinstance(config, CfgNode):
            cfg = config.clone()
            cfg.defrost()
            cfg.merge_from_list(list(opts))
        else:
            cfg = get_cfg(config, opts)
        if weights is not None:
            cfg.MODEL.WEIGHTS = weights
        cfg.freeze()
        apply_runtime_flags(cfg)
        self.cfg = cfg
        self.model = build_model(cfg)  # on cfg.MODEL.DEVICE
        self.model.eval()
        if cfg.MODEL.WEIGHTS:
            ConvertingCheckpointer(self.model).load(cfg.MODEL.WEIGHTS)
        else:
            logger.warning(
                "No weights (MODEL.WEIGHTS is empty): the model is randomly initialised, so its "
                "segmentation is meaningless. Pass trained weights."
            )
        if vocabulary is not None:
            self.set_vocabulary(vocabulary)
        # The model resizes to its own working size itself; this is detectron2's test resize,
        # so images are seen exactly as in evaluation.
        self.resize = T.ResizeShortestEdge(cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST)
        self.max_resize_elements = int(max_resize_elements)

    @property
    def vocabulary(self) -> List[str]:
        """The class names of the results, index = label."""
        return list(self.model.test_vocabulary or [])

    def set_vocabulary(self, vocabulary: Sequence[str]) -> None:
        """Use these class names from now on (synonyms of one class joined by ", ")."""
        self.model.set_vocabulary(list(vocabulary))

    @torch.no_grad()
    def __call__(
        self, images: Union[ImageInput, Sequence[ImageInput]], vocabulary: Optional[Sequence[str]] = None
    ) -> Union[Segmentation, List[Segmentation]]:
        """Segment one image (-> one :class:`Segmentation`) or a list of them (-> a list).

        ``vocabulary``: class names for this call only; None = the predictor's vocabulary."""
        single = not isinstance(images, (list, tuple))
        arrays = [rgb_array(image) for image in ([images] if single else images)]
        previous = self.model.test_vocabulary
        if vocabulary is not None:
            self.set_vocabulary(vocabulary)
        try:
            results = [self._segment(array) for array in arrays]
        finally:
            self.model.test_vocabulary = previous
        return results[0] if single else results

    def _segment(self, image: np.ndarray) -> Segmentation:
        height, width = image.shape[:2]
        resized = self.resize.get_transform(image).apply_image(image)
        tensor = torch.as_tensor(np.ascontiguousarray(resized.transpose(2, 0, 1)))
        (scores,) = self.model.inference_scores([tensor])
        labels, best = resized_argmax(scores, (height, width), self.max_resize_elements)
        return Segmentation(labels.cpu().numpy(), best.cpu().numpy(), list(self.model.vocabulary))
