"""Normalisation as a few large, layout-preserving kernels (pure PyTorch).

The decoders of SED-style methods normalise *many* small vectors: LayerNorm over 16-128
channels at every pixel of every class map, GroupNorm over class maps of 16-64 channels.
Three properties of the helpers here make that fast without changing the result:

* **Few passes.** LayerNorm is one Triton pass on CUDA (else a ``var_mean`` reduction
  and one ``addcmul``; both beat the row-per-block LayerNorm kernel on short rows) and
  the affine part is folded into the linear layer that follows
  (:func:`fold_layer_norm_into_linear`). GroupNorm on CUDA at inference is two Triton
  kernels (statistics: one read; normalise + affine + ReLU: one read, one write), which
  can also add a per-image shared term on the fly; else its statistics are per-channel
  ``var_mean`` combined per group in closed form, and the affine + ReLU are one
  ``addcmul`` and one in-place ReLU.
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

from .kernels import (
    _check_addend,
    _needs_autograd,
    group_norm_apply,
    group_norm_kernels_apply,
    group_norm_statistics,
    normalize_rows,
)

__all__ = ["fold_layer_norm_into_linear", "group_norm", "layer_norm", "layer_norm_linear", "normalize_last_dim"]


def _stat_dtype(x: Tensor) -> torch.dtype:
    """Statistics are combined in float32 (float64 for float64 inputs)."""
    return torch.promote_types(x.dtype, torch.float32)


def normalize_last_dim(x: Tensor, eps: float) -> Tensor:
    """``(x - mean) / sqrt(var + eps)`` over the last dimension (LayerNorm without its
    affine part, biased variance), in ``x``'s dtype and memory layout. Contiguous CUDA
    inputs take a one-pass Triton kernel (:func:`sed_d2.layers.kernels.normalize_rows`)."""
    fast = normalize_rows(x, eps)
    if fast is not None:
        return fast
    var, mean = torch.var_mean(x, dim=-1, keepdim=True, correction=0)
    rstd = torch.rsqrt(var.to(_stat_dtype(x)) + eps).to(x.dtype)  # rsqrt autocasts to float32
    return torch.addcmul(-mean * rstd, x, rstd)


def layer_norm(x: Tensor, norm: nn.LayerNorm) -> Tensor:
    """``norm(x)`` (``norm`` over the last dimension) in ``x``'s dtype and memory layout.
    Before a linear layer, :func:`layer_norm_linear` saves the affine pass."""
    _check_last_dim(x, norm)
    y = normalize_last_dim(x, norm.eps)
    # cast: the float32 parameters would promote a bf16 y to float32
    weight = None if norm.weight is None else norm.weight.to(y.dtype)
    bias = None if norm.bias is None else norm.bias.to(y.dtype)
    if weight is not None:
        return y * weight if bias is None else torch.addcmul(bias, y, weight)
    return y if bias is None else y + bias


def _check_last_dim(x: Tensor, norm: nn.LayerNorm) -> None:
    if tuple(norm.normalized_shape) != (x.shape[-1],):
        raise ValueError(f"norm over {tuple(norm.normalized_shape)} cannot normalise the last dim of {tuple(x.shape)}")


def fold_layer_norm_into_linear(
    norm: nn.LayerNorm, weight: Tensor, bias: Tensor | None, in_features: int | None = None
) -> tuple[Tensor, Tensor | None]:
    """Weight and bias of ``linear'`` with ``linear(norm(x)) == linear'(normalize(x))``.

    ``weight`` is ``(out, in)``; only its first ``in_features`` input columns (default:
    all) act on the normalised vector, the rest on other inputs concatenated after it
    (e.g. guidance) and are left as they are.
    """
    in_features = weight.shape[1] if in_features is None else in_features
    on_norm, rest = weight[:, :in_features], weight[:, in_features:]
    if norm.bias is not None:
        shift = torch.mv(on_norm, norm.bias)
        bias = shift if bias is None else bias + shift
    if norm.weight is not None:
        on_norm = on_norm * norm.weight
        weight = torch.cat([on_norm, rest], dim=1) if rest.shape[1] else on_norm
    return weight, bias


def layer_norm_linear(x: Tensor, norm: nn.LayerNorm, linear: nn.Linear) -> Tensor:
    """``linear(norm(x))`` (``norm`` over the last dimension) in two passes over ``x``."""
    _check_last_dim(x, norm)
    weight, bias = fold_layer_norm_into_linear(norm, linear.weight, linear.bias)
    return F.linear(normalize_last_dim(x, norm.eps), weight, bias)


def group_norm(x: Tensor, norm: nn.GroupNorm, relu: bool = False, addend: Tensor | None = None) -> Tensor:
    """``norm(x + addend)`` (then ReLU if asked) for ``(N, C, *spatial)`` in any memory
    layout, returning ``x``'s dtype and layout.

    ``addend``: optional ``(B, C, *spatial)`` term shared by groups of ``N / B``
    consecutive samples (sample ``n`` adds ``addend[n // (N / B)]``; ``B`` must divide
    ``N``), added in ``x``'s dtype before normalising; it is never repeated in memory.

    Channels-last 4-D CUDA inputs without autograd take two Triton kernels
    (:func:`sed_d2.layers.kernels.group_norm_statistics` and
    :func:`~sed_d2.layers.kernels.group_norm_apply`): one read of ``x`` (+ ``addend``) for
    the statistics, one read and one write for the sum, normalisation, affine and ReLU
    (float32 arithmetic, one rounding).

    Otherwise (PyTorch): per-channel mean and variance come from one ``var_mean`` pass; a
    group's statistics are the exact combination ``mean_g = avg(mean_c)``,
    ``var_g = avg(var_c + (mean_c - mean_g)^2)`` (equal counts per channel).
    """
    batch, channels = x.shape[:2]
    groups = norm.num_groups
    if channels != norm.num_channels:
        raise ValueError(f"GroupNorm over {norm.num_channels} channels got {channels}")
    if addend is not None:
        _check_addend(x, addend)
    dtype = _stat_dtype(x)
    if group_norm_kernels_apply(x, addend, norm.weight, norm.bias):
        with torch.no_grad():
            group_mean, group_var = group_norm_statistics(x, groups, addend)
            return group_norm_apply(x, group_mean, group_var, norm.weight, norm.bias, norm.eps, addend, relu)
    owned = False  # x is a temporary of ours (x + addend): the affine may overwrite it
    if addend is not None:
        x = (x.unflatten(0, (addend.shape[0], -1)) + addend.to(x.dtype).unsqueeze(1)).flatten(0, 1)
        owned = not _needs_autograd(x, norm.weight, norm.bias)
    var, mean = torch.var_mean(x, dim=tuple(range(2, x.dim())), correction=0)  # (N, C)
    mean = mean.to(dtype).view(batch, groups, -1)
    var = var.to(dtype).view(batch, groups, -1)
    group_mean = mean.mean(-1, keepdim=True)
    group_var = (var + (mean - group_mean).square()).mean(-1, keepdim=True)
    scale, shift = _group_affine(group_mean, group_var, norm, dtype)
    shape = (batch, channels) + (1,) * (x.dim() - 2)
    shift, scale = shift.reshape(shape).to(x.dtype), scale.reshape(shape).to(x.dtype)
    # the sum is ours when there is an addend: writing into it keeps the peak memory of the
    # former in-place add (inference)
    y = torch.addcmul(shift, x, scale, out=x) if owned else torch.addcmul(shift, x, scale)
    return torch.relu_(y) if relu else y


def _group_affine(
    group_mean: Tensor, group_var: Tensor, norm: nn.GroupNorm, dtype: torch.dtype
) -> tuple[Tensor, Tensor]:
    """Per-channel ``scale`` and ``shift`` (each ``(N, G, C / G)``, ``dtype``) with
    ``norm(x) = x * scale + shift``, from ``(N, G, 1)`` group statistics."""
    groups = norm.num_groups
    per_group = norm.num_channels // groups
    scale = torch.rsqrt(group_var.to(dtype) + norm.eps).expand(-1, -1, per_group)  # (N, G, C/G)
    if norm.weight is not None:
        scale = scale * norm.weight.to(dtype).view(groups, -1)
    shift = -group_mean.to(dtype) * scale
    if norm.bias is not None:
        shift = shift + norm.bias.to(dtype).view(groups, -1)
    return scale, shift
