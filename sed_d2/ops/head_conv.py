"""The ``C -> 1`` "same" convolution of the class-logit heads on channels-last maps
(inference).

cuDNN converts such maps to NCHW first and then runs far below memory speed (4.3 ms per
image for 847 maps of 16 x 192 x 192 in bf16 on an H200, where reading them takes ~0.3 ms).
The kernel reads the maps once: every program computes :data:`_ROWS` output rows of one
tile of columns, loading each input row tile once for all the output rows it touches.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .runtime import FLOAT_DTYPES, available, needs_autograd, operand_dtype, tl, triton

__all__ = ["single_output_conv2d", "single_output_conv2d_applies", "single_output_conv2d_reference"]

# Output rows per program (the kernel keeps one accumulator per row and asserts this value).
_ROWS = 4
# Tiles: BLOCK_W x BLOCK_C = 1024 input elements per load (the depthwise kernel's 32 x 32),
# with the _ROWS output-row accumulators of that size in registers. For the SED heads this
# gives 64 x 16 (C = 16, W = 192: 3 column tiles), 32 x 32 (C = 32, W = 96) and 16 x 64
# (C = 64, W = 48), so no column tile is ragged. C > 64 loops over channel blocks inside the
# program (no atomics: one program owns its outputs). 8 warps: ptxas (sm_90, bf16) gives 80
# registers per thread against 127-157 with 4 warps, so 24 instead of 16 resident warps per SM.
_TILE = 1024
_MAX_BLOCK_C = 64
_WARPS = 8


def single_output_conv2d_applies(x: Tensor, weight: Tensor, bias: Tensor | None) -> bool:
    """Whether :func:`single_output_conv2d` runs the Triton kernel: a channels-last float32 /
    bf16 / fp16 ``x`` where :func:`~sed_d2.ops.runtime.available`, a square odd
    ``(1, C, k, k)`` filter on ``x``'s device, and no autograd (grad off or nothing requires
    grad)."""
    return bool(
        available(x)
        and x.dim() == 4
        and weight.dim() == 4
        and weight.shape[0] == 1
        and weight.shape[1] == x.shape[1]
        and weight.shape[2] == weight.shape[3]
        and weight.shape[2] % 2 == 1
        and (bias is None or tuple(bias.shape) == (1,))
        and x.numel() > 0
        and x.dtype in FLOAT_DTYPES
        and operand_dtype(x) in FLOAT_DTYPES
        and x.is_contiguous(memory_format=torch.channels_last)
        and weight.device == x.device
        and (bias is None or bias.device == x.device)
        and x.shape[1] * x.shape[2] * x.shape[3] < 2**31
        and not needs_autograd(x, weight, bias)
    )


def single_output_conv2d_reference(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """``F.conv2d(x, weight, bias, padding=k // 2)`` with the filter cast to ``x``'s dtype."""
    bias = None if bias is None else bias.to(x.dtype)
    return F.conv2d(x, weight.to(x.dtype), bias, padding=weight.shape[-1] // 2)


def single_output_conv2d(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """``F.conv2d(x, weight, bias, padding=k // 2)`` for a ``(1, C, k, k)`` filter, ``k``
    odd: ``(N, C, H, W) -> (N, 1, H, W)``.

    When :func:`single_output_conv2d_applies`, a Triton kernel reads the channels-last ``x``
    once (float32 accumulation; float32 inputs are multiplied in float32, no TF32; the filter
    and bias are used in float32 even where ``F.conv2d`` would round them to the activation
    dtype). Otherwise :func:`single_output_conv2d_reference`. Both return the dtype
    ``F.conv2d`` would: the autocast dtype under autocast (float32 ``x`` is then read as
    float32, not rounded first), else ``x``'s.
    """
    if not single_output_conv2d_applies(x, weight, bias):
        return single_output_conv2d_reference(x, weight, bias)
    with torch.no_grad():
        return _single_output_conv_forward(x, weight, bias, operand_dtype(x))


def _single_output_conv_forward(x: Tensor, weight: Tensor, bias: Tensor | None, out_dtype: torch.dtype) -> Tensor:
    batch, channels, height, width = x.shape
    kernel = weight.shape[-1]
    out = torch.empty((batch, 1, height, width), dtype=out_dtype, device=x.device)
    block_c = min(_MAX_BLOCK_C, triton.next_power_of_2(channels))
    block_w = max(16, min(_TILE // block_c, triton.next_power_of_2(width)))
    tiles_h, tiles_w = triton.cdiv(height, _ROWS), triton.cdiv(width, block_w)
    # (k*k, C) float32: the taps of one filter position are contiguous over channels
    w = weight.reshape(channels, kernel * kernel).t().float().contiguous()
    b = w if bias is None else bias.float().contiguous()
    # one flat grid, column tiles fastest: programs running together share their halo rows
    # and columns in L2
    _single_output_conv_kernel[(batch * tiles_h * tiles_w,)](
        x, w, b, out, height, width, channels, tiles_h, tiles_w,
        K=kernel, HAS_BIAS=bias is not None, ROWS=_ROWS, BLOCK_W=block_w, BLOCK_C=block_c, num_warps=_WARPS,
    )  # fmt: skip
    return out


if triton is not None:
    from .depthwise_conv import accumulate_four_rows  # the taps, shared with the depthwise kernel

    @triton.jit
    def _single_output_conv_kernel(
        x_ptr, w_ptr, b_ptr, y_ptr, H, W, C: tl.constexpr, TILES_H, TILES_W,
        K: tl.constexpr, HAS_BIAS: tl.constexpr, ROWS: tl.constexpr, BLOCK_W: tl.constexpr, BLOCK_C: tl.constexpr,
    ):  # fmt: skip
        # ROWS = 4 output rows h0..h0+3 x BLOCK_W columns of one image, each input tile loaded
        # once for all the output rows it touches (accumulate_four_rows). The products accumulate
        # element-wise over (pixel, channel) and are summed over channels once at the end
        # (no cross-thread reduction per tap). C is a compile-time constant: with a runtime
        # count Triton cannot prove the channel mask constant over a vector, and loads
        # become scalar.
        tl.static_assert(ROWS == 4, "the kernel keeps four row accumulators")
        pid = tl.program_id(0)
        tile_w = pid % TILES_W
        rest = pid // TILES_W
        h0 = (rest % TILES_H) * ROWS
        n = rest // TILES_H
        offs_w = tile_w * BLOCK_W + tl.arange(0, BLOCK_W)
        image = n.to(tl.int64) * H * W * C  # per-image offsets are int32 (checked on the host)
        acc0 = tl.zeros((BLOCK_W, BLOCK_C), dtype=tl.float32)
        acc1 = tl.zeros((BLOCK_W, BLOCK_C), dtype=tl.float32)
        acc2 = tl.zeros((BLOCK_W, BLOCK_C), dtype=tl.float32)
        acc3 = tl.zeros((BLOCK_W, BLOCK_C), dtype=tl.float32)
        for c0 in range(0, C, BLOCK_C):
            offs_c = c0 + tl.arange(0, BLOCK_C)
            mask_c = offs_c < C
            acc0, acc1, acc2, acc3 = accumulate_four_rows(
                x_ptr + image, w_ptr, h0, offs_w, offs_c, mask_c, H, W, C, acc0, acc1, acc2, acc3, K, ROWS
            )
        out0 = tl.sum(acc0, axis=1)
        out1 = tl.sum(acc1, axis=1)
        out2 = tl.sum(acc2, axis=1)
        out3 = tl.sum(acc3, axis=1)
        if HAS_BIAS:
            bias = tl.load(b_ptr)
            out0 += bias
            out1 += bias
            out2 += bias
            out3 += bias
        out = y_ptr + n.to(tl.int64) * H * W + h0 * W + offs_w
        mask = offs_w < W
        ty = y_ptr.dtype.element_ty
        tl.store(out, out0.to(ty), mask=mask)
        tl.store(out + W, out1.to(ty), mask=mask & (h0 + 1 < H))
        tl.store(out + 2 * W, out2.to(ty), mask=mask & (h0 + 2 < H))
        tl.store(out + 3 * W, out3.to(ty), mask=mask & (h0 + 3 < H))
