"""The decoders' ``k = s = 2`` transposed convolutions on channels-last maps.

Every output pixel of such a convolution has exactly one input pixel, so it is one matrix
product over channels and a pixel shuffle (:func:`conv_transpose_2x2_reference`): much faster
than cuDNN's transposed convolution on channels-last maps with few channels. At inference the
Triton kernel does the four phase products and the shuffle in one pass, optionally with ReLU
and into a channel slice of a concatenation buffer. As a matrix product plus PyTorch's strided
shuffle copy, the shuffle alone took 0.6 ms per call for 227 maps of 24 x 192 x 192 in bf16 on
an H200.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .runtime import FLOAT_DTYPES, available, needs_autograd, operand_dtype, tl, triton

__all__ = ["conv_transpose_2x2", "conv_transpose_2x2_applies", "conv_transpose_2x2_reference"]

_MAX_IN_CHANNELS = 256
_MAX_OUT_CHANNELS = 128


def conv_transpose_2x2_applies(x: Tensor, weight: Tensor, bias: Tensor | None, out: Tensor | None = None) -> bool:
    """Whether :func:`conv_transpose_2x2` runs the Triton kernel: a channels-last 4-D float32 /
    bf16 / fp16 ``x`` with ``C <= 256`` where :func:`~sed_d2.ops.runtime.available`, a
    ``(C, O, 2, 2)`` weight with ``O <= 128`` on its device, ``out`` (if given) on the same
    device with channel stride 1, no autograd, and 16-bit or TF32 products.

    Exact float32 products (float32 operands with TF32 off) run the reference instead: Triton
    lowers an ``"ieee"`` dot of a whole (64 x 256) x (256 x 128) tile to fully unrolled FMAs,
    and ptxas then took about two minutes per channel configuration on an H200 (the first
    float32 CAT-Seg call took 244 s, nearly all of it compiling this kernel). cuBLAS's float32
    GEMM plus the shuffle copy is exact and fast enough for a path chosen for accuracy."""
    return bool(
        available(x)
        and (operand_dtype(x) != torch.float32 or torch.backends.cuda.matmul.allow_tf32)
        and x.dim() == 4
        and x.numel() > 0
        and weight.dim() == 4
        and tuple(weight.shape[::2]) == (x.shape[1], 2)
        and weight.shape[3] == 2
        and x.shape[1] <= _MAX_IN_CHANNELS
        and weight.shape[1] <= _MAX_OUT_CHANNELS
        and (bias is None or tuple(bias.shape) == (weight.shape[1],))
        and x.dtype in FLOAT_DTYPES
        and x.is_contiguous(memory_format=torch.channels_last)
        and weight.device == x.device
        and (out is None or (out.device == x.device and out.stride(1) == 1 and out.dtype in FLOAT_DTYPES))
        and not needs_autograd(x, weight, bias)
    )


def conv_transpose_2x2(
    x: Tensor, weight: Tensor, bias: Tensor | None, out: Tensor | None = None, relu: bool = False
) -> Tensor:
    """``F.conv_transpose2d(x, weight, bias, stride=2)`` (then ReLU if asked) for a
    ``(C, O, 2, 2)`` weight: ``(N, C, H, W) -> (N, O, 2H, 2W)``, channels-last.

    ``out``: an ``(N, O, 2H, 2W)`` view whose channel axis has stride 1 (e.g. a channel slice
    of a channels-last buffer); the result is then written straight into it (no gradient flows
    through ``out``; for inference) and ``out`` is returned.

    When :func:`conv_transpose_2x2_applies`, one Triton kernel: every program multiplies a
    block of input pixels by the four ``(C, O)`` phase matrices and stores each product at its
    output pixel, so the pixel shuffle costs no extra pass. Products use the operand dtype
    with float32 accumulation; float32 operands take the kernel (TF32 products) only when
    ``torch.backends.cuda.matmul.allow_tf32``, as ``F.linear`` would use TF32. Otherwise
    :func:`conv_transpose_2x2_reference`. Both return the autocast dtype under autocast, else
    ``x``'s (what ``F.linear`` gives).
    """
    if not conv_transpose_2x2_applies(x, weight, bias, out):
        return conv_transpose_2x2_reference(x, weight, bias, out, relu)
    return _launch(x, weight, bias, out, relu)


def conv_transpose_2x2_reference(
    x: Tensor, weight: Tensor, bias: Tensor | None, out: Tensor | None = None, relu: bool = False
) -> Tensor:
    """:func:`conv_transpose_2x2` as one ``F.linear`` over channels and a pixel shuffle (a
    strided copy), differentiable (except through ``out``)."""
    batch, channels, height, width = x.shape
    out_channels = weight.shape[1]
    matrix = weight.permute(0, 2, 3, 1).reshape(channels, 4 * out_channels)  # (C, (a, b, O))
    y = F.linear(x.permute(0, 2, 3, 1), matrix.t(), None if bias is None else bias.repeat(4))
    y = y.view(batch, height, width, 2, 2, out_channels).permute(0, 1, 3, 2, 4, 5)
    if out is not None:
        _check_out(x, weight, out)
        out.permute(0, 2, 3, 1).unflatten(2, (width, 2)).unflatten(1, (height, 2)).copy_(y.relu() if relu else y)
        return out
    y = y.reshape(batch, 2 * height, 2 * width, out_channels).permute(0, 3, 1, 2)
    return torch.relu_(y) if relu else y


def _check_out(x: Tensor, weight: Tensor, out: Tensor) -> None:
    batch, _, height, width = x.shape
    shape = (batch, weight.shape[1], 2 * height, 2 * width)
    if tuple(out.shape) != shape or out.stride(1) != 1:
        raise ValueError(
            f"out must be a {shape} view with channel stride 1, got {tuple(out.shape)} with strides {out.stride()}"
        )


def _launch(x: Tensor, weight: Tensor, bias: Tensor | None, out: Tensor | None, relu: bool) -> Tensor:
    batch, channels, height, width = x.shape
    out_channels = weight.shape[1]
    operand = operand_dtype(x)
    if out is None:
        out = torch.empty(
            (batch, out_channels, 2 * height, 2 * width), dtype=operand, device=x.device, memory_format=torch.channels_last
        )
    else:
        _check_out(x, weight, out)
    block_k = max(16, triton.next_power_of_2(channels))
    block_o = max(16, triton.next_power_of_2(out_channels))
    # (4, BLOCK_K, BLOCK_O) zero-padded phase matrices [a * 2 + b][c, o] in the operand dtype
    phases = torch.zeros((4, block_k, block_o), dtype=operand, device=x.device)
    phases[:, :channels, :out_channels] = weight.detach().permute(2, 3, 0, 1).reshape(4, channels, out_channels)
    shift = torch.zeros(block_o, dtype=torch.float32, device=x.device)
    if bias is not None:
        shift[:out_channels] = bias.detach().float()
    xs = x if x.dtype == operand else x.to(operand)  # autocast: F.linear would cast x too
    precision = "tf32" if operand == torch.float32 else "ieee"  # "ieee" is ignored for 16-bit operands
    pixels = batch * height * width
    block_m = 64 if block_k * block_o >= 128 * 128 else 128
    stride_n, stride_c, stride_h, stride_w = out.stride()
    # Alignment (in elements) of every output row start: lets Triton vectorise the stores
    # where the strides alone do not show it (e.g. 8 channels: stride 8, not 16)
    align = 1
    while align < 16 and all(v % (2 * align) == 0 for v in (stride_n, stride_h, stride_w, out.storage_offset())):
        align *= 2
    _conv_transpose_2x2_kernel[(triton.cdiv(pixels, block_m),)](
        xs, phases, shift, out, pixels, height, width, stride_n, stride_h, stride_w,
        C=channels, O=out_channels, ALIGN=align, RELU=relu, PRECISION=precision,
        BLOCK_M=block_m, BLOCK_K=block_k, BLOCK_O=block_o, num_warps=4,
    )  # fmt: skip
    return out


if triton is not None:

    @triton.jit
    def _conv_transpose_2x2_kernel(
        x_ptr, w_ptr, b_ptr, y_ptr, M, H, W, stride_n, stride_h, stride_w,
        C: tl.constexpr, O: tl.constexpr, ALIGN: tl.constexpr, RELU: tl.constexpr, PRECISION: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_O: tl.constexpr,
    ):  # fmt: skip
        # C and O are compile-time constants: with runtime channel counts Triton cannot prove
        # the masks constant over a vector, and every load and store becomes scalar.
        pixels = tl.program_id(0).to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)  # input pixels (n, i, j)
        valid = pixels < M
        ks = tl.arange(0, BLOCK_K)
        os = tl.arange(0, BLOCK_O)
        xt = tl.load(x_ptr + pixels[:, None] * C + ks[None, :], mask=valid[:, None] & (ks < C)[None, :], other=0.0)
        j = pixels % W
        rest = pixels // W
        i = rest % H
        n = rest // H
        base = n * stride_n + (2 * i) * stride_h + (2 * j) * stride_w  # output pixel (2i, 2j)
        shift = tl.load(b_ptr + os)[None, :]
        mask = valid[:, None] & (os < O)[None, :]
        for phase in tl.static_range(4):
            w = tl.load(w_ptr + phase * BLOCK_K * BLOCK_O + ks[:, None] * BLOCK_O + os[None, :])
            y = tl.dot(xt, w, input_precision=PRECISION) + shift
            if RELU:
                y = tl.maximum(y, 0.0)
            at = tl.multiple_of(base + (phase // 2) * stride_h + (phase % 2) * stride_w, ALIGN)
            tl.store(y_ptr + at[:, None] + os[None, :], y.to(y_ptr.dtype.element_ty), mask=mask)
