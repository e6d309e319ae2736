"""Helpers for the detectron2 integration tests: tiny configs and the train_net entry point."""
import importlib.util
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Overrides that turn any shipped SED config into a CPU-sized one: tiny random-init CLIP,
# the built-in synthetic dataset, small crops, no worker processes.
TINY_OVERRIDES = [
    "MODEL.DEVICE", "cpu",
    "MODEL.OVSEG.CLIP_MODEL", "sed_d2_tiny_convnext",
    "MODEL.OVSEG.CLIP_PRETRAINED", "",
    "MODEL.OVSEG.CLIP_RESOLUTION", "(64, 64)",
    "MODEL.OVSEG.PROMPT_TEMPLATES", "imagenet_select",
    "DATASETS.TRAIN", "('sed_d2_synthetic_train',)",
    "DATASETS.TEST", "('sed_d2_synthetic_val',)",
    "INPUT.MIN_SIZE_TRAIN", "(64,)",
    "INPUT.MAX_SIZE_TRAIN", "128",
    "INPUT.MIN_SIZE_TEST", "64",
    "INPUT.MAX_SIZE_TEST", "128",
    "INPUT.CROP.SIZE", "(64, 64)",
    "SOLVER.IMS_PER_BATCH", "2",
    "DATALOADER.NUM_WORKERS", "0",
    "TEST.EVAL_PERIOD", "0",
    "SEED", "7",
]


def tiny_cfg(config_file: str, *extra):
    from detectron2.config import get_cfg

    from sed_d2.config import add_sed_d2_config

    cfg = get_cfg()
    add_sed_d2_config(cfg)
    cfg.merge_from_file(os.path.join(ROOT, config_file))
    cfg.merge_from_list(TINY_OVERRIDES + list(extra))
    return cfg


def load_tool(name: str):
    """Import ``tools/<name>.py`` as a module (tools/ is scripts, not a package)."""
    path = os.path.join(ROOT, "tools", f"{name}.py")
    spec = importlib.util.spec_from_file_location(f"sed_d2_tools_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
