"""Dense image features of unmodified open_clip image towers, one module per tower family.

- :mod:`.convnext`: ConvNeXt towers (SED): the trunk's stage outputs ``res2..res5`` and
  the CLIP head applied at every pixel of ``res5`` (``clip_vis_dense``).
- :mod:`.vit`: ViT towers (the CAT-Seg family): the value-path dense embedding
  ``clip_vis_dense``, the class token and intermediate-layer ``guidance`` taps, with the
  positional embedding resized every forward.

:func:`dense_features`, :func:`dense_feature_channels` and :func:`dense_feature_strides`
pick the family from the tower's type; the family functions are exported as well.
"""

from __future__ import annotations

from typing import Any

import torch
from open_clip.timm_model import TimmModel
from open_clip.transformer import VisionTransformer
from torch import nn

from .convnext import (
    CONVNEXT_FEATURE_NAMES,
    convnext_dense_feature_channels,
    convnext_dense_feature_strides,
    convnext_dense_features,
    convnext_fast_path_applies,
)
from .vit import (
    VIT_CLS_SOURCES,
    resized_positional_embedding,
    vit_dense_feature_channels,
    vit_dense_feature_strides,
    vit_dense_features,
)

__all__ = [
    "CONVNEXT_FEATURE_NAMES",
    "VIT_CLS_SOURCES",
    "convnext_dense_feature_channels",
    "convnext_dense_feature_strides",
    "convnext_dense_features",
    "convnext_fast_path_applies",
    "dense_feature_channels",
    "dense_feature_strides",
    "dense_features",
    "resized_positional_embedding",
    "vit_dense_feature_channels",
    "vit_dense_feature_strides",
    "vit_dense_features",
]


def dense_features(visual: nn.Module, images: torch.Tensor, **kwargs: Any) -> dict[str, Any]:
    """:func:`convnext_dense_features` or :func:`vit_dense_features` of ``visual``,
    whichever its tower is; ``kwargs`` go to that function."""
    if _is_vit(visual):
        return vit_dense_features(visual, images, **kwargs)
    return convnext_dense_features(visual, images, **kwargs)


def dense_feature_channels(visual: nn.Module) -> dict[str, int]:
    """Channels of each output of :func:`dense_features` for ``visual`` (works on the
    ``meta`` device)."""
    if _is_vit(visual):
        return vit_dense_feature_channels(visual)
    return convnext_dense_feature_channels(visual)


def dense_feature_strides(visual: nn.Module) -> dict[str, int]:
    """Input pixels per feature pixel of each map of :func:`dense_features` for ``visual``."""
    if _is_vit(visual):
        return vit_dense_feature_strides(visual)
    return convnext_dense_feature_strides(visual)


def _is_vit(visual: nn.Module) -> bool:
    if isinstance(visual, VisionTransformer):
        return True
    if isinstance(visual, TimmModel):
        return False  # the ConvNeXt functions check the trunk
    hint = " (pass clip_model.visual, not the whole CLIP model)" if hasattr(visual, "visual") else ""
    raise TypeError(
        f"Dense features exist for open_clip ConvNeXt (TimmModel) and ViT (VisionTransformer) image towers, "
        f"got {type(visual).__name__}{hint}"
    )
