"""``add_sed_d2_config``: every config key the package reads, each with a one-line meaning.

Keys shared by all methods live under ``MODEL.OVSEG``; each method has its own node
(``MODEL.SED``, ...). Detectron2's own keys keep their meaning; the few new keys under
``INPUT``, ``SOLVER`` and ``TEST`` are listed here too. ``tests/test_config.py`` fails if a
key declared here is never read under ``sed_d2/`` or ``tools/``.
"""
from detectron2.config import CfgNode as CN

__all__ = ["add_sed_d2_config", "add_ovseg_config", "add_sed_config"]


def add_ovseg_config(cfg):
    """Keys shared by every open-vocabulary method: CLIP, prompts, precision, input, solver."""
    cfg.MODEL.OVSEG = CN()
    # open_clip architecture name, e.g. "convnext_base_w_320", "convnext_large_d_320".
    cfg.MODEL.OVSEG.CLIP_MODEL = "convnext_base_w_320"
    # open_clip pretrained tag (downloaded by open_clip) or a local file path; "" = random init.
    cfg.MODEL.OVSEG.CLIP_PRETRAINED = ""
    # "full": fine-tune the whole image tower (trunk + projection head); "frozen": train none of it.
    cfg.MODEL.OVSEG.CLIP_FINETUNE = "full"
    # Stochastic depth of the image trunk in training (official SED: 0.0 for B, 0.1 for L).
    cfg.MODEL.OVSEG.CLIP_DROP_PATH_RATE = 0.0
    # Dropout inside the image projection head in training (official SED: 0.0 for B, 0.1 for L).
    cfg.MODEL.OVSEG.CLIP_HEAD_DROPOUT = 0.0
    # CLIP normalisation of 0-255 RGB pixels (OpenAI mean/std x 255, also used by open_clip).
    cfg.MODEL.OVSEG.CLIP_PIXEL_MEAN = [122.7709383, 116.7460125, 104.09373615]
    cfg.MODEL.OVSEG.CLIP_PIXEL_STD = [68.5005327, 66.6321579, 70.3231630]
    # (H, W) every image is resized to before CLIP, as the official code does (768x768).
    cfg.MODEL.OVSEG.CLIP_RESOLUTION = (768, 768)
    # Prompt template set: "imagenet" (80, kept as separate channels), "imagenet_select", "single".
    cfg.MODEL.OVSEG.PROMPT_TEMPLATES = "imagenet"
    # Autocast dtype of the training forward: "fp32" (off) or "bf16".
    cfg.MODEL.OVSEG.TRAIN_PRECISION = "fp32"
    # Autocast dtype of inference: "fp32" (off, exact) or "bf16".
    cfg.MODEL.OVSEG.TEST_PRECISION = "fp32"
    # Let fp32 matmuls/convolutions use TF32 on Ampere+ GPUs (the official SED enables it).
    cfg.MODEL.OVSEG.ALLOW_TF32 = False
    # Inference on CUDA replays the network from CUDA graphs (bit-identical, no launch overhead).
    cfg.MODEL.OVSEG.CUDA_GRAPHS = True

    # Photometric SSD-style colour augmentation in training (brightness/contrast/saturation/hue).
    cfg.INPUT.COLOR_AUG_SSD = False
    # Crops where one class covers more than this fraction are re-drawn (1.0 = plain random crop).
    cfg.INPUT.CROP.SINGLE_CATEGORY_MAX_AREA = 1.0

    # Learning-rate multiplier of the fine-tuned CLIP parameters.
    cfg.SOLVER.CLIP_MULTIPLIER = 0.01
    # "ADAMW" or "SGD".
    cfg.SOLVER.OPTIMIZER = "ADAMW"
    # SOLVER.CLIP_GRADIENTS.CLIP_TYPE additionally accepts "full_model": one L2 norm over all
    # parameters (the official SED/CAT-Seg recipe), besides detectron2's "value" and "norm".

    # Images per batch at inference (per process). Any size works, CER included.
    cfg.TEST.IMS_PER_BATCH = 1


def add_sed_config(cfg):
    """Keys of SED (CVPR 2024), defaults = the official convnextB_768 recipe."""
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


def add_sed_d2_config(cfg):
    """Add every key of sed_d2 (shared and per method) to a detectron2 config."""
    add_ovseg_config(cfg)
    add_sed_config(cfg)
