"""Normalisation layers' computations as a few large, layout-preserving passes.

The decoders of SED-style methods normalise *many* small vectors: LayerNorm over 16-128
channels at every pixel of every class map, GroupNorm over class maps of 16-64 channels.
The helpers here take the ``nn.LayerNorm`` / ``nn.GroupNorm`` modules and run them as ops of
:mod:`sed_d2.ops` (Triton kernels where they apply, their PyTorch references otherwise):

* **Few passes.** LayerNorm is one normalising pass (:func:`sed_d2.ops.normalize_rows`) and
  the affine part is folded into the linear layer that follows
  (:func:`sed_d2.ops.fold_layer_norm_into_linear`). GroupNorm can add a per-image shared
  term on the fly and applies affine and ReLU in the same pass
  (:func:`sed_d2.ops.fused_group_norm`).
* **Dtype kept.** Under bf16 autocast, ``F.layer_norm`` / ``F.group_norm`` return float32
  and drag every following element-wise op to float32. These helpers return the input's
  dtype (statistics are accumulated in float32 inside the reductions).
* **Layout kept.** Channels-last inputs give channels-last outputs (``F.group_norm``
  converts them to NCHW on CUDA).

All of it is exact algebra: in float64 the results equal ``F.layer_norm`` / ``F.group_norm``
to rounding; ``tests/layers/test_norms.py`` checks it, gradients included.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import ops

__all__ = ["group_norm", "layer_norm", "layer_norm_linear"]


def layer_norm(x: Tensor, norm: nn.LayerNorm) -> Tensor:
    """``norm(x)`` (``norm`` over the last dimension) in ``x``'s dtype and memory layout.
    Before a linear layer, :func:`layer_norm_linear` saves the affine pass."""
    _check_last_dim(x, norm)
    y = ops.normalize_rows(x, norm.eps)
    # cast: the float32 parameters would promote a bf16 y to float32
    weight = None if norm.weight is None else norm.weight.to(y.dtype)
    bias = None if norm.bias is None else norm.bias.to(y.dtype)
    if weight is not None:
        return y * weight if bias is None else torch.addcmul(bias, y, weight)
    return y if bias is None else y + bias


def _check_last_dim(x: Tensor, norm: nn.LayerNorm) -> None:
    if tuple(norm.normalized_shape) != (x.shape[-1],):
        raise ValueError(f"norm over {tuple(norm.normalized_shape)} cannot normalise the last dim of {tuple(x.shape)}")


def layer_norm_linear(x: Tensor, norm: nn.LayerNorm, linear: nn.Linear) -> Tensor:
    """``linear(norm(x))`` (``norm`` over the last dimension) in two passes over ``x``."""
    _check_last_dim(x, norm)
    weight, bias = ops.fold_layer_norm_into_linear(norm.weight, norm.bias, linear.weight, linear.bias)
    return F.linear(ops.normalize_rows(x, norm.eps), weight, bias)


def group_norm(x: Tensor, norm: nn.GroupNorm, relu: bool = False, addend: Tensor | None = None) -> Tensor:
    """``norm(x + addend)`` (then ReLU if asked) for ``(N, C, *spatial)`` in any memory
    layout, returning ``x``'s dtype and layout (:func:`sed_d2.ops.fused_group_norm`).

    ``addend``: optional ``(B, C, *spatial)`` term shared by groups of ``N / B``
    consecutive samples (sample ``n`` adds ``addend[n // (N / B)]``; ``B`` must divide
    ``N``), added in ``x``'s dtype before normalising; it is never repeated in memory.
    """
    if x.shape[1] != norm.num_channels:
        raise ValueError(f"GroupNorm over {norm.num_channels} channels got {x.shape[1]}")
    return ops.fused_group_norm(x, norm.num_groups, norm.weight, norm.bias, norm.eps, relu=relu, addend=addend)
