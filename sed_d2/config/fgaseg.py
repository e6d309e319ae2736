"""Config keys of FGAseg (arXiv 2501.00877): the ``MODEL.FGASEG`` node.

FGAseg is CAT-Seg plus its own modules: the CAT-Seg part (guidance layers, decoder widths,
aggregation layers, class padding, ``IGNORE_AS_NEGATIVE``) is configured by ``MODEL.CATSEG``,
only FGAseg's additions here. Defaults = the official code (``LiBingyu01/FGA-seg`` c1e60a4);
where the paper says otherwise, the key names the paper's variant (README, FGAseg section).
"""
from __future__ import annotations

from detectron2.config import CfgNode as CN


def add_fgaseg_config(cfg: CN) -> None:
    """Keys of FGAseg, defaults = the official code with the paper's headline decoder."""
    cfg.MODEL.FGASEG = CN()
    # "no_fast" (the paper's headline model, Table V "NoFast+Cat") or "fast" (auxiliary heads and
    # top-k class selection at inference: the official config.py default).
    cfg.MODEL.FGASEG.DECODER_MODE = "no_fast"
    # How the local cost embedding joins the global one at its three fusion points: "cat" (a linear
    # layer over the concatenated channels) or "add".
    cfg.MODEL.FGASEG.FUSION = "cat"
    # Cross-attention layers of the P2Tformer (official P2T_LAYER; paper ablation 1, 2, 4, 6).
    cfg.MODEL.FGASEG.P2T_LAYERS = 1
    # Heads of the P2Tformer attention (official: 8, hard-coded).
    cfg.MODEL.FGASEG.P2T_HEADS = 8
    # Initial value of the P2Tformer's per-channel residual scale gamma (official 0.1).
    cfg.MODEL.FGASEG.P2T_GAMMA_INIT = 0.1
    # True: gamma trains (official); False: fixed at P2T_GAMMA_INIT (the paper's fixed-gamma ablation).
    cfg.MODEL.FGASEG.P2T_GAMMA_TRAINABLE = True
    # True: the position embedding is added to the attention values too (the paper's Eq. 5); False:
    # to the keys only (official code).
    cfg.MODEL.FGASEG.P2T_POS_ON_VALUES = False
    # Kernel size of the text-generated local (LCS) kernels (official KERNEL_SIZE 3; paper 1-15).
    cfg.MODEL.FGASEG.LCS_KERNEL_SIZE = 3
    # LCS kernel normalisation: "taps" (softmax over the k*k taps of each channel: official code),
    # "channels" (softmax over channels per tap: our reading of the paper), "none" (Table IV(b) "No").
    cfg.MODEL.FGASEG.LCS_KERNEL_NORM = "taps"
    # Kernel size of the T2P projector's text-generated kernels (official: 3, hard-coded).
    cfg.MODEL.FGASEG.T2P_KERNEL_SIZE = 3
    # True: the T2P projector's BatchNorm uses each image's own statistics in training (the paper
    # trains one image per GPU); False: the batch's (official code with several images per GPU).
    cfg.MODEL.FGASEG.T2P_BN_PER_IMAGE = True
    # Weight of the T2P alignment loss (official LAMBDA_ALIGN 0.02; 0 turns the T2P projector off).
    cfg.MODEL.FGASEG.LAMBDA_ALIGN = 0.02
    # T2P alignment loss: "bce" (official code) or "mse" (the paper's Eq. 8, on sigmoid probabilities).
    cfg.MODEL.FGASEG.ALIGN_LOSS = "bce"
    # Weights of the fast mode's three auxiliary losses (official: LAMBDA_AUXI 0.2 on the first,
    # 1 on the others; the paper writes one lambda_auxi for all).
    cfg.MODEL.FGASEG.AUX_WEIGHTS = [0.2, 1.0, 1.0]
    # Main and auxiliary loss: "bce" (sigmoid BCE on one-hot labels: official code) or "ce"
    # (softmax cross-entropy, ignored pixels excluded: the paper's Eq. 11-13).
    cfg.MODEL.FGASEG.LOSS_TYPE = "bce"
    # Fast-mode inference: classes among the top TOPK of some pixel of an auxiliary map go on
    # (official: 16, hard-coded; paper Table VI 1-32).
    cfg.MODEL.FGASEG.TOPK = 16
    # Fast-mode class union: "batch" (over every image of the network call, i.e. the views of one
    # image in the sliding-window protocol at TEST.IMS_PER_BATCH 1: official) or "image" (per view).
    cfg.MODEL.FGASEG.TOPK_UNION = "batch"
    # Fast-mode scores: "official" (sigmoid applied twice: kept classes in (0.5, 0.73), rejected
    # 0.5; reproduces the official numbers) or "probability" (one sigmoid; rejected classes 0).
    cfg.MODEL.FGASEG.FAST_SCORES = "official"
