"""DCP-CLIP as a detectron2 meta-architecture (registered name ``DCPCLIP``)."""
from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, ContextManager, Dict, Iterator, List, Mapping, Optional, Sequence

import torch
from detectron2.config import CfgNode, configurable
from detectron2.modeling import META_ARCH_REGISTRY

from ..clip import TextEncoder
from ..clip.prompt_context import ContextTextModel, PromptContext
from ..config.catseg import add_catseg_config
from ..layers.category_selection import present_classes
from ..layers.tag_validation import seen_class_mask, tag_validation
from ..models.dcp_clip import (
    DCPCLIPDecoder,
    DCPCLIPModel,
    SpatialEnhancedDecoder,
    TextGuidedAlignment,
    class_embeddings,
)
from .catseg import CATSeg

__all__ = ["DCPCLIP"]

# MODEL.CATSEG keys of CAT-Seg's cost aggregation (its Swin / class-attention layers, class
# pooling and padding, guidance projections), which DCP-CLIP's TGA and Spatial Enhanced Decoder
# replace: refused away from their defaults rather than silently ignored.
_AGGREGATION_ONLY_KEYS = (
    "NUM_LAYERS",
    "POOLING_SIZE",
    "TEST_POOLING_SIZE",
    "PAD_LEN",
    "APPEARANCE_GUIDANCE_DIM",
    "TEXT_GUIDANCE_DIM",
)


def _refuse_aggregation_keys(catseg: CfgNode) -> None:
    declared = CfgNode({"MODEL": CfgNode()})
    add_catseg_config(declared)
    defaults = declared.MODEL.CATSEG
    changed = [
        f"MODEL.CATSEG.{key} (default {defaults[key]}, got {catseg[key]})"
        for key in _AGGREGATION_ONLY_KEYS
        if catseg[key] != defaults[key]
    ]
    if changed:
        raise ValueError(
            "DCP-CLIP has no CAT-Seg cost aggregation (TGA and the Spatial Enhanced Decoder replace it): leave "
            f"{', '.join(changed)} at the default"
        )


