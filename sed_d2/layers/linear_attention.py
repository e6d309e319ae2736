"""Linear attention ("Transformers are RNNs", Katharopoulos et al. 2020; LoFTR form)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["linear_attention", "LinearAttention", "MultiHeadLinearAttention"]


def linear_attention(queries: Tensor, keys: Tensor, values: Tensor, eps: float = 1e-6) -> Tensor:
    """Non-causal, unmasked linear attention with the ``elu(x) + 1`` feature map.

    Args:
        queries: ``(N, L, H, D)``; keys: ``(N, S, H, D)``; values: ``(N, S, H, Dv)``.

    Returns:
        ``(N, L, H, Dv)`` with
        ``out_l = phi(q_l) . sum_s phi(k_s) v_s^T / (phi(q_l) . sum_s phi(k_s) + eps)``.
        Like the official SED/CAT-Seg code, the values are divided by ``S`` before the
        sums and the result multiplied by ``S`` afterwards (an fp16 overflow guard, neutral
        in exact arithmetic; it keeps our rounding close to theirs).
    """
    q = F.elu(queries) + 1.0
    k = F.elu(keys) + 1.0
    length = values.shape[1]
    kv = torch.einsum("nshd,nshe->nhde", k, values / length)
    normaliser = 1.0 / (torch.einsum("nlhd,nhd->nlh", q, k.sum(dim=1)) + eps)
    out = torch.einsum("nlhd,nhde->nlhe", q, kv)
    return out * (normaliser.unsqueeze(-1) * length)


class LinearAttention(nn.Module):
    """Module form of :func:`linear_attention` (no parameters)."""

    def __init__(self, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps

    def forward(self, queries: Tensor, keys: Tensor, values: Tensor) -> Tensor:
        return linear_attention(queries, keys, values, self.eps)

    def extra_repr(self) -> str:
        return f"eps={self.eps}"


class MultiHeadLinearAttention(nn.Module):
    """q/k/v projections + multi-head :func:`linear_attention`, **no output projection**
    (as in SED and CAT-Seg's class aggregation).

    Args:
        dim: token channels (also the q/k/v width).
        num_heads: heads; ``dim`` must be divisible by it.
        guidance_dim: channels of an optional guidance tensor concatenated to the input
            of the query and key projections (CAT-Seg text guidance). 0 = none (SED).

    ``forward(x (N, L, dim), guidance (N, L, guidance_dim) | None) -> (N, L, dim)``.
    Parameters: ``query``, ``key``, ``value`` (official: ``q``, ``k``, ``v``).
    """

    def __init__(self, dim: int, num_heads: int, *, guidance_dim: int = 0, eps: float = 1e-6) -> None:
        super().__init__()
        if dim % num_heads != 0:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.guidance_dim = guidance_dim
        self.query = nn.Linear(dim + guidance_dim, dim)
        self.key = nn.Linear(dim + guidance_dim, dim)
        self.value = nn.Linear(dim, dim)
        self.attention = LinearAttention(eps)

    def forward(self, x: Tensor, guidance: Tensor | None = None) -> Tensor:
        if (guidance is not None) != (self.guidance_dim > 0):
            raise ValueError("guidance must be given exactly when guidance_dim > 0")
        qk_input = x if guidance is None else torch.cat([x, guidance], dim=-1)
        q = self.query(qk_input).unflatten(-1, (self.num_heads, -1))
        k = self.key(qk_input).unflatten(-1, (self.num_heads, -1))
        v = self.value(x).unflatten(-1, (self.num_heads, -1))
        return self.attention(q, k, v).flatten(-2)
