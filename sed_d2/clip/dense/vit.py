"""Dense (per-patch) features of an unmodified open_clip ViT image tower, as CAT-Seg computes them.

The official CAT-Seg code patches a vendored OpenAI CLIP (``forward_dense``,
``resized_pos_embed``, forward hooks on the blocks). Here the same computation is written
around the stock open_clip ``VisionTransformer`` (batch-first, open_clip 3.3), so the
parameter names and checkpoints stay upstream open_clip's:

1. ``conv1`` patches, flattened row-major, the class token prepended, plus the positional
   embedding. When the patch grid differs from the model's own (ViT-B/16 at 384: 24x24
   instead of 14x14), the patch part of the embedding is resized on every forward with
   plain bicubic interpolation (``align_corners=False``, no antialias, as the official
   ``resized_pos_embed``; open_clip's ``resize_pos_embed`` antialiases, a different
   kernel), the class position kept. The parameter keeps its native shape.
2. ``ln_pre``, then every block but the last, unchanged. The outputs of the blocks listed
   in ``guidance_layers`` (0-based) are the guidance taps: the raw residual stream after
   the block (no norm, no projection), class token dropped (official hooks on
   ``resblocks[i]``).
3. The last block runs CAT-Seg's value path (MaskCLIP style): ``v = out_proj(W_v ln_1(x) +
   b_v)`` for every token, plus the *class token of the block input* broadcast to every
   token (the token's own residual is not used), then the MLP residual
   ``v + mlp(ln_2(v))``. No attention is computed, so the block's q and k get no gradient.
4. ``ln_post`` and ``proj`` on every token.

API (used by the CAT-Seg family)::

    vit_dense_features(visual, images, guidance_layers=(3, 7), *, cls="dense") -> {
        "clip_vis_dense": (B, C, h, w)   projected dense patch tokens (step 4),
        "cls":            (B, C)         the class token (see ``cls``),
        "guidance":       [(B, W, h, w), ...] one per entry of guidance_layers, in that order,
    }

with ``C`` the CLIP embedding size (``visual.output_dim``), ``W`` the tower width and
``(h, w) = (H, W_img) / patch``. :func:`vit_dense_feature_channels` and
:func:`vit_dense_feature_strides` read the sizes off the modules. Official taps: ViT-B/16
(3, 7), ViT-L/14 (7, 15).
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from open_clip.transformer import ResidualAttentionBlock, VisionTransformer
from torch import nn
from torch.utils.checkpoint import checkpoint

from ...ops import derived_from_parameters

__all__ = [
    "VIT_CLS_SOURCES",
    "resized_positional_embedding",
    "vit_dense_feature_channels",
    "vit_dense_feature_strides",
    "vit_dense_features",
]

# Where ``vit_dense_features(..., cls=...)`` takes the class token from.
VIT_CLS_SOURCES = ("dense", "attention")


def vit_dense_features(
    visual: nn.Module,
    images: torch.Tensor,
    guidance_layers: Sequence[int] = (3, 7),
    *,
    cls: str = "dense",
    attention: bool = False,
) -> dict[str, torch.Tensor | list[torch.Tensor]]:
    """CAT-Seg's dense CLIP features of a batch of images (see the module docstring).

    Args:
        visual: ``clip_model.visual`` of an open_clip ViT (``VisionTransformer`` with the
            default blocks, class-token pooling, no attention pooler).
        images: (B, 3, H, W), CLIP-normalised; H and W multiples of the patch size give
            every pixel a patch (``conv1`` drops the remainder, as the official code).
        guidance_layers: 0-based indices of the blocks whose outputs are tapped; any of
            the blocks before the last (the last one runs the value path instead).
        cls: ``"dense"``: the class token of the value path, after ``ln_post`` and
            ``proj`` (what the official ``encode_image(dense=True)`` returns at index 0;
            free). ``"attention"``: CLIP's image embedding, the last block run normally
            for the class token only (equals ``visual(images)`` at the model's own size;
            costs the last block's keys and one query).
        attention: also return ``"attention"`` ``(B, h*w, h, w)``: the last block's
            attention probabilities ``softmax(q k^T / sqrt(d))`` of the standard path,
            averaged over heads, class token row and column dropped; channel = key patch,
            location = query patch (DCP-CLIP's ``A_CLIP``). Costs the last block's q and k.

    Returns:
        ``{"clip_vis_dense": (B, C, h, w), "cls": (B, C), "guidance": [(B, W, h, w)]}``,
        contiguous, differentiable with respect to the tower's parameters (nothing is
        detached, as in the official code).
    """
    blocks = _checked_blocks(visual)
    if cls not in VIT_CLS_SOURCES:
        raise ValueError(f"cls must be one of {VIT_CLS_SOURCES}, got {cls!r}")
    taps = _checked_guidance_layers(guidance_layers, len(blocks))

    patches = visual.conv1(images)  # (B, W, h, w)
    batch, width, grid_h, grid_w = patches.shape
    x = patches.flatten(2).transpose(1, 2)  # (B, h*w, W), row-major as the official code
    class_token = visual.class_embedding.to(x.dtype).view(1, 1, width).expand(batch, -1, -1)
    x = torch.cat([class_token, x], dim=1)
    x = x + resized_positional_embedding(visual, (grid_h, grid_w)).to(x.dtype)
    x = visual.ln_pre(x)

    tapped: dict[int, torch.Tensor] = {}
    run_checkpointed = visual.transformer.grad_checkpointing and torch.is_grad_enabled()
    for index, block in enumerate(blocks[:-1]):
        x = checkpoint(block, x, use_reentrant=False) if run_checkpointed else block(x)
        if index in taps:
            tapped[index] = _tokens_to_map(x[:, 1:], grid_h, grid_w)

    last = blocks[-1]
    normed = last.ln_1(x)
    values = _in_projection(last, normed, 2)  # (B, 1 + h*w, W), before out_proj
    dense = last.ls_1(last.attn.out_proj(values)) + x[:, :1]
    dense = dense + last.ls_2(last.mlp(last.ln_2(dense)))
    dense = visual.ln_post(dense) @ visual.proj  # (B, 1 + h*w, C)

    if cls == "dense":
        class_embedding = dense[:, 0]
    else:
        class_embedding = _attention_class_token(visual, last, x, normed, values)
    features = {
        "clip_vis_dense": _tokens_to_map(dense[:, 1:], grid_h, grid_w),
        "cls": class_embedding.contiguous(),
        "guidance": [tapped[index] for index in taps],
    }
    if attention:
        features["attention"] = _patch_attention(last, normed, grid_h, grid_w)
    return features


def resized_positional_embedding(visual: nn.Module, grid_size: tuple[int, int]) -> torch.Tensor:
    """``visual.positional_embedding`` (1 + gh*gw, W) for a patch grid of ``grid_size``.

    The model's own grid returns the parameter itself. Any other grid resizes the patch
    part with ``F.interpolate(mode="bicubic", align_corners=False)`` (no antialias) and
    keeps the class position, as CAT-Seg's ``resized_pos_embed``. Without autograd the
    result is cached until the parameter changes (``derived_from_parameters``); with a
    trainable embedding under autograd it is computed afresh, differentiably.
    """
    embedding = visual.positional_embedding
    grid_size = (int(grid_size[0]), int(grid_size[1]))
    native = tuple(visual.grid_size)
    if grid_size == native:
        return embedding
    if embedding.requires_grad and torch.is_grad_enabled():
        return _resize_positional_embedding(embedding, native, grid_size)
    (resized,) = derived_from_parameters(
        visual,
        f"positional_embedding_{grid_size[0]}x{grid_size[1]}",
        (embedding,),
        lambda: (_resize_positional_embedding(embedding, native, grid_size),),
    )
    return resized


def vit_dense_feature_channels(visual: nn.Module) -> dict[str, int]:
    """Channels of the outputs of :func:`vit_dense_features`: ``clip_vis_dense`` and
    ``cls`` the CLIP embedding size, ``guidance`` the tower width (e.g. ViT-B/16:
    512 / 512 / 768). Works on a model built on the ``meta`` device."""
    _checked_blocks(visual)
    embedding_size = visual.proj.shape[1]
    return {"clip_vis_dense": embedding_size, "cls": embedding_size, "guidance": visual.transformer.width}


def vit_dense_feature_strides(visual: nn.Module) -> dict[str, int]:
    """Input pixels per feature pixel of the maps of :func:`vit_dense_features` (the
    patch size; both maps live on the patch grid)."""
    _checked_blocks(visual)
    patch_h, patch_w = visual.patch_size
    if patch_h != patch_w:
        raise ValueError(f"non-square patches {visual.patch_size} have no single stride")
    return {"clip_vis_dense": patch_h, "guidance": patch_h}


# ---------------------------------------------------------------------------------------


def _checked_blocks(visual: nn.Module) -> nn.ModuleList:
    """``visual.transformer.resblocks`` after checking that CAT-Seg's dense path applies."""
    if not isinstance(visual, VisionTransformer):
        hint = " (pass clip_model.visual, not the whole CLIP model)" if hasattr(visual, "visual") else ""
        raise TypeError(f"vit_dense_features needs an open_clip VisionTransformer, got {type(visual).__name__}{hint}")
    if visual.attn_pool is not None or visual.pool_type != "tok" or visual.final_ln_after_pool:
        # The dense path applies ln_post and proj per token, which is the class-token
        # pooling head; an attention pooler or average pooling has no per-token twin.
        raise TypeError("vit_dense_features needs a ViT pooled by its class token (pool_type 'tok', no attn_pool)")
    if not isinstance(visual.patch_dropout, nn.Identity):
        raise TypeError("vit_dense_features needs every patch token: build the model without patch_dropout")
    if visual.proj is None:
        raise TypeError("vit_dense_features needs the tower's output projection (visual.proj is None)")
    blocks = visual.transformer.resblocks
    custom = [type(block).__name__ for block in blocks if type(block) is not ResidualAttentionBlock]
    if custom:
        # The value path reads the fused nn.MultiheadAttention projection of the default block.
        raise TypeError(f"vit_dense_features needs open_clip's default ResidualAttentionBlock, got {custom[0]}")
    return blocks


def _checked_guidance_layers(guidance_layers: Sequence[int], num_blocks: int) -> tuple[int, ...]:
    taps = tuple(int(index) for index in guidance_layers)
    wrong = [index for index in taps if not 0 <= index < num_blocks - 1]
    if wrong:
        raise ValueError(
            f"guidance_layers {wrong} out of range: taps are 0-based outputs of blocks 0..{num_blocks - 2} "
            f"(the last of the {num_blocks} blocks runs the dense value path)"
        )
    if len(set(taps)) != len(taps):
        raise ValueError(f"guidance_layers has repeated entries: {taps}")
    return taps


def _tokens_to_map(tokens: torch.Tensor, grid_h: int, grid_w: int) -> torch.Tensor:
    """(B, h*w, D) row-major tokens -> contiguous (B, D, h, w)."""
    return tokens.transpose(1, 2).reshape(tokens.shape[0], tokens.shape[2], grid_h, grid_w).contiguous()


def _in_projection(block: ResidualAttentionBlock, x: torch.Tensor, part: int) -> torch.Tensor:
    """q (``part`` 0), k (1) or v (2) of the block's fused input projection."""
    attention = block.attn
    width = attention.embed_dim
    rows = slice(part * width, (part + 1) * width)
    bias = None if attention.in_proj_bias is None else attention.in_proj_bias[rows]
    return F.linear(x, attention.in_proj_weight[rows], bias)


def _attention_class_token(
    visual: VisionTransformer,
    block: ResidualAttentionBlock,
    x: torch.Tensor,
    normed: torch.Tensor,
    values: torch.Tensor,
) -> torch.Tensor:
    """The last block run normally for the class token only, then ln_post and proj:
    CLIP's own image embedding (B, C)."""
    attention = block.attn
    batch, tokens, width = values.shape
    heads = attention.num_heads

    def split_heads(t: torch.Tensor) -> torch.Tensor:
        return t.view(batch, t.shape[1], heads, width // heads).transpose(1, 2)

    query = split_heads(_in_projection(block, normed[:, :1], 0))
    keys = split_heads(_in_projection(block, normed, 1))
    mixed = F.scaled_dot_product_attention(query, keys, split_heads(values))  # (B, heads, 1, d)
    mixed = attention.out_proj(mixed.transpose(1, 2).reshape(batch, 1, width))
    token = x[:, :1] + block.ls_1(mixed)
    token = token + block.ls_2(block.mlp(block.ln_2(token)))
    return visual.ln_post(token[:, 0]) @ visual.proj


def _patch_attention(block: ResidualAttentionBlock, normed: torch.Tensor, grid_h: int, grid_w: int) -> torch.Tensor:
    """Head-averaged attention probabilities among the patch tokens of ``block``'s
    standard path: ``(B, h*w keys, h, w queries)``."""
    attention = block.attn
    batch, tokens, width = normed.shape
    heads = attention.num_heads

    def split_heads(t: torch.Tensor) -> torch.Tensor:
        return t.view(batch, tokens, heads, width // heads).transpose(1, 2)

    query = split_heads(_in_projection(block, normed, 0))
    keys = split_heads(_in_projection(block, normed, 1))
    scores = (query * (width // heads) ** -0.5) @ keys.transpose(-2, -1)  # (B, heads, 1+N, 1+N)
    probabilities = scores.softmax(dim=-1).mean(dim=1)[:, 1:, 1:]  # (B, N queries, N keys)
    return probabilities.transpose(1, 2).reshape(batch, tokens - 1, grid_h, grid_w).contiguous()


def _resize_positional_embedding(
    embedding: torch.Tensor, native: tuple[int, int], grid_size: tuple[int, int]
) -> torch.Tensor:
    width = embedding.shape[1]
    patch_part = embedding[1:].reshape(1, native[0], native[1], width).permute(0, 3, 1, 2)
    resized = F.interpolate(patch_part, size=grid_size, mode="bicubic", align_corners=False, antialias=False)
    return torch.cat([embedding[:1], resized.reshape(width, -1).T], dim=0)
