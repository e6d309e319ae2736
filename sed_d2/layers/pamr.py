"""PAMR: pixel-adaptive mask refinement (Araslanov & Roth, "Single-Stage Semantic Segmentation
from Image Labels", CVPR 2020), the test-time post-processing of TCL (Cha et al., CVPR 2023).

Soft masks are smoothed by a few steps of a local, image-adaptive averaging: each pixel takes
the affinity-weighted mean of its 8 neighbours on a 3x3 stencil at each dilation, the
affinities coming from colour differences normalised by the local colour spread. Masks then
follow the image's edges. :func:`pamr` is the function, :class:`PAMR` a parameter-free module
holding the settings.

The algorithm is the official one (``visinf/1-stage-wseg``, ``models/mods/pamr.py``, which
TCL's ``models/tcl/pamr.py`` reuses; TCL's ``TCL.apply_pamr`` in ``models/tcl/tcl.py`` sets 10
iterations and dilations [1, 2, 4, 8, 12, 24] and resizes the image to the mask first). Our code
is written from that description, step by step (each choice has its comment below):

1. The image runs at the mask's resolution: resized (bilinear, ``align_corners=True``) when
   its size differs (TCL's ``apply_pamr``).
2. Neighbours: for each dilation ``d``, the 8 pixels at offsets ``(dy * d, dx * d)``,
   ``dy, dx`` in {-1, 0, 1} but not both 0; outside the image the border pixel is repeated
   (the official ``F.pad(..., mode="replicate")`` by ``d``, then a 3x3 conv of dilation
   ``d``). The neighbours of all dilations form one set of ``8 * len(dilations)``.
3. Local spread, per colour channel: the standard deviation of the ``9 * len(dilations)``
   values of the 3x3 stencils of all dilations, the centre counted once per dilation,
   unbiased (divisor N - 1: ``torch.std``'s default in the official ``LocalStDev``).
4. Affinity logit of neighbour j of pixel i: ``-|I_i - I_j| / (1e-8 + 0.1 * std_i)`` per
   channel, then averaged over the channels; a softmax over the ``8 * len(dilations)``
   neighbours (the centre is not one of them) gives the affinities, fixed for all iterations.
5. Each iteration replaces every mask value by the affinity-weighted sum of its neighbours'
   (replicate padding again); every channel (class) of the mask uses the same affinities.

Since step 4 divides a channel's differences by that channel's own spread, the result does
not depend on a per-channel affine normalisation of the image (CLIP's mean / std or 0-255
pixels give the same affinities up to the 1e-8).

Memory: the official code materialises every neighbour of the mask, ``(B, C, 8 * D, H, W)``
per iteration (D dilations; 171 classes at 448x448 with 6 dilations: 6.6 GB in float32). Here
the neighbours are slices of one padded copy per dilation, accumulated in place: a few
``(B, C, H, W)``-sized buffers, plus the ``(B, 8 * D, H, W)`` affinities. The sums run in
another order than the official reduction, so results agree to float rounding, not bits.
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Iterator, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["PAMR", "TCL_DILATIONS", "TCL_ITERATIONS", "pamr", "pamr_affinities"]

# TCL's settings (TCL.apply_pamr: pamr_iter = 10, pamr_kernel = [1, 2, 4, 8, 12, 24]).
TCL_ITERATIONS = 10
TCL_DILATIONS = (1, 2, 4, 8, 12, 24)

# The 8 off-centre taps of a 3x3 stencil, row-major (the official shift kernels' order).
_OFFSETS = ((-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1))


def _check_settings(iterations: int, dilations: Sequence[int]) -> Tuple[int, Tuple[int, ...]]:
    if int(iterations) != iterations or iterations < 0:
        raise ValueError(f"PAMR iterations must be an integer >= 0, got {iterations!r}")
    dilations = tuple(dilations)
    if not dilations or any(int(d) != d or d < 1 for d in dilations):
        raise ValueError(f"PAMR dilations must be a non-empty list of integers >= 1, got {list(dilations)!r}")
    return int(iterations), tuple(int(d) for d in dilations)


def _shifted(x: Tensor, dilation: int, offsets) -> Iterator[Tensor]:
    """Views of ``x`` (N, C, H, W) moved by ``(dy * dilation, dx * dilation)`` for each offset:
    the value of the neighbour at that offset of every pixel, the border repeated outside."""
    height, width = x.shape[-2:]
    padded = F.pad(x, [dilation] * 4, mode="replicate")  # as the official shift convolutions
    for dy, dx in offsets:
        top, left = dilation + dy * dilation, dilation + dx * dilation
        yield padded[..., top : top + height, left : left + width]


def _compute_dtype(x: Tensor) -> torch.dtype:
    # float64 stays float64; half precision and float32 run in float32 (the exponentials of
    # the softmax and ten chained weighted sums would lose too much in bf16).
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def pamr_affinities(image: Tensor, dilations: Sequence[int] = TCL_DILATIONS) -> Tensor:
    """``(B, 8 * D, H, W)`` affinities of every pixel of ``image`` (B, K, H, W) to its
    neighbours (dilations in the given order, each with the 8 offsets in row-major order);
    they sum to 1 over dim 1. Steps 2-4 of the module docstring."""
    _, dilations = _check_settings(0, dilations)
    image = image.to(_compute_dtype(image))
    # Step 3: the unbiased std of the 9 * D stencil values per channel, two passes (mean, then
    # squared deviations) over shifted views instead of a (B, K, 9 * D, H, W) copy.
    all_taps = ((0, 0),) + _OFFSETS  # the centre belongs to each dilation's 3x3 stencil
    count = len(all_taps) * len(dilations)
    total = torch.zeros_like(image)
    for d in dilations:
        for view in _shifted(image, d, all_taps):
            total += view
    mean = total / count
    squares = torch.zeros_like(image)
    for d in dilations:
        for view in _shifted(image, d, all_taps):
            squares += (view - mean).square()
    std = (squares / (count - 1)).sqrt()
    # Step 4: -|I_i - I_j| / (1e-8 + 0.1 std_i) per channel (the official constants), averaged
    # over the channels, then a softmax over all 8 * D neighbours.
    scale = 1e-8 + 0.1 * std
    logits = torch.stack(
        [
            -((image - view).abs() / scale).mean(dim=1)
            for d in dilations
            for view in _shifted(image, d, _OFFSETS)
        ],
        dim=1,
    )
    return logits.softmax(dim=1)


def pamr(
    image: Tensor,
    masks: Tensor,
    iterations: int = TCL_ITERATIONS,
    dilations: Sequence[int] = TCL_DILATIONS,
) -> Tensor:
    """Refine soft ``masks`` (B, C, h, w) with the pixel-adaptive affinities of ``image``
    (B, K, H, W; any per-channel normalisation, e.g. CLIP's).

    The image is resized to (h, w) (bilinear, ``align_corners=True``, TCL) when its size
    differs; the result has the masks' shape and dtype. ``iterations`` 0 returns the masks
    unchanged. The computation runs in float32 (float64 for float64 inputs) with autocast off.
    """
    iterations, dilations = _check_settings(iterations, dilations)
    if image.dim() != 4 or masks.dim() != 4 or image.shape[0] != masks.shape[0]:
        raise ValueError(
            f"pamr needs image (B, K, H, W) and masks (B, C, h, w) with the same B, got "
            f"{tuple(image.shape)} and {tuple(masks.shape)}"
        )
    if iterations == 0:
        return masks
    out_dtype = masks.dtype
    dtype = torch.promote_types(_compute_dtype(masks), _compute_dtype(image))
    # Nothing below is on autocast's low-precision lists (no convolution, no matmul); it is
    # switched off all the same, so a caller's bf16 autocast can never reach these sums.
    no_autocast = (
        torch.autocast(device_type=masks.device.type, enabled=False)
        if masks.device.type in ("cpu", "cuda")
        else nullcontext()
    )
    with no_autocast:
        image, masks = image.to(dtype), masks.to(dtype)
        if image.shape[-2:] != masks.shape[-2:]:
            # Step 1: TCL's apply_pamr resizes the image to the mask, so PAMR runs at the
            # mask resolution (the 1-stage-wseg original resized the mask to the image).
            image = F.interpolate(image, size=masks.shape[-2:], mode="bilinear", align_corners=True)
        affinity = pamr_affinities(image, dilations)  # (B, 8 * D, h, w)
        # (B, 1, h, w) slices: one weight per neighbour, shared by every mask channel
        weights = affinity.unsqueeze(2).unbind(dim=1)
        for _ in range(iterations):
            # Step 5: the affinity-weighted sum of the neighbours, accumulated in place.
            refined = torch.zeros_like(masks)
            index = 0
            for d in dilations:
                for view in _shifted(masks, d, _OFFSETS):
                    refined.addcmul_(view, weights[index])
                    index += 1
            masks = refined
    return masks.to(out_dtype)


class PAMR(nn.Module):
    """:func:`pamr` with fixed settings (no parameters): ``PAMR(iterations,
    dilations)(image, masks)``; the defaults are TCL's (10 iterations, dilations
    [1, 2, 4, 8, 12, 24])."""

    def __init__(self, iterations: int = TCL_ITERATIONS, dilations: Sequence[int] = TCL_DILATIONS) -> None:
        super().__init__()
        self.iterations, self.dilations = _check_settings(iterations, dilations)

    def forward(self, image: Tensor, masks: Tensor) -> Tensor:
        return pamr(image, masks, self.iterations, self.dilations)

    def extra_repr(self) -> str:
        return f"iterations={self.iterations}, dilations={list(self.dilations)}"
