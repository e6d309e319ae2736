"""Config keys of DCP-CLIP (arXiv 2603.13951): the ``MODEL.DCP_CLIP`` node.

DCP-CLIP extends CAT-Seg (its meta-architecture subclasses ``CATSeg``), so its CAT-Seg part
is configured by ``MODEL.CATSEG`` (``sed_d2/config/catseg.py``), with the same defaults:
GUIDANCE_LAYERS, SKIP_CHANNELS and SKIP_PROJ_DIMS are the decoder's shallow skip taps (the
first len(DECODER_DIMS) of each), DECODER_DIMS the Spatial Enhanced Decoder layers (any
number up to len(SKIP_CHANNELS), [] = none: Table VI b), HIDDEN_DIM D_c (cost embedding, TGA,
decoder input; the paper's D_c / 2^N_s = 32 fits 128), COST_EMBED_KERNEL, WINDOW_SIZE and
NUM_HEADS (its guided Swin pairs) and IGNORE_AS_NEGATIVE.
CAT-Seg's aggregation keys (NUM_LAYERS, POOLING_SIZE, TEST_POOLING_SIZE, PAD_LEN,
APPEARANCE_GUIDANCE_DIM, TEXT_GUIDANCE_DIM) have no DCP-CLIP counterpart: it refuses them
away from their defaults. This node holds DCP-CLIP's own modules.

No official code exists: every choice the paper leaves open is a key here, its default the
recommendation of ``shared/reference/dcpclip_spec.md`` section 5 (README, DCP-CLIP section).
"""
from __future__ import annotations

from detectron2.config import CfgNode as CN


def add_dcp_clip_config(cfg: CN) -> None:
    """Keys of DCP-CLIP, defaults = the full model of the paper's main results (ViT-B/16)."""
    cfg.MODEL.DCP_CLIP = CN()
    # Channels of the raw-cost guidance chain P -> 32 -> 16 (SED's ConvTranspose x2 + ReLU), one per decoder layer.
    cfg.MODEL.DCP_CLIP.COST_GUIDANCE_DIMS = [32, 16]
    # Dynamic category selection: the decoder runs on each image's selected classes only.
    cfg.MODEL.DCP_CLIP.DCS_ENABLED = True
    # theta: classes whose image-level softmax score exceeds it join the selection (Table VII; 0 = all).
    cfg.MODEL.DCP_CLIP.DCS_THRESHOLD = 0.5
    # tau of the image-level softmax; 0 = exp(CLIP's logit_scale) (100 for OpenAI: "the logit scale").
    cfg.MODEL.DCP_CLIP.DCS_TAU = 0.0
    # Training adds each crop's labelled classes to its selection (the paper does not say; else
    # their pixels would have no output channel).
    cfg.MODEL.DCP_CLIP.DCS_TRAIN_ADD_GT = True
    # At most this many classes per image (highest damped patch score first); 0 = no cap (paper).
    cfg.MODEL.DCP_CLIP.DCS_MAX_CLASSES = 0
    # Class token of DCS and the textual guidance: "attention" (CLIP's calibrated image embedding,
    # what Eq. 1's zero-shot softmax needs) or "dense" (CAT-Seg's value-path token).
    cfg.MODEL.DCP_CLIP.CLS_SOURCE = "attention"
    # TGA's cross-attention branch: patches attend to the textual guidance (Table IV).
    cfg.MODEL.DCP_CLIP.TGA_CROSS_ATTENTION = True
    # TGA's self-attention branch over the patches of every class map (Table IV).
    cfg.MODEL.DCP_CLIP.TGA_SELF_ATTENTION = True
    # Cross-attention layers N_c (Table II's parameter count fits 1).
    cfg.MODEL.DCP_CLIP.TGA_CA_LAYERS = 1
    # Heads of the cross-attention (Eq. 9 is written single-head).
    cfg.MODEL.DCP_CLIP.TGA_CA_HEADS = 1
    # Self-attention layers (unstated; one, as the one cross-attention layer).
    cfg.MODEL.DCP_CLIP.TGA_SA_LAYERS = 1
    # Heads of the self-attention (Eq. 12 is written single-head).
    cfg.MODEL.DCP_CLIP.TGA_SA_HEADS = 1
    # MLP expansion of both TGA branches (GELU; unstated, the transformer default).
    cfg.MODEL.DCP_CLIP.TGA_MLP_RATIO = 4.0
    # [CLS] term of the textual guidance: "logit" cos(F_cls, E), "hadamard" F_cls * E, "none" (Table V II).
    cfg.MODEL.DCP_CLIP.TGA_CLS_TERM = "logit"
    # Learnable prompt of the textual guidance: "coop" (context words encoded with the class name by
    # the text tower), "vector" (one shared vector: only a bias of phi_T), "none" (Table V III).
    cfg.MODEL.DCP_CLIP.TGA_PROMPT = "coop"
    # Words the CoOp context is initialised from; their token count is the context length M.
    cfg.MODEL.DCP_CLIP.TGA_PROMPT_INIT = "a photo of a"
    # Guided Swin pairs in the decoder layers (Table VI a "Spatial-enhance"; False keeps the fusions).
    cfg.MODEL.DCP_CLIP.SPATIAL_ENHANCE = True
    # Swin guidance from conv(up(F_patch)) (Table VI c "F_patch").
    cfg.MODEL.DCP_CLIP.FUSE_PATCH = True
    # Skip fusion with the upsampled raw cost of each class (Table VI c "F_sim").
    cfg.MODEL.DCP_CLIP.FUSE_SIM = True
    # Swin guidance from conv(up(A_CLIP)), the last CLIP block's attention map (Table VI c "A_CLIP").
    cfg.MODEL.DCP_CLIP.FUSE_ATTN = True
    # Kernel of the F_patch / A_CLIP guidance convs (+ ReLU, as CAT-Seg's guidance projection).
    cfg.MODEL.DCP_CLIP.GUIDANCE_KERNEL = 3
    # Tag validation at inference: relabel regions of unseen classes that CLIP ranks low.
    cfg.MODEL.DCP_CLIP.TV_ENABLED = True
    # k of tag validation: an unseen class ranked below k by its region's CLIP feature is relabelled.
    cfg.MODEL.DCP_CLIP.TV_TOPK = 5
