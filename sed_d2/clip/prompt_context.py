"""Learnable prompt context (CoOp): text embeddings of class names whose first prompt words
are trainable vectors, encoded by the stock open_clip text tower.

* :class:`PromptContext`: the ``(M, width)`` context vectors, initialised from the token
  embeddings of a phrase (``"a photo of a"``);
* :func:`encode_text_with_context`: ``encode_text`` with token positions ``1 .. M``
  replaced by the context;
* :class:`ContextTextModel`: a CLIP stand-in whose ``encode_text`` splices a context, for
  :class:`sed_d2.clip.TextEncoder` (its caching and gradient rules then hold for prompted
  embeddings too: cached per vocabulary while neither the context nor the text tower
  changes, recomputed with gradients while either trains).
"""

from __future__ import annotations

import open_clip
import torch
from open_clip.transformer import text_global_pool
from torch import Tensor, nn

__all__ = ["ContextTextModel", "PromptContext", "encode_text_with_context"]


class PromptContext(nn.Module):
    """``context`` ``(M, width)``: CoOp's learnable words, initialised from the token
    embeddings of the ``M`` tokens of ``init`` read off ``clip_model.token_embedding``
    (on the ``meta`` device: ``N(0, 0.02)``, the shape only)."""

    def __init__(self, clip_model: nn.Module, init: str, model_name: str | None = None) -> None:
        super().__init__()
        tokenizer = open_clip.get_tokenizer(model_name) if model_name else open_clip.get_tokenizer()
        with torch.device("cpu"):  # token ids are read on the host, also inside a meta-device build
            ids = tokenizer([init])[0]
        words = ids[1 : int(ids.argmax())]  # between start- and end-of-text
        if len(words) == 0:
            raise ValueError(f"the prompt init {init!r} has no tokens")
        weight = clip_model.token_embedding.weight
        if weight.device.type == "meta":
            initial = torch.randn(len(words), weight.shape[1], device="meta")
        else:
            initial = weight.detach()[words.to(weight.device)].clone()
        self.context = nn.Parameter(initial)


def encode_text_with_context(clip_model: nn.Module, tokens: Tensor, context: Tensor) -> Tensor:
    """``clip_model.encode_text(tokens)`` (an open_clip ``CLIP``, EOT pooling) with the token
    embeddings at positions ``1 .. M`` replaced by ``context`` ``(M, width)``; not
    normalised. The tokens should hold ``M`` placeholder words there (e.g. the phrase the
    context was initialised from)."""
    cast_dtype = clip_model.transformer.get_cast_dtype()
    x = clip_model.token_embedding(tokens).to(cast_dtype)
    length = context.shape[0]
    x = torch.cat([x[:, :1], context.to(cast_dtype).expand(x.shape[0], -1, -1), x[:, 1 + length :]], dim=1)
    x = x + clip_model.positional_embedding.to(cast_dtype)
    x = clip_model.transformer(x, attn_mask=clip_model.attn_mask)
    x = clip_model.ln_final(x)
    x = text_global_pool(x, tokens, clip_model.text_pool_type, eos_token_id=getattr(clip_model, "text_eos_id", None))
    projection = clip_model.text_projection
    return projection(x) if isinstance(projection, nn.Linear) else x @ projection


class ContextTextModel(nn.Module):
    """What :class:`sed_d2.clip.TextEncoder` needs of a CLIP model, with a context spliced
    in. Not part of any model's state: it refers to the CLIP model and the context that
    their owner registers (``text`` lists both, the parameters the cache watches)."""

    def __init__(self, clip_model: nn.Module, prompt: PromptContext) -> None:
        super().__init__()
        self.text = nn.ModuleList([clip_model, prompt])
        self.context_length = clip_model.context_length

    def encode_text(self, tokens: Tensor) -> Tensor:
        clip_model, prompt = self.text
        return encode_text_with_context(clip_model, tokens, prompt.context)
