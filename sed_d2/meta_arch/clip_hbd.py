"""CLIP-HBD as a detectron2 meta-architecture (registered name ``CLIPHBD``)."""
from __future__ import annotations

import os
from typing import Mapping, Sequence

import timm
import torch
from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY
from torch import nn

from ..clip import get_templates
from ..models.clip_hbd import CLIPHBDCriterion, CLIPHBDModel, HBDDecoder
from .base import OpenVocabSegmentor, build_vit_clip
from .catseg import default_guidance_layers

__all__ = ["CLIPHBD", "build_convnext_backbone"]


def build_convnext_backbone(name: str, pretrained: str = "", *, drop_path: float = 0.0) -> nn.Module:
    """A timm ConvNeXt trunk without its classifier head (``head`` is an ``nn.Identity``).

    ``pretrained``: "" (random init), a local state_dict file (a timm checkpoint, optionally
    under "state_dict" / "model"; head keys dropped, the rest loaded strictly), or a timm
    pretrained tag of ``name`` (``"fb_in22k_ft_in1k"`` for ``convnext_base.fb_in22k_ft_in1k``),
    downloaded by timm. A download that cannot happen fails naming the key and the way out.
    """
    if pretrained and not os.path.isfile(pretrained):
        try:
            backbone = timm.create_model(f"{name}.{pretrained}", pretrained=True, num_classes=0, drop_path_rate=drop_path)
        except Exception as e:
            raise RuntimeError(
                f"could not load timm weights '{name}.{pretrained}' (MODEL.OVSEG.BACKBONE_PRETRAINED): "
                f"{type(e).__name__}: {e}. Offline, pass a local state_dict file instead."
            ) from e
    else:
        backbone = timm.create_model(name, pretrained=False, num_classes=0, drop_path_rate=drop_path)
        if pretrained:
            state = torch.load(pretrained, map_location="cpu", weights_only=True)
            for key in ("state_dict", "model"):
                if isinstance(state, dict) and key in state and isinstance(state[key], dict):
                    state = state[key]
            state = {k: v for k, v in state.items() if not k.startswith("head.")}
            backbone.head = nn.Identity()
            backbone.load_state_dict(state, strict=True)
    # the stage outputs are used, never the pooled head (its norm would get no gradient)
    backbone.head = nn.Identity()
    return backbone


