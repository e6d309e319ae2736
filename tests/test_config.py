"""Every shipped config merges, and every key sed_d2 declares is read somewhere."""
import glob
import os
import re

import pytest

from tests.conftest import requires_detectron2

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = sorted(glob.glob(os.path.join(ROOT, "configs", "**", "*.yaml"), recursive=True))


def _new_cfg():
    from detectron2.config import get_cfg

    from sed_d2.config import add_sed_d2_config

    cfg = get_cfg()
    add_sed_d2_config(cfg)
    return cfg


def test_configs_exist():
    names = {os.path.relpath(p, ROOT) for p in CONFIGS}
    assert {"configs/sed/convnextB_768.yaml", "configs/sed/convnextL_768.yaml",
            "configs/sed/tiny.yaml"} <= names


@requires_detectron2
@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: os.path.relpath(p, ROOT))
def test_config_merges(path):
    cfg = _new_cfg()
    cfg.merge_from_file(path)
    assert cfg.MODEL.META_ARCHITECTURE


@requires_detectron2
def test_paper_recipe_values():
    cfg = _new_cfg()
    cfg.merge_from_file(os.path.join(ROOT, "configs/sed/convnextB_768.yaml"))
    assert cfg.SOLVER.IMS_PER_BATCH == 4 and cfg.SOLVER.MAX_ITER == 80000
    assert cfg.SOLVER.BASE_LR == 2e-4 and cfg.SOLVER.WEIGHT_DECAY == 1e-4
    assert cfg.SOLVER.LR_SCHEDULER_NAME == "WarmupCosineLR" and cfg.SOLVER.OPTIMIZER == "ADAMW"
    assert cfg.SOLVER.CLIP_MULTIPLIER == 0.01
    assert tuple(cfg.INPUT.CROP.SIZE) == (768, 768) and cfg.INPUT.MIN_SIZE_TEST == 640
    assert tuple(cfg.MODEL.OVSEG.CLIP_RESOLUTION) == (768, 768)
    cfg_l = _new_cfg()
    cfg_l.merge_from_file(os.path.join(ROOT, "configs/sed/convnextL_768.yaml"))
    assert cfg_l.MODEL.OVSEG.CLIP_MODEL == "convnext_large_d_320"
    assert cfg_l.MODEL.OVSEG.CLIP_PRETRAINED == "laion2b_s29b_b131k_ft_soup"


def _declared_keys():
    """(node, key) pairs assigned in sed_d2/config.py, e.g. ("SED", "CER_TOPK")."""
    src = open(os.path.join(ROOT, "sed_d2", "config.py")).read()
    return sorted(set(re.findall(r"cfg\.(?:[A-Z_]+\.)*?([A-Z_]+)\.([A-Z0-9_]+) = (?!CN\(\))", src)))


def test_every_declared_key_is_read():
    sources = []
    for folder in ("sed_d2", "tools"):
        for path in glob.glob(os.path.join(ROOT, folder, "**", "*.py"), recursive=True):
            if not path.endswith(os.path.join("sed_d2", "config.py")):
                sources.append(open(path).read())
    code = "\n".join(sources)
    keys = _declared_keys()
    assert len(keys) > 20
    unread = [f"{node}.{key}" for node, key in keys if not re.search(rf"\.{key}\b", code)]
    assert not unread, f"config keys declared but never read: {unread}"
