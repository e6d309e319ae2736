"""Shared building blocks (pure PyTorch; no detectron2, no CLIP).

Class-batched maps are ``(B, T, C, H, W)`` (see :mod:`.cost_volume`).
"""

from .class_transformer import ClassTransformerLayer, Mlp
from .convnext_block import ConvNeXtBlock
from .cost_volume import CostEmbedding, CostVolume, cosine_cost_volume
from .linear_attention import LinearAttention, MultiHeadLinearAttention, linear_attention
from .upsampling import Conv2dReLU, ConvTranspose2dReLU, DoubleConv, SkipFusion

__all__ = [
    "ClassTransformerLayer",
    "Conv2dReLU",
    "ConvNeXtBlock",
    "ConvTranspose2dReLU",
    "CostEmbedding",
    "CostVolume",
    "DoubleConv",
    "LinearAttention",
    "Mlp",
    "MultiHeadLinearAttention",
    "SkipFusion",
    "cosine_cost_volume",
    "linear_attention",
]
