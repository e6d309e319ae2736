"""Drawing semantic segmentations: a class palette, a colour overlay and a legend strip.

Everything takes and returns numpy arrays (RGB, uint8), so it serves the demo, notebooks and
tests alike, with no detectron2 or torch dependency.
"""

import colorsys
from typing import List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image, ImageDraw, ImageFont

__all__ = [
    "class_palette",
    "count_class_pixels",
    "legend_entries",
    "overlay_segmentation",
    "draw_legend",
    "render_segmentation",
]

_GOLDEN_RATIO_CONJUGATE = 0.618033988749895
# (saturation, value) levels cycled with the hue, so neighbouring class ids also differ in
# saturation/brightness; all are saturated enough never to look like the legend's grey text.
_SATURATION_VALUE_LEVELS = ((0.85, 0.95), (0.60, 0.80), (1.00, 0.70))

_LEGEND_BACKGROUND = (255, 255, 255)
_LEGEND_TEXT = (20, 20, 20)
_SWATCH_OUTLINE = (60, 60, 60)


def class_palette(num_classes: int) -> np.ndarray:
    """Deterministic, pairwise distinct colours: (num_classes, 3) uint8 RGB.

    Hues step by the golden ratio, so any prefix of the palette is spread around the colour
    wheel, and class ``i`` gets the same colour whatever ``num_classes`` is.
    """
    if num_classes < 0:
        raise ValueError(f"num_classes must be >= 0, got {num_classes}")
    palette = np.zeros((num_classes, 3), np.uint8)
    used = set()
    for i in range(num_classes):
        hue = (0.02 + i * _GOLDEN_RATIO_CONJUGATE) % 1.0
        saturation, value = _SATURATION_VALUE_LEVELS[i % len(_SATURATION_VALUE_LEVELS)]
        rgb = tuple(int(round(255 * c)) for c in colorsys.hsv_to_rgb(hue, saturation, value))
        # With thousands of classes two hues can round to one 8-bit colour: darken the newcomer
        # a little until it is unique (deterministic, and invisible to the eye).
        while rgb in used:
            rgb = tuple(max(c - 1, 0) for c in rgb)
        used.add(rgb)
        palette[i] = rgb
    return palette


