"""Training mappers: dataset dict -> augmented tensors for the model."""
import copy
import logging
import random
from typing import List, Optional

import cv2
import numpy as np
import torch
from detectron2.config import configurable
from detectron2.data import MetadataCatalog
from detectron2.data import detection_utils as utils
from detectron2.data import transforms as T
from fvcore.transforms.transform import NoOpTransform, Transform

from .caption_mapper import ImageCaptionMapper
from .io import read_image, read_label_map

__all__ = [
    "ColorAugSSDTransform",
    "ImageCaptionMapper",
    "SemanticSegmentationMapper",
    "TRAIN_MAPPERS",
    "TestImageMapper",
    "build_train_mapper",
]

logger = logging.getLogger(__name__)


class ColorAugSSDTransform(Transform):
    """SSD-style photometric distortion of an RGB/BGR uint8 image; labels are untouched.

    Brightness (+-32), then contrast [0.5, 1.5] either before or after saturation [0.5, 1.5]
    and hue (+-18 on OpenCV's 0-180 scale), each applied with probability 0.5 -- the recipe of
    SSD used by Mask2Former, CAT-Seg and SED. The random draws happen when the transform is
    created, so one instance applies the same distortion every time it is used.
    """

    def __init__(
        self,
        img_format: str = "RGB",
        brightness_delta: int = 32,
        contrast_range=(0.5, 1.5),
        saturation_range=(0.5, 1.5),
        hue_delta: int = 18,
        rng: Optional[random.Random] = None,
    ):
        super().__init__()
        if img_format not in ("RGB", "BGR"):
            raise ValueError(f"ColorAugSSDTransform supports RGB or BGR images, got {img_format}")
        rng = rng or random
        self.img_format = img_format

        def maybe(draw):
            return draw() if rng.random() < 0.5 else None

        self.brightness = maybe(lambda: rng.uniform(-brightness_delta, brightness_delta))
        self.contrast = maybe(lambda: rng.uniform(*contrast_range))
        self.saturation = maybe(lambda: rng.uniform(*saturation_range))
        self.hue = maybe(lambda: rng.randint(-hue_delta, hue_delta))
        self.contrast_first = rng.random() < 0.5

    @staticmethod
    def _scale_shift(img: np.ndarray, alpha: float = 1.0, beta: float = 0.0) -> np.ndarray:
        return np.clip(img.astype(np.float32) * alpha + beta, 0, 255).astype(np.uint8)

    def _saturation_hue(self, img: np.ndarray) -> np.ndarray:
        if self.saturation is None and self.hue is None:
            return img
        to_hsv = cv2.COLOR_RGB2HSV if self.img_format == "RGB" else cv2.COLOR_BGR2HSV
        from_hsv = cv2.COLOR_HSV2RGB if self.img_format == "RGB" else cv2.COLOR_HSV2BGR
        hsv = cv2.cvtColor(img, to_hsv)
        if self.saturation is not None:
            hsv[:, :, 1] = self._scale_shift(hsv[:, :, 1], alpha=self.saturation)
        if self.hue is not None:
            hsv[:, :, 0] = (hsv[:, :, 0].astype(int) + self.hue) % 180
        return cv2.cvtColor(hsv, from_hsv)

    def apply_image(self, img: np.ndarray) -> np.ndarray:
        if self.brightness is not None:
            img = self._scale_shift(img, beta=self.brightness)
        if self.contrast_first and self.contrast is not None:
            img = self._scale_shift(img, alpha=self.contrast)
        img = self._saturation_hue(img)
        if not self.contrast_first and self.contrast is not None:
            img = self._scale_shift(img, alpha=self.contrast)
        return img

    def apply_coords(self, coords):
        return coords

    def apply_segmentation(self, segmentation):
        return segmentation

    def inverse(self):
        return NoOpTransform()


