"""CAT-Seg as a detectron2 meta-architecture (registered name ``CATSeg``)."""
from __future__ import annotations

from typing import Mapping, Sequence

import torch
from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY

from ..clip import get_templates
from ..models.catseg import CATSegDecoder, CATSegModel, build_catseg_decoder_for
from .base import OpenVocabSegmentor, build_vit_clip

__all__ = ["CATSeg", "default_guidance_layers"]


def default_guidance_layers(depth: int, stages: int) -> tuple[int, ...]:
    """0-based blocks of a ``depth``-block ViT whose outputs guide ``stages`` decoder
    stages when ``MODEL.CATSEG.GUIDANCE_LAYERS`` is empty: evenly spaced, the outputs of
    the 1-based blocks ``k * depth // (stages + 1)``, ``k = 1 .. stages``. This is the
    official choice of both released models (ViT-B/16, 12 blocks: 3, 7; ViT-L/14, 24
    blocks: 7, 15), which the official code hard-codes per model name; as a rule it also
    fits other depths (the tiny test ViT, 4 blocks: 0, 1)."""
    layers = tuple(k * depth // (stages + 1) - 1 for k in range(1, stages + 1))
    if layers[0] < 0:
        raise ValueError(
            f"a {depth}-block ViT is too shallow for {stages} guidance layers; set MODEL.CATSEG.GUIDANCE_LAYERS"
        )
    return layers


@META_ARCH_REGISTRY.register()
class CATSeg(OpenVocabSegmentor):
    """CAT-Seg: cost aggregation over a fine-tuned CLIP ViT's cosine cost volume.

    :paper: https://arxiv.org/abs/2303.11797 (CVPR 2024). The network itself (tensors in,
    logits and losses out) is ``sed_d2.models.catseg.CATSegModel``, held as ``self.model``
    (official checkpoints convert to ``model.``-prefixed names,
    :mod:`sed_d2.checkpoint.catseg`). The official test protocol (sliding windows plus a
    global view) is the shipped configs' ``TEST.PROTOCOL`` (:mod:`.inference`).
    """

    # The method's name in messages (subclasses: their paper's spelling).
    method_name = "CAT-Seg"

    @configurable
    def __init__(self, *, model: CATSegModel, ignore_as_negative: bool = True, **kwargs):
        """
        Args:
            model: the CAT-Seg network (CLIP ViT + tap upsamplers + decoder).
            ignore_as_negative: ignored pixels count as all-negative BCE targets (official).
            kwargs: arguments of :class:`OpenVocabSegmentor`.
        """
        super().__init__(**kwargs)
        self.model = model
        self.ignore_as_negative = ignore_as_negative

    @classmethod
    def from_config(cls, cfg):
        ret = super().from_config(cfg)
        ovseg, catseg = cfg.MODEL.OVSEG, cfg.MODEL.CATSEG
        clip_model = build_vit_clip(cfg, cls.method_name)
        decoder = cls.build_decoder(
            cfg,
            clip_model,
            num_templates=len(get_templates(ovseg.PROMPT_TEMPLATES)),
            skip_channels=tuple(catseg.SKIP_CHANNELS),
            skip_proj_dims=tuple(catseg.SKIP_PROJ_DIMS),
            decoder_dims=tuple(catseg.DECODER_DIMS),
            hidden_dim=catseg.HIDDEN_DIM,
            cost_embed_kernel=catseg.COST_EMBED_KERNEL,
            num_layers=catseg.NUM_LAYERS,
            num_heads=catseg.NUM_HEADS,
            window_size=catseg.WINDOW_SIZE,
            pooling_size=tuple(catseg.POOLING_SIZE),
            test_pooling_size=tuple(catseg.TEST_POOLING_SIZE),
            pad_len=catseg.PAD_LEN,
            appearance_guidance_dim=catseg.APPEARANCE_GUIDANCE_DIM,
            text_guidance_dim=catseg.TEXT_GUIDANCE_DIM,
        )
        guidance_layers: Sequence[int] = tuple(catseg.GUIDANCE_LAYERS) or default_guidance_layers(
            len(clip_model.visual.transformer.resblocks), len(catseg.SKIP_CHANNELS)
        )
        model = cls.build_network(
            cfg, clip_model, decoder, guidance_layers=guidance_layers, clip_finetune=ovseg.CLIP_FINETUNE
        )
        ret.update(model=model, ignore_as_negative=catseg.IGNORE_AS_NEGATIVE)
        return ret

    @classmethod
    def build_decoder(cls, cfg, clip_model, **kwargs) -> CATSegDecoder:
        """The decoder from the ``MODEL.CATSEG`` arguments ``kwargs`` (those of
        :class:`CATSegDecoder`); a CAT-Seg-family method builds its own subclass here."""
        return build_catseg_decoder_for(clip_model, **kwargs)

    @classmethod
    def build_network(cls, cfg, clip_model, decoder, **kwargs) -> CATSegModel:
        """The network held as ``self.model`` (``kwargs``: ``guidance_layers`` and
        ``clip_finetune`` of :class:`CATSegModel`); a CAT-Seg-family method builds its own."""
        return CATSegModel(clip_model, decoder, **kwargs)

    def forward_train(self, images, text_embeddings, targets):
        output = self.model(images, text_embeddings)
        return self.model.losses(
            output, targets, self.ignore_value, ignore_as_negative=self.ignore_as_negative
        )

    def decode(self, features: Mapping[str, torch.Tensor], text_embeddings: torch.Tensor) -> torch.Tensor:
        # Capturable (the base's decode_capturable): class pruning, with more classes than
        # MODEL.CATSEG.PAD_LEN, picks each image's classes with topk / gather / scatter on the
        # device, and every shape depends on the number of classes only.
        return self.model.decode(features, text_embeddings).logits
