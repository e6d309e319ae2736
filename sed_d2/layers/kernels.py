"""Triton kernels for the ops that PyTorch runs slowly at SED decoder shapes.

* :func:`depthwise_conv2d`: a ``k x k`` depthwise convolution (stride 1, "same" padding)
  on channels-last maps. At the decoder's shapes (hundreds of class maps of 32-128
  channels, ``k = 9``) cuDNN's NHWC depthwise kernels and PyTorch's NCHW one run far
  below memory speed; this kernel reads each input tile through the cache once per
  kernel row and accumulates in float32. Backward: grad-input is the same kernel with
  the flipped filter; grad-weight has its own kernel.
* :func:`normalize_rows`: LayerNorm without affine over the last dimension (one read, one
  write), with a closed-form backward.
* :func:`single_output_conv2d`: the ``C -> 1`` "same" convolution of the class-logit heads
  on channels-last maps (inference). cuDNN converts such maps to NCHW first and then runs
  far below memory speed (4.3 ms per image for 847 maps of 16 x 192 x 192 in bf16, where
  reading them takes ~0.3 ms).
* :func:`group_norm_statistics` / :func:`group_norm_apply`: GroupNorm on channels-last maps
  (inference) in two kernels, one read for the statistics and one read + one write for
  ``relu?(GroupNorm(x + addend))``, instead of the five passes of ``var_mean``,
  ``addcmul`` and ``relu_`` (plus two for a separate ``add_`` of the addend).
* :func:`conv_transpose_2x2_into`: the decoder's ``k = s = 2`` transposed convolutions
  (inference), the four phase products and the pixel shuffle in one pass, optionally with
  ReLU and into a channel slice of a concatenation buffer. As a matrix product plus
  PyTorch's strided shuffle copy, the shuffle alone took 0.6 ms per call for 227 maps of
  24 x 192 x 192 in bf16 on an H200.

All fall back to plain PyTorch on CPU, without Triton, or for inputs they do not cover
(the fallbacks are the definitions the tests compare the kernels with; on CPU the
kernels themselves can be tested with ``TRITON_INTERPRET=1``). Results equal the PyTorch
ops up to float32 summation order.
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch import Tensor

try:  # Triton ships with CUDA builds of PyTorch; elsewhere the fallbacks run.
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - depends on the installation
    triton = None

__all__ = [
    "conv_transpose_2x2_applies",
    "conv_transpose_2x2_into",
    "depthwise_conv2d",
    "group_norm_apply",
    "group_norm_kernels_apply",
    "group_norm_statistics",
    "normalize_rows",
    "single_output_conv2d",
    "single_output_conv2d_applies",
    "triton_available",
]

_INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"


def triton_available(x: Tensor) -> bool:
    """Whether the Triton kernels run for ``x`` (CUDA tensor, or any under TRITON_INTERPRET).
    Never while ``torch.jit`` traces (fvcore's FLOP counter): traced shapes are tensors."""
    return triton is not None and (x.is_cuda or _INTERPRET) and not torch.jit.is_tracing()


def _needs_autograd(*tensors: Tensor | None) -> bool:
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


# ----------------------------------------------------------------------------- depthwise conv
def depthwise_conv2d(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """``F.conv2d(x, weight, bias, padding=k // 2, groups=C)`` for ``weight`` ``(C, 1, k, k)``,
    ``k`` odd. Channels-last ``x`` on CUDA takes the Triton kernels (output channels-last,
    ``x``'s dtype, float32 accumulation); anything else runs ``F.conv2d``."""
    channels, _, kernel, kernel_w = weight.shape
    if (
        triton_available(x)
        and x.dim() == 4
        and kernel == kernel_w
        and kernel % 2 == 1
        and x.shape[1] == channels
        and x.is_contiguous(memory_format=torch.channels_last)
        and x.dtype in (torch.float32, torch.bfloat16, torch.float16)
    ):
        if _needs_autograd(x, weight, bias):
            return _DepthwiseConv.apply(x, weight, bias)
        return _depthwise_forward(x, weight, bias)  # no autograd node: less host time per call
    weight = weight.to(x.dtype)
    bias = None if bias is None else bias.to(x.dtype)
    return F.conv2d(x, weight, bias, padding=kernel // 2, groups=channels)


def _blocks(channels: int) -> tuple[int, int]:
    block_c = min(64, triton.next_power_of_2(channels))
    return block_c, max(1, 2048 // block_c)


# Output rows per program of the forward kernel (fixed: the kernel keeps one accumulator
# per row). Each input row tile loaded feeds every output row whose window holds it, so a
# 9x9 filter loads (9 + 3) / 4 = 3 tiles per output instead of 9 per kernel row.
_ROWS = 4


def _depthwise_forward(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    batch, channels, height, width = x.shape
    kernel = weight.shape[-1]
    if height * width * channels >= 2**31:
        raise ValueError(f"depthwise_conv2d: one image of {tuple(x.shape[1:])} exceeds int32 offsets")
    out = torch.empty_like(x, memory_format=torch.channels_last)
    # 32 x 32 tiles: on an H200 (bf16, 847 maps of 32 x 96 x 96, 9x9) 2.9 ms against 5.3 ms
    # for 64 x 32, 8.0 ms for 32 x 64 and 14.4 ms for cuDNN's NCHW kernel
    block_c = min(32, triton.next_power_of_2(channels))
    block_w = min(32, triton.next_power_of_2(width))
    grid = (batch * triton.cdiv(height, _ROWS), triton.cdiv(width, block_w), triton.cdiv(channels, block_c))
    # (k*k, C): the taps of one filter position are contiguous over channels
    w = weight.reshape(channels, kernel * kernel).t().float().contiguous()
    b = w if bias is None else bias.float().contiguous()
    _dw_forward_kernel[grid](
        x, w, b, out, height, width, channels,
        K=kernel, HAS_BIAS=bias is not None, BLOCK_W=block_w, BLOCK_C=block_c, num_warps=4,
    )
    return out


def _depthwise_weight_grad(x: Tensor, grad: Tensor, kernel: int) -> Tensor:
    batch, channels, height, width = x.shape
    rows = batch * height
    block_c, block_w = _blocks(channels)
    block_w = min(block_w, triton.next_power_of_2(width))
    chunks = min(rows, 128)
    result = torch.zeros((channels, kernel * kernel), dtype=torch.float32, device=x.device)
    grid = (kernel, triton.cdiv(channels, block_c), chunks)
    _dw_weight_grad_kernel[grid](
        x, grad, result, rows, height, width, channels, triton.cdiv(rows, chunks),
        K=kernel, KP=triton.next_power_of_2(kernel), BLOCK_W=block_w, BLOCK_C=block_c, num_warps=4,
    )
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


# ----------------------------------------------------------------------------- row normalisation
def normalize_rows(x: Tensor, eps: float) -> Tensor | None:
    """``(x - mean) / sqrt(var + eps)`` over the last dim with the Triton kernel, in ``x``'s
    dtype; ``None`` when the kernel does not apply (the caller falls back)."""
    channels = x.shape[-1]
    if not (
        triton_available(x)
        and x.is_contiguous()
        and 1 < channels <= 1024
        and x.dtype in (torch.float32, torch.bfloat16, torch.float16)
    ):
        return None
    if _needs_autograd(x):
        return _NormalizeRows.apply(x, eps)
    return _normalize_forward(x, eps)[0]


def _normalize_forward(x: Tensor, eps: float) -> tuple[Tensor, Tensor]:
    channels = x.shape[-1]
    rows = x.numel() // channels
    out = torch.empty_like(x)
    rstd = torch.empty(rows, dtype=torch.float32, device=x.device)
    block_c = triton.next_power_of_2(channels)
    block_m = max(1, 4096 // block_c)
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


# ----------------------------------------------------------------------------- single-output conv
_FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def _autocast_dtype(x: Tensor) -> torch.dtype | None:
    """The autocast dtype when autocast is on for ``x``'s device type, else ``None`` (also
    for device types without autocast, such as ``meta``, where the query raises)."""
    try:
        if torch.is_autocast_enabled(x.device.type):
            return torch.get_autocast_dtype(x.device.type)
    except RuntimeError:
        pass
    return None


def _conv_result_dtype(x: Tensor) -> torch.dtype:
    """Dtype ``F.conv2d`` returns for ``x`` (weights in ``x``'s dtype): the autocast dtype
    when autocast is on for ``x``'s device (it casts every floating operand), else ``x``'s."""
    return (x.dtype in _FLOAT_DTYPES and _autocast_dtype(x)) or x.dtype


def single_output_conv2d_applies(x: Tensor, weight: Tensor, bias: Tensor | None) -> bool:
    """Whether :func:`single_output_conv2d` runs the Triton kernel: channels-last float32 /
    bf16 / fp16 ``x`` on CUDA (or under TRITON_INTERPRET), a square odd ``(1, C, k, k)``
    filter, and no autograd (grad off or nothing requires grad)."""
    return bool(
        triton_available(x)
        and x.dim() == 4
        and weight.dim() == 4
        and weight.shape[0] == 1
        and weight.shape[1] == x.shape[1]
        and weight.shape[2] == weight.shape[3]
        and weight.shape[2] % 2 == 1
        and (bias is None or tuple(bias.shape) == (1,))
        and x.numel() > 0
        and x.dtype in _FLOAT_DTYPES
        and _conv_result_dtype(x) in _FLOAT_DTYPES
        and x.is_contiguous(memory_format=torch.channels_last)
        and weight.device == x.device
        and (bias is None or bias.device == x.device)
        and x.shape[1] * x.shape[2] * x.shape[3] < 2**31
        and not _needs_autograd(x, weight, bias)
    )


def single_output_conv2d(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """``F.conv2d(x, weight, bias, padding=k // 2)`` for a ``(1, C, k, k)`` filter, ``k``
    odd: ``(N, C, H, W) -> (N, 1, H, W)``.

    When :func:`single_output_conv2d_applies`, a Triton kernel reads the channels-last
    ``x`` once (float32 accumulation; float32 inputs are multiplied in float32, no TF32;
    the filter and bias are used in float32 even where ``F.conv2d`` would round them to
    the activation dtype). Otherwise ``F.conv2d`` with the filter cast to ``x``'s dtype
    (as :func:`depthwise_conv2d`). Both return the dtype ``F.conv2d`` would: the autocast
    dtype under autocast (float32 ``x`` is then read as float32, not rounded first), else
    ``x``'s.
    """
    kernel = weight.shape[-1]
    if not single_output_conv2d_applies(x, weight, bias):
        return F.conv2d(x, weight.to(x.dtype), None if bias is None else bias.to(x.dtype), padding=kernel // 2)
    with torch.no_grad():
        return _single_output_conv_forward(x, weight, bias, _conv_result_dtype(x))


# Tiles of the single-output conv: BLOCK_W x BLOCK_C = 1024 input elements per load (the
# depthwise kernel's 32 x 32), with the _ROWS output-row accumulators of that size in
# registers. For the SED heads this gives 64 x 16 (C = 16, W = 192: 3 column tiles),
# 32 x 32 (C = 32, W = 96) and 16 x 64 (C = 64, W = 48), so no column tile is ragged.
# C > 64 loops over channel blocks inside the program (no atomics: one program owns its
# outputs). 8 warps: ptxas (sm_90, bf16) gives 80 registers per thread against 127-157
# with 4 warps, so 24 instead of 16 resident warps per SM. Not timed on the GPU yet: a
# sweep of the tile and num_warps may pay.
_CONV_TILE = 1024
_CONV_MAX_BLOCK_C = 64
_CONV_WARPS = 8


def _single_output_conv_forward(x: Tensor, weight: Tensor, bias: Tensor | None, out_dtype: torch.dtype) -> Tensor:
    batch, channels, height, width = x.shape
    kernel = weight.shape[-1]
    out = torch.empty((batch, 1, height, width), dtype=out_dtype, device=x.device)
    block_c = min(_CONV_MAX_BLOCK_C, triton.next_power_of_2(channels))
    block_w = max(16, min(_CONV_TILE // block_c, triton.next_power_of_2(width)))
    tiles_h, tiles_w = triton.cdiv(height, _ROWS), triton.cdiv(width, block_w)
    # (k*k, C) float32: the taps of one filter position are contiguous over channels
    w = weight.reshape(channels, kernel * kernel).t().float().contiguous()
    b = w if bias is None else bias.float().contiguous()
    # one flat grid, column tiles fastest: programs running together share their halo
    # rows and columns in L2
    _single_output_conv_kernel[(batch * tiles_h * tiles_w,)](
        x, w, b, out, height, width, channels, tiles_h, tiles_w,
        K=kernel, HAS_BIAS=bias is not None, BLOCK_W=block_w, BLOCK_C=block_c, num_warps=_CONV_WARPS,
    )
    return out


# ----------------------------------------------------------------------------- group norm
def group_norm_kernels_apply(x: Tensor, addend: Tensor | None, *params: Tensor | None) -> bool:
    """Whether :func:`group_norm_statistics` / :func:`group_norm_apply` run for ``x`` (and
    the optional per-sample ``addend``; ``params``: the norm's weight and bias, only
    checked for autograd): 4-D channels-last float32 / bf16 / fp16 ``x`` with 1..256
    channels on CUDA (or under TRITON_INTERPRET), ``addend`` on the same device, and no
    autograd."""
    return bool(
        triton_available(x)
        and x.dim() == 4
        and x.numel() > 0
        and x.shape[1] <= 256
        and x.dtype in _FLOAT_DTYPES
        and x.is_contiguous(memory_format=torch.channels_last)
        and x.shape[1] * x.shape[2] * x.shape[3] < 2**31
        and (addend is None or (addend.device == x.device and addend.dtype in _FLOAT_DTYPES))
        and not _needs_autograd(x, addend, *params)
    )


def _check_addend(x: Tensor, addend: Tensor) -> None:
    if (
        addend.dim() != x.dim()
        or addend.shape[1:] != x.shape[1:]
        or addend.shape[0] < 1
        or x.shape[0] % addend.shape[0] != 0
    ):
        raise ValueError(
            f"addend must be (B, *x.shape[1:]) with B dividing x.shape[0]; got {tuple(addend.shape)} "
            f"for x {tuple(x.shape)}"
        )


def _addend_operand(x: Tensor, addend: Tensor | None) -> Tensor | None:
    """The addend as the kernels read it: ``x``'s dtype, channels-last (B maps, cheap)."""
    if addend is None:
        return None
    _check_addend(x, addend)
    return addend.to(x.dtype).contiguous(memory_format=torch.channels_last)


# Statistics tiles: BLOCK_P pixels x all channels (BLOCK_C = C rounded up to a power of
# two), about 2048 elements, so each of 8 warps' threads keeps 2 x 8 float32 Welford
# states. A program reduces _STATS_TILES consecutive tiles (a chunk of ~16K elements;
# 1024 pixels at C = 16, 256 at C = 64): at the SED shapes that is 847 x 36 ~ 30K
# programs, plenty to keep HBM busy, and the per-chunk results are ~1/500 of x.
# Apply tiles: 4096 elements, 16 per thread (two 16-byte bf16 vectors along C).
# 8 warps for both: ptxas (sm_90, bf16) gives ~80 registers per thread against ~140-150
# with 4 warps (per-element 64-bit addresses), i.e. 24 instead of 12 resident warps per
# SM. Not timed on the GPU yet.
_STATS_TILE = 2048
_STATS_TILES = 8
_APPLY_TILE = 4096
_GN_WARPS = 8


def group_norm_statistics(x: Tensor, groups: int, addend: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Per-sample, per-group mean and biased variance of ``x + addend`` (float32, each
    ``(N, G)``), for ``x`` ``(N, C, H, W)`` with :func:`group_norm_kernels_apply`.

    ``addend`` ``(B, C, H, W)``, ``B`` dividing ``N``: sample ``n`` adds
    ``addend[n // (N // B)]``; the sum is rounded to ``x``'s dtype (as ``x + addend``
    would be) before it is reduced.

    One kernel reads ``x`` (and ``addend``) once: every program reduces a chunk of pixels
    of one sample to per-channel (mean, M2) with an element-wise Welford update (no
    cross-thread reduction inside the loop) and combines its lanes at the end with Chan
    et al.'s pairwise formula; the chunks and the channels of a group are then combined
    the same way in PyTorch (a few tiny ops on ~1/500 of x). No sum-of-squares
    cancellation: float32 inputs keep float32 accuracy whatever their mean.
    """
    batch, channels, height, width = x.shape
    if channels % groups != 0:
        raise ValueError(f"{channels} channels do not split into {groups} groups")
    addend = _addend_operand(x, addend)
    pixels = height * width
    block_c = triton.next_power_of_2(channels)
    block_p = max(1, min(_STATS_TILE // block_c, triton.next_power_of_2(pixels)))
    chunk = block_p * _STATS_TILES
    chunks = triton.cdiv(pixels, chunk)
    means = torch.empty((batch, chunks, channels), dtype=torch.float32, device=x.device)
    m2s = torch.empty_like(means)
    per_addend = batch // addend.shape[0] if addend is not None else 1
    _gn_stats_kernel[(batch * chunks,)](
        x, x if addend is None else addend, means, m2s, pixels, channels, chunks, per_addend,
        TILES=_STATS_TILES, HAS_ADDEND=addend is not None, BLOCK_P=block_p, BLOCK_C=block_c, num_warps=_GN_WARPS,
    )
    # Chan's combination over (chunk, channel of the group); every chunk but the last
    # holds `chunk` pixels (arange on the device: no host sync, CUDA-graph safe)
    counts = (pixels - chunk * torch.arange(chunks, device=x.device, dtype=torch.float32)).clamp_(max=chunk)
    counts = counts.view(1, chunks, 1, 1)
    means = means.view(batch, chunks, groups, channels // groups)
    m2s = m2s.view_as(means)
    total = pixels * (channels // groups)
    group_mean = (means * counts).sum((1, 3)) / total  # (N, G)
    deviation = means - group_mean[:, None, :, None]
    group_m2 = m2s.sum((1, 3)) + (counts * deviation.square()).sum((1, 3))
    return group_mean, group_m2 / total


def group_norm_apply(
    x: Tensor,
    mean: Tensor,
    var: Tensor,
    weight: Tensor | None,
    bias: Tensor | None,
    eps: float,
    addend: Tensor | None = None,
    relu: bool = False,
) -> Tensor:
    """``relu?((x + addend - mean[n, g]) * rsqrt(var[n, g] + eps) * weight[c] + bias[c])``
    for ``x`` ``(N, C, H, W)`` with :func:`group_norm_kernels_apply`: ``mean`` / ``var``
    ``(N, G)`` from :func:`group_norm_statistics`, ``weight`` / ``bias`` ``(C,)`` or
    ``None``, ``addend`` as there. One read of ``x`` (+ ``addend``), one write of the
    channels-last result in ``x``'s dtype; float32 arithmetic, one rounding. Centring
    before scaling keeps float32 results at float32 accuracy when ``|mean| >> std`` (the
    ``x * scale + shift`` form loses ``|mean| / std`` ulps)."""
    batch, channels, height, width = x.shape
    groups = mean.shape[-1]
    if tuple(mean.shape) != (batch, groups) or tuple(var.shape) != (batch, groups) or channels % groups:
        raise ValueError(
            f"mean / var must be ({batch}, G), G dividing {channels}; got {tuple(mean.shape)} / {tuple(var.shape)}"
        )
    addend = _addend_operand(x, addend)
    pixels = height * width
    out = torch.empty_like(x, memory_format=torch.channels_last)
    block_c = triton.next_power_of_2(channels)
    block_p = max(1, min(_APPLY_TILE // block_c, triton.next_power_of_2(pixels)))
    tiles = triton.cdiv(pixels, block_p)
    per_addend = batch // addend.shape[0] if addend is not None else 1
    as_f32 = lambda t: None if t is None else t.detach().float().contiguous()
    mean, var, weight, bias = as_f32(mean), as_f32(var), as_f32(weight), as_f32(bias)
    _gn_apply_kernel[(batch * tiles,)](
        x, x if addend is None else addend, mean, var,
        mean if weight is None else weight, mean if bias is None else bias, out,
        pixels, channels, channels // groups, groups, tiles, per_addend, float(eps),
        HAS_ADDEND=addend is not None, HAS_WEIGHT=weight is not None, HAS_BIAS=bias is not None, RELU=relu,
        BLOCK_P=block_p, BLOCK_C=block_c, num_warps=_GN_WARPS,
    )
    return out


# ----------------------------------------------------------------------------- kernels
# ----------------------------------------------------------------------------- 2x2 transposed conv
def conv_transpose_2x2_applies(x: Tensor, weight: Tensor, bias: Tensor | None, out: Tensor | None = None) -> bool:
    """Whether :func:`conv_transpose_2x2_into` runs the Triton kernel: channels-last 4-D
    float32 / bf16 / fp16 ``x`` on CUDA (or under TRITON_INTERPRET) with ``C <= 256``, a
    ``(C, O, 2, 2)`` weight with ``O <= 128``, ``out`` (if given) on the same device with
    channel stride 1, and no autograd."""
    return bool(
        triton_available(x)
        and x.dim() == 4
        and x.numel() > 0
        and weight.dim() == 4
        and tuple(weight.shape[::2]) == (x.shape[1], 2)
        and weight.shape[3] == 2
        and x.shape[1] <= 256
        and weight.shape[1] <= 128
        and (bias is None or tuple(bias.shape) == (weight.shape[1],))
        and x.dtype in _FLOAT_DTYPES
        and x.is_contiguous(memory_format=torch.channels_last)
        and weight.device == x.device
        and (out is None or (out.device == x.device and out.stride(1) == 1 and out.dtype in _FLOAT_DTYPES))
        and not _needs_autograd(x, weight, bias)
    )


def conv_transpose_2x2_into(
    x: Tensor, weight: Tensor, bias: Tensor | None, out: Tensor | None = None, relu: bool = False
) -> Tensor:
    """``relu?(F.conv_transpose2d(x, weight, bias, stride=2))`` for a ``(C, O, 2, 2)``
    weight with one Triton kernel (when :func:`conv_transpose_2x2_applies`): every program
    multiplies a block of input pixels by the four ``(C, O)`` phase matrices and stores each
    product at its output pixel, so the pixel shuffle costs no extra pass (the matrix
    product + shuffle copy it replaces read and write the output twice more, the copy with
    PyTorch's slow strided kernel).

    ``out``: optional ``(N, O, 2H, 2W)`` destination with channel stride 1 (a channel slice
    of a channels-last buffer); else a new channels-last tensor. Result dtype: the autocast
    dtype under autocast, else ``x``'s (what ``F.linear`` gives). Products use the operand
    dtype with float32 accumulation; float32 operands follow
    ``torch.backends.cuda.matmul.allow_tf32`` as ``F.linear`` does."""
    batch, channels, height, width = x.shape
    out_channels = weight.shape[1]
    operand = _conv_result_dtype(x)
    if out is None:
        out = torch.empty(
            (batch, out_channels, 2 * height, 2 * width), dtype=operand, device=x.device, memory_format=torch.channels_last
        )
    elif tuple(out.shape) != (batch, out_channels, 2 * height, 2 * width):
        raise ValueError(f"out must be ({batch}, {out_channels}, {2 * height}, {2 * width}), got {tuple(out.shape)}")
    block_k = max(16, triton.next_power_of_2(channels))
    block_o = max(16, triton.next_power_of_2(out_channels))
    # (4, BLOCK_K, BLOCK_O) zero-padded phase matrices [a * 2 + b][c, o] in the operand dtype
    phases = torch.zeros((4, block_k, block_o), dtype=operand, device=x.device)
    phases[:, :channels, :out_channels] = weight.detach().permute(2, 3, 0, 1).reshape(4, channels, out_channels)
    shift = torch.zeros(block_o, dtype=torch.float32, device=x.device)
    if bias is not None:
        shift[:out_channels] = bias.detach().float()
    xs = x if x.dtype == operand else x.to(operand)  # autocast: F.linear would cast x too
    precision = "tf32" if operand == torch.float32 and torch.backends.cuda.matmul.allow_tf32 else "ieee"
    pixels = batch * height * width
    block_m = 64 if block_k * block_o >= 128 * 128 else 128
    stride_n, stride_c, stride_h, stride_w = out.stride()
    # Alignment (in elements) of every output row start: lets Triton vectorise the stores
    # where the strides alone do not show it (e.g. 8 channels: stride 8, not 16)
    align = 1
    while align < 16 and all(v % (2 * align) == 0 for v in (stride_n, stride_h, stride_w, out.storage_offset())):
        align *= 2
    # C and O are compile-time constants: with runtime channel counts Triton cannot prove
    # the masks constant over a vector, and every load and store becomes scalar
    _conv_transpose_2x2_kernel[(triton.cdiv(pixels, block_m),)](
        xs, phases, shift, out, pixels, height, width, stride_n, stride_h, stride_w,
        C=channels, O=out_channels, ALIGN=align, RELU=relu, PRECISION=precision,
        BLOCK_M=block_m, BLOCK_K=block_k, BLOCK_O=block_o, num_warps=4,
    )
    return out


if triton is not None:
    # Channel counts are tl.constexpr in these kernels: with runtime counts Triton cannot
    # prove a channel mask constant over a vector, and loads and stores become scalar.

    @triton.jit
    def _dw_forward_kernel(
        x_ptr, w_ptr, b_ptr, y_ptr, H, W, C,
        K: tl.constexpr, HAS_BIAS: tl.constexpr, BLOCK_W: tl.constexpr, BLOCK_C: tl.constexpr,
    ):
        # Four output rows h0..h0+3 of one image, BLOCK_W pixels x BLOCK_C channels, with
        # one accumulator each (_ROWS). Input row h0 - K//2 + r feeds output row h0 + q
        # through filter row r - q. Offsets inside an image are int32 (checked on the
        # host); the per-image base is int64. Column offsets and masks are computed once
        # per filter column, not per tap.
        tiles_h = tl.cdiv(H, 4)
        pid = tl.program_id(0)
        n = pid // tiles_h
        h0 = (pid % tiles_h) * 4
        offs_w = tl.program_id(1) * BLOCK_W + tl.arange(0, BLOCK_W)
        offs_c = tl.program_id(2) * BLOCK_C + tl.arange(0, BLOCK_C)
        mask_c = offs_c < C
        image = n.to(tl.int64) * H * W * C
        acc0 = tl.zeros((BLOCK_W, BLOCK_C), dtype=tl.float32)
        acc1 = tl.zeros((BLOCK_W, BLOCK_C), dtype=tl.float32)
        acc2 = tl.zeros((BLOCK_W, BLOCK_C), dtype=tl.float32)
        acc3 = tl.zeros((BLOCK_W, BLOCK_C), dtype=tl.float32)
        for j in tl.static_range(K):
            ww = offs_w + (j - K // 2)
            col = ww[:, None] * C + offs_c[None, :]
            col_ok = ((ww >= 0) & (ww < W))[:, None] & mask_c[None, :]
            for r in tl.static_range(K + 3):
                hh = h0 + (r - K // 2)
                row_ok = (hh >= 0) & (hh < H)
                xv = tl.load(x_ptr + image + hh * W * C + col, mask=col_ok & row_ok, other=0.0).to(tl.float32)
                if r < K:
                    acc0 += xv * tl.load(w_ptr + (r * K + j) * C + offs_c, mask=mask_c, other=0.0)[None, :]
                if r >= 1 and r < K + 1:
                    acc1 += xv * tl.load(w_ptr + ((r - 1) * K + j) * C + offs_c, mask=mask_c, other=0.0)[None, :]
                if r >= 2 and r < K + 2:
                    acc2 += xv * tl.load(w_ptr + ((r - 2) * K + j) * C + offs_c, mask=mask_c, other=0.0)[None, :]
                if r >= 3:
                    acc3 += xv * tl.load(w_ptr + ((r - 3) * K + j) * C + offs_c, mask=mask_c, other=0.0)[None, :]
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
    ):
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

    @triton.jit
    def _single_output_conv_kernel(
        x_ptr, w_ptr, b_ptr, y_ptr, H, W, C: tl.constexpr, TILES_H, TILES_W,
        K: tl.constexpr, HAS_BIAS: tl.constexpr, BLOCK_W: tl.constexpr, BLOCK_C: tl.constexpr,
    ):
        # Output rows h0..h0+3 (_ROWS) x BLOCK_W columns of one image. As in
        # _dw_forward_kernel, input row h0 - K//2 + r feeds output row h0 + q through
        # filter row r - q, so each input tile is loaded once for all the output rows it
        # touches. The products accumulate element-wise over (pixel, channel) and are
        # summed over channels once at the end (no cross-thread reduction per tap).
        pid = tl.program_id(0)
        tile_w = pid % TILES_W
        rest = pid // TILES_W
        h0 = (rest % TILES_H) * 4
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
            for j in tl.static_range(K):
                ww = offs_w + (j - K // 2)
                col = ww[:, None] * C + offs_c[None, :]
                col_ok = ((ww >= 0) & (ww < W))[:, None] & mask_c[None, :]
                for r in tl.static_range(K + 3):
                    hh = h0 + (r - K // 2)
                    row_ok = (hh >= 0) & (hh < H)
                    xv = tl.load(x_ptr + image + hh * W * C + col, mask=col_ok & row_ok, other=0.0).to(tl.float32)
                    if r < K:
                        acc0 += xv * tl.load(w_ptr + (r * K + j) * C + offs_c, mask=mask_c, other=0.0)[None, :]
                    if r >= 1 and r < K + 1:
                        acc1 += xv * tl.load(w_ptr + ((r - 1) * K + j) * C + offs_c, mask=mask_c, other=0.0)[None, :]
                    if r >= 2 and r < K + 2:
                        acc2 += xv * tl.load(w_ptr + ((r - 2) * K + j) * C + offs_c, mask=mask_c, other=0.0)[None, :]
                    if r >= 3:
                        acc3 += xv * tl.load(w_ptr + ((r - 3) * K + j) * C + offs_c, mask=mask_c, other=0.0)[None, :]
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

    @triton.jit
    def _gn_stats_kernel(
        x_ptr, a_ptr, mean_ptr, m2_ptr, P, C: tl.constexpr, CHUNKS, PER_ADDEND,
        TILES: tl.constexpr, HAS_ADDEND: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr,
    ):
        # Per-channel (mean, M2) of TILES x BLOCK_P pixels of sample n. Every (pixel lane,
        # channel) element keeps its own Welford state; lanes see the same count except in
        # the ragged last tile, so counts are kept per pixel lane. The lanes are merged
        # once at the end (Chan et al.): M2 = sum M2_l + sum n_l (mean_l - mean)^2.
        pid = tl.program_id(0)
        n = pid // CHUNKS
        p0 = (pid % CHUNKS) * (TILES * BLOCK_P)
        offs_c = tl.arange(0, BLOCK_C)
        mask_c = offs_c < C
        image = n.to(tl.int64) * P * C
        shared = (n // PER_ADDEND).to(tl.int64) * P * C
        mean = tl.zeros((BLOCK_P, BLOCK_C), dtype=tl.float32)
        m2 = tl.zeros((BLOCK_P, BLOCK_C), dtype=tl.float32)
        count = tl.zeros((BLOCK_P,), dtype=tl.float32)
        for t in range(TILES):
            offs_p = p0 + t * BLOCK_P + tl.arange(0, BLOCK_P)
            valid = offs_p < P
            mask = valid[:, None] & mask_c[None, :]
            offs = offs_p[:, None] * C + offs_c[None, :]
            v = tl.load(x_ptr + image + offs, mask=mask, other=0.0).to(tl.float32)
            if HAS_ADDEND:
                a = tl.load(a_ptr + shared + offs, mask=mask, other=0.0).to(tl.float32)
                v = (v + a).to(x_ptr.dtype.element_ty).to(tl.float32)  # the rounding of x + addend
            count += valid.to(tl.float32)
            inv = tl.where(valid, 1.0 / tl.maximum(count, 1.0), 0.0)
            delta = v - mean
            mean += delta * inv[:, None]
            m2 += tl.where(mask, delta * (v - mean), 0.0)
        total = tl.sum(count, axis=0)
        chunk_mean = tl.sum(mean * count[:, None], axis=0) / total
        deviation = tl.where((count > 0)[:, None], mean - chunk_mean[None, :], 0.0)
        chunk_m2 = tl.sum(m2, axis=0) + tl.sum(count[:, None] * deviation * deviation, axis=0)
        tl.store(mean_ptr + pid * C + offs_c, chunk_mean, mask=mask_c)
        tl.store(m2_ptr + pid * C + offs_c, chunk_m2, mask=mask_c)

    @triton.jit
    def _gn_apply_kernel(
        x_ptr, a_ptr, mean_ptr, var_ptr, w_ptr, b_ptr, y_ptr, P, C: tl.constexpr, CG: tl.constexpr, G: tl.constexpr,
        TILES, PER_ADDEND, eps,
        HAS_ADDEND: tl.constexpr, HAS_WEIGHT: tl.constexpr, HAS_BIAS: tl.constexpr, RELU: tl.constexpr,
        BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr,
    ):
        pid = tl.program_id(0)
        n = pid // TILES
        offs_p = (pid % TILES) * BLOCK_P + tl.arange(0, BLOCK_P)
        offs_c = tl.arange(0, BLOCK_C)
        mask_c = offs_c < C
        mask = (offs_p < P)[:, None] & mask_c[None, :]
        offs = offs_p[:, None] * C + offs_c[None, :]
        image = n.to(tl.int64) * P * C
        v = tl.load(x_ptr + image + offs, mask=mask, other=0.0).to(tl.float32)
        if HAS_ADDEND:
            shared = (n // PER_ADDEND).to(tl.int64) * P * C
            a = tl.load(a_ptr + shared + offs, mask=mask, other=0.0).to(tl.float32)
            v = (v + a).to(x_ptr.dtype.element_ty).to(tl.float32)  # as in _gn_stats_kernel
        # per-channel constants of sample n (BLOCK_C values; the group of channel c is c // CG)
        stat = n * G + offs_c // CG
        center = tl.load(mean_ptr + stat, mask=mask_c, other=0.0)
        scale = 1.0 / tl.sqrt_rn(tl.load(var_ptr + stat, mask=mask_c, other=1.0) + eps)
        if HAS_WEIGHT:
            scale *= tl.load(w_ptr + offs_c, mask=mask_c, other=0.0)
        y = (v - center[None, :]) * scale[None, :]
        if HAS_BIAS:
            y += tl.load(b_ptr + offs_c, mask=mask_c, other=0.0)[None, :]
        if RELU:
            y = tl.where(y < 0.0, 0.0, y)  # NaN passes through, as in torch.relu
        tl.store(y_ptr + image + offs, y.to(y_ptr.dtype.element_ty), mask=mask)

    @triton.jit
    def _conv_transpose_2x2_kernel(
        x_ptr, w_ptr, b_ptr, y_ptr, M, H, W, stride_n, stride_h, stride_w,
        C: tl.constexpr, O: tl.constexpr, ALIGN: tl.constexpr, RELU: tl.constexpr, PRECISION: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_O: tl.constexpr,
    ):
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
