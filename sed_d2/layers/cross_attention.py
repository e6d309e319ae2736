"""Cross-attention of a set of query tokens (e.g. class text embeddings) to image tokens."""

from __future__ import annotations

from torch import Tensor, nn

__all__ = ["TextImageCrossAttention"]


class TextImageCrossAttention(nn.Module):
    """One post-norm cross-attention layer in which text tokens attend to image tokens:
    ``norm(text + proj(MHA(query=text, key=image + pos, value=image [+ pos])))``.

    FGAseg's P2Tformer layer (official ``ShortCut_CrossAttention``, text branch): the
    "MLP" is one ``Linear(dim, dim)`` and there is no feed-forward block.

    Args:
        dim: channels of text and image tokens.
        num_heads: heads of ``nn.MultiheadAttention`` (no dropout).
        pos_on_values: add the position embedding to the values too (the paper's Eq. 5;
            the official code adds it to the keys only).

    Parameters: ``attn`` (``in_proj_weight``/``in_proj_bias``/``out_proj``, the official
    ``multihead_attn``), ``proj`` (official ``MLP``), ``norm``. Initialisation as the
    official layer: xavier-uniform attention projections, zero attention biases, PyTorch's
    default for ``proj`` and ``norm``.
    """

    def __init__(self, dim: int, num_heads: int, *, pos_on_values: bool = False) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(dim, num_heads, dropout=0.0, batch_first=True)
        nn.init.xavier_uniform_(self.attn.out_proj.weight)  # in_proj_weight: xavier already
        self.norm = nn.LayerNorm(dim)
        self.proj = nn.Linear(dim, dim)
        self.pos_on_values = pos_on_values

    def forward(self, text: Tensor, image: Tensor, pos: Tensor | None = None) -> Tensor:
        """
        Args:
            text: ``(B, T, dim)`` queries.
            image: ``(B, N, dim)`` keys / values.
            pos: ``(N, dim)`` or ``(B, N, dim)`` position embedding of the image tokens.

        Returns:
            ``(B, T, dim)``.
        """
        key = image if pos is None else image + pos
        value = key if self.pos_on_values else image
        attended = self.attn(text, key, value, need_weights=False)[0]
        return self.norm(text + self.proj(attended))

    def extra_repr(self) -> str:
        return f"pos_on_values={self.pos_on_values}"
