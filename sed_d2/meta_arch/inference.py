"""Inference protocols: how a batch of test images becomes per-class scores.

One home for every method's test-time protocol, chosen by ``TEST.PROTOCOL``:

* :class:`WholeImage` (``"whole"``): each image is CLIP-normalised and resized to the
  CLIP resolution, the network runs once, scores are taken at network resolution (SED;
  CAT-Seg's periodic evaluation in training).
* :class:`SlidingWindow` (``"sliding_window"``): each image is (optionally) resized, cut into
  windows, plus an optional global view; every view runs through the network as one batch,
  the logits of a view are resized to the view's size before the activation, the windows
  are averaged where they overlap and merged with the global view. With a window/stride it
  is CAT-Seg's ``inference_sliding_window`` (384 windows, stride 256, over a 640x640 image, plus
  the image resized to 384); with a grid it is SynSeg's multi-view protocol (2x2 quadrants of
  the native image plus the whole image).

Either protocol can refine each view's scores before they are merged (``refine``, e.g.
:class:`~sed_d2.layers.pamr.PAMR` from ``TEST.PAMR``: TCL's test-time PAMR, which TCL's
``TCLSegInference.encode_decode`` applies per window to the soft masks at the mask resolution,
before the windows are resized and merged and before the background channel is added).

A protocol returns, per image, (T, h, w) scores at a working size; the meta-architecture's
``postprocess`` resizes them to the image's original size. Both protocols run any batch size
and images of different sizes: all views of all images go through the network together.
Protocols use only the method contract (``prepare_images``, ``forward_test``,
``network_logits``, ``logits_to_scores``) of :class:`~sed_d2.meta_arch.base.OpenVocabSegmentor`.
"""
from __future__ import annotations

from typing import Callable, List, Optional, Sequence, Tuple

import torch.nn.functional as F
from torch import Tensor

from ..layers.pamr import PAMR
from ..ops.window_merge import merge_window_scores

__all__ = [
    "InferenceProtocol",
    "SlidingWindow",
    "WholeImage",
    "build_inference_protocol",
    "build_refine",
    "window_boxes",
]

Box = Tuple[int, int, int, int]  # top, left, height, width

# ``refine(images, scores) -> scores``: images (V, 3, H, W) as the network saw them
# (CLIP-normalised views), scores (V, T, h, w) of those views at the network's output size.
Refine = Callable[[Tensor, Tensor], Tensor]


def _identity(scores: Tensor) -> Tensor:
    return scores


def _resize(x: Tensor, size: Sequence[int]) -> Tensor:
    """Bilinear resize of (C, H, W) or (N, C, H, W), no antialias (as the official codes)."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    batched = x if x.dim() == 4 else x[None]
    out = F.interpolate(batched, size=tuple(size), mode="bilinear", align_corners=False)
    return out if x.dim() == 4 else out[0]


class InferenceProtocol:
    """``protocol(model, images, text) -> [(T, h, w) scores per image]``.

    ``images``: raw (3, H, W) float 0-255 RGB tensors on the model's device (any sizes);
    ``text``: the (T, P, C) text embeddings of the current vocabulary.

    ``refine``: None, or ``refine(views, scores) -> scores`` applied to every view's scores
    at the network's output size, with the CLIP-normalised views the network saw (PAMR)."""

    refine: Optional[Refine] = None

    def __call__(self, model, images: List[Tensor], text: Tensor) -> List[Tensor]:
        raise NotImplementedError


class WholeImage(InferenceProtocol):
    """Each image resized to the CLIP resolution; scores at network resolution (refined by
    ``refine``, if any)."""

    def __init__(self, refine: Optional[Refine] = None):
        self.refine = refine

    def __call__(self, model, images, text):
        views = model.prepare_images(images)
        scores = model.forward_test(views, text)
        if self.refine is not None:
            scores = self.refine(views, scores)
        return list(scores)


def window_boxes(
    size: Sequence[int],
    window: Optional[Sequence[int]] = None,
    stride: Optional[Sequence[int]] = None,
    grid: Optional[Sequence[int]] = None,
) -> List[Box]:
    """Windows over an image of ``size`` (H, W), row-major.

    ``window`` + ``stride``: windows at 0, stride, 2*stride, ... (``nn.Unfold``'s positions);
    when they do not reach the far edge, one more window ends there, so every pixel is
    covered. ``grid`` (rows, cols): equal non-overlapping tiles (rounded edges)."""
    height, width = (int(s) for s in size)
    if grid is not None:
        rows, cols = (int(g) for g in grid)
        ys = [round(i * height / rows) for i in range(rows + 1)]
        xs = [round(j * width / cols) for j in range(cols + 1)]
        return [(ys[i], xs[j], ys[i + 1] - ys[i], xs[j + 1] - xs[j]) for i in range(rows) for j in range(cols)]
    if window is None or stride is None:
        raise ValueError("window_boxes needs window and stride, or grid")

    def starts(length: int, win: int, step: int) -> List[int]:
        if win > length:
            raise ValueError(f"window {win} is larger than the image side {length}")
        positions = list(range(0, length - win + 1, step))
        if positions[-1] + win < length:
            positions.append(length - win)
        return positions

    wh, ww = (int(w) for w in window)
    sh, sw = (int(s) for s in stride)
    return [(y, x, wh, ww) for y in starts(height, wh, sh) for x in starts(width, ww, sw)]


