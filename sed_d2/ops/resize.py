"""Bilinear resizing (``align_corners=False``) as two matrix products, with its own backward.

The training losses upsample every class map to the crop (e.g. 96 -> 768), and PyTorch's
``upsample_bilinear2d`` backward scatters with atomics: on an H200 it took about 290 ms of a
670 ms SED training step. Here ``x -> M_h @ x @ M_w^T`` and the adjoint is two more matrix
products. Plain PyTorch (no Triton), so the fast-ops switch does not concern it.
"""

from __future__ import annotations

import functools
from contextlib import contextmanager

import torch
from torch import Tensor

__all__ = ["bilinear_resize", "bilinear_resize_matrix"]


def bilinear_resize(x: Tensor, size: tuple[int, int]) -> Tensor:
    """``F.interpolate(x, size, mode="bilinear", align_corners=False)`` as two matrix
    products, ``x -> M_h @ x @ M_w^T`` (:func:`bilinear_resize_matrix`), for ``(..., h, w)``
    floating tensors. Same values up to float rounding of the two-term sums. The products run
    in ``x``'s dtype in full precision (no autocast, no TF32), so a float32 input gives
    float32 accuracy whatever the global flags."""
    height, width = x.shape[-2:]
    out_h, out_w = int(size[0]), int(size[1])
    if (height, width) == (out_h, out_w):
        return x
    if not x.is_floating_point():
        raise TypeError(f"bilinear_resize needs a floating tensor, got {x.dtype}")
    return _BilinearResize.apply(x, out_h, out_w)


def bilinear_resize_matrix(in_size: int, out_size: int, dtype: torch.dtype, device) -> Tensor:
    """``(out_size, in_size)`` matrix of 1-D bilinear interpolation with
    ``align_corners=False`` (PyTorch's rule: source ``(i + 0.5) * in / out - 0.5``,
    clamped at 0; weights computed in float32, or float64 for float64, then cast to
    ``dtype``). Cached per sizes, dtype and device."""
    return _resize_matrix(int(in_size), int(out_size), dtype, torch.device(device))


@functools.lru_cache(maxsize=64)
def _resize_matrix(in_size: int, out_size: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    # float32 weights for float32 / bf16 / fp16 (PyTorch's accumulate type), float64 for float64
    work = torch.float64 if dtype == torch.float64 else torch.float32
    scale = torch.tensor(in_size / out_size, dtype=work)
    source = ((torch.arange(out_size, dtype=work) + 0.5) * scale - 0.5).clamp_min(0)
    first = source.floor().long().clamp_max(in_size - 1)
    second = (first + 1).clamp_max(in_size - 1)
    weight_second = source - first.to(work)
    matrix = torch.zeros(out_size, in_size, dtype=work)
    rows = torch.arange(out_size)
    matrix.index_put_((rows, first), 1 - weight_second, accumulate=True)
    matrix.index_put_((rows, second), weight_second, accumulate=True)
    return matrix.to(device=device, dtype=dtype)


@contextmanager
def _full_precision_products(x: Tensor):
    """No autocast (thread-local) and, for float32 CUDA operands while TF32 is allowed, no
    TF32 for the matrix products inside.

    PyTorch has no per-call precision for a matrix product: ``allow_tf32`` (like its
    ``fp32_precision`` successor) is process-wide, and an exact float32 product on CUDA needs
    it off. So the flag is saved, cleared for these two products and restored, and only where
    it changes the result (float32 on CUDA with TF32 on); another thread's float32 products
    issued in that window run without TF32 (slower, never less accurate).
    """
    with torch.autocast(x.device.type, enabled=False):
        if not (x.is_cuda and x.dtype == torch.float32 and torch.backends.cuda.matmul.allow_tf32):
            yield
            return
        torch.backends.cuda.matmul.allow_tf32 = False
        try:
            yield
        finally:
            torch.backends.cuda.matmul.allow_tf32 = True


class _BilinearResize(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, out_h, out_w):
        height, width = x.shape[-2:]
        rows = bilinear_resize_matrix(height, out_h, x.dtype, x.device)
        cols = bilinear_resize_matrix(width, out_w, x.dtype, x.device)
        ctx.save_for_backward(rows, cols)
        with _full_precision_products(x):
            y = x.reshape(-1, height, width) @ cols.t()  # (N, h, W)
            y = rows @ y  # (N, H, W)
        return y.view(*x.shape[:-2], out_h, out_w)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        rows, cols = ctx.saved_tensors
        with _full_precision_products(rows):
            g = rows.t() @ grad.reshape(-1, *grad.shape[-2:]).to(rows.dtype)  # (N, h, W)
            g = g @ cols  # (N, h, w)
        return g.view(*grad.shape[:-2], rows.shape[1], cols.shape[1]), None, None
