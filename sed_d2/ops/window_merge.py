"""Merging the views of a sliding-window test protocol into per-class scores, in one pass.

CAT-Seg's protocol (and FGAseg's, DCP-CLIP's) resizes each view's (T, h, w) logits to the
view's input size (96 -> 384), takes the sigmoid, averages the overlapping windows into the
working image (640 x 640) and averages that with the global view's scores, themselves resized
from 384 to 640. Written with PyTorch ops, every step reads and writes T full-size float32
maps: with 847 classes about 15 ms of a 80 ms image on an H200, all of it memory traffic.
The kernel computes each output score straight from the small logits (every resize is a
bilinear sample, the sigmoid is taken where PyTorch takes it) and writes the (T, H, W)
result once; only the global view's scores at its own size (384) are made first, by
PyTorch, so that the kernel samples them with 4 loads per pixel.

Rounding: PyTorch resizes bf16 logits to bf16 before the sigmoid; the kernel interpolates in
float32 without that rounding (closer to the float32 result). float32 logits give the
reference's values up to float32 rounding.
"""

from __future__ import annotations

import functools
from typing import Callable, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from .runtime import FLOAT_DTYPES, available, tl, triton

__all__ = ["merge_window_scores", "merge_window_scores_applies", "merge_window_scores_reference"]

Box = Tuple[int, int, int, int]  # top, left, height, width in the working image

_BLOCK = 512  # output pixels per program (one class per program)


