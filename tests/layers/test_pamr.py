"""PAMR (sed_d2.layers.pamr): against a per-pixel, per-neighbour reference written from the
description of the official algorithm (1-stage-wseg / TCL), and its properties: constant images
average uniformly, constant masks are fixed points, the result is a convex combination, does not
depend on a per-channel image normalisation, keeps shapes and dtypes, and any batch equals one by
one."""
import pytest
import torch
import torch.nn.functional as F

from sed_d2.layers import PAMR
from sed_d2.layers.pamr import TCL_DILATIONS, TCL_ITERATIONS, pamr, pamr_affinities


def _reference_pamr(image, masks, iterations, dilations):
    """PAMR pixel by pixel, float64: replicate padding = coordinates clamped to the image; the
    spread is the unbiased std of the 9 * D stencil values per channel (the centre once per
    dilation); the affinity of the 8 * D off-centre neighbours is the softmax of
    mean_channels(-|I_i - I_j| / (1e-8 + 0.1 std_i)); each step is the affinity-weighted sum
    of the neighbours' mask values."""
    image, masks = image.double(), masks.double()
    batch, _, height, width = image.shape

    def at(tensor, b, y, x):
        return tensor[b, :, min(max(y, 0), height - 1), min(max(x, 0), width - 1)]

    ring = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if (dy, dx) != (0, 0)]
    neighbours = [(dy * d, dx * d) for d in dilations for dy, dx in ring]
    stencil = [(dy * d, dx * d) for d in dilations for dy in (-1, 0, 1) for dx in (-1, 0, 1)]
    affinity = torch.zeros(batch, len(neighbours), height, width, dtype=torch.float64)
    for b in range(batch):
        for y in range(height):
            for x in range(width):
                std = torch.stack([at(image, b, y + oy, x + ox) for oy, ox in stencil]).std(dim=0)
                centre = image[b, :, y, x]
                logits = torch.stack(
                    [(-(centre - at(image, b, y + oy, x + ox)).abs() / (1e-8 + 0.1 * std)).mean() for oy, ox in neighbours]
                )
                affinity[b, :, y, x] = logits.softmax(dim=0)
    for _ in range(iterations):
        refined = torch.zeros_like(masks)
        for b in range(batch):
            for y in range(height):
                for x in range(width):
                    for k, (oy, ox) in enumerate(neighbours):
                        refined[b, :, y, x] += affinity[b, k, y, x] * at(masks, b, y + oy, x + ox)
        masks = refined
    return masks


def _inputs(batch=2, classes=4, size=(6, 7), seed=0, dtype=torch.float32):
    generator = torch.Generator().manual_seed(seed)
    image = torch.randn(batch, 3, *size, generator=generator, dtype=torch.float64).to(dtype)
    masks = torch.rand(batch, classes, *size, generator=generator, dtype=torch.float64).to(dtype)
    return image, masks


def test_equals_the_per_pixel_reference():
    # dilation 4 > the image side: neighbours past the border repeat it (replicate padding)
    image, masks = _inputs(dtype=torch.float64)
    expected = _reference_pamr(image, masks, iterations=3, dilations=(1, 2, 4))
    torch.testing.assert_close(pamr(image, masks, 3, (1, 2, 4)), expected, rtol=0, atol=1e-12)
    out32 = pamr(image.float(), masks.float(), 3, (1, 2, 4))
    assert out32.dtype == torch.float32
    torch.testing.assert_close(out32.double(), expected, rtol=0, atol=1e-5)
    # TCL's settings on another seed (every dilation but 1 clamps on a 6x7 image)
    image, masks = _inputs(batch=1, classes=2, seed=3, dtype=torch.float64)
    expected = _reference_pamr(image, masks, TCL_ITERATIONS, TCL_DILATIONS)
    torch.testing.assert_close(PAMR()(image, masks), expected, rtol=0, atol=1e-12)


def test_tcl_settings_are_the_defaults():
    assert (TCL_ITERATIONS, TCL_DILATIONS) == (10, (1, 2, 4, 8, 12, 24))
    module = PAMR()
    assert (module.iterations, module.dilations) == (10, (1, 2, 4, 8, 12, 24))
    assert list(module.parameters()) == [] and "iterations=10" in repr(module)


def _uniform_ring_average(masks, dilation):
    """Mean of the 8 off-centre neighbours at ``dilation`` (replicate padding), by convolution."""
    kernel = torch.ones(1, 1, 3, 3, dtype=masks.dtype)
    kernel[0, 0, 1, 1] = 0
    b, c, h, w = masks.shape
    padded = F.pad(masks.reshape(b * c, 1, h, w), [dilation] * 4, mode="replicate")
    return (F.conv2d(padded, kernel, dilation=dilation) / 8).view(b, c, h, w)