@META_ARCH_REGISTRY.register()
class CLIPHBD(OpenVocabSegmentor):
    """CLIP-HBD: CLIP layers fused into a ConvNeXt, a boundary head, and a boundary-gated
    decoder on the CLIP cost volume.

    :paper: Computers 2026, 15(5), 318 (doi 10.3390/computers15050318). The network (tensors
    in, logits and losses out) is ``sed_d2.models.clip_hbd.CLIPHBDModel``, held as
    ``self.model``; scores are a softmax over the vocabulary (the loss is softmax CE + Dice).
    """

    @configurable
    def __init__(self, *, model: CLIPHBDModel, criterion: CLIPHBDCriterion, **kwargs):
        """
        Args:
            model: the CLIP-HBD network.
            criterion: its training losses.
            kwargs: arguments of :class:`OpenVocabSegmentor`.
        """
        super().__init__(**kwargs)
        self.model = model
        self.criterion = criterion

    @classmethod
    def from_config(cls, cfg):
        ret = super().from_config(cfg)
        ovseg, hbd = cfg.MODEL.OVSEG, cfg.MODEL.CLIP_HBD
        # (the ConvNeXt backbone's stochastic depth is MODEL.CLIP_HBD.BACKBONE_DROP_PATH)
        clip_model = build_vit_clip(cfg, "CLIP-HBD")
        backbone = build_convnext_backbone(
            ovseg.BACKBONE_MODEL, ovseg.BACKBONE_PRETRAINED, drop_path=hbd.BACKBONE_DROP_PATH
        )
        stage_channels = [info["num_chs"] for info in backbone.feature_info]
        decoder = HBDDecoder(
            num_templates=len(get_templates(ovseg.PROMPT_TEMPLATES)),
            skip_channels=stage_channels[2::-1],
            hidden_dim=hbd.HIDDEN_DIM,
            decoder_dims=tuple(hbd.DECODER_DIMS),
            skip_dims=tuple(hbd.SKIP_ALIGN_DIMS),
            cost_embed_kernel=hbd.COST_EMBED_KERNEL,
            dwconv_kernel=hbd.DWCONV_KERNEL,
            mlp_ratio=hbd.MLP_RATIO,
            norm=hbd.DECODER_NORM,
            gate_mode=hbd.GATE_MODE,
            attention_per_channel=hbd.BOUNDARY_ATTN_PER_CHANNEL,
            boundary_downsample=hbd.BOUNDARY_DOWNSAMPLE,
            inference_chunk_pixels=hbd.INFERENCE_CHUNK_PIXELS,
        )
        clip_layers: Sequence[int] = tuple(hbd.CLIP_LAYERS) or default_guidance_layers(
            len(clip_model.visual.transformer.resblocks), 3
        )
        clip_mean, clip_std = torch.tensor(ovseg.CLIP_PIXEL_MEAN), torch.tensor(ovseg.CLIP_PIXEL_STD)
        backbone_mean, backbone_std = torch.tensor(hbd.BACKBONE_PIXEL_MEAN), torch.tensor(hbd.BACKBONE_PIXEL_STD)
        model = CLIPHBDModel(
            clip_model,
            backbone,
            decoder,
            clip_layers=clip_layers,
            clip_layer_projection=hbd.CLIP_LAYER_PROJ,
            clip_finetune=ovseg.CLIP_FINETUNE,
            vit_input_size=tuple(hbd.VIT_INPUT_SIZE) or None,
            # (x * clip_std + clip_mean - backbone_mean) / backbone_std as x * scale + shift
            backbone_pixel_scale=(clip_std / backbone_std).tolist(),
            backbone_pixel_shift=((clip_mean - backbone_mean) / backbone_std).tolist(),
            fusion_weight=hbd.FFM_WEIGHT,
            fusion_alpha_init=hbd.FFM_ALPHA_INIT,
            boundary_dim=hbd.BOUNDARY_DIM,
            boundary_deconv_kernel=hbd.BOUNDARY_DECONV_KERNEL,
            boundary_norm=hbd.BOUNDARY_NORM,
            detach_boundary=hbd.DETACH_BOUNDARY,
        )
        criterion = CLIPHBDCriterion(
            ce_weight=hbd.CE_WEIGHT,
            dice_weight=hbd.DICE_WEIGHT,
            dice_classes=hbd.DICE_CLASSES,
            dice_smooth=hbd.DICE_SMOOTH,
            boundary_weight=hbd.BOUNDARY_LOSS_WEIGHT,
            boundary_kernel=hbd.BOUNDARY_KERNEL,
            boundary_ignore_edges=hbd.BOUNDARY_IGNORE_EDGES,
            boundary_weighting=hbd.BOUNDARY_WEIGHTING,
            boundary_pos_weight=hbd.BOUNDARY_POS_WEIGHT,
            boundary_neg_weight=hbd.BOUNDARY_NEG_WEIGHT,
        )
        ret.update(model=model, criterion=criterion)
        return ret

    def forward_train(self, images, text_embeddings, targets):
        return self.criterion(self.model(images, text_embeddings), targets, self.ignore_value)

    def decode(self, features: Mapping[str, torch.Tensor], text_embeddings: torch.Tensor) -> torch.Tensor:
        # Capturable (the base's decode_capturable): class chunks are a Python loop over shapes
        # that depend on the number of classes only.
        return self.model.decode(features, text_embeddings).logits

    def logits_to_scores(self, logits: torch.Tensor) -> torch.Tensor:
        """Softmax over the vocabulary in float32 (the model is trained with softmax CE)."""
        return logits.float().softmax(dim=1)
