"""LayerNorm -> fc1 -> GELU (or ReLU) -> fc2 -> layer scale -> residual over the last dimension
in one Triton pass, for inference: the point-wise MLP of a ConvNeXt block and of the class
transformer layer.

The unfused path (:func:`layer_norm_mlp_reference`) writes and reads the ``4C``-wide hidden
tensor several times, which makes it memory bound on the SED decoder's class maps (hundreds
of millions of rows of ``C`` = 32-128 channels): about 23 row-widths of traffic per row in
16-bit. The kernel keeps each row block's hidden activations on chip: per row it reads ``x``
and ``residual`` and writes the output (3 row-widths; the weights stay in L2) and needs no
``4C``-wide temporary. On an H200 (bf16, 16.7M rows) it ran 2.3x / 2.9x / 2.1x / 1.6x faster
than the unfused path for C = 16 / 32 / 64 / 128; it is then bound by the two products and
the GELU, not by memory.

Both paths compute ``residual + layer_scale * fc2(gelu(fc1(norm(x))))`` with the LayerNorm
affine folded into ``fc1`` and the layer scale into ``fc2`` (exact algebra,
:func:`~sed_d2.ops.row_norm.fold_layer_norm_into_linear`); the folded weights are computed
once per parameter version (:mod:`sed_d2.ops.parameter_cache`).

The class-axis transformer layer (:class:`sed_d2.layers.ClassTransformerLayer`) reuses the
kernel for its MLP: ``activation="relu"`` and a second residual (``extra_residual``) make its
``out = t1 + tokens + fc2(relu(fc1(norm(t1))))`` one pass instead of a ``t1 + mlp`` pass
followed by the layer's extra ``+ x`` pass.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .parameter_cache import derived_from_parameters
from .row_norm import fold_layer_norm_into_linear, normalize_rows
from .runtime import FLOAT_DTYPES, available, needs_autograd, operand_dtype, tl, triton

__all__ = ["fused_layer_norm_mlp", "fused_layer_norm_mlp_applies", "layer_norm_mlp_reference"]

_ACTIVATIONS = ("gelu", "relu")
# (BLOCK_M, BLOCK_H, num_warps, num_stages) per (C, operand bytes), from a sweep on an
# H200 (16.7M rows; BLOCK_M in 64/128, BLOCK_H in 32/64/128, 4/8 warps, 2/3 stages).
# Registers bound the tiles: acc (BLOCK_M x C fp32) and the hidden chunk (BLOCK_M x
# BLOCK_H fp32) live in registers; 64 x 128 + 64 x 32 floats over 4 warps is 80 per
# thread for C = 128, and larger tiles ran 1.1-1.6x slower. fp32 operands ("ieee") run
# the dots on CUDA cores, where the same small tiles did best.
_CONFIGS = {
    (16, 2): (64, 64, 4, 2),
    (32, 2): (128, 32, 4, 2),
    (64, 2): (64, 32, 4, 3),
    (128, 2): (64, 32, 4, 3),
    (16, 4): (64, 32, 4, 2),
    (32, 4): (64, 32, 4, 2),
    (64, 4): (32, 32, 4, 2),
    (128, 4): (64, 32, 8, 2),
}


def layer_norm_mlp_reference(
    x: Tensor,
    residual: Tensor,
    norm: nn.LayerNorm,
    fc1: nn.Linear,
    fc2: nn.Linear,
    *,
    layer_scale: Tensor | None = None,
    gelu_approximate: str = "none",
    activation: str = "gelu",
    extra_residual: Tensor | None = None,
) -> Tensor:
    """:func:`fused_layer_norm_mlp` in plain PyTorch (the unfused path; differentiable). The
    folded weights are cast to ``x``'s dtype so bf16 activations work without autocast (under
    autocast ``F.linear`` casts them anyway)."""
    if activation not in _ACTIVATIONS:
        raise ValueError(f"activation must be one of {_ACTIVATIONS}, got {activation!r}")
    if tuple(norm.normalized_shape) != (x.shape[-1],):
        raise ValueError(f"norm over {tuple(norm.normalized_shape)} cannot normalise the last dim of {tuple(x.shape)}")

    def folded():
        w1, b1 = fold_layer_norm_into_linear(norm.weight, norm.bias, fc1.weight, fc1.bias)
        w2, b2 = fc2.weight, fc2.bias
        if layer_scale is not None:
            w2 = w2 * layer_scale[:, None]
            b2 = None if b2 is None else b2 * layer_scale
        cast = lambda t: None if t is None else t.to(x.dtype)
        return cast(w1), cast(b1), cast(w2), cast(b2)

    sources = _sources(norm, fc1, fc2, layer_scale)
    if needs_autograd(*sources):
        w1, b1, w2, b2 = folded()  # differentiable
    else:  # inference: fold and cast once per parameter version
        w1, b1, w2, b2 = derived_from_parameters(fc1, "layer_norm_mlp_reference", sources, folded, extra=(x.dtype,))
    y = F.linear(normalize_rows(x, norm.eps), w1, b1)
    y = F.relu(y) if activation == "relu" else F.gelu(y, approximate=gelu_approximate)
    if extra_residual is not None:
        residual = residual + extra_residual
    return residual + F.linear(y, w2, b2)


def fused_layer_norm_mlp_applies(
    x: Tensor,
    residual: Tensor,
    norm: nn.LayerNorm,
    fc1: nn.Linear,
    fc2: nn.Linear,
    *,
    layer_scale: Tensor | None = None,
    gelu_approximate: str = "none",
    activation: str = "gelu",
    extra_residual: Tensor | None = None,
) -> bool:
    """Whether :func:`fused_layer_norm_mlp` runs the Triton kernel for these arguments: where
    :func:`~sed_d2.ops.runtime.available`, ``C`` in {16, 32, 64, 128} with hidden ``4C``,
    float32 / bf16 / fp16 contiguous inputs on one device, and no autograd (grad disabled or
    nothing requires grad)."""
    channels = x.shape[-1] if x.dim() else 0
    tensors = [x, residual, fc1.weight, fc2.weight]
    tensors += [t for t in (norm.weight, norm.bias, fc1.bias, fc2.bias, layer_scale, extra_residual) if t is not None]
    return bool(
        available(x)
        and activation in _ACTIVATIONS
        and gelu_approximate in ("none", "tanh")
        and channels in (16, 32, 64, 128)  # tl.dot needs >= 16; power of two for the tiles
        and tuple(norm.normalized_shape) == (channels,)
        and tuple(fc1.weight.shape) == (4 * channels, channels)
        and tuple(fc2.weight.shape) == (channels, 4 * channels)
        and (layer_scale is None or tuple(layer_scale.shape) == (channels,))
        and residual.shape == x.shape
        and residual.dtype == x.dtype
        and x.dtype in FLOAT_DTYPES
        and operand_dtype(x) in FLOAT_DTYPES
        and x.is_contiguous()
        and residual.is_contiguous()
        and (extra_residual is None or _same_rows(extra_residual, x))
        and all(t.device == x.device for t in tensors)
        and not needs_autograd(*tensors)
    )


def fused_layer_norm_mlp(
    x: Tensor,
    residual: Tensor,
    norm: nn.LayerNorm,
    fc1: nn.Linear,
    fc2: nn.Linear,
    *,
    layer_scale: Tensor | None = None,
    gelu_approximate: str = "none",
    activation: str = "gelu",
    extra_residual: Tensor | None = None,
) -> Tensor:
    """``residual + layer_scale * fc2(gelu(fc1(norm(x))))`` over the last dim of ``x``.

    Args:
        x: ``(..., C)`` rows (e.g. a depthwise-conv output, channels last).
        residual: same shape and dtype as ``x``.
        norm: ``nn.LayerNorm(C)`` (its ``eps``; affine optional).
        fc1: ``nn.Linear(C, 4C)``; fc2: ``nn.Linear(4C, C)`` (biases optional).
        layer_scale: ``(C,)`` or ``None`` (none).
        gelu_approximate: ``F.gelu``'s ``approximate`` (``"none"``: exact erf GELU).
        activation: ``"gelu"`` or ``"relu"`` (the class transformer layer's MLP; then
            ``gelu_approximate`` is unused).
        extra_residual: ``None`` or a second tensor like ``residual`` (same shape, dtype,
            contiguous for the kernel), added to the output in the same pass.

    Returns ``x``'s shape and dtype. The Triton kernel (one read of ``x`` and ``residual``,
    one write) runs when :func:`fused_layer_norm_mlp_applies`; otherwise the result is
    :func:`layer_norm_mlp_reference`.

    Numerics: LayerNorm, GELU, biases and the residual add in float32; the two products
    take bf16/fp16 operands (float32 accumulation) for such inputs, and for float32
    inputs exact float32 ("ieee") or TF32 when ``torch.backends.cuda.matmul.allow_tf32``.
    The erf GELU uses libdevice ``erf`` for float32 operands and a branch-free erf
    (error <= 1.5e-7 * (1 + |x|)) for 16-bit ones. Under autocast the operands take the
    autocast dtype (as ``F.linear``'s).
    """
    options = dict(
        layer_scale=layer_scale, gelu_approximate=gelu_approximate, activation=activation, extra_residual=extra_residual
    )
    if not fused_layer_norm_mlp_applies(x, residual, norm, fc1, fc2, **options):
        return layer_norm_mlp_reference(x, residual, norm, fc1, fc2, **options)
    with torch.no_grad():
        return _launch(x, residual, norm, fc1, fc2, **options)


def _same_rows(t: Tensor, x: Tensor) -> bool:
    """``t`` can be read with ``x``'s row offsets: same shape and dtype, contiguous."""
    return t.shape == x.shape and t.dtype == x.dtype and t.is_contiguous()


def _sources(norm, fc1, fc2, layer_scale) -> tuple:
    return (norm.weight, norm.bias, fc1.weight, fc1.bias, fc2.weight, fc2.bias, layer_scale)


def _kernel_weights(norm, fc1, fc2, layer_scale, operand: torch.dtype) -> tuple[Tensor, ...]:
    """``(w1t, b1, w2t, b2)`` as the kernel reads them: the LayerNorm affine folded into
    fc1 and the layer scale into fc2 (in float32), the matrices transposed and cast to the
    operand dtype, the biases float32 (zeros where absent)."""
    channels = fc2.weight.shape[0]
    hidden = fc1.weight.shape[0]
    f32 = lambda t: None if t is None else t.float()  # bf16 parameters fold in float32 too
    w1, b1 = fold_layer_norm_into_linear(f32(norm.weight), f32(norm.bias), fc1.weight.float(), f32(fc1.bias))
    w2, b2 = fc2.weight.float(), f32(fc2.bias)
    if layer_scale is not None:
        scale = layer_scale.float()
        w2 = w2 * scale[:, None]
        b2 = None if b2 is None else b2 * scale
    zeros = torch.zeros(hidden, dtype=torch.float32, device=fc1.weight.device)
    b1 = zeros if b1 is None else b1.contiguous()
    b2 = zeros[:channels] if b2 is None else b2.contiguous()
    w1t = w1.t().contiguous().to(operand)  # (C, 4C): fc1 chunk is a (C, BLOCK_H) tile
    w2t = w2.t().contiguous().to(operand)  # (4C, C): fc2 chunk is a (BLOCK_H, C) tile
    return w1t, b1, w2t, b2


def _launch(
    x: Tensor,
    residual: Tensor,
    norm: nn.LayerNorm,
    fc1: nn.Linear,
    fc2: nn.Linear,
    *,
    layer_scale: Tensor | None,
    gelu_approximate: str,
    activation: str,
    extra_residual: Tensor | None,
) -> Tensor:
    channels = x.shape[-1]
    hidden = 4 * channels
    rows = x.numel() // channels
    out = torch.empty_like(x)
    if rows == 0:
        return out
    operand = operand_dtype(x)
    w1t, b1, w2t, b2 = derived_from_parameters(
        fc1, "fused_layer_norm_mlp", _sources(norm, fc1, fc2, layer_scale),
        lambda: _kernel_weights(norm, fc1, fc2, layer_scale, operand), extra=(operand,),
    )
    if operand == torch.float32:
        precision = "tf32" if torch.backends.cuda.matmul.allow_tf32 else "ieee"
    else:
        precision = "ieee"  # ignored for 16-bit operands
    block_m, block_h, num_warps, num_stages = _CONFIGS[(channels, operand.itemsize)]
    extra = residual if extra_residual is None else extra_residual  # unread without HAS_EXTRA
    _ln_mlp_kernel[(triton.cdiv(rows, block_m),)](
        x, residual, extra, w1t, b1, w2t, b2, out, rows, float(norm.eps),
        C=channels, HIDDEN=hidden, BLOCK_M=block_m, BLOCK_H=block_h,
        PRECISION=precision, TANH=gelu_approximate == "tanh", FAST_ERF=operand != torch.float32,
        RELU=activation == "relu", HAS_EXTRA=extra_residual is not None,
        num_warps=num_warps, num_stages=num_stages,
    )
    return out


if triton is not None:

    @triton.jit
    def _gelu_erf_fast(h):
        # x * Phi(x) with 1 - Phi(|x|) = erfc(|x| / sqrt 2) / 2 from Abramowitz & Stegun
        # 7.1.26 (|error| <= 1.5e-7): |gelu error| <= 1.5e-7 * (1 + |x|), as float32
        # torch's erf GELU, and far below the bf16/fp16 rounding of h that follows. About
        # 20% faster than libdevice erf in this kernel (no branches).
        z = tl.abs(h) * 0.7071067811865476
        t = 1.0 / (1.0 + 0.3275911 * z)
        p = ((((1.061405429 * t - 1.453152027) * t + 1.421413741) * t - 0.284496736) * t + 0.254829592) * t
        q = 0.5 * p * tl.exp(-z * z)
        return h * tl.where(h >= 0, 1.0 - q, q)

    @triton.jit
    def _ln_mlp_kernel(
        x_ptr, r_ptr, e_ptr, w1t_ptr, b1_ptr, w2t_ptr, b2_ptr, y_ptr, M, eps,
        C: tl.constexpr, HIDDEN: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_H: tl.constexpr,
        PRECISION: tl.constexpr, TANH: tl.constexpr, FAST_ERF: tl.constexpr,
        RELU: tl.constexpr, HAS_EXTRA: tl.constexpr,
    ):
        rows = tl.program_id(0).to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)  # int64: M * C may pass 2^31
        cols = tl.arange(0, C)
        mask = (rows < M)[:, None]
        offs = rows[:, None] * C + cols[None, :]
        # LayerNorm (no affine: folded into fc1) in float32; masked rows are zeros, stay finite
        x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        mean = tl.sum(x, axis=1) / C
        x = x - mean[:, None]
        rstd = 1.0 / tl.sqrt(tl.sum(x * x, axis=1) / C + eps)
        xn = (x * rstd[:, None]).to(w1t_ptr.dtype.element_ty)
        acc = tl.zeros((BLOCK_M, C), dtype=tl.float32)
        hcols = tl.arange(0, BLOCK_H)
        for h0 in range(0, HIDDEN, BLOCK_H):
            w1 = tl.load(w1t_ptr + cols[:, None] * HIDDEN + (h0 + hcols)[None, :])  # (C, BLOCK_H)
            h = tl.dot(xn, w1, input_precision=PRECISION) + tl.load(b1_ptr + h0 + hcols)[None, :]
            if RELU:
                h = tl.maximum(h, 0.0)
            elif TANH:  # 0.5 * (1 + tanh(u)) == sigmoid(2u)
                h = h * tl.sigmoid(1.5957691216057308 * (h + 0.044715 * h * h * h))
            elif FAST_ERF:
                h = _gelu_erf_fast(h)
            else:
                h = 0.5 * h * (1.0 + tl.erf(h * 0.7071067811865476))
            w2 = tl.load(w2t_ptr + (h0 + hcols)[:, None] * C + cols[None, :])  # (BLOCK_H, C)
            acc = tl.dot(h.to(w2t_ptr.dtype.element_ty), w2, acc, input_precision=PRECISION)
        acc += tl.load(b2_ptr + cols)[None, :]
        acc += tl.load(r_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        if HAS_EXTRA:
            acc += tl.load(e_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        tl.store(y_ptr + offs, acc.to(y_ptr.dtype.element_ty), mask=mask)