@META_ARCH_REGISTRY.register()
class DCPCLIP(CATSeg):
    """DCP-CLIP: CAT-Seg's cost volume on a fine-tuned CLIP ViT, dynamic category selection,
    text-guided alignment, a spatial enhanced decoder and tag validation.

    :paper: https://arxiv.org/abs/2603.13951 (no official code). The network (tensors in,
    logits and losses out) is ``sed_d2.models.dcp_clip.DCPCLIPModel`` (a ``CATSegModel``),
    held as ``self.model`` and built by CAT-Seg's ``from_config`` through its hooks: the
    CAT-Seg part (taps, cost embedding, Swin geometry, loss) is configured by ``MODEL.CATSEG``,
    DCP-CLIP's own modules by ``MODEL.DCP_CLIP``. Tag validation runs on each image's fused
    scores after the test protocol (:meth:`inference_scores`), with the dense CLIP features of
    the whole image.
    """

    method_name = "DCP-CLIP"

    @configurable
    def __init__(
        self,
        *,
        train_add_gt: bool = True,
        tag_validation_k: int = 0,
        prompt_template: Optional[str] = None,
        **kwargs,
    ):
        """
        Args:
            train_add_gt: in training, each image's labelled classes join its selection.
            tag_validation_k: k of tag validation at inference (0 = off).
            prompt_template: the CoOp prompt with its ``{}`` (e.g. "a photo of a {}."),
                whose leading words the model's learnable context replaces; None = no
                prompted text (the textual guidance uses none).
            kwargs: arguments of :class:`CATSeg` (``model``: the DCP-CLIP network).
        """
        super().__init__(**kwargs)
        self.train_add_gt = train_add_gt
        self.tag_validation_k = int(tag_validation_k)
        self.prompt_template = prompt_template
        self._prompt_encoder: Optional[TextEncoder] = None
        self._seen_cache: Dict[tuple, torch.Tensor] = {}

    @classmethod
    def from_config(cls, cfg):
        _refuse_aggregation_keys(cfg.MODEL.CATSEG)
        ret = super().from_config(cfg)
        dcp = cfg.MODEL.DCP_CLIP
        uses_prompts = ret["model"].decoder.alignment.uses_prompts
        ret.update(
            train_add_gt=dcp.DCS_TRAIN_ADD_GT,
            tag_validation_k=dcp.TV_TOPK if dcp.TV_ENABLED else 0,
            prompt_template=f"{dcp.TGA_PROMPT_INIT} {{}}." if uses_prompts else None,
        )
        return ret

    @classmethod
    def build_decoder(
        cls,
        cfg,
        clip_model,
        *,
        num_templates: int,
        skip_channels: Sequence[int],
        skip_proj_dims: Sequence[int],
        decoder_dims: Sequence[int],
        hidden_dim: int,
        cost_embed_kernel: int,
        num_heads: int,
        window_size: int,
        **aggregation,
    ) -> DCPCLIPDecoder:
        """The DCP-CLIP decoder: one Spatial Enhanced Decoder layer per ``decoder_dims``
        entry, each with the first skip taps (``skip_channels`` / ``skip_proj_dims``);
        ``aggregation`` (CAT-Seg's aggregation arguments, :data:`_AGGREGATION_ONLY_KEYS`) is
        not DCP-CLIP's."""
        ovseg, dcp = cfg.MODEL.OVSEG, cfg.MODEL.DCP_CLIP
        visual = clip_model.visual
        stages = len(decoder_dims)
        grid = [size // patch for size, patch in zip(ovseg.CLIP_RESOLUTION, visual.patch_size)]
        embed_dim = visual.output_dim
        alignment = TextGuidedAlignment(
            embed_dim,
            hidden_dim,
            cross_attention=dcp.TGA_CROSS_ATTENTION,
            self_attention=dcp.TGA_SELF_ATTENTION,
            cross_layers=dcp.TGA_CA_LAYERS,
            cross_heads=dcp.TGA_CA_HEADS,
            self_layers=dcp.TGA_SA_LAYERS,
            self_heads=dcp.TGA_SA_HEADS,
            mlp_ratio=dcp.TGA_MLP_RATIO,
            cls_term=dcp.TGA_CLS_TERM,
            prompt=dcp.TGA_PROMPT,
        )
        spatial = SpatialEnhancedDecoder(
            hidden_dim=hidden_dim,
            decoder_dims=tuple(decoder_dims),
            embed_dim=embed_dim,
            num_patches=grid[0] * grid[1],
            skip_channels=tuple(skip_channels)[:stages],
            skip_proj_dims=tuple(skip_proj_dims)[:stages],
            cost_guidance_dims=tuple(dcp.COST_GUIDANCE_DIMS)[:stages],
            num_templates=num_templates,
            spatial_enhance=dcp.SPATIAL_ENHANCE,
            fuse_patch=dcp.FUSE_PATCH,
            fuse_sim=dcp.FUSE_SIM,
            fuse_attn=dcp.FUSE_ATTN,
            window_size=window_size,
            num_heads=num_heads,
            guidance_kernel=dcp.GUIDANCE_KERNEL,
        )
        decoder = DCPCLIPDecoder(
            num_templates=num_templates,
            hidden_dim=hidden_dim,
            cost_embed_kernel=cost_embed_kernel,
            skip_channels=tuple(skip_channels)[:stages],
            alignment=alignment,
            spatial=spatial,
        )
        if alignment.uses_prompts:
            decoder.prompt = PromptContext(clip_model, dcp.TGA_PROMPT_INIT, ovseg.CLIP_MODEL)
        return decoder

    @classmethod
    def build_network(cls, cfg, clip_model, decoder, *, guidance_layers: Sequence[int], **kwargs) -> DCPCLIPModel:
        """The network; the decoder's layers use the first ``guidance_layers`` as skip taps."""
        dcp = cfg.MODEL.DCP_CLIP
        return DCPCLIPModel(
            clip_model,
            decoder,
            guidance_layers=tuple(guidance_layers)[: len(decoder.skip_channels)],
            selection=dcp.DCS_ENABLED,
            threshold=dcp.DCS_THRESHOLD,
            temperature=dcp.DCS_TAU,
            max_classes=dcp.DCS_MAX_CLASSES,
            cls_source=dcp.CLS_SOURCE,
            **kwargs,
        )

    # ------------------------------------------------------------------ text
    def prompt_embeddings(self) -> Optional[torch.Tensor]:
        """``(T, D)`` CoOp-prompted embeddings of the current vocabulary (None without a
        learnable context): cached like :meth:`text_embeddings`, with gradients while the
        context or the text tower trains."""
        if self.prompt_template is None:
            return None
        if self._prompt_encoder is None:
            # not a submodule: it refers to the CLIP model and the context held by self.model
            holder = ContextTextModel(self.clip_model, self.model.decoder.prompt)
            self._prompt_encoder = TextEncoder(
                holder, [self.prompt_template], model_name=self.clip_model_name, synonym_rule=self.synonym_rule
            )
        return self._prompt_encoder(self.prompted_vocabulary)[:, 0]

    def _seen_classes(self) -> torch.Tensor:
        """``(T,)`` bool: the prompted vocabulary's classes seen in training (exact names);
        none without a training vocabulary."""
        key = tuple(self.prompted_vocabulary)
        if key not in self._seen_cache:
            seen = seen_class_mask(key, self.train_vocabulary or ())
            self._seen_cache = {key: torch.tensor(seen, dtype=torch.bool, device=self.device)}
        return self._seen_cache[key]

    # ------------------------------------------------------------------ the contract
    def forward_train(self, images, text_embeddings, targets):
        features = self.model.image_features(images)
        present = (
            present_classes(targets, text_embeddings.shape[0], self.ignore_value) if self.train_add_gt else None
        )
        output = self.model.decode(features, text_embeddings, self.prompt_embeddings(), present)
        return self.model.losses(output, targets, self.ignore_value, ignore_as_negative=self.ignore_as_negative)

    def decode(self, features: Mapping[str, torch.Tensor], text_embeddings: torch.Tensor) -> torch.Tensor:
        prompts = self.prompt_embeddings()
        if prompts is not None and prompts.shape[0] != text_embeddings.shape[0]:
            raise ValueError(
                f"text embeddings of {text_embeddings.shape[0]} classes do not belong to the current vocabulary "
                f"({prompts.shape[0]} classes): decode the model's own text_embeddings()"
            )
        return self.model.decode(features, text_embeddings, prompts).logits

    @property
    def decode_capturable(self) -> bool:
        """Category selection picks each image's classes on the host (value-dependent
        shapes): then only the image tower is replayed from a CUDA graph."""
        return not (self.model.selection or self.model.fixed_selection)

    def benchmark_variants(self) -> Dict[str, Callable[[int], ContextManager]]:
        """``dcs_keep``: selection keeps exactly ``min(n, T)`` classes per image (highest
        damped patch score), so the subset decoder is timed for a known subset size (random
        weights make DCS keep arbitrary numbers of classes)."""
        return {"dcs_keep": self._keeping_classes}

    @contextmanager
    def _keeping_classes(self, n: int) -> Iterator[None]:
        previous = self.model.fixed_selection
        self.model.fixed_selection = int(n)
        try:
            yield
        finally:
            self.model.fixed_selection = previous

    def inference_scores(self, images: Sequence[torch.Tensor]) -> List[torch.Tensor]:
        """The test protocol's per-image scores, then tag validation on each (pooled dense
        CLIP features of the whole image at the CLIP resolution)."""
        scores = super().inference_scores(images)
        if self.tag_validation_k <= 0:
            return scores
        text_mean = class_embeddings(self.text_embeddings())
        seen = self._seen_classes()
        with torch.no_grad(), self.autocast(self.test_dtype):
            prepared = self.prepare_images([image.to(self.device).float() for image in images])
            name = f"{type(self).__name__.lower()}_image_features"
            dense = self.run_network(name, self.image_features, prepared)["clip_vis_dense"].float().clone()
        index = self.background_index
        validated = []
        for score, features in zip(scores, dense):
            if index is None:
                validated.append(tag_validation(score, features, text_mean, seen, self.tag_validation_k))
                continue
            # the unprompted background channel (a constant) is not a tag: validate the others
            prompted = torch.cat([score[:index], score[index + 1 :]])
            prompted = tag_validation(prompted, features, text_mean, seen, self.tag_validation_k)
            validated.append(torch.cat([prompted[:index], score[index : index + 1], prompted[index:]]))
        return validated

