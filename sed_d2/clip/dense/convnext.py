"""Dense (per-pixel) image features from an unmodified open_clip ConvNeXt tower (SED).

The official SED code patches open_clip's ``TimmModel.forward`` to return the ConvNeXt
stage outputs plus the CLIP image-projection head applied at every pixel of the last
stage. Here the same computation is written around the stock open_clip / timm modules,
so the parameter names (and hence checkpoints) stay those of upstream open_clip.

Fast path: where it is exactly timm's computation, the trunk runs channels-last with
every block through the decoder's ConvNeXt block (:func:`sed_d2.layers.convnext_block_forward`:
Triton depthwise kernel and one-pass LayerNorm on CUDA, no float32 round trips under bf16
autocast). It issues more small ops than timm's modules, so it pays where the GPU rather
than the kernel launches is the bottleneck (training batches); ``fast=False`` runs timm's
modules.

ConvNeXt towers only (open_clip ``TimmModel`` around a timm ``ConvNeXt``); ViT towers have
their own functions in :mod:`sed_d2.clip.dense.vit`, and ``convnext_dense_features``
refuses them with a TypeError instead of guessing.
"""

from __future__ import annotations

import torch
from open_clip.timm_model import TimmModel
from timm.layers import GELU, DropPath, GELUTanh, LayerNorm, LayerNorm2d
from timm.layers import Mlp as TimmMlp
from timm.models.convnext import ConvNeXt, ConvNeXtBlock, ConvNeXtStage
from torch import nn

from ...layers import convnext_block_forward, layer_norm

__all__ = [
    "CONVNEXT_FEATURE_NAMES",
    "convnext_dense_feature_channels",
    "convnext_dense_feature_strides",
    "convnext_dense_features",
    "convnext_fast_path_applies",
    "convnext_stage",
    "convnext_stem",
]

# Keys of the dicts returned below, in increasing stride order.
CONVNEXT_FEATURE_NAMES = ("res2", "res3", "res4", "res5", "clip_vis_dense")
_STAGE_NAMES = CONVNEXT_FEATURE_NAMES[:4]


def convnext_dense_features(
    visual: nn.Module, images: torch.Tensor, *, fast: bool = True
) -> dict[str, torch.Tensor]:
    """ConvNeXt stage outputs and the dense CLIP embedding of a batch of images.

    Args:
        visual: ``clip_model.visual`` of an open_clip ConvNeXt model (a ``TimmModel``
            whose ``trunk`` is a timm ``ConvNeXt``).
        images: (B, 3, H, W), CLIP-normalised, H and W ideally multiples of 32.
        fast: run the trunk through the shared fast ConvNeXt block
            (:func:`sed_d2.layers.convnext_block_forward`, channels-last) where that is
            exactly timm's computation (:func:`convnext_fast_path_applies`); otherwise, or
            with ``False``, through timm's own modules. In float32 both agree to rounding;
            under bf16 autocast the fast path keeps its activations (the residual stream
            included) in bf16, timm's modules promote to float32 after every LayerNorm.

    Returns:
        A dict with, for C_i the stage widths and D the CLIP embedding size:

        - ``res2``: (B, C_0, H/4, W/4), output of ``trunk.stem`` then ``trunk.stages[0]``.
        - ``res3``: (B, C_1, H/8, W/8), ``res4``: (B, C_2, H/16, W/16),
          ``res5``: (B, C_3, H/32, W/32): outputs of ``trunk.stages[1..3]``.
        - ``clip_vis_dense``: (B, D, H/32, W/32): the CLIP image head (``trunk.head.norm``
          then open_clip's projection ``visual.head``) applied to every pixel of res5.
          For a 1x1 res5 it equals the pooled ``visual(images)`` embedding.

    All outputs are contiguous (NCHW). Every output is differentiable with respect to
    the tower's parameters.
    """
    trunk = _convnext_trunk(visual)
    if fast and _fast_path_applies(trunk):
        stage_outputs = _fast_stage_outputs(trunk, images)
    else:
        stage_outputs = _stock_stage_outputs(trunk, images)
    # Stage outputs may carry channels-last strides; consumers are free to .view() them,
    # as in the official code, so hand out contiguous ones.
    features = {name: x.contiguous() for name, x in zip(_STAGE_NAMES, stage_outputs)}
    # norm_pre sits between the stages and the head in timm's ConvNeXt (Identity for the
    # CLIP ConvNeXts); the official code applies it to the head's input only, as here.
    features["clip_vis_dense"] = _per_pixel_clip_head(visual, trunk.norm_pre(stage_outputs[-1]))
    return features


