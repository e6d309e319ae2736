"""Segment images with your own words from Python: :class:`OpenVocabPredictor`.

    from sed_d2 import OpenVocabPredictor

    predictor = OpenVocabPredictor("configs/sed/convnextB_768.yaml", "sed_convnextB.pth")
    result = predictor("photo.jpg", vocabulary=["cat, kitten", "dog", "grass", "sky"])
    result.labels  # (H, W) class index per pixel, result.classes[i] names class i
    result.scores  # (H, W) score of that class

Any registered method is built from its config file the way ``tools/train_net.py`` builds it
(:func:`sed_d2.config.get_cfg`, :func:`~sed_d2.config.apply_runtime_flags`); images go through
the detectron2 test resize (``INPUT.MIN_SIZE_TEST`` / ``MAX_SIZE_TEST``) and the method's test
protocol (``model.inference_scores``), as in evaluation, ``TEST.IMS_PER_BATCH`` at a time.
Label maps come back at each image's own size with bounded memory: the per-class scores are
resized in chunks of classes and reduced to the winning class as they go, so a 12-megapixel
photo with 847 classes never holds 847 full-size maps (on an H200: 0.5 GiB and 0.6 s, where
one ``F.interpolate`` of all maps takes 38 GiB). The resize is a bilinear one whose every
value is computed alone, so the result does not depend on the chunk size.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from detectron2.config import CfgNode
from detectron2.data import transforms as T
from detectron2.modeling import build_model
from PIL import Image

from .config import apply_runtime_flags, get_cfg
from .data.io import read_image
from .data.vocabulary import unprompted_background_index, vocabulary_of
from .engine.checkpointer import ConvertingCheckpointer

__all__ = [
    "OpenVocabPredictor",
    "Segmentation",
    "pointwise_bilinear_resize",
    "resized_argmax",
    "resolve_vocabulary",
    "rgb_array",
]

logger = logging.getLogger(__name__)

ImageInput = Union[str, "os.PathLike[str]", np.ndarray, Image.Image, torch.Tensor]
# Class names, or the name of a registered dataset whose classes to use.
VocabularyInput = Union[str, Sequence[str]]

# Full-size values resized at once when label maps are brought to the image's size: a chunk
# of 2^25 float32 values is 128 MiB and the resize holds about three such tensors at once, so
# about 0.4 GiB whatever the image size and the vocabulary.
DEFAULT_MAX_RESIZE_ELEMENTS = 2**25


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


def _source_pixels(in_size: int, out_size: int, device: torch.device):
    """For each output row (or column): the two source rows it blends and their weights, by
    the rule of ``F.interpolate(mode="bilinear", align_corners=False)`` (pixel centres,
    clamped at the borders)."""
    centre = (torch.arange(out_size, device=device, dtype=torch.float32) + 0.5) * (in_size / out_size) - 0.5
    centre = centre.clamp(min=0)
    low = centre.floor().long().clamp(max=in_size - 1)
    high = (low + 1).clamp(max=in_size - 1)
    high_weight = centre - low.float()
    return low, high, 1 - high_weight, high_weight


def pointwise_bilinear_resize(maps: torch.Tensor, size: Tuple[int, int]) -> torch.Tensor:
    """``maps`` (C, h, w) float32 resized to ``size`` (bilinear, pixel centres, no antialias:
    ``F.interpolate(maps[None], size, mode="bilinear", align_corners=False)[0]`` to within a
    rounding step).

    Unlike ``F.interpolate``, whose CPU kernel picks its code path (and so its last bit) by
    the number of maps, every output value here is the same sequence of rounded operations
    on its four source values, so resizing maps in any chunks gives exactly the values of
    resizing them all at once."""
    height, width = size
    row_low, row_high, row_low_weight, row_high_weight = _source_pixels(maps.shape[1], height, maps.device)
    col_low, col_high, col_low_weight, col_high_weight = _source_pixels(maps.shape[2], width, maps.device)
    # Separate multiply and add kernels: one fused kernel might contract them into an FMA on
    # some elements (vector body) and not on others (scalar tail).
    rows = maps.index_select(1, row_low).mul_(row_low_weight[:, None])
    rows.add_(maps.index_select(1, row_high).mul_(row_high_weight[:, None]))
    out = rows.index_select(2, col_low).mul_(col_low_weight)
    out.add_(rows.index_select(2, col_high).mul_(col_high_weight))
    return out


def resized_argmax(
    scores: torch.Tensor, size: Tuple[int, int], max_elements: int = DEFAULT_MAX_RESIZE_ELEMENTS
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Winning class and its score per pixel of ``scores`` (T, h, w) resized to ``size``:
    exactly ``pointwise_bilinear_resize(scores, size).max(0)`` (the first class on ties, NaN
    wins as in ``torch.max``), but at most ``max_elements`` resized values exist at a time
    (chunks of classes, reduced as they go)."""
    height, width = size
    chunk = max(1, max_elements // (height * width))
    scores = scores.float()
    best = labels = None
    for start in range(0, scores.shape[0], chunk):
        value, index = pointwise_bilinear_resize(scores[start : start + chunk], size).max(0)
        if best is None:
            best, labels = value, index
            continue
        # strict: an earlier class keeps a tie, as max/argmax does; a first NaN wins, as in max
        better = (value > best) | (value.isnan() & ~best.isnan())
        best = torch.where(better, value, best)
        labels = torch.where(better, index + start, labels)
    return labels, best


def resolve_vocabulary(vocabulary: VocabularyInput) -> List[str]:
    """Class names from a list of names, or from a registered dataset's name (its
    ``stuff_classes``)."""
    if isinstance(vocabulary, str):
        try:
            return vocabulary_of(vocabulary)
        except KeyError as e:
            raise ValueError(
                f"vocabulary {vocabulary!r} is not a registered dataset with classes; pass a list "
                f"of class names (e.g. [{vocabulary!r}]) or a dataset name ({e.args[0]})"
            ) from None
    return list(vocabulary)


class OpenVocabPredictor:
    """A method built from a config file and weights; images and a vocabulary in,
    :class:`Segmentation` out.

    Args:
        config: a config file (``configs/<method>/...yaml``) or a detectron2 ``CfgNode``
            with sed_d2's keys (:func:`sed_d2.config.get_cfg`).
        weights: checkpoint file (sed_d2 or an official layout); None = ``MODEL.WEIGHTS`` of
            the config. It must hold every model tensor (unless
            ``MODEL.OVSEG.ALLOW_PARTIAL_WEIGHTS``), so ``MODEL.OVSEG.CLIP_PRETRAINED`` is not
            downloaded. Without weights the model is randomly initialised (with a warning).
        opts: ``KEY VALUE ...`` config overrides, as on the command line (``MODEL.DEVICE
            cpu``).
        vocabulary: class names (synonyms of one class joined by ", ") or a registered
            dataset's name; None = the config's first test dataset's classes.
            :meth:`set_vocabulary` or a call's ``vocabulary`` changes it.
        max_resize_elements: bound on the values resized at once when label maps are
            brought to an image's size (memory, not results).
    """

    def __init__(
        self,
        config: Union[str, CfgNode],
        weights: Optional[str] = None,
        *,
        opts: Sequence[str] = (),
        vocabulary: Optional[VocabularyInput] = None,
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
        strict = not cfg.MODEL.OVSEG.ALLOW_PARTIAL_WEIGHTS
        if cfg.MODEL.WEIGHTS and strict:
            # Every parameter then comes from the weights (a file that leaves any out is
            # refused), so downloading CLIP's own first would be wasted time and a needless
            # network dependency.
            cfg.MODEL.OVSEG.CLIP_PRETRAINED = ""
        cfg.freeze()
        apply_runtime_flags(cfg)
        self.cfg = cfg
        self.model = build_model(cfg)  # on cfg.MODEL.DEVICE
        self.model.eval()
        if cfg.MODEL.WEIGHTS:
            ConvertingCheckpointer(self.model, strict=strict).load(cfg.MODEL.WEIGHTS)
        else:
            logger.warning(
                "No weights (MODEL.WEIGHTS is empty): the model is randomly initialised, so its "
                "segmentation is meaningless. Pass trained weights."
            )
        if vocabulary is not None:
            self.set_vocabulary(vocabulary)
        # The model resizes to its own working size itself; this is detectron2's test resize
        # (build_detection_test_loader's mapper), so images are seen exactly as in evaluation.
        self.resize = T.ResizeShortestEdge(cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST)
        self.batch_size = cfg.TEST.IMS_PER_BATCH
        self.max_resize_elements = int(max_resize_elements)

    @property
    def vocabulary(self) -> List[str]:
        """The class names of the results, index = label."""
        return list(self.model.test_vocabulary or [])

    def set_vocabulary(self, vocabulary: VocabularyInput) -> None:
        """Use these class names (synonyms of one class joined by ", "), or a registered
        dataset's, from now on. A dataset whose background is scored but not prompted
        (metadata ``background_handling`` "unprompted_class": VOC-21, COCO-Object) keeps that
        rule, as in its evaluation: the background gets ``MODEL.OVSEG.BACKGROUND_THRESHOLD``."""
        background = unprompted_background_index(vocabulary) if isinstance(vocabulary, str) else None
        self.model.set_vocabulary(resolve_vocabulary(vocabulary), background_index=background)

    @torch.no_grad()
    def __call__(
        self, images: Union[ImageInput, Sequence[ImageInput]], vocabulary: Optional[VocabularyInput] = None
    ) -> Union[Segmentation, List[Segmentation]]:
        """Segment one image (-> one :class:`Segmentation`) or a list of them (-> a list),
        ``TEST.IMS_PER_BATCH`` images per network call.

        ``vocabulary``: class names or a dataset name for this call only; None = the
        predictor's vocabulary."""
        single = not isinstance(images, (list, tuple))
        images = [images] if single else list(images)
        previous = self.model.test_vocabulary, self.model.background_index
        if vocabulary is not None:
            self.set_vocabulary(vocabulary)
        try:
            classes = list(self.model.vocabulary)  # an error here if there is none at all
            results = []
            for start in range(0, len(images), self.batch_size):
                # read per batch: a list of large photos is never all in memory at once
                arrays = [rgb_array(image) for image in images[start : start + self.batch_size]]
                results += self._segment(arrays, classes)
        finally:
            self.model.test_vocabulary, self.model.background_index = previous
        return results[0] if single else results

    def _segment(self, images: List[np.ndarray], classes: List[str]) -> List[Segmentation]:
        tensors = [
            torch.as_tensor(np.ascontiguousarray(self.resize.get_transform(image).apply_image(image).transpose(2, 0, 1)))
            for image in images
        ]
        results = []
        for image, scores in zip(images, self.model.inference_scores(tensors)):
            labels, best = resized_argmax(scores, image.shape[:2], self.max_resize_elements)
            results.append(Segmentation(labels.cpu().numpy(), best.cpu().numpy(), classes))
        return results