class RandomColorAugSSD(T.Augmentation):
    """Augmentation that draws a fresh :class:`ColorAugSSDTransform` per image."""

    def __init__(self, img_format: str = "RGB"):
        super().__init__()
        self.img_format = img_format

    def get_transform(self, image):
        return ColorAugSSDTransform(self.img_format)


class SemanticSegmentationMapper:
    """Training mapper for semantic segmentation (resize, crop, colour, flip, pad).

    1. ``ResizeShortestEdge`` (INPUT.MIN_SIZE_TRAIN / MAX_SIZE_TRAIN / sampling),
    2. random crop of INPUT.CROP.SIZE (re-drawn while one class covers more than
       INPUT.CROP.SINGLE_CATEGORY_MAX_AREA),
    3. SSD colour augmentation if INPUT.COLOR_AUG_SSD, 4. horizontal flip,
    5. padding to the crop size (image with 128, label with the ignore value), so every image
       of a batch has the crop size.
    Labels outside [0, num_classes) that are not the dataset's ignore value raise a ValueError
    naming the file -- here, on the CPU worker, not as a device sync inside the model.
    """

    @configurable
    def __init__(
        self,
        *,
        augmentations: List,
        image_format: str,
        ignore_label: int,
        num_classes: int,
        dataset_ignore_label: Optional[int] = None,
        crop_size: Optional[tuple] = None,
        pad_value: int = 128,
    ):
        self.augmentations = T.AugmentationList(augmentations)
        self.image_format = image_format
        self.ignore_label = ignore_label
        self.dataset_ignore_label = (
            ignore_label if dataset_ignore_label is None else dataset_ignore_label
        )
        self.num_classes = num_classes
        self.crop_size = crop_size
        self.pad_value = pad_value
        logger.info(f"SemanticSegmentationMapper augmentations: {augmentations}")

    @classmethod
    def from_config(cls, cfg):
        augs = [
            T.ResizeShortestEdge(
                cfg.INPUT.MIN_SIZE_TRAIN, cfg.INPUT.MAX_SIZE_TRAIN, cfg.INPUT.MIN_SIZE_TRAIN_SAMPLING
            )
        ]
        meta = MetadataCatalog.get(cfg.DATASETS.TRAIN[0])
        # Labels are remapped from the dataset's ignore value to the one the loss expects.
        ignore_label = cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE
        crop_size = None
        if cfg.INPUT.CROP.ENABLED:
            crop_size = tuple(cfg.INPUT.CROP.SIZE)
            augs.append(
                T.RandomCrop_CategoryAreaConstraint(
                    cfg.INPUT.CROP.TYPE,
                    cfg.INPUT.CROP.SIZE,
                    cfg.INPUT.CROP.SINGLE_CATEGORY_MAX_AREA,
                    ignore_label,
                )
            )
        if cfg.INPUT.COLOR_AUG_SSD:
            augs.append(RandomColorAugSSD(cfg.INPUT.FORMAT))
        if cfg.INPUT.RANDOM_FLIP != "none":
            augs.append(
                T.RandomFlip(
                    horizontal=cfg.INPUT.RANDOM_FLIP == "horizontal",
                    vertical=cfg.INPUT.RANDOM_FLIP == "vertical",
                )
            )
        return {
            "augmentations": augs,
            "image_format": cfg.INPUT.FORMAT,
            "ignore_label": ignore_label,
            "dataset_ignore_label": meta.ignore_label,
            "num_classes": len(meta.stuff_classes),
            "crop_size": crop_size,
        }

    def _check_labels(self, sem_seg: np.ndarray, file_name: str) -> None:
        values = np.unique(sem_seg)
        bad = values[(values >= self.num_classes) & (values != self.dataset_ignore_label)]
        bad = np.concatenate([bad, values[values < 0]])
        if bad.size:
            raise ValueError(
                f"label file {file_name} has values {bad.astype(int).tolist()[:10]} outside "
                f"[0, {self.num_classes}) that are not the ignore value {self.dataset_ignore_label}; "
                "re-run the dataset's prepare script"
            )

    def __call__(self, dataset_dict):
        dataset_dict = copy.deepcopy(dataset_dict)
        image = read_image(dataset_dict["file_name"], format=self.image_format)
        utils.check_image_size(dataset_dict, image)
        if "sem_seg_file_name" not in dataset_dict:
            raise ValueError(
                f"training sample {dataset_dict['file_name']} has no 'sem_seg_file_name'"
            )
        # float64: detectron2 resizes non-uint8 labels with torch, which has no int64 path;
        # it is exact for every label value (uint16 TIFF included) and nearest-neighbour.
        label_file = dataset_dict.pop("sem_seg_file_name")
        sem_seg = read_label_map(label_file).astype("double")
        self._check_labels(sem_seg, label_file)
        if self.dataset_ignore_label != self.ignore_label:
            sem_seg[sem_seg == self.dataset_ignore_label] = self.ignore_label

        aug_input = T.AugInput(image, sem_seg=sem_seg)
        self.augmentations(aug_input)
        image, sem_seg = aug_input.image, aug_input.sem_seg

        image = torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1)))
        sem_seg = torch.as_tensor(sem_seg.astype("long"))
        if self.crop_size is not None:
            pad_h = max(self.crop_size[0] - image.shape[-2], 0)
            pad_w = max(self.crop_size[1] - image.shape[-1], 0)
            if pad_h or pad_w:
                image = torch.nn.functional.pad(image, (0, pad_w, 0, pad_h), value=self.pad_value)
                sem_seg = torch.nn.functional.pad(
                    sem_seg, (0, pad_w, 0, pad_h), value=self.ignore_label
                )
        dataset_dict["image"] = image
        dataset_dict["sem_seg"] = sem_seg
        return dataset_dict


