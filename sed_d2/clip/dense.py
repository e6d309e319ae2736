"""Dense (per-pixel) image features from an unmodified open_clip vision tower.

The official SED code patches open_clip's ``TimmModel.forward`` to return the ConvNeXt
stage outputs plus the CLIP image-projection head applied at every pixel of the last
stage. Here the same computation is written around the stock open_clip / timm modules,
so the parameter names (and hence checkpoints) stay those of upstream open_clip.

ConvNeXt towers (open_clip ``TimmModel`` around a timm ``ConvNeXt``) are supported now.
ViT towers (intermediate layers, dense last layer, position-embedding resize) will get
their own ``vit_*`` functions in this module; ``convnext_dense_features`` refuses them
with a TypeError instead of guessing.
"""

from __future__ import annotations

import torch
from open_clip.timm_model import TimmModel
from timm.models.convnext import ConvNeXt
from torch import nn

__all__ = [
    "DENSE_FEATURE_NAMES",
    "convnext_dense_features",
    "dense_feature_channels",
    "dense_feature_strides",
]

# Keys of the dicts returned below, in increasing stride order.
DENSE_FEATURE_NAMES = ("res2", "res3", "res4", "res5", "clip_vis_dense")
_STAGE_NAMES = DENSE_FEATURE_NAMES[:4]


def convnext_dense_features(visual: nn.Module, images: torch.Tensor) -> dict[str, torch.Tensor]:
    """ConvNeXt stage outputs and the dense CLIP embedding of a batch of images.

    Args:
        visual: ``clip_model.visual`` of an open_clip ConvNeXt model (a ``TimmModel``
            whose ``trunk`` is a timm ``ConvNeXt``).
        images: (B, 3, H, W), CLIP-normalised, H and W ideally multiples of 32.

    Returns:
        A dict with, for C_i the stage widths and D the CLIP embedding size:

        - ``res2``: (B, C_0, H/4, W/4), output of ``trunk.stem`` then ``trunk.stages[0]``.
        - ``res3``: (B, C_1, H/8, W/8), ``res4``: (B, C_2, H/16, W/16),
          ``res5``: (B, C_3, H/32, W/32): outputs of ``trunk.stages[1..3]``.
        - ``clip_vis_dense``: (B, D, H/32, W/32): the CLIP image head (``trunk.head.norm``
          then open_clip's projection ``visual.head``) applied to every pixel of res5.
          For a 1x1 res5 it equals the pooled ``visual(images)`` embedding.

    Every output is differentiable with respect to the tower's parameters.
    """
    trunk = _convnext_trunk(visual)
    x = trunk.stem(images)
    features: dict[str, torch.Tensor] = {}
    for name, stage in zip(_STAGE_NAMES, trunk.stages):
        x = stage(x)
        # Stage outputs may carry channels-last strides (the blocks permute); consumers
        # are free to .view() them, as in the official code, so hand out contiguous ones.
        features[name] = x.contiguous()
    # norm_pre sits between the stages and the head in timm's ConvNeXt (Identity for the
    # CLIP ConvNeXts); the official code applies it to the head's input only, as here.
    features["clip_vis_dense"] = _per_pixel_clip_head(visual, trunk.norm_pre(x))
    return features


def dense_feature_channels(visual: nn.Module) -> dict[str, int]:
    """Channel count of each output of ``convnext_dense_features``, read off the modules.

    E.g. ``convnext_base_w_320``: res2..res5 = 128/256/512/1024, clip_vis_dense = 640.
    Works on a model built on the ``meta`` device.
    """
    trunk = _convnext_trunk(visual)
    stage_channels = [info["num_chs"] for info in trunk.feature_info]
    channels = dict(zip(_STAGE_NAMES, stage_channels))
    channels["clip_vis_dense"] = _per_pixel_head_out_channels(visual, stage_channels[-1])
    return channels


def dense_feature_strides(visual: nn.Module) -> dict[str, int]:
    """Stride (input pixels per feature pixel) of each output of ``convnext_dense_features``."""
    trunk = _convnext_trunk(visual)
    strides = dict(zip(_STAGE_NAMES, (info["reduction"] for info in trunk.feature_info)))
    strides["clip_vis_dense"] = strides["res5"]  # the head works pixel by pixel on res5
    return strides


# ---------------------------------------------------------------------------------------


def _convnext_trunk(visual: nn.Module) -> ConvNeXt:
    """Return ``visual.trunk`` after checking that the dense ConvNeXt path applies."""
    if not isinstance(visual, TimmModel) or not isinstance(getattr(visual, "trunk", None), ConvNeXt):
        hint = " (pass clip_model.visual, not the whole CLIP model)" if hasattr(visual, "visual") else ""
        raise TypeError(
            "convnext_dense_features needs an open_clip TimmModel wrapping a timm ConvNeXt trunk, "
            f"got {type(visual).__name__}{hint}. ViT towers are not supported by this function."
        )
    if "pool" in visual.head._modules:
        # timm_pool abs_attn/rot_attn: the projection is an attention pool over all
        # pixels, which has no per-pixel counterpart.
        raise TypeError(
            f"The open_clip head of this tower pools with attention ({type(visual.head.pool).__name__}); "
            "it cannot be applied per pixel"
        )
    if len(visual.trunk.stages) != len(_STAGE_NAMES):
        raise TypeError(f"Expected a 4-stage ConvNeXt, got {len(visual.trunk.stages)} stages")
    return visual.trunk


def _per_pixel_clip_head(visual: TimmModel, res5: torch.Tensor) -> torch.Tensor:
    """Apply the CLIP image head to each pixel of res5: (B, C, h, w) -> (B, D, h, w).

    open_clip's pooled path is ``trunk.head`` (global pool, LayerNorm2d, flatten,
    pre_logits, dropout, fc) then ``visual.head`` (dropout + linear, or an MLP). Dropping
    only the global pool and running the rest on every pixel is what the official code
    does (it reshapes res5 to (B*h*w, C, 1, 1) so that pooling is the identity). Here the
    LayerNorm2d runs on the map directly (it normalises each pixel over channels) and the
    remaining layers, which all act on the last dimension, run channels-last.
    """
    trunk_head = visual.trunk.head
    x = _module_or_identity(trunk_head, "norm")(res5)
    x = x.permute(0, 2, 3, 1)  # (B, h, w, C)
    for name in ("pre_logits", "drop", "fc"):
        x = _module_or_identity(trunk_head, name)(x)
    x = visual.head(x)  # (B, h, w, D)
    return x.permute(0, 3, 1, 2).contiguous()


def _module_or_identity(parent: nn.Module, name: str) -> nn.Module:
    # timm's NormMlpClassifierHead has all of norm/pre_logits/drop/fc; its plain
    # ClassifierHead (ConvNeXt with head_norm_first) lacks norm and pre_logits.
    module = getattr(parent, name, None)
    return module if isinstance(module, nn.Module) else nn.Identity()


def _per_pixel_head_out_channels(visual: TimmModel, in_channels: int) -> int:
    """Output width of ``_per_pixel_clip_head``: the last Linear on its path, if any."""
    channels = in_channels
    trunk_head = visual.trunk.head
    path = [_module_or_identity(trunk_head, name) for name in ("pre_logits", "fc")] + [visual.head]
    for module in path:
        for layer in module.modules():
            if isinstance(layer, nn.Linear):
                channels = layer.out_features
    return channels
