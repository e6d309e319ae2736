"""Reading images and label maps with errors that name the file.

Every reader of dataset files (training mapper, test mapper, evaluator, demo) goes through
these two functions, so a missing, truncated or wrongly formatted file is reported the same
way everywhere: with its path and what is wrong with it.
"""
from __future__ import annotations

import numpy as np
from PIL import Image, ImageOps

__all__ = ["LABEL_IMAGE_MODES", "read_image", "read_label_map"]

# PIL modes of single-channel label maps: 8-bit grey, palette indices (read as the indices,
# not the colours), 32-bit and 16-bit integers (ADE20K-847's uint16 TIFFs), 1-bit.
LABEL_IMAGE_MODES = ("L", "P", "I", "I;16", "I;16B", "I;16L", "1")


def _open_error(kind: str, path: str, error: Exception) -> Exception:
    if isinstance(error, FileNotFoundError):
        return FileNotFoundError(f"{kind} file {path} does not exist")
    # PIL: UnidentifiedImageError (not an image: garbage, text), OSError("image file is
    # truncated ..."), DecompressionBombError, ...
    return OSError(f"cannot read {kind} file {path}: {type(error).__name__}: {error}")


def read_image(path: str, format: str = "RGB") -> np.ndarray:
    """(H, W, 3) uint8 image in ``format`` ("RGB" or "BGR"), EXIF orientation applied (as
    detectron2's ``read_image``). 16-bit, palette, grey and RGBA images are converted to RGB."""
    try:
        with Image.open(path) as image:
            image = ImageOps.exif_transpose(image)
            if image.mode in ("I", "I;16", "I;16B", "I;16L"):
                # 16-bit grey: scale to 8 bits rather than let PIL clip every value above 255
                values = np.asarray(image, dtype=np.float64)
                peak = max(float(values.max()), 1.0)
                scale = 255.0 / (65535.0 if peak > 255 else 255.0)
                image = Image.fromarray(np.clip(values * scale, 0, 255).round().astype(np.uint8))
            array = np.asarray(image.convert("RGB"))
    except Exception as e:
        raise _open_error("image", path, e) from e
    if format == "BGR":
        return np.ascontiguousarray(array[:, :, ::-1])
    if format != "RGB":
        raise ValueError(f"image format must be 'RGB' or 'BGR', got {format!r}")
    return array


def read_label_map(path: str) -> np.ndarray:
    """(H, W) int64 label map from an image file (see ``LABEL_IMAGE_MODES``) or a ``.npy``
    array. A colour (RGB) image is refused: it is a visualisation, not a label map."""
    mode = None
    try:
        if path.endswith(".npy"):
            array = np.load(path, allow_pickle=False)
        else:
            with Image.open(path) as image:
                mode = image.mode
                array = np.asarray(image) if mode in LABEL_IMAGE_MODES else None
    except Exception as e:
        raise _open_error("label", path, e) from e
    if array is None:
        raise ValueError(
            f"label file {path} has image mode {mode!r}; expected a single-channel label map "
            "(8/16-bit grey or palette indices), not a colour image"
        )
    if array.ndim != 2:
        raise ValueError(f"label file {path} holds an array of shape {array.shape}; expected (H, W)")
    return array.astype(np.int64)
