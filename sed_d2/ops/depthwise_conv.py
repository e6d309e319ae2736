"""Depthwise ``k x k`` convolution (stride 1, "same" padding) on channels-last maps.

At the SED decoder's shapes (hundreds of class maps of 32-128 channels, ``k = 9``) cuDNN's
NHWC depthwise kernels and PyTorch's NCHW one run far below memory speed. The forward kernel
reads each input tile through the cache once per kernel row, for :data:`_ROWS` output rows
at a time, and accumulates in float32. Backward: grad-input is the same kernel with the
flipped filter; grad-weight has its own kernel; both run under autograd (training).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .runtime import FLOAT_DTYPES, available, needs_autograd, tl, triton

__all__ = ["depthwise_conv2d", "depthwise_conv2d_applies", "depthwise_conv2d_reference"]

# Output rows per program of the forward kernel (the kernel keeps one accumulator per row
# and asserts this value). Each input row tile loaded feeds every output row whose window
# holds it, so a 9x9 filter loads (9 + 3) / 4 = 3 tiles per output instead of 9 per kernel row.
_ROWS = 4
# Forward tiles of at most 32 x 32 (pixels x channels): on an H200 (bf16, 847 maps of
# 32 x 96 x 96, 9x9) 2.9 ms against 5.3 ms for 64 x 32, 8.0 ms for 32 x 64 and 14.4 ms for
# cuDNN's NCHW kernel.
_FORWARD_BLOCK_W = 32
_FORWARD_BLOCK_C = 32


def depthwise_conv2d_applies(x: Tensor, weight: Tensor) -> bool:
    """Whether :func:`depthwise_conv2d` runs the Triton kernels: a 4-D channels-last float32 /
    bf16 / fp16 ``x`` where :func:`~sed_d2.ops.runtime.available`, and a square odd
    ``(C, 1, k, k)`` filter. Autograd is supported."""
    return bool(
        available(x)
        and x.dim() == 4
        and weight.dim() == 4
        and tuple(weight.shape[:2]) == (x.shape[1], 1)
        and weight.shape[2] == weight.shape[3]
        and weight.shape[2] % 2 == 1
        and x.is_contiguous(memory_format=torch.channels_last)
        and x.dtype in FLOAT_DTYPES
    )


def depthwise_conv2d_reference(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """``F.conv2d(x, weight, bias, padding=k // 2, groups=C)`` with the filter cast to ``x``'s
    dtype (so bf16 maps work without autocast)."""
    channels, kernel = weight.shape[0], weight.shape[-1]
    bias = None if bias is None else bias.to(x.dtype)
    return F.conv2d(x, weight.to(x.dtype), bias, padding=kernel // 2, groups=channels)


def depthwise_conv2d(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """``F.conv2d(x, weight, bias, padding=k // 2, groups=C)`` for ``weight`` ``(C, 1, k, k)``,
    ``k`` odd. When :func:`depthwise_conv2d_applies`, the Triton kernels (output
    channels-last in ``x``'s dtype, float32 accumulation); else
    :func:`depthwise_conv2d_reference`."""
    if not depthwise_conv2d_applies(x, weight):
        return depthwise_conv2d_reference(x, weight, bias)
    if needs_autograd(x, weight, bias):
        return _DepthwiseConv.apply(x, weight, bias)
    return _depthwise_forward(x, weight, bias)  # no autograd node: less host time per call


def _depthwise_forward(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    batch, channels, height, width = x.shape
    kernel = weight.shape[-1]
    if height * width * channels >= 2**31:
        raise ValueError(f"depthwise_conv2d: one image of {tuple(x.shape[1:])} exceeds int32 offsets")
    out = torch.empty_like(x, memory_format=torch.channels_last)
    block_c = min(_FORWARD_BLOCK_C, triton.next_power_of_2(channels))
    block_w = min(_FORWARD_BLOCK_W, triton.next_power_of_2(width))
    grid = (batch * triton.cdiv(height, _ROWS), triton.cdiv(width, block_w), triton.cdiv(channels, block_c))
    # (k*k, C): the taps of one filter position are contiguous over channels
    w = weight.reshape(channels, kernel * kernel).t().float().contiguous()
    b = w if bias is None else bias.float().contiguous()
    _dw_forward_kernel[grid](
        x, w, b, out, height, width, channels,
        K=kernel, HAS_BIAS=bias is not None, ROWS=_ROWS, BLOCK_W=block_w, BLOCK_C=block_c, num_warps=4,
    )  # fmt: skip
    return out


def _weight_grad_blocks(channels: int) -> tuple[int, int]:
    block_c = min(64, triton.next_power_of_2(channels))
    return block_c, max(1, 2048 // block_c)


def _depthwise_weight_grad(x: Tensor, grad: Tensor, kernel: int) -> Tensor:
    batch, channels, height, width = x.shape
    rows = batch * height
    block_c, block_w = _weight_grad_blocks(channels)
    block_w = min(block_w, triton.next_power_of_2(width))
    chunks = min(rows, 128)
    result = torch.zeros((channels, kernel * kernel), dtype=torch.float32, device=x.device)
    grid = (kernel, triton.cdiv(channels, block_c), chunks)
    _dw_weight_grad_kernel[grid](
        x, grad, result, rows, height, width, channels, triton.cdiv(rows, chunks),
        K=kernel, KP=triton.next_power_of_2(kernel), BLOCK_W=block_w, BLOCK_C=block_c, num_warps=4,
    )  # fmt: skip
    return result


class _DepthwiseConv(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias):
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        return _depthwise_forward(x, weight, bias)

    @staticmethod
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        grad = grad.contiguous(memory_format=torch.channels_last)
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            # the adjoint of a "same" stride-1 correlation is the correlation with the flipped filter
            grad_x = _depthwise_forward(grad, weight.flip(-1, -2), None)
        if ctx.needs_input_grad[1]:
            grad_w = _depthwise_weight_grad(x, grad, weight.shape[-1]).view_as(weight).to(weight.dtype)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = grad.sum(dim=(0, 2, 3), dtype=torch.float32).to(weight.dtype)
        return grad_x, grad_w, grad_b


if triton is not None:

    @triton.jit
    def accumulate_four_rows(
        x_ptr, w_ptr, h0, offs_w, offs_c, mask_c, H, W, C, acc0, acc1, acc2, acc3,
        K: tl.constexpr, ROWS: tl.constexpr,
    ):  # fmt: skip
        """The taps of a K x K depthwise filter for output rows h0..h0+3 of one image
        (``x_ptr`` at its first pixel, channels-last, ``C`` channels, weights ``(K, K, C)``),
        added to one ``(BLOCK_W, BLOCK_C)`` accumulator per row. Input row h0 - K//2 + r feeds
        output row h0 + q through filter row r - q, so each input tile is loaded once for all
        the output rows it touches; column offsets and masks are computed once per filter
        column, not per tap. Shared by the depthwise convolution and the head convolution
        (:mod:`.head_conv`), which sums the products over channels afterwards. Triton inlines
        it and keeps ``C`` a compile-time constant where the caller's is."""
        for j in tl.static_range(K):
            ww = offs_w + (j - K // 2)
            col = ww[:, None] * C + offs_c[None, :]
            col_ok = ((ww >= 0) & (ww < W))[:, None] & mask_c[None, :]
            for r in tl.static_range(K + ROWS - 1):
                hh = h0 + (r - K // 2)
                row_ok = (hh >= 0) & (hh < H)
                xv = tl.load(x_ptr + hh * W * C + col, mask=col_ok & row_ok, other=0.0).to(tl.float32)
                if r < K:
                    acc0 += xv * tl.load(w_ptr + (r * K + j) * C + offs_c, mask=mask_c, other=0.0)[None, :]
                if r >= 1 and r < K + 1:
                    acc1 += xv * tl.load(w_ptr + ((r - 1) * K + j) * C + offs_c, mask=mask_c, other=0.0)[None, :]
                if r >= 2 and r < K + 2:
                    acc2 += xv * tl.load(w_ptr + ((r - 2) * K + j) * C + offs_c, mask=mask_c, other=0.0)[None, :]
                if r >= 3:
                    acc3 += xv * tl.load(w_ptr + ((r - 3) * K + j) * C + offs_c, mask=mask_c, other=0.0)[None, :]
        return acc0, acc1, acc2, acc3

    @triton.jit
    def _dw_forward_kernel(
        x_ptr, w_ptr, b_ptr, y_ptr, H, W, C,
        K: tl.constexpr, HAS_BIAS: tl.constexpr, ROWS: tl.constexpr, BLOCK_W: tl.constexpr, BLOCK_C: tl.constexpr,
    ):  # fmt: skip
        # ROWS = 4 output rows h0..h0+3 of one image, BLOCK_W pixels x BLOCK_C channels, with
        # one accumulator each (accumulate_four_rows). Offsets inside an image are int32
        # (checked on the host); the per-image base is int64.
        tl.static_assert(ROWS == 4, "the kernel keeps four row accumulators")
        tiles_h = tl.cdiv(H, ROWS)
        pid = tl.program_id(0)
        n = pid // tiles_h
        h0 = (pid % tiles_h) * ROWS
        offs_w = tl.program_id(1) * BLOCK_W + tl.arange(0, BLOCK_W)
        offs_c = tl.program_id(2) * BLOCK_C + tl.arange(0, BLOCK_C)
        mask_c = offs_c < C
        image = n.to(tl.int64) * H * W * C
        acc0 = tl.zeros((BLOCK_W, BLOCK_C), dtype=tl.float32)
        acc1 = tl.zeros((BLOCK_W, BLOCK_C), dtype=tl.float32)
        acc2 = tl.zeros((BLOCK_W, BLOCK_C), dtype=tl.float32)
        acc3 = tl.zeros((BLOCK_W, BLOCK_C), dtype=tl.float32)
        acc0, acc1, acc2, acc3 = accumulate_four_rows(
            x_ptr + image, w_ptr, h0, offs_w, offs_c, mask_c, H, W, C, acc0, acc1, acc2, acc3, K, ROWS
        )
        if HAS_BIAS:
            bias = tl.load(b_ptr + offs_c, mask=mask_c, other=0.0)[None, :]
            acc0 += bias
            acc1 += bias
            acc2 += bias
            acc3 += bias
        out = y_ptr + image + (h0 * W + offs_w[:, None]) * C + offs_c[None, :]
        mask = (offs_w < W)[:, None] & mask_c[None, :]
        ty = y_ptr.dtype.element_ty
        tl.store(out, acc0.to(ty), mask=mask)
        tl.store(out + W * C, acc1.to(ty), mask=mask & (h0 + 1 < H))
        tl.store(out + 2 * W * C, acc2.to(ty), mask=mask & (h0 + 2 < H))
        tl.store(out + 3 * W * C, acc3.to(ty), mask=mask & (h0 + 3 < H))

    @triton.jit
    def _dw_weight_grad_kernel(
        x_ptr, g_ptr, out_ptr, ROWS, H, W, C, ROWS_PER_PROGRAM,
        K: tl.constexpr, KP: tl.constexpr, BLOCK_W: tl.constexpr, BLOCK_C: tl.constexpr,
    ):  # fmt: skip
        # filter row i, all K taps of it, for one channel block, summed over a chunk of rows
        i = tl.program_id(0)
        offs_c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
        mask_c = offs_c < C
        taps = tl.arange(0, KP)
        acc = tl.zeros((KP, BLOCK_C), dtype=tl.float32)
        start = tl.program_id(2).to(tl.int64) * ROWS_PER_PROGRAM  # int64 loop index
        for row in range(start, tl.minimum(start + ROWS_PER_PROGRAM, ROWS)):
            n = row // H
            h = row % H
            hh = h + (i - K // 2)
            row_ok = (hh >= 0) & (hh < H)
            g_base = row * W
            x_base = (n * H + hh) * W
            for w0 in range(0, W, BLOCK_W):
                offs_w = w0 + tl.arange(0, BLOCK_W)
                g_mask = (offs_w < W)[:, None] & mask_c[None, :]
                gv = tl.load(g_ptr + (g_base + offs_w)[:, None] * C + offs_c[None, :], mask=g_mask, other=0.0)
                gv = gv.to(tl.float32)
                for j in tl.static_range(K):
                    ww = offs_w + (j - K // 2)
                    mask = (row_ok & (ww >= 0) & (ww < W))[:, None] & mask_c[None, :]
                    xv = tl.load(x_ptr + (x_base + ww)[:, None] * C + offs_c[None, :], mask=mask, other=0.0)
                    part = tl.sum(gv * xv.to(tl.float32), axis=0)  # (BLOCK_C,)
                    acc += tl.where(taps[:, None] == j, part[None, :], 0.0)
        ptrs = out_ptr + offs_c[None, :] * (K * K) + (i * K + taps)[:, None]
        tl.atomic_add(ptrs, acc, mask=(taps < K)[:, None] & mask_c[None, :])