def _resize(x: Tensor, size: Sequence[int]) -> Tensor:
    """Bilinear resize of (N, C, H, W), no antialias (as the official codes)."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)


def _float_sigmoid(logits: Tensor) -> Tensor:
    return logits.float().sigmoid()


def merge_window_scores_reference(
    logits: Tensor,
    boxes: Sequence[Box],
    size: Sequence[int],
    *,
    global_view: bool,
    global_size: Optional[Sequence[int]] = None,
    merge: str = "mean",
    activation: Optional[Callable[[Tensor], Tensor]] = None,
) -> Tensor:
    """(T, H, W) scores of one image from its views' logits, with PyTorch ops.

    Args:
        logits: (V, T, h, w): one row per box, in ``boxes`` order, then the global view's
            when ``global_view``.
        boxes: the windows (top, left, height, width) in the working image of ``size``.
        size: (H, W), the working image.
        global_size: the global view's input size; its logits are resized to it, activated,
            then resized to ``size``. None: resized straight to ``size``.
        merge: "mean" ((windows + global) / 2) or "max".
        activation: logits -> scores of the same shape; None is the float32 sigmoid.

    Each window's logits are resized to the window's size and activated; overlapping windows
    are averaged; the global scores are merged in.
    """
    activation = activation or _float_sigmoid
    total = count = None
    for index, (y, x, h, w) in enumerate(boxes):
        scores = activation(_resize(logits[index : index + 1], (h, w)))[0]
        if total is None:
            total = scores.new_zeros((scores.shape[0], *size))
            count = scores.new_zeros((1, *size))
        total[:, y : y + h, x : x + w] += scores
        count[:, y : y + h, x : x + w] += 1
    windows = total / count
    if not global_view:
        return windows
    scores = activation(_resize(logits[len(boxes) : len(boxes) + 1], global_size or size))
    scores = _resize(scores, size)[0]
    return (windows + scores) / 2 if merge == "mean" else torch.maximum(windows, scores)


def merge_window_scores_applies(logits: Tensor, activation: Optional[Callable] = None) -> bool:
    """Whether :func:`merge_window_scores` runs the kernel: the float32 sigmoid (no custom
    ``activation``), contiguous float32 / bf16 / fp16 logits where
    :func:`~sed_d2.ops.runtime.available`, and no autograd (test time only)."""
    return bool(
        activation is None
        and available(logits)
        and logits.dim() == 4
        and logits.is_contiguous()
        and logits.dtype in FLOAT_DTYPES
        and not (torch.is_grad_enabled() and logits.requires_grad)
    )


def merge_window_scores(
    logits: Tensor,
    boxes: Sequence[Box],
    size: Sequence[int],
    *,
    global_view: bool,
    global_size: Optional[Sequence[int]] = None,
    merge: str = "mean",
    activation: Optional[Callable[[Tensor], Tensor]] = None,
) -> Tensor:
    """(T, H, W) float scores of one image from its views' logits (arguments as
    :func:`merge_window_scores_reference`): the kernel when :func:`merge_window_scores_applies`,
    else the reference."""
    if merge not in ("mean", "max"):
        raise ValueError(f"merge must be 'mean' or 'max', got {merge!r}")
    expected_views = len(boxes) + int(global_view)
    if logits.dim() != 4 or logits.shape[0] != expected_views:
        raise ValueError(
            f"logits must be (views, T, h, w) with {expected_views} views "
            f"({len(boxes)} windows{' + the global view' if global_view else ''}), got {tuple(logits.shape)}"
        )
    if not merge_window_scores_applies(logits, activation):
        return merge_window_scores_reference(
            logits, boxes, size, global_view=global_view, global_size=global_size, merge=merge, activation=activation
        )
    views, classes, in_h, in_w = logits.shape
    out_h, out_w = (int(s) for s in size)
    global_h, global_w = (int(s) for s in (global_size or size))
    box_table = _box_table(tuple(tuple(int(v) for v in box) for box in boxes), logits.device)
    resized_twice = global_view and (global_h, global_w) != (out_h, out_w)
    if resized_twice:
        # the global view's scores at its own size, once: sampling them costs the kernel 4 loads
        # per output pixel instead of 16 loads and 4 sigmoids (float32 logits: no bf16 rounding)
        global_scores = _resize(logits[-1:].float(), (global_h, global_w)).sigmoid_()
    else:
        global_scores = logits  # not read
    out = torch.empty((classes, out_h, out_w), dtype=torch.float32, device=logits.device)
    grid = (triton.cdiv(out_h * out_w, _BLOCK), classes)
    _merge_kernel[grid](
        logits, global_scores, box_table, out,
        classes, in_h, in_w, out_h, out_w, global_h, global_w,
        NUM_WINDOWS=len(boxes),
        GLOBAL_VIEW=bool(global_view),
        GLOBAL_RESIZED_TWICE=resized_twice,
        MERGE_MAX=merge == "max",
        BLOCK=_BLOCK,
        num_warps=4,
    )
    return out


@functools.lru_cache(maxsize=32)
def _box_table(boxes: Tuple[Box, ...], device: torch.device) -> Tensor:
    """(windows, 4) int32 boxes on ``device``, made once per geometry (a protocol reuses one
    geometry for every image of a size): no host-to-device copy per image."""
    return torch.tensor(boxes, dtype=torch.int32, device=device)


if triton is not None:

    @triton.jit
    def _source(dst, in_size, out_size):
        # PyTorch's bilinear source index (align_corners=False): scale = in / out in float32,
        # (dst + 0.5) * scale - 0.5 clamped at 0; the second tap stays inside the input.
        src = tl.maximum((dst.to(tl.float32) + 0.5) * (in_size / out_size) - 0.5, 0.0)
        first = src.to(tl.int32)
        second = tl.where(first < in_size - 1, first + 1, first)
        return first, second, src - first.to(tl.float32)

    @triton.jit
    def _bilinear(plane_ptr, y, x, in_h, in_w, out_h, out_w, mask):
        # the value at (y, x) of the (in_h, in_w) plane resized to (out_h, out_w), in float32
        y0, y1, ly = _source(y, in_h, out_h)
        x0, x1, lx = _source(x, in_w, out_w)
        v00 = tl.load(plane_ptr + y0 * in_w + x0, mask=mask, other=0.0).to(tl.float32)
        v01 = tl.load(plane_ptr + y0 * in_w + x1, mask=mask, other=0.0).to(tl.float32)
        v10 = tl.load(plane_ptr + y1 * in_w + x0, mask=mask, other=0.0).to(tl.float32)
        v11 = tl.load(plane_ptr + y1 * in_w + x1, mask=mask, other=0.0).to(tl.float32)
        return (1.0 - ly) * ((1.0 - lx) * v00 + lx * v01) + ly * ((1.0 - lx) * v10 + lx * v11)

    @triton.jit
    def _merge_kernel(
        logits_ptr, global_scores_ptr, boxes_ptr, out_ptr,
        T, in_h, in_w, out_h, out_w, global_h, global_w,
        NUM_WINDOWS: tl.constexpr,
        GLOBAL_VIEW: tl.constexpr,
        GLOBAL_RESIZED_TWICE: tl.constexpr,
        MERGE_MAX: tl.constexpr,
        BLOCK: tl.constexpr,
    ):
        pixels = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        cls = tl.program_id(1)
        valid = pixels < out_h * out_w
        py = pixels // out_w
        px = pixels % out_w
        plane = in_h * in_w
        total = tl.zeros((BLOCK,), dtype=tl.float32)
        count = tl.zeros((BLOCK,), dtype=tl.float32)
        for window in tl.static_range(NUM_WINDOWS):
            top = tl.load(boxes_ptr + window * 4)
            left = tl.load(boxes_ptr + window * 4 + 1)
            height = tl.load(boxes_ptr + window * 4 + 2)
            width = tl.load(boxes_ptr + window * 4 + 3)
            inside = valid & (py >= top) & (py < top + height) & (px >= left) & (px < left + width)
            base = logits_ptr + (window * T + cls).to(tl.int64) * plane
            value = _bilinear(base, py - top, px - left, in_h, in_w, height, width, inside)
            total += tl.where(inside, tl.sigmoid(value), 0.0)
            count += tl.where(inside, 1.0, 0.0)
        merged = total / count
        if GLOBAL_VIEW:
            if GLOBAL_RESIZED_TWICE:
                # the global view's scores (at its own size) resized to the working size
                base = global_scores_ptr + cls.to(tl.int64) * global_h * global_w
                global_score = _bilinear(base, py, px, global_h, global_w, out_h, out_w, valid)
            else:
                base = logits_ptr + (NUM_WINDOWS * T + cls).to(tl.int64) * plane
                global_score = tl.sigmoid(_bilinear(base, py, px, in_h, in_w, out_h, out_w, valid))
            if MERGE_MAX:
                merged = tl.maximum(merged, global_score)
            else:
                merged = (merged + global_score) / 2
        tl.store(out_ptr + cls.to(tl.int64) * out_h * out_w + pixels, merged, mask=valid)
