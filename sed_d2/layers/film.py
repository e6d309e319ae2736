"""FiLM: feature-wise linear modulation of features by a condition vector (Perez et al., 2018).

``FiLM(cond_dim, feat_dim)(x, cond) = gamma(cond) * x + beta(cond)``, with ``gamma`` and
``beta`` per channel of ``x`` and broadcast over every other axis of ``x`` between the batch
axis and the channels (tokens, pixels). SynSeg's "prior fusion" (CLIPSeg's conditioning):
the text embedding of a category modulates the visual tokens of its decoder pass.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["FiLM"]


class FiLM(nn.Module):
    """``gamma * x + beta`` with ``(gamma, beta)`` computed from a condition vector.

    Args:
        cond_dim: channels of the condition (e.g. the CLIP text embedding, 512).
        feat_dim: channels of the modulated features (the last axis of ``x``).
        hidden_dim: 0 (CLIPSeg): ``gamma`` and ``beta`` are two ``Linear(cond_dim,
            feat_dim)``; > 0: one MLP ``Linear(cond_dim, hidden_dim)``-ReLU-
            ``Linear(hidden_dim, 2 * feat_dim)``, split into ``gamma`` and ``beta``.

    ``forward(x (N, ..., feat_dim), cond (N, cond_dim)) -> (N, ..., feat_dim)``.
    """

    def __init__(self, cond_dim: int, feat_dim: int, hidden_dim: int = 0) -> None:
        super().__init__()
        if hidden_dim < 0:
            raise ValueError(f"hidden_dim must be >= 0, got {hidden_dim}")
        self.feat_dim = int(feat_dim)
        self.hidden_dim = int(hidden_dim)
        if hidden_dim == 0:
            self.scale = nn.Linear(cond_dim, feat_dim)
            self.shift = nn.Linear(cond_dim, feat_dim)
        else:
            self.mlp = nn.Sequential(
                nn.Linear(cond_dim, hidden_dim), nn.ReLU(inplace=True), nn.Linear(hidden_dim, 2 * feat_dim)
            )

    def modulation(self, cond: Tensor) -> tuple[Tensor, Tensor]:
        """``(gamma, beta)``, each ``(N, feat_dim)``."""
        if self.hidden_dim == 0:
            return self.scale(cond), self.shift(cond)
        return self.mlp(cond).split(self.feat_dim, dim=-1)

    def forward(self, x: Tensor, cond: Tensor) -> Tensor:
        if x.shape[0] != cond.shape[0] or x.shape[-1] != self.feat_dim:
            raise ValueError(
                f"FiLM expects x (N, ..., {self.feat_dim}) and cond (N, C) with the same N, "
                f"got {tuple(x.shape)} and {tuple(cond.shape)}"
            )
        gamma, beta = self.modulation(cond)
        shape = (x.shape[0],) + (1,) * (x.dim() - 2) + (self.feat_dim,)
        return torch.addcmul(beta.reshape(shape), gamma.reshape(shape), x)
