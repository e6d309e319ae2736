"""Tensors derived from parameters (folded, transposed, cast), computed once per version.

The inference kernels take their weights in a prepared form: a LayerNorm folded into the
next linear layer, a transpose, a cast to the operand dtype. Computed on every call, that
is ~10 small kernels per fused block, and a few hundred per SED forward (the image tower has
36 ConvNeXt blocks): with CUDA graphs, where launches cost nothing, their fixed ~2 us each
are still a visible part of a 13 ms image. :func:`derived_from_parameters` caches the result
on the module that owns the parameters and recomputes it when any source tensor is replaced
or modified in place (``Tensor._version``, which every in-place op, optimizer step and
``load_state_dict`` bumps).

A CUDA graph replays the kernels it recorded, reading the cached tensors as they were; it does
not re-run this check. :func:`sed_d2.ops.cuda_graphs.graph_key` therefore includes the
parameters' versions, so a parameter change gets a new capture (and a recomputed cache).
Nothing is cached while a stream is being captured (the graph would own the memory).
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import Tensor, nn

__all__ = ["derived_from_parameters", "tensor_state"]


def tensor_state(tensors: Sequence[Tensor | None]) -> tuple:
    """What a derived tensor depends on: each source's storage, version, dtype and device."""
    return tuple(
        None if t is None else (t.data_ptr(), t._version, t.dtype, t.device, tuple(t.shape)) for t in tensors
    )


def derived_from_parameters(
    owner: nn.Module, name: str, sources: Sequence[Tensor | None], build: Callable[[], tuple], extra: tuple = ()
) -> tuple:
    """``build()`` (a tuple of tensors derived from ``sources``), cached on ``owner`` under
    ``name`` until a source changes or ``extra`` (e.g. the operand dtype) differs. Without
    gradients only: with autograd the caller must compute its own (differentiable) result."""
    key = (tensor_state(sources), extra)
    cache = owner.__dict__.setdefault("_derived_tensors", {})
    entry = cache.get(name)
    if entry is not None and entry[0] == key:
        return entry[1]
    with torch.no_grad():
        value = build()
    capturing = torch.cuda.is_available() and torch.cuda.is_current_stream_capturing()
    if not capturing:
        cache[name] = (key, value)
    return value
