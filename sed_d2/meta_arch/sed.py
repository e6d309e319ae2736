"""SED as a detectron2 meta-architecture (registered name ``SED``)."""
from contextlib import contextmanager
from functools import partial
from typing import Callable, ContextManager, Dict, Iterator, Optional

import torch
from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY

from ..clip import build_clip_model, get_templates
from ..layers import top_k_union, top_n_classes
from ..models.sed import RejectionRule, SEDModel, build_sed_decoder_for
from .base import OpenVocabSegmentor

__all__ = ["SED"]


@META_ARCH_REGISTRY.register()
class SED(OpenVocabSegmentor):
    """SED: hierarchical encoder + gradual fusion decoder + category early rejection.

    :paper: https://arxiv.org/abs/2311.15537. The network itself (tensors in, logits and
    losses out) is ``sed_d2.models.sed.SEDModel``, held as ``self.model``.
    """

    @configurable
    def __init__(
        self,
        *,
        model: SEDModel,
        rejection_rule: Optional[RejectionRule] = None,
        ignore_as_negative: bool = True,
        **kwargs,
    ):
        """
        Args:
            model: the SED network (CLIP + decoder).
            rejection_rule: category early rejection at inference
                (:data:`sed_d2.models.sed.RejectionRule`); from the config
                ``partial(top_k_union, k=MODEL.SED.CER_TOPK)``; None = off.
            ignore_as_negative: ignored pixels count as all-negative BCE targets (official).
            kwargs: arguments of :class:`OpenVocabSegmentor`.
        """
        super().__init__(**kwargs)
        self.model = model
        self.rejection_rule = rejection_rule
        self.ignore_as_negative = ignore_as_negative

    @classmethod
    def from_config(cls, cfg):
        ret = super().from_config(cfg)
        ovseg, sed = cfg.MODEL.OVSEG, cfg.MODEL.SED
        clip_model = build_clip_model(
            ovseg.CLIP_MODEL,
            ovseg.CLIP_PRETRAINED,
            drop_path_rate=ovseg.CLIP_DROP_PATH_RATE,
            head_dropout=ovseg.CLIP_HEAD_DROPOUT,
            pretrained_key="MODEL.OVSEG.CLIP_PRETRAINED",
        )
        decoder = build_sed_decoder_for(
            clip_model,
            num_templates=len(get_templates(ovseg.PROMPT_TEMPLATES)),
            hidden_dim=sed.HIDDEN_DIM,
            cost_embed_kernel=sed.COST_EMBED_KERNEL,
            decoder_dims=tuple(sed.DECODER_DIMS),
            skip_proj_dims=tuple(sed.SKIP_PROJ_DIMS),
            cost_guidance_dims=tuple(sed.COST_GUIDANCE_DIMS),
            num_heads=sed.NUM_HEADS,
            kernel_size=sed.KERNEL_SIZE,
            pooling_size=tuple(sed.POOLING_SIZE),
            test_pooling_size=tuple(sed.TEST_POOLING_SIZE),
        )
        ret.update(
            model=SEDModel(clip_model, decoder, clip_finetune=ovseg.CLIP_FINETUNE),
            rejection_rule=partial(top_k_union, k=sed.CER_TOPK) if sed.CER_TOPK > 0 else None,
            ignore_as_negative=sed.IGNORE_AS_NEGATIVE,
        )
        return ret

    def forward_train(self, images, text_embeddings, targets):
        output = self.model(images, text_embeddings)
        return self.model.losses(
            output, targets, self.ignore_value, ignore_as_negative=self.ignore_as_negative
        )

    def decode(self, features, text_embeddings: torch.Tensor) -> torch.Tensor:
        return self.model.decode(features, text_embeddings, self.rejection_rule).logits

    @property
    def decode_capturable(self) -> bool:
        """Category early rejection keeps data-dependent class counts: then only the image
        tower is replayed from a CUDA graph and the decoder runs eagerly."""
        return self.rejection_rule is None

    def benchmark_variants(self) -> Dict[str, Callable[[int], ContextManager]]:
        """``cer_keep``: category early rejection that keeps exactly ``min(n, alive)`` classes
        per image at every rejection point (the highest maximum auxiliary logits), so the
        rejection path's cost is measured for a known number of survivors (random weights
        reject nothing under the top-k rule)."""
        return {"cer_keep": self._keeping_classes}

    @contextmanager
    def _keeping_classes(self, n: int) -> Iterator[None]:
        previous = self.rejection_rule
        self.rejection_rule = partial(top_n_classes, n=n)
        try:
            yield
        finally:
            self.rejection_rule = previous
