"""Linear attention modules ("Transformers are RNNs", Katharopoulos et al. 2020; LoFTR form)
around :func:`sed_d2.ops.linear_attention`."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import ops

__all__ = ["LinearAttention", "MultiHeadLinearAttention"]


class LinearAttention(nn.Module):
    """Module form of :func:`sed_d2.ops.linear_attention` (no parameters)."""

    def __init__(self, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps

    def forward(self, queries: Tensor, keys: Tensor, values: Tensor, extra_sums: Tensor | None = None) -> Tensor:
        return ops.linear_attention(queries, keys, values, self.eps, extra_sums=extra_sums)

    def extra_repr(self) -> str:
        return f"eps={self.eps}"


class MultiHeadLinearAttention(nn.Module):
    """q/k/v projections + multi-head :func:`sed_d2.ops.linear_attention`, **no output projection**
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
        fold = ops.fold_layer_norm_into_linear
        return [fold(norm.weight, norm.bias, layer.weight, layer.bias, dim) for layer in layers]

    def qkv_projection(self, x: Tensor, norm: nn.LayerNorm | None = None) -> Tensor:
        """``cat([q, k, v], -1)`` (``(..., 3 * dim)``) as :meth:`forward` computes it without
        guidance: one linear with the three (``norm``-folded) projections stacked, so ``x``
        is read once. The fused inference path of
        :class:`sed_d2.layers.ClassTransformerLayer` consumes this tensor directly."""
        if self.guidance_dim > 0:
            raise ValueError("qkv_projection has no guidance input (guidance_dim > 0)")
        params = self._projection_params(x.shape[-1], norm)
        if norm is not None:
            x = ops.normalize_rows(x, norm.eps)
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
                x = ops.normalize_rows(x, norm.eps)
            weight = torch.cat([w for w, _ in params[:2]])
            bias = None if any(b is None for _, b in params[:2]) else torch.cat([b for _, b in params[:2]])
            q, k = F.linear(torch.cat([x, guidance], dim=-1), weight, bias).split(dim, dim=-1)
            v = F.linear(x, *params[2])
        heads = (self.num_heads, -1)
        out = self.attention(q.unflatten(-1, heads), k.unflatten(-1, heads), v.unflatten(-1, heads), extra_sums)
        return out.flatten(-2)