class SlidingWindow(InferenceProtocol):
    """Windows (+ a global view) per image, merged into (T, H', W') scores.

    Args:
        image_size: (H', W') each image is resized to before the windows; None = its size.
        window, stride: window geometry (see :func:`window_boxes`), or
        grid: (rows, cols) equal tiles instead.
        global_view: also run the whole image and merge it with the windows.
        global_size: the whole image is resized to this (H, W) for the global view, and its
            logits are resized back to it before the activation (CAT-Seg: 384); None = the
            working size (its logits are resized straight to it).
        merge: "mean" ((windows + global) / 2, CAT-Seg) or "max" (element-wise maximum).
        refine: None, or applied to every view's scores at the network's output size before
            they are resized to the view and merged (PAMR, as TCL applies it per window).

    Per view, the logits are resized (bilinear) to the view's input size and then turned
    into scores (``model.logits_to_scores``), as the official CAT-Seg code does; overlapping
    windows are averaged; the global scores are resized to the working size
    (:func:`~sed_d2.ops.window_merge.merge_window_scores`: one fused pass on a GPU when the
    model's scores are the contract's float32 sigmoid, ``model.sigmoid_scores``).
    """

    def __init__(
        self,
        *,
        image_size: Optional[Sequence[int]] = None,
        window: Optional[Sequence[int]] = None,
        stride: Optional[Sequence[int]] = None,
        grid: Optional[Sequence[int]] = None,
        global_view: bool = True,
        global_size: Optional[Sequence[int]] = None,
        merge: str = "mean",
        refine: Optional[Refine] = None,
    ):
        if merge not in ("mean", "max"):
            raise ValueError(f"merge must be 'mean' or 'max', got {merge!r}")
        if grid is None and (window is None or stride is None):
            raise ValueError("SlidingWindow needs window and stride, or grid")
        self.image_size = tuple(image_size) if image_size else None
        self.window = tuple(window) if window else None
        self.stride = tuple(stride) if stride else None
        self.grid = tuple(grid) if grid else None
        self.global_view = global_view
        self.global_size = tuple(global_size) if global_size else None
        self.merge = merge
        self.refine = refine

    def __call__(self, model, images, text):
        views, plans = [], []
        for image in images:
            work = _resize(image, self.image_size) if self.image_size else image
            boxes = window_boxes(work.shape[-2:], self.window, self.stride, self.grid)
            views += [work[:, y : y + h, x : x + w] for y, x, h, w in boxes]
            if self.global_view:
                views.append(_resize(image, self.global_size) if self.global_size else image)
            plans.append((tuple(work.shape[-2:]), boxes))
        views = model.prepare_images(views)
        logits = model.network_logits(views, text)
        # the float32 sigmoid of the base contract is fused into the merge (ops.window_merge)
        activation = None if getattr(model, "sigmoid_scores", False) else model.logits_to_scores
        if self.refine is not None:
            # refined scores at the network's output size, then resized to their views and
            # merged as they are (TCL: PAMR on each window's soft masks, then resize, merge)
            logits = self.refine(views, model.logits_to_scores(logits))
            activation = _identity
        results, index = [], 0
        for size, boxes in plans:
            count = len(boxes) + int(self.global_view)
            results.append(
                merge_window_scores(
                    logits[index : index + count].contiguous(),
                    boxes,
                    size,
                    global_view=self.global_view,
                    global_size=self.global_size,
                    merge=self.merge,
                    activation=activation,
                )
            )
            index += count
        return results


def build_refine(cfg) -> Optional[Refine]:
    """``TEST.PAMR``: a :class:`~sed_d2.layers.pamr.PAMR` when ``ENABLED``, else None."""
    node = cfg.TEST.PAMR
    enabled, iterations, dilations = node.ENABLED, node.ITERS, node.DILATIONS
    if not enabled:
        return None
    try:
        return PAMR(iterations, dilations)
    except ValueError as e:
        raise ValueError(f"TEST.PAMR.ITERS / TEST.PAMR.DILATIONS: {e}") from None


def build_inference_protocol(cfg) -> InferenceProtocol:
    """The protocol named by ``TEST.PROTOCOL`` with its ``TEST.SLIDING_WINDOW`` settings and
    the ``TEST.PAMR`` refinement of each view's scores."""
    name = cfg.TEST.PROTOCOL
    refine = build_refine(cfg)
    if name == "whole":
        return WholeImage(refine=refine)
    if name == "sliding_window":
        sw = cfg.TEST.SLIDING_WINDOW
        return SlidingWindow(
            image_size=sw.IMAGE_SIZE or None,
            window=sw.WINDOW or None,
            stride=sw.STRIDE or None,
            grid=sw.GRID or None,
            global_view=sw.GLOBAL_VIEW,
            global_size=sw.GLOBAL_SIZE or None,
            merge=sw.MERGE,
            refine=refine,
        )
    raise ValueError(f"TEST.PROTOCOL must be 'whole' or 'sliding_window', got {name!r}")
