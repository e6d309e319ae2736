"""Shared building blocks: ``nn.Module`` s and functional blocks (no detectron2, no CLIP).

Class-batched maps are ``(B, T, C, H, W)`` (see :mod:`.cost_volume` and :mod:`.class_maps`).
Fast GPU paths are :mod:`sed_d2.ops`' (the blocks call its ops, which pick the Triton kernel
or the PyTorch reference themselves); nothing here imports Triton.

Hooks: blocks built for the fast paths read their submodules' parameters and compute with
them through :mod:`sed_d2.ops` (on either path of an op), so they do not call those
submodules, and hooks registered on the submodules do not fire: ``DoubleConv``'s convolutions
and norms, ``SkipFusion.upsample`` (2x2), ``ConvNeXtBlock``'s layers
(:func:`convnext_block_forward`), ``ClassTransformerLayer``'s norms and ``mlp.fc1`` and, on
its fused inference path, its attention and whole MLP. A module's own hooks always fire, whichever path its
forward takes (e.g. :class:`ClassLogitHead`, whose forward picks the kernel). To observe a
block's computation, hook the block.
"""

from .class_maps import (
    ClassLogitHead,
    channels_last_class_maps,
    empty_class_maps,
    in_class_chunks,
    scatter_classes,
    top_k_union,
    top_n_classes,
)
from .class_transformer import ClassTransformerLayer, Mlp
from .convnext_block import ConvNeXtBlock, convnext_block_forward
from .cost_volume import CostEmbedding, CostVolume, cosine_cost_volume
from .film import FiLM
from .linear_attention import LinearAttention, MultiHeadLinearAttention
from .norms import group_norm, layer_norm, layer_norm_linear
from .pamr import PAMR
from .upsampling import Conv2dReLU, ConvTranspose2dReLU, DoubleConv, SkipFusion

__all__ = [
    "ClassLogitHead",
    "ClassTransformerLayer",
    "Conv2dReLU",
    "ConvNeXtBlock",
    "ConvTranspose2dReLU",
    "CostEmbedding",
    "CostVolume",
    "DoubleConv",
    "FiLM",
    "LinearAttention",
    "Mlp",
    "MultiHeadLinearAttention",
    "PAMR",
    "SkipFusion",
    "channels_last_class_maps",
    "convnext_block_forward",
    "cosine_cost_volume",
    "empty_class_maps",
    "group_norm",
    "in_class_chunks",
    "layer_norm",
    "layer_norm_linear",
    "scatter_classes",
    "top_k_union",
    "top_n_classes",
]