def convnext_fast_path_applies(visual: nn.Module) -> bool:
    """Whether :func:`convnext_dense_features` runs the trunk of ``visual`` on the fast
    path, i.e. whether that is exactly timm's forward in the modules' current state
    (train / eval mode included)."""
    return _fast_path_applies(_convnext_trunk(visual))


def convnext_dense_feature_channels(visual: nn.Module) -> dict[str, int]:
    """Channel count of each output of ``convnext_dense_features``, read off the modules.

    E.g. ``convnext_base_w_320``: res2..res5 = 128/256/512/1024, clip_vis_dense = 640.
    Works on a model built on the ``meta`` device.
    """
    trunk = _convnext_trunk(visual)
    stage_channels = [info["num_chs"] for info in trunk.feature_info]
    channels = dict(zip(_STAGE_NAMES, stage_channels))
    channels["clip_vis_dense"] = _per_pixel_head_out_channels(visual, stage_channels[-1])
    return channels


def convnext_dense_feature_strides(visual: nn.Module) -> dict[str, int]:
    """Stride (input pixels per feature pixel) of each output of ``convnext_dense_features``."""
    trunk = _convnext_trunk(visual)
    strides = dict(zip(_STAGE_NAMES, (info["reduction"] for info in trunk.feature_info)))
    strides["clip_vis_dense"] = strides["res5"]  # the head works pixel by pixel on res5
    return strides


def convnext_stem(trunk: ConvNeXt, images: torch.Tensor, *, fast: bool = True) -> torch.Tensor:
    """``trunk.stem(images)`` of a timm ``ConvNeXt`` (standalone or an open_clip tower's
    ``trunk``), on the fast path of :func:`convnext_dense_features` when ``fast`` and it
    applies (then channels-last). With :func:`convnext_stage`, for callers that change the
    features between stages (CLIP-HBD's fusion of CLIP layers)."""
    if fast and _fast_path_applies(trunk):
        return _fast_stem(trunk, images)
    return trunk.stem(images)


def convnext_stage(trunk: ConvNeXt, index: int, x: torch.Tensor, *, fast: bool = True) -> torch.Tensor:
    """``trunk.stages[index](x)`` (its downsampling included), on the fast path when ``fast``
    and it applies (see :func:`convnext_stem`)."""
    stage = trunk.stages[index]
    if fast and _fast_path_applies(trunk):
        return _fast_stage(stage, x)
    return stage(x)


# ---------------------------------------------------------------------------------------


