"""Palette, overlay and legend drawing."""

import numpy as np
import pytest

from sed_d2.utils.visualization import (
    class_palette,
    count_class_pixels,
    draw_legend,
    legend_entries,
    overlay_segmentation,
    render_segmentation,
)


def _colours_in(image: np.ndarray) -> set:
    return {tuple(c) for c in image.reshape(-1, 3).tolist()}


def test_palette_is_deterministic_and_prefix_stable():
    np.testing.assert_array_equal(class_palette(50), class_palette(50))
    # Class i keeps its colour whatever the vocabulary size.
    np.testing.assert_array_equal(class_palette(50)[:8], class_palette(8))
    assert class_palette(0).shape == (0, 3)
    assert class_palette(7).dtype == np.uint8


def test_palette_colours_are_distinct():
    palette = class_palette(3000)  # more than ADE-847 and PC-459 need
    assert len({tuple(c) for c in palette.tolist()}) == len(palette)
    # The first classes (a typical user vocabulary) are far apart, not merely different.
    first = class_palette(12).astype(int)
    gaps = np.abs(first[:, None] - first[None]).sum(-1) + 1000 * np.eye(len(first), dtype=int)
    assert gaps.min() >= 60


def test_count_class_pixels_skips_ignore_and_out_of_range():
    labels = np.array([[0, 0, 2], [255, 2, 7]])
    np.testing.assert_array_equal(count_class_pixels(labels, 3), [2, 0, 2])


def test_legend_entries_list_present_classes_largest_first():
    entries = legend_entries(["sky", "cat", "dog", "tree"], [10, 0, 30, 10])
    assert [name for _, name, _ in entries] == ["dog", "sky", "tree"]  # ties by class id
    assert [i for i, _, _ in entries] == [2, 0, 3]
    assert entries[0][2] == pytest.approx(0.6)
    assert sum(share for _, _, share in entries) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="2 class names but 3 pixel counts"):
        legend_entries(["a", "b"], [1, 2, 3])


def test_legend_shows_swatches_of_present_classes_only():
    palette = class_palette(6)
    counts = [0, 500, 0, 20, 0, 1]
    legend = draw_legend([f"class {i}" for i in range(6)], counts, palette, width=300)
    assert legend.dtype == np.uint8 and legend.ndim == 3 and legend.shape[1] == 300
    colours = _colours_in(legend)
    for class_id, count in enumerate(counts):
        assert (tuple(palette[class_id].tolist()) in colours) == (count > 0), class_id


def test_legend_wraps_rows_for_many_classes_and_shortens_long_names():
    palette = class_palette(40)
    one = draw_legend(["a"], [1], palette, width=200)
    many = draw_legend([f"class {i}" for i in range(40)], [1] * 40, palette, width=200)
    assert many.shape[0] > 5 * one.shape[0]
    # A name wider than the strip still fits: the strip keeps its width and one row.
    long_name = draw_legend(["a very " * 30 + "long name"], [5], palette, width=120)
    assert long_name.shape == (one.shape[0], 120, 3)


def test_legend_without_any_present_class_is_a_note():
    legend = draw_legend(["a", "b"], [0, 0], class_palette(2), width=150)
    assert legend.shape[1] == 150
    assert not (_colours_in(legend) & _colours_in(class_palette(2)[None]))


def test_overlay_blends_class_colours_and_keeps_ignored_pixels():
    image = np.full((6, 8, 3), 100, np.uint8)
    labels = np.zeros((6, 8), np.int64)
    labels[:, 4:] = 1
    labels[0, 0] = 255  # ignore: left as in the image
    palette = np.array([[200, 0, 0], [0, 0, 200]], np.uint8)
    out = overlay_segmentation(image, labels, palette, alpha=0.5, draw_borders=False)
    assert out.shape == image.shape and out.dtype == np.uint8
    np.testing.assert_array_equal(out[0, 0], [100, 100, 100])
    np.testing.assert_array_equal(out[3, 1], [150, 50, 50])
    np.testing.assert_array_equal(out[3, 6], [50, 50, 150])

    bordered = overlay_segmentation(image, labels, palette, alpha=0.5)
    assert (bordered[3, 3:5] < out[3, 3:5]).all()  # the class change is outlined
    np.testing.assert_array_equal(bordered[3, 1], out[3, 1])  # interiors are unchanged


def test_overlay_rejects_mismatched_inputs():
    image = np.zeros((4, 4, 3), np.uint8)
    with pytest.raises(ValueError, match="do not match"):
        overlay_segmentation(image, np.zeros((4, 5), int), class_palette(2))
    with pytest.raises(ValueError, match="uint8 RGB"):
        overlay_segmentation(image.astype(np.float32), np.zeros((4, 4), int), class_palette(2))
    with pytest.raises(ValueError, match="alpha"):
        overlay_segmentation(image, np.zeros((4, 4), int), class_palette(2), alpha=2.0)


def test_render_segmentation_stacks_overlay_and_legend():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (40, 64, 3), dtype=np.uint8)
    labels = np.zeros((40, 64), np.int64)
    labels[20:] = 2
    out = render_segmentation(image, labels, ["sky", "cat", "grass"])
    assert out.dtype == np.uint8
    assert out.shape[1] == 64 and out.shape[0] > 40
    np.testing.assert_array_equal(
        out[:40], overlay_segmentation(image, labels, class_palette(3), alpha=0.5)
    )
    legend_colours = _colours_in(out[40:])
    palette = class_palette(3)
    assert tuple(palette[0].tolist()) in legend_colours
    assert tuple(palette[1].tolist()) not in legend_colours
