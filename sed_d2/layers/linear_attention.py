"""Linear attention ("Transformers are RNNs", Katharopoulos et al. 2020; LoFTR form)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .norms import fold_layer_norm_into_linear, normalize_last_dim

__all__ = ["linear_attention", "LinearAttention", "MultiHeadLinearAttention"]


def linear_attention(
    queries: Tensor, keys: Tensor, values: Tensor, eps: float = 1e-6, *, extra_sums: Tensor | None = None
) -> Tensor:
    """Non-causal, unmasked linear attention with the ``elu(x) + 1`` feature map.

    Args:
        queries: ``(N, L, *P, H, D)``; keys: ``(N, S, *P, H, D)``; values:
            ``(N, S, *P, H, Dv)``. Dimension 1 is the sequence; ``P`` are optional extra
            independent positions (e.g. pixels when the sequence is the class axis of a
            ``(B, T, h*w, C)`` map), so no layout change is needed to attend along dim 1.

    Returns:
        ``(N, L, *P, H, Dv)`` with
        ``out_l = phi(q_l) . sum_s phi(k_s) v_s^T / (phi(q_l) . sum_s phi(k_s) + eps)``.
        (The official SED/CAT-Seg code divides the values by ``S`` before the sums and
        multiplies by ``S`` after, an fp16 overflow guard that cancels exactly; bf16 and
        float32 do not need it.) Numerator and denominator come from one batched product:
        ``sum_s phi(k_s)`` is appended to ``sum_s phi(k_s) v_s^T`` as an extra column.

    ``extra_sums``: ``(H, D, Dv + 1)``, the same two sums over further keys and values
    that every query of every sequence and position also attends to,
    ``cat([sum phi(k) v^T, sum phi(k)], -1)``; added to the sums over ``keys``/``values``
    (CAT-Seg's class padding tokens, :meth:`MultiHeadLinearAttention.constant_token_sums`).
    """
    batch, length = queries.shape[:2]
    extra = queries.shape[2:-2]
    heads, head_dim = queries.shape[-2:]
    value_dim = values.shape[-1]
    q = (F.elu(queries) + 1.0).reshape(batch, length, -1, heads, head_dim)
    k = (F.elu(keys) + 1.0).reshape(batch, keys.shape[1], -1, heads, head_dim)
    v = values.reshape(batch, values.shape[1], -1, heads, value_dim)
    kv = torch.einsum("nspha,nsphe->nphae", k, v)  # (N, P, H, D, Dv)
    kv = torch.cat([kv, k.sum(dim=1).unsqueeze(-1).to(kv.dtype)], dim=-1)
    if extra_sums is not None:
        kv = kv + extra_sums.to(kv.dtype)
    out = torch.einsum("nlpha,nphae->nlphe", q, kv)  # (N, L, P, H, Dv + 1)
    out = out[..., :value_dim] / (out[..., value_dim:] + eps)
    return out.reshape(batch, length, *extra, heads, value_dim)


class LinearAttention(nn.Module):
    """Module form of :func:`linear_attention` (no parameters)."""

    def __init__(self, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps

    def forward(self, queries: Tensor, keys: Tensor, values: Tensor, extra_sums: Tensor | None = None) -> Tensor:
        return linear_attention(queries, keys, values, self.eps, extra_sums=extra_sums)

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

    ``forward(x (N, L, *P, dim), guidance (N, L, *P, guidance_dim) | None, norm=None)
    -> (N, L, *P, dim)``: attention along dim 1, independently for every ``N`` and
    extra position ``P``. ``norm`` (a ``LayerNorm(dim)``) is applied to ``x`` first,
    folded into the projections: ``forward(x, g, norm) == forward(norm(x), g)``.
    ``extra_sums`` (:meth:`constant_token_sums`): keys/values every query also attends to.
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

    def _projection_params(self, dim: int, norm: nn.LayerNorm | None) -> list[tuple[Tensor, Tensor | None]]:
        """(weight, bias) of the query, key and value projections, ``norm`` folded in."""
        layers = (self.query, self.key, self.value)
        if norm is None:
            return [(layer.weight, layer.bias) for layer in layers]
        return [fold_layer_norm_into_linear(norm, layer.weight, layer.bias, dim) for layer in layers]

    def qkv_projection(self, x: Tensor, norm: nn.LayerNorm | None = None) -> Tensor:
        """``cat([q, k, v], -1)`` (``(..., 3 * dim)``) as :meth:`forward` computes it without
        guidance: one linear with the three (``norm``-folded) projections stacked, so ``x``
        is read once. The fused inference path of
        :class:`sed_d2.layers.ClassTransformerLayer` consumes this tensor directly."""
        if self.guidance_dim > 0:
            raise ValueError("qkv_projection has no guidance input (guidance_dim > 0)")
        params = self._projection_params(x.shape[-1], norm)
        if norm is not None:
            x = normalize_last_dim(x, norm.eps)
        weight = torch.cat([w for w, _ in params])
        bias = None if any(b is None for _, b in params) else torch.cat([b for _, b in params])
        return F.linear(x, weight, bias)

    def constant_token_sums(
        self, token: Tensor, guidance: Tensor | None, count: int, norm: nn.LayerNorm | None = None
    ) -> Tensor:
        """The ``extra_sums`` of ``count`` copies of one token ``(dim,)`` with guidance
        ``(guidance_dim,)`` appended to every sequence: ``(H, D, D + 1)``. Attending to
        them this way equals concatenating the copies to the keys and values (CAT-Seg's
        class padding) without materialising them."""
        if (guidance is not None) != (self.guidance_dim > 0):
            raise ValueError("guidance must be given exactly when guidance_dim > 0")
        x = token.reshape(1, -1)
        if norm is not None:
            x = norm(x)
        key_input = x if guidance is None else torch.cat([x, guidance.reshape(1, -1).to(x.dtype)], dim=-1)
        k = F.elu(self.key(key_input)) + 1.0
        v = self.value(x)
        k, v = k.view(self.num_heads, -1), v.view(self.num_heads, -1)
        return count * torch.cat([k.unsqueeze(-1) * v.unsqueeze(-2), k.unsqueeze(-1)], dim=-1)

    def forward(
        self,
        x: Tensor,
        guidance: Tensor | None = None,
        norm: nn.LayerNorm | None = None,
        extra_sums: Tensor | None = None,
    ) -> Tensor:
        if (guidance is not None) != (self.guidance_dim > 0):
            raise ValueError("guidance must be given exactly when guidance_dim > 0")
        dim = x.shape[-1]
        if guidance is None:
            q, k, v = self.qkv_projection(x, norm).split(dim, dim=-1)
        else:
            params = self._projection_params(dim, norm)
            if norm is not None:
                x = normalize_last_dim(x, norm.eps)
            weight = torch.cat([w for w, _ in params[:2]])
            bias = None if any(b is None for _, b in params[:2]) else torch.cat([b for _, b in params[:2]])
            q, k = F.linear(torch.cat([x, guidance], dim=-1), weight, bias).split(dim, dim=-1)
            v = F.linear(x, *params[2])
        heads = (self.num_heads, -1)
        out = self.attention(q.unflatten(-1, heads), k.unflatten(-1, heads), v.unflatten(-1, heads), extra_sums)
        return out.flatten(-2)
