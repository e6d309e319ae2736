"""Config keys of SynSeg (ICME 2026): the ``MODEL.SYNSEG`` node.

No official code exists: every value the paper leaves open or lost in extraction is a key
here, with the reason for its default (``reference/synseg_spec.md`` §5).
"""
from __future__ import annotations

from detectron2.config import CfgNode as CN


def add_synseg_config(cfg: CN) -> None:
    """Keys of SynSeg, defaults = our reading of the paper (CLIPSeg rd64 decoder, CCAM pooling)."""
    cfg.MODEL.SYNSEG = CN()
    # 0-based ViT blocks the decoder reads, shallowest first; [] = CLIPSeg rd64-uni's blocks 4, 8,
    # 10 of 12 (1-based) scaled to the tower's depth: 3, 7, 9 for ViT-B/16 (0, 1, 2 for the tiny ViT).
    cfg.MODEL.SYNSEG.EXTRACT_LAYERS = []
    # Decoder width: every activation is reduced to it by a Linear (CLIPSeg rd64).
    cfg.MODEL.SYNSEG.REDUCE_DIM = 64
    # Heads, feed-forward width and dropout of the decoder's transformer layers (torch defaults, CLIPSeg).
    cfg.MODEL.SYNSEG.NUM_HEADS = 4
    cfg.MODEL.SYNSEG.FF_DIM = 2048
    cfg.MODEL.SYNSEG.DROPOUT = 0.1
    # FiLM: 0 = two Linear(512, REDUCE_DIM) (CLIPSeg); > 0 = an MLP with this hidden width (the paper's word "MLP").
    cfg.MODEL.SYNSEG.FILM_HIDDEN_DIM = 0
    # FSS projector into the CLIP embedding: 0 = Linear(REDUCE_DIM, C) (fits the 151 M count); > 0 = MLP hidden width.
    cfg.MODEL.SYNSEG.PROJ_HIDDEN_DIM = 0
    # FSS pools "decoder" features (the paper's post-decoder, category-conditioned ones) or the
    # frozen ViT's deepest "image" tokens (no conditioning shortcut; the tiny random-CLIP config).
    cfg.MODEL.SYNSEG.FSS_FEATURES = "decoder"
    # FSS normaliser: "hw" (CCAM: number of tokens) or "mass" (the map's own sum).
    cfg.MODEL.SYNSEG.FSS_NORM = "hw"
    # Categories per image at most: caption phrases sampled per position (mapper), or a label
    # map's present classes with the largest areas; bounds the decoder passes per batch.
    cfg.MODEL.SYNSEG.MAX_CATEGORIES = 8
    # Weights of L1 intra-align, L2 intra-separation, L3 inter-align, L4 inter-separation (lost; CCAM: equal).
    cfg.MODEL.SYNSEG.LOSS_WEIGHTS = [1.0, 1.0, 1.0, 1.0]
    # L2 acts on a (fg, bg) pair only while their cosine exceeds this (the paper's 0.1).
    cfg.MODEL.SYNSEG.SEP_THRESHOLD = 0.1
    # L2's divisor per image: "all" its categories or "active" its gated-on pairs (unstated).
    cfg.MODEL.SYNSEG.SEP_NORMALIZE = "all"
    # Cosine -> similarity in (0, 1): "affine" ((clamp(c, -1+eps, 1-eps) + 1) / 2), "clamp" (CCAM)
    # or "scale" ((1 + (1-eps) c) / 2: no clamp, so parallel vectors still get a gradient).
    cfg.MODEL.SYNSEG.SIM_MAP = "affine"
    # The eps of SIM_MAP (lost; CCAM's clamp constant).
    cfg.MODEL.SYNSEG.SIM_EPS = 5e-4
    # Inference decodes this many classes at a time (memory only; 0 = all at once).
    cfg.MODEL.SYNSEG.TEST_CHUNK_CLASSES = 0
