"""Config keys shared by every open-vocabulary method: ``MODEL.OVSEG`` and the few new keys
under detectron2's ``INPUT``, ``SOLVER`` and ``TEST``."""
from __future__ import annotations

from detectron2.config import CfgNode as CN


def add_ovseg_config(cfg: CN) -> None:
    """Keys shared by every open-vocabulary method: CLIP, prompts, precision, input, solver."""
    cfg.MODEL.OVSEG = CN()
    # open_clip architecture name, e.g. "convnext_base_w_320", "convnext_large_d_320".
    cfg.MODEL.OVSEG.CLIP_MODEL = "convnext_base_w_320"
    # open_clip pretrained tag (downloaded by open_clip) or a local file path; "" = random init.
    cfg.MODEL.OVSEG.CLIP_PRETRAINED = ""
    # What of CLIP trains (sed_d2/clip/finetune.py): "full" (the image tower: SED), "attention"
    # (q/v projections of every block of both towers: CAT-Seg) or "frozen".
    cfg.MODEL.OVSEG.CLIP_FINETUNE = "full"
    # True lets MODEL.WEIGHTS leave model tensors missing or shape-mismatched (fine-tuning from
    # another model; the load is summarised in the log); False refuses such a file.
    cfg.MODEL.OVSEG.ALLOW_PARTIAL_WEIGHTS = False
    # Stochastic depth of the image trunk in training (official SED: 0.0 for B, 0.1 for L).
    cfg.MODEL.OVSEG.CLIP_DROP_PATH_RATE = 0.0
    # Dropout inside the image projection head in training (official SED: 0.0 for B, 0.1 for L).
    cfg.MODEL.OVSEG.CLIP_HEAD_DROPOUT = 0.0
    # CLIP normalisation of 0-255 RGB pixels (OpenAI mean/std x 255, also used by open_clip).
    cfg.MODEL.OVSEG.CLIP_PIXEL_MEAN = [122.7709383, 116.7460125, 104.09373615]
    cfg.MODEL.OVSEG.CLIP_PIXEL_STD = [68.5005327, 66.6321579, 70.3231630]
    # (H, W) every image is resized to before CLIP, as the official code does (768x768).
    cfg.MODEL.OVSEG.CLIP_RESOLUTION = (768, 768)
    # Prompt template set (sed_d2/clip/templates.py): "imagenet" (80, kept as separate channels),
    # "imagenet_select" (8), "single", "clip_photo", "class_name", "tcl_custom" (TCL's 9),
    # "fgaseg_paper" (1). SynSeg averages a set's templates; FGAseg needs a one-template set.
    cfg.MODEL.OVSEG.PROMPT_TEMPLATES = "imagenet"
    # Synonyms in one class name ("a, b"): "mean" of their embeddings (SED) or the "first" only (CAT-Seg).
    cfg.MODEL.OVSEG.SYNONYM_RULE = "mean"
    # Autocast dtype of the training forward: "fp32" (off) or "bf16".
    cfg.MODEL.OVSEG.TRAIN_PRECISION = "fp32"
    # Autocast dtype of inference: "fp32" (off, exact) or "bf16".
    cfg.MODEL.OVSEG.TEST_PRECISION = "fp32"
    # Let fp32 matmuls/convolutions use TF32 on Ampere+ GPUs (the official SED enables it).
    cfg.MODEL.OVSEG.ALLOW_TF32 = False
    # Inference on CUDA replays the network from CUDA graphs (bit-identical, no launch overhead).
    cfg.MODEL.OVSEG.CUDA_GRAPHS = True
    # False runs every fast GPU path (Triton kernels) as plain PyTorch.
    cfg.MODEL.OVSEG.FAST_OPS = True
    # Score of the constant background channel on datasets whose background is not prompted
    # (metadata background_handling "unprompted_class": VOC-21, COCO-Object; TCL's eval 0.4).
    cfg.MODEL.OVSEG.BACKGROUND_THRESHOLD = 0.4

    # Training mapper (sed_d2/data/mappers.py TRAIN_MAPPERS): "semantic_segmentation" (image +
    # label map) or "image_caption" (image + noun phrases, SynSeg).
    cfg.INPUT.DATASET_MAPPER_NAME = "semantic_segmentation"
    # Photometric SSD-style colour augmentation in training (brightness/contrast/saturation/hue).
    cfg.INPUT.COLOR_AUG_SSD = False
    # Crops where one class covers more than this fraction are re-drawn (1.0 = plain random crop).
    cfg.INPUT.CROP.SINGLE_CATEGORY_MAX_AREA = 1.0

    # Learning-rate multiplier of the fine-tuned CLIP parameters.
    cfg.SOLVER.CLIP_MULTIPLIER = 0.01
    # Learning-rate multiplier of a pretrained image backbone beside CLIP (CLIP-HBD's ConvNeXt;
    # group "backbone"); 0.1 is Mask2Former's backbone multiplier.
    cfg.SOLVER.BACKBONE_MULTIPLIER = 0.1
    # "ADAMW" or "SGD".
    cfg.SOLVER.OPTIMIZER = "ADAMW"
    # SOLVER.CLIP_GRADIENTS.CLIP_TYPE additionally accepts "full_model": one L2 norm over all
    # parameters (the official SED/CAT-Seg recipe), besides detectron2's "value" and "norm".

    # Images per batch at inference (per process). Any size works, CER included.
    cfg.TEST.IMS_PER_BATCH = 1
    # Test protocol (sed_d2/meta_arch/inference.py): "whole" (resize to CLIP_RESOLUTION, SED)
    # or "sliding_window" (windows + global view, merged; CAT-Seg's eval.sh, SynSeg's views).
    cfg.TEST.PROTOCOL = "whole"
    cfg.TEST.SLIDING_WINDOW = CN()
    # (H, W) the image is resized to before the windows (CAT-Seg: 640x640); [] = native size.
    cfg.TEST.SLIDING_WINDOW.IMAGE_SIZE = []
    # (h, w) window and stride (CAT-Seg: 384 and int(384 * (1 - 0.333)) = 256); [] = use GRID.
    cfg.TEST.SLIDING_WINDOW.WINDOW = []
    cfg.TEST.SLIDING_WINDOW.STRIDE = []
    # (rows, cols) of equal non-overlapping tiles, used when WINDOW is empty (SynSeg: 2x2).
    cfg.TEST.SLIDING_WINDOW.GRID = []
    # Also run the whole image as one view and merge it with the windows.
    cfg.TEST.SLIDING_WINDOW.GLOBAL_VIEW = True
    # (h, w) the whole image is resized to for the global view (CAT-Seg: 384); [] = IMAGE_SIZE.
    cfg.TEST.SLIDING_WINDOW.GLOBAL_SIZE = []
    # "mean": (windows + global) / 2 (CAT-Seg); "max": element-wise maximum.
    cfg.TEST.SLIDING_WINDOW.MERGE = "mean"
    # PAMR (sed_d2/layers/pamr.py), TCL's test-time refinement: each view's scores at the network's
    # output size, before the views merge and the background channel is added; any method, off.
    cfg.TEST.PAMR = CN()
    # Refine the scores with PAMR (SynSeg's paper does not: off; on = TCL's protocol).
    cfg.TEST.PAMR.ENABLED = False
    # Refinement steps (TCL: 10).
    cfg.TEST.PAMR.ITERS = 10
    # Dilations of the 3x3 neighbourhoods, all used together (TCL: [1, 2, 4, 8, 12, 24]).
    cfg.TEST.PAMR.DILATIONS = [1, 2, 4, 8, 12, 24]
    # Also report boundary IoU per class and its mean (mBoundaryIoU, sed_d2/engine/metrics.py)
    # next to mIoU; off by default: it costs a CPU pass per image (CLIP-HBD's configs ask for it).
    cfg.TEST.BOUNDARY_IOU = False