def test_a_constant_image_averages_the_neighbours_uniformly():
    _, masks = _inputs(batch=2, classes=3, size=(9, 11), seed=1, dtype=torch.float64)
    image = torch.full((2, 3, 9, 11), 0.7, dtype=torch.float64)
    # no colour difference and no spread: every logit is 0, every affinity 1 / (8 * D)
    torch.testing.assert_close(pamr_affinities(image, (1, 3)), torch.full((2, 16, 9, 11), 1 / 16, dtype=torch.float64))
    torch.testing.assert_close(pamr(image, masks, 1, (1,)), _uniform_ring_average(masks, 1), rtol=0, atol=1e-14)
    # several dilations: the mean of the per-dilation ring averages; two steps: applied twice
    once = (_uniform_ring_average(masks, 1) + _uniform_ring_average(masks, 3)) / 2
    twice = (_uniform_ring_average(once, 1) + _uniform_ring_average(once, 3)) / 2
    torch.testing.assert_close(pamr(image, masks, 2, (1, 3)), twice, rtol=0, atol=1e-14)


def test_constant_masks_are_fixed_points_and_values_stay_in_their_range():
    image, masks = _inputs(batch=2, classes=3, size=(10, 12), seed=2, dtype=torch.float64)
    constant = torch.full_like(masks, 0.25)
    torch.testing.assert_close(pamr(image, constant, 5, (1, 2)), constant, rtol=0, atol=1e-14)
    # affinities are a softmax: each step is a convex combination of neighbour values
    affinity = pamr_affinities(image, (1, 2))
    assert affinity.shape == (2, 16, 10, 12) and bool((affinity > 0).all())
    torch.testing.assert_close(affinity.sum(dim=1), torch.ones(2, 10, 12, dtype=torch.float64))
    out = pamr(image, masks, 5, (1, 2))
    low = masks.amin(dim=(2, 3), keepdim=True)
    high = masks.amax(dim=(2, 3), keepdim=True)
    assert bool((out >= low - 1e-12).all()) and bool((out <= high + 1e-12).all())
    assert not torch.allclose(out, masks)  # it does change a random mask


def test_independent_of_a_per_channel_image_normalisation():
    # each channel's differences are divided by that channel's own spread: CLIP-normalised and
    # 0-255 images give the same result (up to the 1e-8 of the official denominator)
    image, masks = _inputs(batch=2, classes=3, size=(12, 10), seed=4, dtype=torch.float64)
    pixels = image * torch.tensor([68.5, 66.6, 70.3], dtype=torch.float64).view(1, 3, 1, 1) + torch.tensor(
        [122.8, 116.7, 104.1], dtype=torch.float64
    ).view(1, 3, 1, 1)
    torch.testing.assert_close(pamr(pixels, masks, 4, (1, 2, 4)), pamr(image, masks, 4, (1, 2, 4)), rtol=0, atol=1e-6)


def test_shapes_dtypes_and_the_image_resized_to_the_masks():
    image, masks = _inputs(batch=2, classes=5, size=(12, 16), seed=5)
    large = torch.randn(2, 3, 24, 32, generator=torch.Generator().manual_seed(6))
    out = pamr(large, masks, 2, (1, 2))
    assert out.shape == (2, 5, 12, 16) and out.dtype == torch.float32
    # TCL's apply_pamr: the image is resized to the masks (bilinear, align_corners=True)
    resized = F.interpolate(large, size=(12, 16), mode="bilinear", align_corners=True)
    torch.testing.assert_close(out, pamr(resized, masks, 2, (1, 2)), rtol=0, atol=0)
    # float64 stays float64; half precision runs in float32 and returns its own dtype
    assert pamr(image.double(), masks.double(), 2, (1,)).dtype == torch.float64
    half = pamr(image, masks.bfloat16(), 2, (1, 2))
    assert half.dtype == torch.bfloat16
    torch.testing.assert_close(half.float(), pamr(image, masks.bfloat16().float(), 2, (1, 2)), rtol=0, atol=4e-3)
    # a bf16 autocast around it changes nothing
    with torch.autocast("cpu", dtype=torch.bfloat16):
        under_autocast = pamr(image, masks, 2, (1, 2))
    assert under_autocast.dtype == torch.float32
    torch.testing.assert_close(under_autocast, pamr(image, masks, 2, (1, 2)), rtol=0, atol=0)
    # zero steps: the masks as they are
    assert pamr(image, masks, 0, (1,)) is masks
    # one class, a 1x1 image
    one = pamr(torch.randn(1, 3, 1, 1), torch.rand(1, 1, 1, 1), 3, (1, 2))
    assert one.shape == (1, 1, 1, 1)


def test_any_batch_equals_one_by_one():
    image, masks = _inputs(batch=3, classes=4, size=(15, 13), seed=7)
    batched = pamr(image, masks, 4, (1, 2, 4, 8))
    for i in range(3):
        torch.testing.assert_close(batched[i : i + 1], pamr(image[i : i + 1], masks[i : i + 1], 4, (1, 2, 4, 8)), rtol=0, atol=1e-7)


def test_bad_settings_are_refused():
    image, masks = _inputs()
    with pytest.raises(ValueError, match="iterations must be an integer >= 0"):
        pamr(image, masks, -1)
    with pytest.raises(ValueError, match="dilations must be a non-empty list of integers >= 1"):
        PAMR(10, [])
    with pytest.raises(ValueError, match="dilations must be a non-empty list of integers >= 1"):
        PAMR(10, [1, 0])
    with pytest.raises(ValueError, match="the same B"):
        pamr(image, masks[:1])
