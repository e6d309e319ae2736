"""Config keys of CAT-Seg (CVPR 2024): the ``MODEL.CATSEG`` node."""
from __future__ import annotations

from detectron2.config import CfgNode as CN


def add_catseg_config(cfg: CN) -> None:
    """Keys of CAT-Seg, defaults = the official vitb_384 recipe (its vitl_336 decoder is the same).

    FGAseg and DCP-CLIP extend CAT-Seg and read this node too. DCP-CLIP's meanings, where they
    differ, are in parentheses (``sed_d2/config/dcp_clip.py``); it refuses a change to the keys
    marked "Not DCP-CLIP's" (CAT-Seg's aggregation, which DCP-CLIP does not have)."""
    cfg.MODEL.CATSEG = CN()
    # 0-based ViT blocks whose outputs guide the decoder stages, coarse to fine; [] = the official
    # choice for the tower's depth, blocks depth/3 - 1 and 2*depth/3 - 1 (B/16: 3, 7; L/14: 7, 15).
    cfg.MODEL.CATSEG.GUIDANCE_LAYERS = []
    # Channels those block outputs are upsampled to (ConvTranspose x2, x4), one per decoder stage
    # (DCP-CLIP uses the first len(DECODER_DIMS) of these, of SKIP_PROJ_DIMS and of GUIDANCE_LAYERS).
    cfg.MODEL.CATSEG.SKIP_CHANNELS = [256, 128]
    # Channels the upsampled guidance is projected to (conv3x3 + ReLU) inside each decoder stage.
    cfg.MODEL.CATSEG.SKIP_PROJ_DIMS = [32, 16]
    # Output channels of the two upsampling decoder stages (DCP-CLIP: its Spatial Enhanced Decoder
    # layers, any number; [] = none, Table VI b).
    cfg.MODEL.CATSEG.DECODER_DIMS = [64, 32]
    # Channels of the cost embedding and of the aggregation layers (DCP-CLIP: D_c, also TGA's width).
    cfg.MODEL.CATSEG.HIDDEN_DIM = 128
    # Kernel of the cost embedding conv over the P template channels.
    cfg.MODEL.CATSEG.COST_EMBED_KERNEL = 7
    # Aggregation layers (guided Swin pair + class attention); official yamls 2. Not DCP-CLIP's.
    cfg.MODEL.CATSEG.NUM_LAYERS = 2
    # Heads of the Swin window attention and of the class attention (DCP-CLIP: of its Swin pairs).
    cfg.MODEL.CATSEG.NUM_HEADS = 4
    # Swin window on the CLIP patch grid (official 12 on 24x24; a grid no larger is one window).
    cfg.MODEL.CATSEG.WINDOW_SIZE = 12
    # Spatial average pooling before class attention in training (official yamls: 2x2). Not DCP-CLIP's.
    cfg.MODEL.CATSEG.POOLING_SIZE = [2, 2]
    # The same at inference (official eval.sh overrides it to 1x1). Not DCP-CLIP's.
    cfg.MODEL.CATSEG.TEST_POOLING_SIZE = [1, 1]
    # Class axis padded to this length in class attention; more are pruned to it per image. Not DCP-CLIP's.
    cfg.MODEL.CATSEG.PAD_LEN = 256
    # Channels of the appearance guidance (dense CLIP embedding) of the Swin blocks. Not DCP-CLIP's.
    cfg.MODEL.CATSEG.APPEARANCE_GUIDANCE_DIM = 128
    # Channels the text guidance is projected to for the class attention. Not DCP-CLIP's.
    cfg.MODEL.CATSEG.TEXT_GUIDANCE_DIM = 128
    # True: ignored pixels are all-negative BCE targets (official code); False: excluded.
    cfg.MODEL.CATSEG.IGNORE_AS_NEGATIVE = True
