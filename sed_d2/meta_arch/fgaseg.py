"""FGAseg as a detectron2 meta-architecture (registered name ``FGASeg``)."""
from __future__ import annotations

from detectron2.modeling import META_ARCH_REGISTRY

from ..clip import get_templates
from ..clip.templates import TEMPLATE_SETS
from ..models.fgaseg import FGASegDecoder, FGASegModel, build_fgaseg_decoder_for
from .catseg import CATSeg

__all__ = ["FGASeg"]


@META_ARCH_REGISTRY.register()
class FGASeg(CATSeg):
    """FGAseg: CAT-Seg with pixel-text alignment (P2Tformer, T2P loss) and global / local
    category supplementation.

    :paper: https://arxiv.org/abs/2501.00877. The network is
    ``sed_d2.models.fgaseg.FGASegModel`` (a ``CATSegModel``), held as ``self.model``; its
    CAT-Seg part is configured by ``MODEL.CATSEG``, its own modules by ``MODEL.FGASEG``.
    Official checkpoints convert to ``model.``-prefixed names (:mod:`sed_d2.checkpoint.fgaseg`).
    Training, the test protocol and the losses are CAT-Seg's path (``forward_train``,
    ``decode``); the losses are ``loss_sem_seg``, ``loss_align`` and in fast mode
    ``loss_aux_{0,1,2}``.
    """

    method_name = "FGAseg"

    @classmethod
    def from_config(cls, cfg):
        # The P2Tformer refines one text embedding per class (P = 1): one-template sets only,
        # "single" (the official code's) or "fgaseg_paper" (the paper's wording).
        name = cfg.MODEL.OVSEG.PROMPT_TEMPLATES
        count = len(get_templates(name))
        if count != 1:
            single = sorted(n for n, templates in TEMPLATE_SETS.items() if len(templates) == 1)
            raise ValueError(
                "FGAseg refines one text embedding per class: MODEL.OVSEG.PROMPT_TEMPLATES must be 'single' "
                f"(the official code's) or another one-template set {single}, got {name!r} ({count} templates)"
            )
        return super().from_config(cfg)

    @classmethod
    def build_decoder(cls, cfg, clip_model, **kwargs) -> FGASegDecoder:
        fgaseg = cfg.MODEL.FGASEG
        return build_fgaseg_decoder_for(
            clip_model,
            decoder_mode=fgaseg.DECODER_MODE,
            fusion=fgaseg.FUSION,
            lcs_kernel_size=fgaseg.LCS_KERNEL_SIZE,
            lcs_kernel_norm=fgaseg.LCS_KERNEL_NORM,
            top_k=fgaseg.TOPK,
            top_k_union=fgaseg.TOPK_UNION,
            fast_scores=fgaseg.FAST_SCORES,
            **kwargs,
        )

    @classmethod
    def build_network(cls, cfg, clip_model, decoder, **kwargs) -> FGASegModel:
        fgaseg = cfg.MODEL.FGASEG
        return FGASegModel(
            clip_model,
            decoder,
            p2t=dict(
                num_heads=fgaseg.P2T_HEADS,
                num_layers=fgaseg.P2T_LAYERS,
                gamma_init=fgaseg.P2T_GAMMA_INIT,
                gamma_trainable=fgaseg.P2T_GAMMA_TRAINABLE,
                pos_on_values=fgaseg.P2T_POS_ON_VALUES,
            ),
            t2p_kernel_size=fgaseg.T2P_KERNEL_SIZE,
            t2p_bn_per_image=fgaseg.T2P_BN_PER_IMAGE,
            align_weight=fgaseg.LAMBDA_ALIGN,
            align_loss=fgaseg.ALIGN_LOSS,
            aux_weights=tuple(fgaseg.AUX_WEIGHTS),
            loss_type=fgaseg.LOSS_TYPE,
            **kwargs,
        )

    @property
    def decode_capturable(self) -> bool:
        # Fast mode at inference keeps a data-dependent set of classes after every auxiliary
        # head (host synchronisation, value-dependent shapes): only the image half is graphed.
        # No-fast mode is CAT-Seg's capturable path.
        return not self.model.decoder.fast