class TestImageMapper:
    """Test-time mapper: the image (read by :func:`~sed_d2.data.io.read_image`, so a missing or
    truncated file is named), resized by ``ResizeShortestEdge(INPUT.MIN_SIZE_TEST,
    INPUT.MAX_SIZE_TEST)`` as detectron2's default test mapper does, with the original
    ``height``/``width`` the prediction is resized back to. Labels are read by the evaluator."""

    @configurable
    def __init__(self, *, min_size: int, max_size: int, image_format: str):
        self.resize = T.ResizeShortestEdge(min_size, max_size)
        self.image_format = image_format

    @classmethod
    def from_config(cls, cfg):
        return {
            "min_size": cfg.INPUT.MIN_SIZE_TEST,
            "max_size": cfg.INPUT.MAX_SIZE_TEST,
            "image_format": cfg.INPUT.FORMAT,
        }

    def __call__(self, dataset_dict):
        dataset_dict = {k: v for k, v in dataset_dict.items() if k != "sem_seg_file_name"}
        image = read_image(dataset_dict["file_name"], format=self.image_format)
        height, width = image.shape[:2]
        image = self.resize.get_transform(image).apply_image(image)
        dataset_dict["image"] = torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1)))
        dataset_dict.setdefault("height", height)
        dataset_dict.setdefault("width", width)
        return dataset_dict


# INPUT.DATASET_MAPPER_NAME -> training mapper class (built from the config).
TRAIN_MAPPERS = {
    "semantic_segmentation": SemanticSegmentationMapper,
    "image_caption": ImageCaptionMapper,
}


def build_train_mapper(cfg):
    """The training mapper named by ``INPUT.DATASET_MAPPER_NAME``."""
    name = cfg.INPUT.DATASET_MAPPER_NAME
    if name not in TRAIN_MAPPERS:
        raise ValueError(f"INPUT.DATASET_MAPPER_NAME must be one of {sorted(TRAIN_MAPPERS)}, got {name!r}")
    return TRAIN_MAPPERS[name](cfg)
