"""Config keys of CLIP-HBD (Computers 2026): the ``MODEL.CLIP_HBD`` node and its backbone keys.

No official code exists and the paper lost its formulas, numbers and experiment section:
every key below is a choice the paper leaves open, with our default and its reason (the
README's CLIP-HBD section lists them).
"""
from __future__ import annotations

from detectron2.config import CfgNode as CN


def add_clip_hbd_config(cfg: CN) -> None:
    """Keys of CLIP-HBD; defaults = our reading of the paper on the CAT-Seg ViT-B/16 recipe."""
    # The ConvNeXt backbone sits in MODEL.OVSEG beside CLIP_MODEL / CLIP_PRETRAINED: a method's
    # tiny.yaml swaps that node into its real configs in tests (tests/d2_helpers.TINY_NODES), so
    # both pretrained towers become tiny and download-free together.
    # timm ConvNeXt architecture (Table 1 lost; ConvNeXt-B is the canonical segmentation backbone).
    cfg.MODEL.OVSEG.BACKBONE_MODEL = "convnext_base"
    # timm pretrained tag of that architecture (e.g. "fb_in22k_ft_in1k", downloaded by timm) or a
    # local state_dict file; "" = random init.
    cfg.MODEL.OVSEG.BACKBONE_PRETRAINED = ""

    cfg.MODEL.CLIP_HBD = CN()
    node = cfg.MODEL.CLIP_HBD
    # 0-based ViT blocks fused after backbone stages 1-3, shallow to deep; [] = blocks
    # k*depth/4 - 1 (B/16: 2, 5, 8; L/14: 5, 11, 17): indices lost, DPT's spacing, last block -> cost.
    node.CLIP_LAYERS = []
    # "none": raw residual stream (width W) of those blocks; "clip_proj": ln_post + proj (the paper's "D" is ambiguous).
    node.CLIP_LAYER_PROJ = "none"
    # (H, W) of the ViT input; [] = the network input (ViT-L/14@336 keeps a 24x24 grid beside a 384 backbone).
    node.VIT_INPUT_SIZE = []
    # Stochastic depth of the backbone in training (CAT-Seg/SED use 0 for B-sized models).
    node.BACKBONE_DROP_PATH = 0.0
    # 0-255 RGB normalisation the backbone's weights expect (ImageNet for timm's ConvNeXt weights).
    node.BACKBONE_PIXEL_MEAN = [123.675, 116.28, 103.53]
    node.BACKBONE_PIXEL_STD = [58.395, 57.12, 57.375]
    # Fusion weight: "scalar" a*F + (1-a)*G ("a learnable weight for the l-th stage"), "spatial" (per
    # pixel, sigmoid of a 1x1 conv), "residual" F + a*G.
    node.FFM_WEIGHT = "scalar"
    # Initial a of "scalar" / "residual" (0.5: an even convex mix at the start).
    node.FFM_ALPHA_INIT = 0.5
    # Common width C_b of the boundary head ("lightweight ... uniform channel dimension"; value lost).
    node.BOUNDARY_DIM = 64
    # Kernel of its two x2 transposed convs (4, stride 2, pad 1: overlapping kernels against the
    # checkerboard artifacts the paper mentions).
    node.BOUNDARY_DECONV_KERNEL = 4
    # Norm after its 3x3 and transposed convs: "GN" (GroupNorm, batch 1 per GPU) or "none".
    node.BOUNDARY_NORM = "GN"
    # Channels of the cost embedding X_1 (CAT-Seg / SED).
    node.HIDDEN_DIM = 128
    # Kernel of the cost embedding over the P templates (CAT-Seg / SED).
    node.COST_EMBED_KERNEL = 7
    # Output channels of the three decoder stages (the paper: halving from HIDDEN_DIM).
    node.DECODER_DIMS = [64, 32, 16]
    # Depthwise kernel of the stages' separable conv (ConvNeXt's; the paper's value, ablated in its 4.3.3, is lost).
    node.DWCONV_KERNEL = 7
    # Hidden width of the stages' MLP over channels ("maps to a higher-dimensional space").
    node.MLP_RATIO = 4
    # "layernorm" before the stages' MLP (a ConvNeXt block, for stability) or "none" (the formulas show none).
    node.DECODER_NORM = "layernorm"
    # What the boundary attention A gates: "input" M + A*X (literal: "applied to the original input
    # features ... within a residual"), "branch" X + A*M, "input_residual" M + (1+A)*X.
    node.GATE_MODE = "input"
    # A with one channel per feature channel instead of one shared map ("a spatial attention weight map").
    node.BOUNDARY_ATTN_PER_CHANNEL = False
    # Boundary map to each stage's size: "area" (thin edges survive x16 as soft values), "bilinear", "max".
    node.BOUNDARY_DOWNSAMPLE = "area"
    # The gates read a detached boundary map (False: joint optimisation, as the paper trains end to end).
    node.DETACH_BOUNDARY = False
    # Channels each encoder skip is aligned to by its 2x2 transposed conv; [] = the stage's input
    # channels ("aligned in channel dimension" to the decoder feature).
    node.SKIP_ALIGN_DIMS = []
    # Weights of the compound segmentation loss CE + Dice (unweighted sum: the paper states no weights).
    node.CE_WEIGHT = 1.0
    node.DICE_WEIGHT = 1.0
    # Dice over the classes "present" in each image's labels, or "all" (absent classes would dominate).
    node.DICE_CLASSES = "present"
    # Dice smoothing s in (2 sum pg + s) / (sum p + sum g + s).
    node.DICE_SMOOTH = 1.0
    # lambda of the boundary loss (analysed in the paper's 4.3.4; the value is lost).
    node.BOUNDARY_LOSS_WEIGHT = 1.0
    # Neighbourhood of the edge targets (3: a 2-pixel band across each class border).
    node.BOUNDARY_KERNEL = 3
    # "exclude": ignored pixels never make edges (unlabelled regions and padding are no borders);
    # "as_label": the ignore label counts as a label for its valid neighbours.
    node.BOUNDARY_IGNORE_EDGES = "exclude"
    # "balanced": per-image w+ = |non-edges|/N, w- = |edges|/N (HED's "balancing weights"); "fixed".
    node.BOUNDARY_WEIGHTING = "balanced"
    # w+ / w- of "fixed" weighting.
    node.BOUNDARY_POS_WEIGHT = 1.0
    node.BOUNDARY_NEG_WEIGHT = 1.0
    # Inference decodes one image and about this many logit pixels (classes x H/2 x W/2) at a time:
    # bounded memory at A-847 (SED's mechanism); 0 = all classes at once.
    node.INFERENCE_CHUNK_PIXELS = 2**23
