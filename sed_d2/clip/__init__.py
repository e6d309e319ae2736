"""Everything about CLIP, built on pip ``open_clip_torch`` (never vendored or patched).

- ``build_clip_model``: an open_clip model by architecture name, weights from an
  open_clip tag or a local file (``build.py``).
- ``dense_features`` / ``dense_feature_channels`` / ``dense_feature_strides``: dense image
  features of either tower family (``dense/``), computed with the stock modules' parameters:
  ``convnext_dense_features``: multi-scale ConvNeXt features and the per-pixel CLIP
  embedding, the trunk's blocks on the decoder's fast ConvNeXt block path where that is
  exact (``dense/convnext.py``); ``vit_dense_features``: CAT-Seg's dense ViT features
  (value-path last block, intermediate-layer taps, per-forward bicubic positional-embedding
  resize) (``dense/vit.py``).
- ``apply_clip_finetune`` / ``keep_frozen_rows``: what of CLIP trains (``"attention"``: the
  q and v rows of the fused attention projections of both towers, k rows kept exactly;
  ``"full"``; ``"frozen"``) (``finetune.py``).
- ``TextEncoder``: vocabulary -> (T, P, C) text embeddings with synonyms and a cache
  (``text.py``); ``get_templates`` / ``IMAGENET_TEMPLATES``: prompt sets (``templates.py``).

Importing this package registers the tiny sed_d2 architectures (``model_configs/``)
with open_clip, so ``open_clip.create_model("sed_d2_tiny_convnext")`` works too
(``sed_d2_tiny_vit_quickgelu`` is the tiny ViT).
"""

from .build import build_clip_model, register_model_configs
from .dense import (
    CONVNEXT_FEATURE_NAMES,
    VIT_CLS_SOURCES,
    convnext_dense_feature_channels,
    convnext_dense_feature_strides,
    convnext_dense_features,
    convnext_fast_path_applies,
    dense_feature_channels,
    dense_feature_strides,
    dense_features,
    resized_positional_embedding,
    vit_dense_feature_channels,
    vit_dense_feature_strides,
    vit_dense_features,
)
from .finetune import CLIP_FINETUNE_MODES, apply_clip_finetune, frozen_rows, keep_frozen_rows
from .templates import (
    IMAGENET_SELECT_TEMPLATES,
    IMAGENET_TEMPLATES,
    SINGLE_TEMPLATE,
    get_templates,
)
from .text import TextCacheInfo, TextEncoder, validate_vocabulary

register_model_configs()

__all__ = [
    "build_clip_model",
    "register_model_configs",
    "CONVNEXT_FEATURE_NAMES",
    "convnext_dense_feature_channels",
    "convnext_dense_feature_strides",
    "convnext_dense_features",
    "convnext_fast_path_applies",
    "dense_feature_channels",
    "dense_feature_strides",
    "dense_features",
    "VIT_CLS_SOURCES",
    "resized_positional_embedding",
    "vit_dense_feature_channels",
    "vit_dense_feature_strides",
    "vit_dense_features",
    "CLIP_FINETUNE_MODES",
    "apply_clip_finetune",
    "frozen_rows",
    "keep_frozen_rows",
    "IMAGENET_TEMPLATES",
    "IMAGENET_SELECT_TEMPLATES",
    "SINGLE_TEMPLATE",
    "get_templates",
    "TextEncoder",
    "TextCacheInfo",
    "validate_vocabulary",
]
