"""GroupNorm on channels-last maps, optionally of ``x + addend`` and followed by ReLU, with the
input's dtype and layout kept.

Under bf16 autocast ``F.group_norm`` returns float32 (dragging every following element-wise op
to float32), and on CUDA it converts channels-last maps to NCHW. Here:

* Triton (inference): two kernels, one read of ``x`` (+ ``addend``) for the statistics and
  one read + one write for ``relu?(GroupNorm(x + addend))``, instead of the five passes of
  ``var_mean``, ``addcmul`` and ``relu_`` (plus two for a separate ``add_`` of the addend).
* PyTorch (:func:`group_norm_reference`): per-channel mean and variance from one ``var_mean``
  pass, combined per group in closed form, then one ``addcmul`` and an in-place ReLU.

``addend`` ``(B, C, *spatial)`` is a term shared by groups of ``N / B`` consecutive samples
(SED's skip guidance, computed once per image); it is never repeated in memory.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .runtime import FLOAT_DTYPES, available, needs_autograd, tl, triton

__all__ = ["fused_group_norm", "fused_group_norm_applies", "group_norm_reference"]

_MAX_CHANNELS = 256
# Statistics tiles: BLOCK_P pixels x all channels (BLOCK_C = C rounded up to a power of
# two), about 2048 elements, so each of 8 warps' threads keeps 2 x 8 float32 Welford
# states. A program reduces _STATS_TILES consecutive tiles (a chunk of ~16K elements;
# 1024 pixels at C = 16, 256 at C = 64): at the SED shapes that is 847 x 36 ~ 30K
# programs, plenty to keep HBM busy, and the per-chunk results are ~1/500 of x.
# Apply tiles: 4096 elements, 16 per thread (two 16-byte bf16 vectors along C).
# 8 warps for both: ptxas (sm_90, bf16) gives ~80 registers per thread against ~140-150
# with 4 warps (per-element 64-bit addresses), i.e. 24 instead of 12 resident warps per SM.
_STATS_TILE = 2048
_STATS_TILES = 8
_APPLY_TILE = 4096
_WARPS = 8


def fused_group_norm_applies(x: Tensor, addend: Tensor | None, weight: Tensor | None, bias: Tensor | None) -> bool:
    """Whether :func:`fused_group_norm` runs the Triton kernels: a 4-D channels-last float32 / bf16 /
    fp16 ``x`` with 1..256 channels where :func:`~sed_d2.ops.runtime.available`, ``addend`` (if
    any) on its device, and no autograd."""
    return bool(
        available(x)
        and x.dim() == 4
        and x.numel() > 0
        and x.shape[1] <= _MAX_CHANNELS
        and x.dtype in FLOAT_DTYPES
        and x.is_contiguous(memory_format=torch.channels_last)
        and x.shape[1] * x.shape[2] * x.shape[3] < 2**31
        and (addend is None or (addend.device == x.device and addend.dtype in FLOAT_DTYPES))
        and not needs_autograd(x, addend, weight, bias)
    )


def fused_group_norm(
    x: Tensor,
    num_groups: int,
    weight: Tensor | None,
    bias: Tensor | None,
    eps: float,
    *,
    relu: bool = False,
    addend: Tensor | None = None,
) -> Tensor:
    """``F.group_norm(x + addend, num_groups, weight, bias, eps)`` (then ReLU if asked) for
    ``x`` ``(N, C, *spatial)``, in ``x``'s dtype and memory layout.

    ``addend``: optional ``(B, C, *spatial)``, ``B`` dividing ``N``: sample ``n`` adds
    ``addend[n // (N / B)]``, in ``x``'s dtype (the sum is rounded as ``x + addend`` would be).

    When :func:`fused_group_norm_applies`, the two Triton kernels: float32 statistics with an
    element-wise Welford update and Chan et al.'s pairwise merge (no sum-of-squares
    cancellation: float32 inputs keep float32 accuracy whatever their mean), then the sum,
    normalisation, affine and ReLU in float32 with one rounding. Centring before scaling keeps
    float32 results at float32 accuracy when ``|mean| >> std``. Otherwise
    :func:`group_norm_reference`.
    """
    if not fused_group_norm_applies(x, addend, weight, bias):
        return group_norm_reference(x, num_groups, weight, bias, eps, relu=relu, addend=addend)
    _check_arguments(x, num_groups, addend)
    with torch.no_grad():
        addend = None if addend is None else addend.to(x.dtype).contiguous(memory_format=torch.channels_last)
        mean, var = _statistics(x, num_groups, addend)
        return _normalize(x, mean, var, weight, bias, eps, addend, relu)


def group_norm_reference(
    x: Tensor,
    num_groups: int,
    weight: Tensor | None,
    bias: Tensor | None,
    eps: float,
    *,
    relu: bool = False,
    addend: Tensor | None = None,
) -> Tensor:
    """:func:`fused_group_norm` in PyTorch, any memory layout, differentiable: a group's statistics
    are the exact combination of per-channel ones, ``mean_g = avg(mean_c)``,
    ``var_g = avg(var_c + (mean_c - mean_g)^2)`` (equal counts per channel), accumulated in
    float32 (float64 for float64)."""
    _check_arguments(x, num_groups, addend)
    batch, channels = x.shape[:2]
    dtype = torch.promote_types(x.dtype, torch.float32)
    owned = False  # x is a temporary of ours (x + addend): the affine may overwrite it
    if addend is not None:
        x = (x.unflatten(0, (addend.shape[0], -1)) + addend.to(x.dtype).unsqueeze(1)).flatten(0, 1)
        owned = not needs_autograd(x, weight, bias)
    var, mean = torch.var_mean(x, dim=tuple(range(2, x.dim())), correction=0)  # (N, C)
    mean = mean.to(dtype).view(batch, num_groups, -1)
    var = var.to(dtype).view(batch, num_groups, -1)
    group_mean = mean.mean(-1, keepdim=True)
    group_var = (var + (mean - group_mean).square()).mean(-1, keepdim=True)
    # per-channel scale and shift (each (N, G, C / G)) with norm(x) = x * scale + shift
    scale = torch.rsqrt(group_var + eps).expand(-1, -1, channels // num_groups)
    if weight is not None:
        scale = scale * weight.to(dtype).view(num_groups, -1)
    shift = -group_mean * scale
    if bias is not None:
        shift = shift + bias.to(dtype).view(num_groups, -1)
    shape = (batch, channels) + (1,) * (x.dim() - 2)
    shift, scale = shift.reshape(shape).to(x.dtype), scale.reshape(shape).to(x.dtype)
    # the sum is ours when there is an addend: writing into it keeps the peak memory of an
    # in-place add (inference)
    y = torch.addcmul(shift, x, scale, out=x) if owned else torch.addcmul(shift, x, scale)
    return torch.relu_(y) if relu else y


def _check_arguments(x: Tensor, num_groups: int, addend: Tensor | None) -> None:
    if x.shape[1] % num_groups != 0:
        raise ValueError(f"{x.shape[1]} channels do not split into {num_groups} groups")
    if addend is not None and (
        addend.dim() != x.dim()
        or addend.shape[1:] != x.shape[1:]
        or addend.shape[0] < 1
        or x.shape[0] % addend.shape[0] != 0
    ):
        raise ValueError(
            f"addend must be (B, *x.shape[1:]) with B dividing x.shape[0]; got {tuple(addend.shape)} "
            f"for x {tuple(x.shape)}"
        )


def _statistics(x: Tensor, groups: int, addend: Tensor | None) -> tuple[Tensor, Tensor]:
    """Per-sample, per-group mean and biased variance of ``x + addend`` (float32, each
    ``(N, G)``). One kernel reads ``x`` (and ``addend``) once: every program reduces a chunk of
    pixels of one sample to per-channel (mean, M2); the chunks and the channels of a group are
    then combined in PyTorch (a few tiny ops on ~1/500 of x)."""
    batch, channels, height, width = x.shape
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
        TILES=_STATS_TILES, HAS_ADDEND=addend is not None, BLOCK_P=block_p, BLOCK_C=block_c, num_warps=_WARPS,
    )  # fmt: skip
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


def _normalize(
    x: Tensor,
    mean: Tensor,
    var: Tensor,
    weight: Tensor | None,
    bias: Tensor | None,
    eps: float,
    addend: Tensor | None,
    relu: bool,
) -> Tensor:
    """``relu?((x + addend - mean[n, g]) * rsqrt(var[n, g] + eps) * weight[c] + bias[c])``:
    one read of ``x`` (+ ``addend``), one write of the channels-last result in ``x``'s dtype."""
    batch, channels, height, width = x.shape
    groups = mean.shape[-1]
    pixels = height * width
    out = torch.empty_like(x, memory_format=torch.channels_last)
    block_c = triton.next_power_of_2(channels)
    block_p = max(1, min(_APPLY_TILE // block_c, triton.next_power_of_2(pixels)))
    tiles = triton.cdiv(pixels, block_p)
    per_addend = batch // addend.shape[0] if addend is not None else 1
    weight = None if weight is None else weight.float().contiguous()
    bias = None if bias is None else bias.float().contiguous()
    _gn_apply_kernel[(batch * tiles,)](
        x, x if addend is None else addend, mean, var,
        mean if weight is None else weight, mean if bias is None else bias, out,
        pixels, channels, channels // groups, groups, tiles, per_addend, float(eps),
        HAS_ADDEND=addend is not None, HAS_WEIGHT=weight is not None, HAS_BIAS=bias is not None, RELU=relu,
        BLOCK_P=block_p, BLOCK_C=block_c, num_warps=_WARPS,
    )  # fmt: skip
    return out


if triton is not None:
    # Channel counts are tl.constexpr: with runtime counts Triton cannot prove a channel mask
    # constant over a vector, and loads and stores become scalar.

    @triton.jit
    def _gn_stats_kernel(
        x_ptr, a_ptr, mean_ptr, m2_ptr, P, C: tl.constexpr, CHUNKS, PER_ADDEND,
        TILES: tl.constexpr, HAS_ADDEND: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr,
    ):  # fmt: skip
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
    ):  # fmt: skip
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
