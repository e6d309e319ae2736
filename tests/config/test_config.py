"""Shipped configs, sed_d2.config.get_cfg and apply_runtime_flags."""
import os

import pytest
import torch
import yaml

from tests.conftest import requires_detectron2
from tests.d2_helpers import ROOT, SHIPPED_CONFIGS

pytestmark = requires_detectron2

# Keys a config may set to the value it would inherit anyway: they name what the file is
# (detectron2's configs do the same, e.g. MODEL.RESNETS.DEPTH: 50), or, in tiny.yaml, the
# download-free CLIP that tests swap into every config of the method (tests/d2_helpers.py).
IDENTITY_KEYS = {"VERSION", "MODEL.OVSEG.CLIP_MODEL", "MODEL.OVSEG.CLIP_PRETRAINED"}


def _config(path, opts=()):
    from sed_d2.config import get_cfg

    return get_cfg(os.path.join(ROOT, path) if path else None, opts)


def test_configs_exist():
    assert {"configs/sed/Base-SED.yaml", "configs/sed/convnextB_768.yaml", "configs/sed/convnextL_768.yaml",
            "configs/sed/tiny.yaml"} <= set(SHIPPED_CONFIGS)


def test_get_cfg_merges_defaults_then_file_then_opts():
    from detectron2.config import get_cfg as detectron2_get_cfg

    defaults = _config(None)
    assert defaults.MODEL.SED.HIDDEN_DIM == 128 and defaults.MODEL.OVSEG.FAST_OPS is True
    assert defaults.SOLVER.MAX_ITER == detectron2_get_cfg().SOLVER.MAX_ITER
    tiny = _config("configs/sed/tiny.yaml", ["MODEL.SED.HIDDEN_DIM", "8", "SOLVER.BASE_LR", 0.5])
    assert tiny.MODEL.SED.HIDDEN_DIM == 8 and tiny.SOLVER.BASE_LR == 0.5  # opts last
    assert tiny.MODEL.SED.KERNEL_SIZE == 5  # the file over the defaults
    assert tiny.SOLVER.LR_SCHEDULER_NAME == "WarmupCosineLR"  # its _BASE_ too
    assert not tiny.is_frozen()


def test_paper_recipe_values():
    cfg = _config("configs/sed/convnextB_768.yaml")
    assert cfg.SOLVER.IMS_PER_BATCH == 4 and cfg.SOLVER.MAX_ITER == 80000
    assert cfg.SOLVER.BASE_LR == 2e-4 and cfg.SOLVER.WEIGHT_DECAY == 1e-4
    assert cfg.SOLVER.LR_SCHEDULER_NAME == "WarmupCosineLR" and cfg.SOLVER.OPTIMIZER == "ADAMW"
    assert cfg.SOLVER.CLIP_MULTIPLIER == 0.01
    assert cfg.SOLVER.CLIP_GRADIENTS.CLIP_TYPE == "full_model" and cfg.SOLVER.CLIP_GRADIENTS.CLIP_VALUE == 0.01
    assert tuple(cfg.INPUT.CROP.SIZE) == (768, 768) and cfg.INPUT.MIN_SIZE_TEST == 640
    assert tuple(cfg.MODEL.OVSEG.CLIP_RESOLUTION) == (768, 768)
    assert cfg.MODEL.OVSEG.CLIP_FINETUNE == "full" and cfg.MODEL.OVSEG.PROMPT_TEMPLATES == "imagenet"
    assert tuple(cfg.MODEL.SED.DECODER_DIMS) == (64, 32, 16) and tuple(cfg.MODEL.SED.SKIP_PROJ_DIMS) == (32, 16, 8)
    assert tuple(cfg.MODEL.SED.POOLING_SIZE) == (2, 2) and tuple(cfg.MODEL.SED.TEST_POOLING_SIZE) == (1, 1)
    large = _config("configs/sed/convnextL_768.yaml")
    assert large.MODEL.OVSEG.CLIP_MODEL == "convnext_large_d_320"
    assert large.MODEL.OVSEG.CLIP_PRETRAINED == "laion2b_s29b_b131k_ft_soup"
    assert large.MODEL.OVSEG.CLIP_DROP_PATH_RATE == 0.1 and large.MODEL.OVSEG.CLIP_HEAD_DROPOUT == 0.1


def _own_keys(node, prefix=""):
    for key, value in node.items():
        if isinstance(value, dict):
            yield from _own_keys(value, f"{prefix}{key}.")
        elif key != "_BASE_":
            yield prefix + key


def _value(cfg, key):
    for part in key.split("."):
        cfg = cfg[part]
    return cfg


@pytest.mark.parametrize("path", SHIPPED_CONFIGS)
def test_config_sets_only_what_changes_the_experiment(path):
    """detectron2's configs.md: a key equal to what the file would inherit (defaults or
    _BASE_) is left out."""
    with open(os.path.join(ROOT, path)) as f:
        own = yaml.safe_load(f)
    base = own.get("_BASE_")
    inherited = _config(os.path.join(os.path.dirname(path), base) if base else None)
    resolved = _config(path)
    assert resolved.MODEL.META_ARCHITECTURE
    repeated = [
        key for key in _own_keys(own)
        if key not in IDENTITY_KEYS and _value(inherited, key) == _value(resolved, key)
    ]
    assert not repeated, f"{path} repeats inherited values: {repeated}"


@pytest.mark.parametrize("allow_tf32", [True, False])
def test_apply_runtime_flags(restore_runtime_flags, allow_tf32):
    from sed_d2 import ops
    from sed_d2.config import apply_runtime_flags

    cfg = _config("configs/sed/tiny.yaml", ["MODEL.OVSEG.ALLOW_TF32", allow_tf32, "MODEL.OVSEG.FAST_OPS", allow_tf32])
    assert cfg.CUDNN_BENCHMARK
    apply_runtime_flags(cfg, training=True)
    assert torch.backends.cuda.matmul.allow_tf32 is allow_tf32 and torch.backends.cudnn.allow_tf32 is allow_tf32
    assert ops.enabled() is allow_tf32
    assert torch.backends.cudnn.benchmark is True
    apply_runtime_flags(cfg)  # inference: no cuDNN autotuning, as detectron2's default_setup
    assert torch.backends.cudnn.benchmark is False
