"""3x3 convolution (stride 1, zero padding 1, no bias) on channels-last maps as a Triton
implicit-GEMM kernel, used only where it was measured faster than cuDNN: ``Cout == 16``.

Measured on an H200 (torch 2.11, bf16, 847 class maps, median times; cuDNN on the same
channels-last maps with ``cudnn.benchmark``):

    ==================  ==========  =========  ==========================================
    Cin -> Cout @ H=W   kernel      cuDNN      kernel config (_CONFIGS)
    ==================  ==========  =========  ==========================================
    16 -> 16 @ 192      1.27 ms     3.02 ms    BLOCK_M 256, BLOCK_K 16, 4 warps, 2 stages
    32 -> 16 @ 192      2.16 ms     2.72 ms    128, 32, 4 warps, 2 stages, BLOCK_W 16
    64 -> 32 @ 96       1.31 ms     1.22 ms
    160 -> 64 @ 48      1.06 ms     0.71 ms
    64 -> 64 @ 48       0.44 ms     0.32 ms
    ==================  ==========  =========  ==========================================

cuDNN's channels-last kernels are slow for 16 output channels; from ``Cout = 32`` on they
beat this kernel, so :func:`conv3x3_no_bias` leaves those to ``F.conv2d``. (Folding the
preceding GroupNorm affine + ReLU into the loads, or GroupNorm statistics into the
epilogue, made the kernel 2.5-3x slower -- 3.4 ms for 16 -> 16 -- and was dropped.)

Kernel: one program computes ``BLOCK_M`` output pixels of one image for all ``Cout``
channels: a ``(BLOCK_M, Cout)`` float32 accumulator and a reduction over ``K = 9 x Cin``
run as 9 taps x ``ceil(Cin / BLOCK_K)`` channel chunks (one software-pipelined loop) with
``tl.dot``. The pixels are ``BLOCK_M`` consecutive ones in row-major order (``BLOCK_W =
0``; a tile may wrap across rows) or a 2-D tile of ``BLOCK_M / BLOCK_W`` rows x ``BLOCK_W``
columns. The A tile of tap ``(dh, dw)`` is the input at pixel ``(h + dh, w + dw)`` (masked
at the image borders and past ``Cin``); the B tile is a ``(BLOCK_K, Cout)`` slice of the
weight, arranged on the host as ``(9 * Cin_padded, Cout)`` (zero rows for the padding) in
the operand dtype. Every ``tl.dot`` has ``K = BLOCK_K >= 16`` and ``N = Cout >= 16``
(Triton on Hopper rejects smaller ones; the CPU interpreter does not). Offsets inside an
image are int32 (``H * W * max(Cin, Cout) < 2^31`` is checked), the image bases int64.

Numerics, as ``F.conv2d``: the products and the output take the autocast dtype under
autocast, else ``x``'s dtype; bf16 / fp16 operands accumulate in float32 and round once;
float32 inputs use exact float32 products, or TF32 when ``torch.backends.cudnn.allow_tf32``
(the flag that governs ``F.conv2d``; PyTorch's default is True). Results equal
``F.conv2d`` up to float32 summation order.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .runtime import FLOAT_DTYPES, autocast_dtype, available, needs_autograd, operand_dtype, tl, triton

__all__ = ["conv3x3_no_bias", "conv3x3_no_bias_applies", "conv3x3_no_bias_reference"]

_OUT_CHANNELS = 16  # the only Cout where the kernel beats cuDNN (module docstring)
_MAX_IN_CHANNELS = 256

# (BLOCK_M, BLOCK_K, num_warps, num_stages, BLOCK_W) per (Cin, Cout, operand bytes); BLOCK_W 0
# for row-major runs of BLOCK_M pixels, else 2-D tiles BLOCK_W wide. The bf16 entries are the
# H200 sweep's winners; the float32 ones (not measured) and other Cin use _default_config.
_CONFIGS: dict[tuple[int, int, int], tuple[int, int, int, int, int]] = {
    (16, 16, 2): (256, 16, 4, 2, 0),
    (32, 16, 2): (128, 32, 4, 2, 16),
    (16, 16, 4): (128, 16, 4, 2, 0),
    (32, 16, 4): (128, 32, 4, 2, 0),
}


def _block_k(in_channels: int) -> int:
    """Channel chunk of the K loop: the one of 64 / 32 / 16 that pads ``Cin`` least (the
    larger on ties); never below 16, the smallest ``tl.dot`` K that Triton on Hopper takes."""
    return min((64, 32, 16), key=lambda b: (-(-in_channels // b) * b, -b))


def _default_config(in_channels: int) -> tuple[int, int, int, int, int]:
    return 128, _block_k(in_channels), 4, 2, 0


def _config(in_channels: int, out_channels: int, itemsize: int) -> tuple[int, int, int, int, int]:
    return _CONFIGS.get((in_channels, out_channels, itemsize)) or _default_config(in_channels)


def _check_shapes(x: Tensor, weight: Tensor) -> None:
    if x.dim() != 4:
        raise ValueError(f"conv3x3_no_bias: x must be (N, Cin, H, W), got {tuple(x.shape)}")
    if weight.dim() != 4 or tuple(weight.shape[1:]) != (x.shape[1], 3, 3):
        raise ValueError(
            f"conv3x3_no_bias: weight must be (Cout, {x.shape[1]}, 3, 3) for x {tuple(x.shape)}, "
            f"got {tuple(weight.shape)}"
        )


def conv3x3_no_bias_applies(x: Tensor, weight: Tensor) -> bool:
    """Whether :func:`conv3x3_no_bias` runs the Triton kernel: where
    :func:`~sed_d2.ops.runtime.available`, ``x`` ``(N, Cin, H, W)`` non-empty, channels-last contiguous, float32 / bf16 / fp16 with
    ``1 <= Cin <= 256`` and ``H * W * max(Cin, 16) < 2^31``; ``weight`` ``(16, Cin, 3, 3)`` on
    ``x``'s device, of ``x``'s dtype (any of the three under autocast, which casts both);
    and no autograd. Never raises."""
    try:
        _check_shapes(x, weight)
    except ValueError:
        return False
    _, channels, height, width = x.shape
    autocast = autocast_dtype(x) is not None
    return bool(
        available(x)
        and x.numel() > 0
        and weight.shape[0] == _OUT_CHANNELS
        and 1 <= channels <= _MAX_IN_CHANNELS
        and height * width * max(channels, _OUT_CHANNELS) < 2**31
        and x.dtype in FLOAT_DTYPES
        and weight.dtype in FLOAT_DTYPES
        and (autocast or weight.dtype == x.dtype)
        and operand_dtype(x) in FLOAT_DTYPES
        and weight.device == x.device
        and x.is_contiguous(memory_format=torch.channels_last)
        and not needs_autograd(x, weight)
    )


def conv3x3_no_bias(x: Tensor, weight: Tensor) -> Tensor:
    """3x3 / stride 1 / zero-padding 1 / no-bias convolution of ``x`` ``(N, Cin, H, W)`` with
    ``weight`` ``(Cout, Cin, 3, 3)``.

    Runs the Triton kernel where it was measured faster than cuDNN -- ``Cout == 16``,
    channels-last CUDA (or ``TRITON_INTERPRET=1``) input, no autograd
    (:func:`conv3x3_no_bias_applies`) -- else :func:`conv3x3_no_bias_reference`, which handles
    autocast and autograd exactly as ``nn.Conv2d(Cin, Cout, 3, padding=1, bias=False)(x)``
    would. The kernel's output is channels-last, in the dtype ``F.conv2d`` returns (the
    autocast dtype under autocast, else ``x``'s).

    Raises ``ValueError`` naming the shapes when ``weight`` is not ``(Cout, Cin, 3, 3)``.
    """
    _check_shapes(x, weight)
    if conv3x3_no_bias_applies(x, weight):
        return _launch(x, weight)
    return conv3x3_no_bias_reference(x, weight)


def conv3x3_no_bias_reference(x: Tensor, weight: Tensor) -> Tensor:
    """``F.conv2d(x, weight, padding=1)``."""
    return F.conv2d(x, weight, padding=1)


# ----------------------------------------------------------------------------- launch
def _arranged_weight(weight: Tensor, padded: int, dtype: torch.dtype) -> Tensor:
    """``(Cout, Cin, 3, 3)`` -> ``(9 * padded, Cout)`` in ``dtype``: row ``tap * padded + c``
    holds ``weight[:, c, tap // 3, tap % 3]``; rows ``c >= Cin`` are zeros."""
    out_channels, channels = weight.shape[:2]
    w = weight.detach().permute(2, 3, 1, 0).reshape(9, channels, out_channels).to(dtype)
    if padded != channels:
        w = F.pad(w, (0, 0, 0, padded - channels))
    return w.reshape(9 * padded, out_channels).contiguous()


def _precision(operand: torch.dtype) -> str:
    if operand == torch.float32 and torch.backends.cudnn.allow_tf32:
        return "tf32"
    return "ieee"  # exact float32 products; ignored for 16-bit operands


def _launch(x: Tensor, weight: Tensor, config: tuple[int, ...] | None = None) -> Tensor:
    """Run the kernel without the policy (any power-of-two ``Cout >= 16``, for benchmarks);
    ``config`` ``(BLOCK_M, BLOCK_K, num_warps, num_stages[, BLOCK_W])`` replaces the table's."""
    batch, channels, height, width = x.shape
    out_channels = weight.shape[0]
    operand = operand_dtype(x)
    block_m, block_k, num_warps, num_stages, *rest = config or _config(channels, out_channels, operand.itemsize)
    block_w = rest[0] if rest else 0
    powers = (block_m, block_k, out_channels) + ((block_w,) if block_w else ())
    if min(block_m, block_k, out_channels) < 16 or any(v & (v - 1) for v in powers) or block_m % max(block_w, 1):
        raise ValueError(
            f"conv3x3 kernel: BLOCK_M {block_m}, BLOCK_K {block_k} and Cout {out_channels} must be powers of "
            f"two >= 16 (tl.dot), BLOCK_W {block_w} 0 or a power of two dividing BLOCK_M"
        )
    padded = triton.cdiv(channels, block_k) * block_k
    w = _arranged_weight(weight, padded, operand)
    if block_w:
        tiles_w = triton.cdiv(width, block_w)
        tiles = triton.cdiv(height, block_m // block_w) * tiles_w
    else:
        tiles_w = tiles = triton.cdiv(height * width, block_m)
    out = torch.empty(
        (batch, out_channels, height, width), dtype=operand, device=x.device, memory_format=torch.channels_last
    )
    _conv3x3_kernel[(batch * tiles,)](
        x, w, out, height, width, tiles, tiles_w,
        CIN=channels, CIN_PAD=padded, COUT=out_channels, BLOCK_M=block_m, BLOCK_K=block_k, BLOCK_W=block_w,
        PRECISION=_precision(operand), num_warps=num_warps, num_stages=num_stages,
    )  # fmt: skip
    return out


# ----------------------------------------------------------------------------- kernel
if triton is not None:

    @triton.jit
    def _conv3x3_kernel(
        x_ptr, w_ptr, y_ptr, H, W, TILES, TILES_W,
        CIN: tl.constexpr, CIN_PAD: tl.constexpr, COUT: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_W: tl.constexpr, PRECISION: tl.constexpr,
    ):  # fmt: skip
        # Program pid: tile `tile` of image n, all COUT channels. BLOCK_W == 0: pixels
        # tile * BLOCK_M .. + BLOCK_M in row-major order; else the 2-D tile (tile // TILES_W,
        # tile % TILES_W) of BLOCK_M // BLOCK_W rows x BLOCK_W columns. Consecutive programs
        # cover neighbouring pixels of one image (their halos meet in L2). Offsets inside an
        # image are int32 (checked on the host), image bases int64.
        pid = tl.program_id(0)
        n = pid // TILES
        tile = pid % TILES
        P = H * W
        if BLOCK_W == 0:
            offs_m = tile * BLOCK_M + tl.arange(0, BLOCK_M)
            valid_m = offs_m < P
            h = offs_m // W
            w = offs_m % W
        else:
            r = tl.arange(0, BLOCK_M)
            h = (tile // TILES_W) * (BLOCK_M // BLOCK_W) + r // BLOCK_W
            w = (tile % TILES_W) * BLOCK_W + r % BLOCK_W
            valid_m = (h < H) & (w < W)
            offs_m = h * W + w
        offs_k = tl.arange(0, BLOCK_K)
        offs_n = tl.arange(0, COUT)
        x_img = x_ptr + n.to(tl.int64) * P * CIN
        CHUNKS: tl.constexpr = CIN_PAD // BLOCK_K
        acc = tl.zeros((BLOCK_M, COUT), dtype=tl.float32)
        # K loop: 9 taps x CHUNKS channel chunks as one loop (software-pipelined)
        for k in range(9 * CHUNKS):
            tap = k // CHUNKS
            c0 = (k % CHUNKS) * BLOCK_K
            dh = tap // 3 - 1
            dw = tap % 3 - 1
            hh = h + dh
            ww = w + dw
            ok = valid_m & (hh >= 0) & (hh < H) & (ww >= 0) & (ww < W)
            cs = c0 + offs_k
            if CIN_PAD == CIN:
                mask = ok[:, None]
            else:
                mask = ok[:, None] & (cs < CIN)[None, :]
            a = tl.load(x_img + (offs_m + dh * W + dw)[:, None] * CIN + cs[None, :], mask=mask, other=0.0)
            b = tl.load(w_ptr + (tap * CIN_PAD + cs)[:, None] * COUT + offs_n[None, :])  # padded rows: zeros
            acc = tl.dot(a.to(w_ptr.dtype.element_ty), b, acc, input_precision=PRECISION)
        out_offs = offs_m[:, None] * COUT + offs_n[None, :]
        out_mask = valid_m[:, None] & (offs_n < COUT)[None, :]
        tl.store(y_ptr + n.to(tl.int64) * P * COUT + out_offs, acc.to(y_ptr.dtype.element_ty), mask=out_mask)
