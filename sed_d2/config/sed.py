"""Config keys of SED (CVPR 2024): the ``MODEL.SED`` node."""
from __future__ import annotations

from detectron2.config import CfgNode as CN


def add_sed_config(cfg: CN) -> None:
    """Keys of SED, defaults = the official convnextB_768 recipe."""
    cfg.MODEL.SED = CN()
    # Channels of the cost-volume embedding (output of the 7x7 conv over the P template channels).
    cfg.MODEL.SED.HIDDEN_DIM = 128
    # Kernel size of the cost-volume embedding conv.
    cfg.MODEL.SED.COST_EMBED_KERNEL = 7
    # Output channels of the three gradual-fusion decoder stages.
    cfg.MODEL.SED.DECODER_DIMS = [64, 32, 16]
    # Channels res4/res3/res2 are reduced to before they are repeated per class.
    cfg.MODEL.SED.SKIP_PROJ_DIMS = [32, 16, 8]
    # Channels of the upsampled raw cost map fed to each skip-fusion module.
    cfg.MODEL.SED.COST_GUIDANCE_DIMS = [32, 16, 8]
    # Heads of the linear attention along the class axis.
    cfg.MODEL.SED.NUM_HEADS = 4
    # Depthwise kernel of the ConvNeXt block in each feature aggregation module.
    cfg.MODEL.SED.KERNEL_SIZE = 9
    # Spatial average pooling before class attention in training (official configs: 2x2).
    cfg.MODEL.SED.POOLING_SIZE = [2, 2]
    # The same at inference (official eval.sh overrides it to 1x1).
    cfg.MODEL.SED.TEST_POOLING_SIZE = [1, 1]
    # True: ignored pixels are all-negative BCE targets (official code); False: excluded (paper).
    cfg.MODEL.SED.IGNORE_AS_NEGATIVE = True
    # Category early rejection at inference: keep classes in some pixel's top-k; 0 = off.
    cfg.MODEL.SED.CER_TOPK = 0
