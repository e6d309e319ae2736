"""Helpers for class-batched maps ``(B, T, C, H, W)``: one ``(C, H, W)`` map per image and
class, as the cost-aggregation decoders (SED, CAT-Seg and its family) carry them.

* :func:`channels_last_class_maps`, :func:`empty_class_maps`: every class map channels-last
  (the layout the decoders keep throughout: their per-channel layers need no copies);
* :func:`in_class_chunks`: run a per-class function on chunks of classes of one image at a
  time (bounds intermediate memory at large vocabularies);
* :class:`ClassLogitHead`: the ``C -> 1`` logit convolution applied to every class map;
* :func:`top_k_union`, :func:`top_n_classes`: which classes of each image to keep (category
  early rejection, class pruning);
* :func:`scatter_classes`: put the results computed on each image's kept classes back on the
  full class axis, filling the rejected ones.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import Tensor, nn

from .. import ops

__all__ = [
    "ClassLogitHead",
    "channels_last_class_maps",
    "empty_class_maps",
    "in_class_chunks",
    "scatter_classes",
    "top_k_union",
    "top_n_classes",
]


def channels_last_class_maps(x: Tensor) -> Tensor:
    """``(B, T, C, H, W)`` with every class map channels-last (free if it already is)."""
    return x.flatten(0, 1).contiguous(memory_format=torch.channels_last).unflatten(0, x.shape[:2])


def empty_class_maps(batch: int, num_classes: int, like: Tensor) -> Tensor:
    """An uninitialised ``(batch, num_classes, C, H, W)`` tensor of channels-last class maps
    with ``like``'s map shape ``(C, H, W)`` (its last three sizes), dtype and device."""
    channels, height, width = like.shape[-3:]
    empty = torch.empty(
        (batch * num_classes, channels, height, width),
        dtype=like.dtype,
        device=like.device,
        memory_format=torch.channels_last,
    )
    return empty.unflatten(0, (batch, num_classes))


def in_class_chunks(fn: Callable[..., Tensor], chunk: int, *maps: Tensor) -> Tensor:
    """Run ``fn(image, *[m[image:image+1, chunk of classes] for m in maps])`` over every
    image and chunk of ``chunk`` classes and gather the ``(1, t, C, H, W)`` results into one
    ``(B, T, C, H, W)`` tensor of channels-last maps (:func:`empty_class_maps`)."""
    batch, num_classes = maps[0].shape[:2]
    output = None
    for image in range(batch):
        for start in range(0, num_classes, chunk):
            part = fn(image, *(m[image : image + 1, start : start + chunk] for m in maps))
            if output is None:
                output = empty_class_maps(batch, num_classes, part)
            output[image : image + 1, start : start + part.shape[1]].copy_(part)
    return output


class ClassLogitHead(nn.Conv2d):
    """The logit head of a class-batched decoder: a same-padded ``Conv2d(C, 1, k)`` applied
    to every class map, ``forward((B, T, C, H, W)) -> (B, T, H, W)``.

    A ``Conv2d`` subclass, so its parameters are ``weight`` ``(1, C, k, k)`` and ``bias``
    ``(1,)``, named as a plain ``nn.Conv2d`` head's. At inference on channels-last CUDA maps
    it runs as :func:`sed_d2.ops.single_output_conv2d` (one read of the maps;
    cuDNN first converts them to NCHW), returning the dtype the convolution would (the
    autocast dtype under autocast; the filter stays float32 there). Otherwise (autograd,
    CPU, NCHW maps, the fast ops switched off) it is the convolution. Without autocast the
    convolution needs the maps in the weight's dtype and raises otherwise; so does this.
    """

    def __init__(self, in_channels: int, kernel_size: int = 3, *, bias: bool = True) -> None:
        if kernel_size % 2 != 1:
            raise ValueError(f"ClassLogitHead needs an odd kernel_size (same padding), got {kernel_size}")
        super().__init__(in_channels, 1, kernel_size, padding=kernel_size // 2, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        batch, num_classes = x.shape[:2]
        maps = x.flatten(0, 1)
        if self._kernel_applies(maps):
            logits = ops.single_output_conv2d(maps, self.weight, self.bias)
        else:
            logits = super().forward(maps)
        return logits.view(batch, num_classes, *x.shape[-2:])

    def _kernel_applies(self, maps: Tensor) -> bool:
        # without autocast the convolution needs matching dtypes (else it raises: keep that)
        return bool(
            (
                torch.is_autocast_enabled(maps.device.type)
                or all(t is None or t.dtype == maps.dtype for t in (self.weight, self.bias))
            )
            and ops.single_output_conv2d_applies(maps, self.weight, self.bias)
        )


def top_k_union(logits: Tensor, k: int) -> Tensor:
    """``(B, T, H, W) -> (B, T)`` bool: class ``t`` is among the top-``k`` classes of at least
    one pixel (all classes when ``k >= T``)."""
    top = logits.topk(min(k, logits.shape[1]), dim=1).indices.flatten(1)
    keep = torch.zeros(logits.shape[:2], dtype=torch.bool, device=logits.device)
    return keep.scatter_(1, top, True)


def top_n_classes(logits: Tensor, n: int) -> Tensor:
    """``(B, T, H, W) -> (B, T)`` bool: the ``min(n, T)`` classes of highest maximum logit."""
    top = logits.flatten(2).amax(-1).topk(min(n, logits.shape[1]), dim=1).indices
    keep = torch.zeros(logits.shape[:2], dtype=torch.bool, device=logits.device)
    return keep.scatter_(1, top, True)


def scatter_classes(
    values_per_image: Sequence[Tensor],
    classes_per_image: Sequence[Tensor],
    num_classes: int,
    fill: float = float("-inf"),
) -> Tensor:
    """Put per-image results on a subset of the classes back on the full class axis.

    ``values_per_image[b]``: ``(t_b, *rest)``, the results of image ``b`` for its classes
    ``classes_per_image[b]`` (``t_b`` indices into ``0..num_classes-1``). Returns
    ``(B, num_classes, *rest)`` (the dtype and device of the first values) holding those
    results and ``fill`` for every other class.
    """
    if not values_per_image or len(values_per_image) != len(classes_per_image):
        raise ValueError(
            f"scatter_classes needs one values tensor per class index tensor and at least one image, "
            f"got {len(values_per_image)} and {len(classes_per_image)}"
        )
    first = values_per_image[0]
    output = first.new_full((len(values_per_image), num_classes, *first.shape[1:]), fill)
    for image, (classes, values) in enumerate(zip(classes_per_image, values_per_image)):
        output[image, classes] = values
    return output
