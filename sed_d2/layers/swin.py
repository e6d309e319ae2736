"""Guided (shifted-)window attention over class-batched maps: CAT-Seg's spatial aggregation.

A pair of Swin blocks (window attention, then the same with windows shifted by half a
window) runs on every class map of a ``(B, T, C, H, W)`` class-batched map independently.
Queries and keys also read a per-image *appearance guidance* map, which is shared by the
classes of an image; values read the class map only. There is no relative position bias.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .class_transformer import Mlp

__all__ = ["GuidedSwinBlock", "GuidedSwinBlockPair", "GuidedWindowAttention", "shifted_window_mask"]

# The additive mask value of the official Swin code (not -inf: a window row whose every
# entry is masked cannot occur, and -100 gives the official softmax exactly).
_MASK_VALUE = -100.0


def _effective_window(height: int, width: int, window_size: int, shift_size: int) -> tuple[int, int]:
    """The official rule: a grid no larger than the window is one window without shift."""
    if min(height, width) <= window_size:
        return min(height, width), 0
    return window_size, shift_size


@functools.lru_cache(maxsize=32)
def _shifted_window_mask(height: int, width: int, window: int, shift: int, device: torch.device) -> Tensor:
    regions = torch.zeros(height, width)
    bounds = (slice(0, -window), slice(-window, -shift), slice(-shift, None))
    label = 0
    for rows in bounds:
        for cols in bounds:
            regions[rows, cols] = label
            label += 1
    windows = regions.view(height // window, window, width // window, window).permute(0, 2, 1, 3)
    windows = windows.reshape(-1, window * window)  # (num_windows, N), windows row-major
    same_region = windows.unsqueeze(1) == windows.unsqueeze(2)
    mask = torch.zeros(same_region.shape).masked_fill_(~same_region, _MASK_VALUE)
    return mask.to(device)


def shifted_window_mask(height: int, width: int, window: int, shift: int, device=None) -> Tensor:
    """``(num_windows, N, N)`` additive attention mask of the shifted windows (``N =
    window**2``): 0 between tokens of the same region of the rolled grid, -100 between
    tokens that the cyclic shift brought into one window from different regions (the
    official Swin ``attn_mask``). Cached per arguments, so the first forward at a size
    builds it (before any CUDA graph capture)."""
    if height % window or width % window:
        raise ValueError(f"grid {height}x{width} is not divisible by the window {window}")
    return _shifted_window_mask(int(height), int(width), int(window), int(shift), torch.device(device or "cpu"))


class GuidedWindowAttention(nn.Module):
    """Multi-head window attention whose queries and keys also read guidance.

    ``q = Linear(dim + guidance_dim -> dim)(cat[x, g])``, the same for ``k``;
    ``v = Linear(dim -> dim)(x)``; ``proj = Linear(dim -> dim)``; scale ``head_dim**-0.5``.
    Parameters ``q``, ``k``, ``v``, ``proj`` (the official names).
    """

    def __init__(self, dim: int, guidance_dim: int, num_heads: int) -> None:
        super().__init__()
        if dim % num_heads != 0:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.dim = dim
        self.guidance_dim = guidance_dim
        self.num_heads = num_heads
        self.q = nn.Linear(dim + guidance_dim, dim)
        self.k = nn.Linear(dim + guidance_dim, dim)
        self.v = nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)

    def guidance_query_key(self, guidance: Tensor) -> Tensor:
        """The guidance's share of ``cat([q, k], -1)`` (no bias): ``(..., guidance_dim) ->
        (..., 2 * dim)``. Per image, so it is computed once and broadcast over classes."""
        dim = self.dim
        weight = torch.cat([self.q.weight[:, dim:], self.k.weight[:, dim:]])
        return F.linear(guidance, weight)

    def query_key_value(self, x: Tensor, guidance_qk: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
        """``q, k, v`` for tokens ``x (..., dim)``; ``guidance_qk`` (broadcastable to
        ``(..., 2 * dim)``) from :meth:`guidance_query_key`, or ``None`` without guidance."""
        dim = self.dim
        weight = torch.cat([self.q.weight[:, :dim], self.k.weight[:, :dim]])
        qk = F.linear(x, weight, torch.cat([self.q.bias, self.k.bias]))
        if guidance_qk is not None:
            qk = qk + guidance_qk
        q, k = qk.split(dim, dim=-1)
        return q, k, self.v(x)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, guidance_dim={self.guidance_dim}, num_heads={self.num_heads}"


class GuidedSwinBlock(nn.Module):
    """One pre-norm Swin block on class maps with appearance guidance.

    ``x = x + proj(window_attention(norm1(x), guidance))``, then
    ``x = x + mlp(norm2(x))`` (``dim -> mlp_ratio*dim -> dim``, exact GELU). With
    ``shift_size > 0`` the grid (class map and guidance) is rolled by ``-shift`` before
    the windows are formed and rolled back after, with the official -100 mask between
    regions. A grid no larger than ``window_size`` is attended as one window, unshifted
    (the official rule).

    Parameters (official names): ``norm1``, ``attn.{q,k,v,proj}``, ``norm2``,
    ``mlp.{fc1,fc2}``.
    """

    def __init__(
        self, dim: int, guidance_dim: int, num_heads: int, *, window_size: int, shift_size: int = 0, mlp_ratio: int = 4
    ) -> None:
        super().__init__()
        if not 0 <= shift_size < window_size:
            raise ValueError(f"shift_size {shift_size} must be in [0, window_size={window_size})")
        self.window_size = window_size
        self.shift_size = shift_size
        self.norm1 = nn.LayerNorm(dim)
        self.attn = GuidedWindowAttention(dim, guidance_dim, num_heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, mlp_ratio * dim, act_layer=nn.GELU)

    def forward(self, x: Tensor, guidance_qk: Tensor | None = None) -> Tensor:
        """
        Args:
            x: ``(B, T, H, W, C)`` class maps, channels last.
            guidance_qk: ``(B, H, W, 2C)`` :meth:`GuidedWindowAttention.guidance_query_key`
                of the (normalised) guidance, shared by the ``T`` classes; ``None`` = none.

        Returns:
            ``(B, T, H, W, C)``.
        """
        batch, num_classes, height, width, channels = x.shape
        window, shift = _effective_window(height, width, self.window_size, self.shift_size)
        h = self.norm1(x)
        if shift:
            h = h.roll((-shift, -shift), dims=(2, 3))
            if guidance_qk is not None:
                guidance_qk = guidance_qk.roll((-shift, -shift), dims=(1, 2))
        if guidance_qk is not None:
            guidance_qk = guidance_qk.unsqueeze(1)  # broadcast over classes
        q, k, v = self.attn.query_key_value(h, guidance_qk)
        heads = self.attn.num_heads
        q, k, v = (self._windows(t, window, heads) for t in (q, k, v))  # (B*T, nW*heads, N, d)
        mask = None
        if shift:
            mask = shifted_window_mask(height, width, window, shift, x.device).to(q.dtype)
            mask = mask.repeat_interleave(heads, dim=0)  # (nW*heads, N, N), heads inner
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        out = self._merge_windows(out, batch, num_classes, height, width, window, heads)
        if shift:
            out = out.roll((shift, shift), dims=(2, 3))
        x = x + self.attn.proj(out)
        return x + self.mlp(self.norm2(x))

    @staticmethod
    def _windows(t: Tensor, window: int, heads: int) -> Tensor:
        """``(B, T, H, W, C) -> (B*T, (H/w)*(W/w)*heads, w*w, C/heads)``: windows row-major,
        heads inner (the official window order)."""
        batch, num_classes, height, width, channels = t.shape
        t = t.reshape(batch * num_classes, height // window, window, width // window, window, heads, channels // heads)
        t = t.permute(0, 1, 3, 5, 2, 4, 6)  # (BT, H/w, W/w, heads, w, w, d)
        return t.reshape(batch * num_classes, -1, window * window, channels // heads)

    @staticmethod
    def _merge_windows(t: Tensor, batch: int, num_classes: int, height: int, width: int, window: int, heads: int) -> Tensor:
        """Inverse of :meth:`_windows`: ``-> (B, T, H, W, C)``."""
        head_dim = t.shape[-1]
        t = t.reshape(batch * num_classes, height // window, width // window, heads, window, window, head_dim)
        t = t.permute(0, 1, 4, 2, 5, 3, 6)  # (BT, H/w, w, W/w, w, heads, d)
        return t.reshape(batch, num_classes, height, width, heads * head_dim)

    def extra_repr(self) -> str:
        return f"window_size={self.window_size}, shift_size={self.shift_size}"


class GuidedSwinBlockPair(nn.Module):
    """CAT-Seg's spatial aggregation (official ``SwinTransformerBlockWrapper``): a window
    block and a shifted-window block (shift ``window_size // 2``) on every class map, with
    the per-image appearance guidance normalised once by ``guidance_norm`` and read by both.

    Args:
        dim: channels of the class maps.
        guidance_dim: channels of the appearance guidance (0 = none).
        num_heads: attention heads.
        window_size: window side (CAT-Seg: 12 on a 24x24 grid).
        mlp_ratio: MLP expansion.

    ``forward(x (B, T, C, H, W), guidance (B, guidance_dim, H, W) | None) ->
    (B, T, C, H, W)``; the guidance is never repeated over classes in memory (its share of
    q/k is computed per image and broadcast). Parameters (official -> ours): ``block_1``
    -> ``block0``, ``block_2`` -> ``block1``, ``guidance_norm``; the official
    ``block_2.attn_mask`` buffer is rebuilt (:func:`shifted_window_mask`), not stored.
    """

    def __init__(self, dim: int, guidance_dim: int, num_heads: int, *, window_size: int, mlp_ratio: int = 4) -> None:
        super().__init__()
        self.block0 = GuidedSwinBlock(dim, guidance_dim, num_heads, window_size=window_size, mlp_ratio=mlp_ratio)
        self.block1 = GuidedSwinBlock(
            dim, guidance_dim, num_heads, window_size=window_size, shift_size=window_size // 2, mlp_ratio=mlp_ratio
        )
        self.guidance_norm = nn.LayerNorm(guidance_dim) if guidance_dim > 0 else None

    def forward(self, x: Tensor, guidance: Tensor | None = None) -> Tensor:
        if (guidance is not None) != (self.guidance_norm is not None):
            raise ValueError("guidance must be given exactly when guidance_dim > 0")
        tokens = x.permute(0, 1, 3, 4, 2)  # (B, T, H, W, C); a view for channels-last maps
        guidance_qk = [None, None]
        if guidance is not None:
            normed = self.guidance_norm(guidance.permute(0, 2, 3, 1))  # (B, H, W, G)
            guidance_qk = [block.attn.guidance_query_key(normed) for block in (self.block0, self.block1)]
        tokens = self.block0(tokens, guidance_qk[0])
        tokens = self.block1(tokens, guidance_qk[1])
        return tokens.permute(0, 1, 4, 2, 3)