def count_class_pixels(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Pixels per class id in ``[0, num_classes)``; other values (ignore) are not counted."""
    flat = np.asarray(labels).reshape(-1).astype(np.int64)
    flat = flat[(flat >= 0) & (flat < num_classes)]
    return np.bincount(flat, minlength=num_classes)


def legend_entries(
    class_names: Sequence[str], pixel_counts: Sequence[int]
) -> List[Tuple[int, str, float]]:
    """``(class id, name, share of counted pixels)`` of the present classes, largest first."""
    if len(class_names) != len(pixel_counts):
        raise ValueError(
            f"{len(class_names)} class names but {len(pixel_counts)} pixel counts; "
            "they must match one to one"
        )
    total = float(sum(int(c) for c in pixel_counts))
    present = [(i, int(c)) for i, c in enumerate(pixel_counts) if int(c) > 0]
    present.sort(key=lambda item: (-item[1], item[0]))
    return [(i, str(class_names[i]), count / total) for i, count in present]


def _class_borders(labels: np.ndarray) -> np.ndarray:
    """Mask of pixels that have a 4-neighbour of another class (2 px wide lines)."""
    borders = np.zeros(labels.shape, bool)
    horizontal = labels[:, 1:] != labels[:, :-1]
    vertical = labels[1:, :] != labels[:-1, :]
    borders[:, 1:] |= horizontal
    borders[:, :-1] |= horizontal
    borders[1:, :] |= vertical
    borders[:-1, :] |= vertical
    return borders


def overlay_segmentation(
    image: np.ndarray,
    labels: np.ndarray,
    palette: np.ndarray,
    alpha: float = 0.5,
    draw_borders: bool = True,
) -> np.ndarray:
    """Blend a colour per class over the image.

    Args:
        image: (H, W, 3) uint8 RGB.
        labels: (H, W) integer class ids; values outside ``[0, len(palette))`` (e.g. 255
            ignore) leave the image as it is.
        palette: (N, 3) uint8 RGB, e.g. ``class_palette(N)``.
        alpha: opacity of the class colours, in [0, 1].
        draw_borders: darken the pixels where the class changes, which keeps neighbouring
            regions of similar colour apart.

    Returns:
        (H, W, 3) uint8 RGB.
    """
    image = np.asarray(image)
    labels = np.asarray(labels)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"image must be (H, W, 3) uint8 RGB, got {image.shape} {image.dtype}")
    if labels.shape != image.shape[:2]:
        raise ValueError(f"labels {labels.shape} do not match the image size {image.shape[:2]}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    palette = np.asarray(palette, np.uint8)

    valid = (labels >= 0) & (labels < len(palette))
    colours = palette[np.where(valid, labels, 0)].astype(np.float32)
    blended = image.astype(np.float32)
    blended[valid] = (1.0 - alpha) * blended[valid] + alpha * colours[valid]
    if draw_borders:
        blended[_class_borders(labels)] *= 0.25
    return np.clip(np.rint(blended), 0, 255).astype(np.uint8)


def _legend_font(font_size: int):
    try:  # Pillow >= 10.1 with FreeType: a scalable font of the requested size
        return ImageFont.load_default(size=font_size)
    except (TypeError, OSError, ImportError):
        return ImageFont.load_default()


def _fit_text(draw: ImageDraw.ImageDraw, text: str, font, max_width: float) -> str:
    """``text``, shortened with '...' if it is wider than ``max_width`` pixels."""
    if draw.textlength(text, font=font) <= max_width:
        return text
    while text and draw.textlength(text + "...", font=font) > max_width:
        text = text[:-1]
    return text + "..."


def draw_legend(
    class_names: Sequence[str],
    pixel_counts: Sequence[int],
    palette: np.ndarray,
    width: int,
    font_size: int = 14,
) -> np.ndarray:
    """A legend strip listing the present classes: colour swatch, name and pixel share.

    Entries flow left to right and wrap onto new rows, so the strip is as wide as the image it
    goes under and only as tall as the entries need. Absent classes are left out, so a large
    vocabulary still gives a short, readable legend.

    Args:
        class_names: one name per class id.
        pixel_counts: pixels per class id (``count_class_pixels``).
        palette: (N, 3) uint8 RGB, N >= len(class_names).
        width: width of the strip in pixels.
        font_size: text height in pixels.

    Returns:
        (h, width, 3) uint8 RGB.
    """
    if len(palette) < len(class_names):
        raise ValueError(f"palette has {len(palette)} colours for {len(class_names)} classes")
    entries = legend_entries(class_names, pixel_counts)
    font = _legend_font(font_size)
    padding, swatch, gap = max(4, font_size // 3), font_size, max(8, font_size)
    row_height = font_size + 2 * padding
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    if not entries:
        entries_text = [(None, "no class present")]
    else:
        entries_text = [(i, f"{name} ({100 * share:.1f}%)") for i, name, share in entries]

    # Lay the entries out first (positions), then draw them onto a strip of the right height.
    placed, x, row = [], padding, 0
    for class_id, text in entries_text:
        text_room = width - 2 * padding - (swatch + padding if class_id is not None else 0)
        text = _fit_text(measure, text, font, max(text_room, 1))
        item_width = (swatch + padding if class_id is not None else 0) + measure.textlength(
            text, font=font
        )
        if x > padding and x + item_width > width - padding:
            x, row = padding, row + 1
        placed.append((x, row, class_id, text))
        x += item_width + gap

    legend = Image.new("RGB", (width, (row + 1) * row_height), _LEGEND_BACKGROUND)
    draw = ImageDraw.Draw(legend)
    for x, row, class_id, text in placed:
        top = row * row_height + padding
        if class_id is not None:
            draw.rectangle(
                [x, top, x + swatch - 1, top + swatch - 1],
                fill=tuple(int(c) for c in palette[class_id]),
                outline=_SWATCH_OUTLINE,
            )
            x += swatch + padding
        draw.text((x, top + font_size / 2), text, fill=_LEGEND_TEXT, font=font, anchor="lm")
    return np.asarray(legend, dtype=np.uint8)


def render_segmentation(
    image: np.ndarray,
    labels: np.ndarray,
    class_names: Sequence[str],
    alpha: float = 0.5,
    palette: Optional[np.ndarray] = None,
) -> np.ndarray:
    """The overlay with the legend strip of its present classes underneath: (H + h, W, 3)."""
    if palette is None:
        palette = class_palette(len(class_names))
    overlay = overlay_segmentation(image, labels, palette, alpha)
    counts = count_class_pixels(labels, len(class_names))
    legend = draw_legend(class_names, counts, palette, width=overlay.shape[1])
    return np.concatenate([overlay, legend], axis=0)
