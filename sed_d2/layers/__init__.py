"""Shared building blocks (pure PyTorch; no detectron2, no CLIP).

Class-batched maps are ``(B, T, C, H, W)`` (see :mod:`.cost_volume`).
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
from .conv3x3 import conv3x3_no_bias
from .convnext_block import ConvNeXtBlock, convnext_block_forward
from .cost_volume import CostEmbedding, CostVolume, cosine_cost_volume
from .fused_mlp import fused_layer_norm_mlp, fused_layer_norm_mlp_applies, layer_norm_mlp_reference
from .linear_attention import LinearAttention, MultiHeadLinearAttention, linear_attention
from .kernels import depthwise_conv2d, normalize_rows, single_output_conv2d
from .norms import (
    fold_layer_norm_into_linear,
    group_norm,
    layer_norm,
    layer_norm_linear,
    normalize_last_dim,
)
from .upsampling import (
    Conv2dReLU,
    ConvTranspose2dReLU,
    DoubleConv,
    SkipFusion,
    bilinear_resize,
    bilinear_resize_matrix,
    conv_transpose_2x2,
)

__all__ = [
    "ClassLogitHead",
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
    "bilinear_resize",
    "bilinear_resize_matrix",
    "channels_last_class_maps",
    "conv3x3_no_bias",
    "conv_transpose_2x2",
    "convnext_block_forward",
    "cosine_cost_volume",
    "depthwise_conv2d",
    "empty_class_maps",
    "fold_layer_norm_into_linear",
    "fused_layer_norm_mlp",
    "fused_layer_norm_mlp_applies",
    "group_norm",
    "in_class_chunks",
    "layer_norm",
    "layer_norm_linear",
    "layer_norm_mlp_reference",
    "linear_attention",
    "normalize_last_dim",
    "normalize_rows",
    "scatter_classes",
    "single_output_conv2d",
    "top_k_union",
    "top_n_classes",
]