def _convnext_trunk(visual: nn.Module) -> ConvNeXt:
    """Return ``visual.trunk`` after checking that the dense ConvNeXt path applies."""
    if not isinstance(visual, TimmModel) or not isinstance(getattr(visual, "trunk", None), ConvNeXt):
        hint = " (pass clip_model.visual, not the whole CLIP model)" if hasattr(visual, "visual") else ""
        raise TypeError(
            "convnext_dense_features needs an open_clip TimmModel wrapping a timm ConvNeXt trunk, "
            f"got {type(visual).__name__}{hint}. ViT towers: sed_d2.clip.vit_dense_features."
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


def _stock_stage_outputs(trunk: ConvNeXt, images: torch.Tensor) -> list[torch.Tensor]:
    x = trunk.stem(images)
    outputs = []
    for stage in trunk.stages:
        x = stage(x)
        outputs.append(x)
    return outputs


def _fast_stage_outputs(trunk: ConvNeXt, images: torch.Tensor) -> list[torch.Tensor]:
    """timm's stem and stages on channels-last maps, every block through
    :func:`convnext_block_forward`. Requires :func:`_fast_path_applies`."""
    x = _fast_stem(trunk, images)
    outputs = []
    for stage in trunk.stages:
        x = _fast_stage(stage, x)
        outputs.append(x)
    return outputs


def _fast_stem(trunk: ConvNeXt, images: torch.Tensor) -> torch.Tensor:
    stem_conv, stem_norm = trunk.stem
    return _layer_norm_2d(_channels_last(stem_conv(_channels_last(images))), stem_norm)


def _fast_stage(stage: ConvNeXtStage, x: torch.Tensor) -> torch.Tensor:
    if not isinstance(stage.downsample, nn.Identity):
        norm, conv = stage.downsample
        x = _channels_last(conv(_layer_norm_2d(x, norm)))
    for block in stage.blocks:
        mlp = block.mlp
        approximate = _gelu_approximate(mlp.act)
        x = convnext_block_forward(x, block.conv_dw, block.norm, mlp.fc1, mlp.fc2, block.gamma, approximate)
    return x


def _channels_last(x: torch.Tensor) -> torch.Tensor:
    return x.contiguous(memory_format=torch.channels_last)  # no copy when it already is


def _layer_norm_2d(x: torch.Tensor, norm: nn.LayerNorm) -> torch.Tensor:
    """timm's ``LayerNorm2d`` (a LayerNorm over channels at every pixel); free permutes on
    a channels-last ``x``, and the result keeps ``x``'s dtype under autocast."""
    return layer_norm(x.permute(0, 2, 3, 1), norm).permute(0, 3, 1, 2)


def _fast_path_applies(trunk: ConvNeXt) -> bool:
    """The fast path computes exactly what timm's modules would: the checks follow the
    module forwards of timm's ``ConvNeXt`` (patch stem, LayerNorm, linear MLP, no dropout,
    drop-path or gradient checkpointing in effect). Exact types: a subclass could change
    a forward."""
    if getattr(trunk, "grad_checkpointing", False):
        return False
    stem = list(trunk.stem)
    if len(stem) != 2 or type(stem[0]) is not nn.Conv2d or type(stem[1]) is not LayerNorm2d:
        return False
    for stage in trunk.stages:
        if type(stage) is not ConvNeXtStage or stage.grad_checkpointing:
            return False
        downsample = stage.downsample
        if not isinstance(downsample, nn.Identity) and not (
            type(downsample) is nn.Sequential
            and len(downsample) == 2
            and type(downsample[0]) is LayerNorm2d
            and type(downsample[1]) is nn.Conv2d
        ):
            return False
        if not all(_fast_block_applies(block) for block in stage.blocks):
            return False
    return True


def _fast_block_applies(block: nn.Module) -> bool:
    if type(block) is not ConvNeXtBlock or block.use_conv_mlp:
        return False
    conv, mlp = block.conv_dw, block.mlp
    kernel = conv.kernel_size[0]
    same_depthwise = (
        type(conv) is nn.Conv2d
        and conv.kernel_size == (kernel, kernel)
        and kernel % 2 == 1
        and conv.padding == (kernel // 2, kernel // 2)
        and conv.stride == (1, 1)
        and conv.dilation == (1, 1)
        and conv.padding_mode == "zeros"
        and conv.groups == conv.in_channels == conv.out_channels
    )
    return (
        same_depthwise
        and type(block.norm) in (LayerNorm, nn.LayerNorm)
        and isinstance(block.shortcut, nn.Identity)
        and _inactive(block.drop_path)
        and type(mlp) is TimmMlp
        and type(mlp.fc1) is nn.Linear
        and type(mlp.fc2) is nn.Linear
        and isinstance(mlp.norm, nn.Identity)
        and _inactive(mlp.drop1)
        and _inactive(mlp.drop2)
        and _gelu_approximate(mlp.act) is not None
    )


def _inactive(module: nn.Module) -> bool:
    """Whether a dropout / drop-path module is the identity in its current mode."""
    if isinstance(module, nn.Identity):
        return True
    if type(module) is nn.Dropout:
        return module.p == 0 or not module.training
    if type(module) is DropPath:
        return module.drop_prob == 0 or not module.training
    return False


def _gelu_approximate(act: nn.Module) -> str | None:
    """``F.gelu``'s ``approximate`` for timm's / PyTorch's GELU modules, else None."""
    if type(act) is GELU:
        return "none"
    if type(act) is GELUTanh:
        return "tanh"
    if type(act) is nn.GELU:
        return act.approximate
    return None


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
