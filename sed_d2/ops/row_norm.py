"""LayerNorm without its affine part over the last dimension, in one pass, and the folding of
a LayerNorm's affine part into the linear layer after it.

``linear(layer_norm(x)) == linear'(normalize_rows(x))`` with ``linear'`` from
:func:`fold_layer_norm_into_linear` (exact algebra): the decoders' LayerNorms over 16-128
channels then cost one read and one write of ``x``. The kernel normalises blocks of rows in
float32 and writes ``x``'s dtype; its backward is closed-form.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .runtime import FLOAT_DTYPES, available, needs_autograd, tl, triton

__all__ = ["fold_layer_norm_into_linear", "normalize_rows", "normalize_rows_applies", "normalize_rows_reference"]

_MAX_CHANNELS = 1024  # one block of channels per row
_BLOCK_ELEMENTS = 4096  # rows x channels per program


def normalize_rows_applies(x: Tensor) -> bool:
    """Whether :func:`normalize_rows` runs the Triton kernel: a contiguous float32 / bf16 /
    fp16 ``x`` with 2..1024 channels where :func:`~sed_d2.ops.runtime.available`. Autograd
    is supported."""
    return bool(
        available(x)
        and x.dim() > 0
        and x.is_contiguous()
        and 1 < x.shape[-1] <= _MAX_CHANNELS
        and x.dtype in FLOAT_DTYPES
    )


def normalize_rows_reference(x: Tensor, eps: float) -> Tensor:
    """:func:`normalize_rows` as one ``var_mean`` reduction and one ``addcmul`` (both beat the
    row-per-block LayerNorm kernel on short rows), in ``x``'s dtype and memory layout."""
    var, mean = torch.var_mean(x, dim=-1, keepdim=True, correction=0)
    statistics_dtype = torch.promote_types(x.dtype, torch.float32)  # float64 stays float64
    rstd = torch.rsqrt(var.to(statistics_dtype) + eps).to(x.dtype)  # rsqrt autocasts to float32
    return torch.addcmul(-mean * rstd, x, rstd)


def normalize_rows(x: Tensor, eps: float) -> Tensor:
    """``(x - mean) / sqrt(var + eps)`` over the last dimension (LayerNorm without its affine
    part, biased variance), in ``x``'s dtype and memory layout: the Triton kernel when
    :func:`normalize_rows_applies`, else :func:`normalize_rows_reference`."""
    if not normalize_rows_applies(x):
        return normalize_rows_reference(x, eps)
    if needs_autograd(x):
        return _NormalizeRows.apply(x, eps)
    return _normalize_forward(x, eps)[0]


def fold_layer_norm_into_linear(
    norm_weight: Tensor | None,
    norm_bias: Tensor | None,
    weight: Tensor,
    bias: Tensor | None,
    in_features: int | None = None,
) -> tuple[Tensor, Tensor | None]:
    """Weight and bias of ``linear'`` with ``linear(norm(x)) == linear'(normalize_rows(x))``,
    for a LayerNorm with affine ``norm_weight`` / ``norm_bias`` (either ``None``) and a linear
    layer with ``weight`` ``(out, in)`` and ``bias``.

    Only the first ``in_features`` input columns of ``weight`` (default: all) act on the
    normalised vector, the rest on other inputs concatenated after it (e.g. guidance) and are
    left as they are. Computed in the dtypes given (differentiable).
    """
    in_features = weight.shape[1] if in_features is None else in_features
    on_norm, rest = weight[:, :in_features], weight[:, in_features:]
    if norm_bias is not None:
        shift = torch.mv(on_norm, norm_bias)
        bias = shift if bias is None else bias + shift
    if norm_weight is not None:
        on_norm = on_norm * norm_weight
        weight = torch.cat([on_norm, rest], dim=1) if rest.shape[1] else on_norm
    return weight, bias


def _normalize_forward(x: Tensor, eps: float) -> tuple[Tensor, Tensor]:
    channels = x.shape[-1]
    rows = x.numel() // channels
    out = torch.empty_like(x)
    rstd = torch.empty(rows, dtype=torch.float32, device=x.device)
    block_c = triton.next_power_of_2(channels)
    block_m = max(1, _BLOCK_ELEMENTS // block_c)
    _normalize_kernel[(triton.cdiv(rows, block_m),)](
        x, out, rstd, rows, channels, eps, BLOCK_M=block_m, BLOCK_C=block_c, num_warps=4
    )
    return out, rstd


class _NormalizeRows(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, eps):
        out, rstd = _normalize_forward(x, eps)
        ctx.save_for_backward(out, rstd)
        return out

    @staticmethod
    def backward(ctx, grad):
        # y = (x - mean) * rstd  =>  dx = rstd * (g - mean(g) - y * mean(g * y))
        y, rstd = ctx.saved_tensors
        g = grad.float()
        yf = y.float()
        dx = g - g.mean(-1, keepdim=True) - yf * (g * yf).mean(-1, keepdim=True)
        return (dx * rstd.view(*y.shape[:-1], 1)).to(y.dtype), None


if triton is not None:

    @triton.jit
    def _normalize_kernel(x_ptr, y_ptr, rstd_ptr, M, C, eps, BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr):
        rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
        cols = tl.arange(0, BLOCK_C)
        mask = (rows < M)[:, None] & (cols < C)[None, :]
        offs = rows.to(tl.int64)[:, None] * C + cols[None, :]
        x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        mean = tl.sum(x, axis=1) / C
        centered = tl.where(mask, x - mean[:, None], 0.0)
        rstd = 1.0 / tl.sqrt(tl.sum(centered * centered, axis=1) / C + eps)
        tl.store(y_ptr + offs, (centered * rstd[:, None]).to(y_ptr.dtype.element_ty), mask=mask)
        tl.store(rstd_ptr + rows, rstd, mask=rows < M)
