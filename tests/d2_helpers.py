"""Helpers for the detectron2 integration tests: CPU-sized configs and the tools as modules."""
from __future__ import annotations

import glob
import importlib.util
import os

import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Every config file shipped under configs/ (bases included), relative to ROOT.
SHIPPED_CONFIGS = sorted(
    os.path.relpath(path, ROOT) for path in glob.glob(os.path.join(ROOT, "configs", "**", "*.yaml"), recursive=True)
)

# Nodes of a method's configs/<m>/tiny.yaml swapped into any config of that method: its tiny,
# download-free CLIP (model, weights, prompts) and the built-in synthetic datasets.
TINY_NODES = ("MODEL.OVSEG", "DATASETS")

# The same for every method: this machine (CPU, no worker processes, no periodic evaluation)
# and test-sized images and batches at a fixed seed.
CPU_TEST_OVERRIDES = [
    "MODEL.DEVICE", "cpu",
    "DATALOADER.NUM_WORKERS", "0",
    "TEST.EVAL_PERIOD", "0",
    "MODEL.OVSEG.CLIP_RESOLUTION", "(64, 64)",
    "INPUT.MIN_SIZE_TRAIN", "(64,)",
    "INPUT.MAX_SIZE_TRAIN", "128",
    "INPUT.MIN_SIZE_TEST", "64",
    "INPUT.MAX_SIZE_TEST", "128",
    "INPUT.CROP.SIZE", "(64, 64)",
    "SOLVER.IMS_PER_BATCH", "2",
    "SEED", "7",
]


def _flatten(node: dict, prefix: str) -> list:
    opts = []
    for key, value in node.items():
        if isinstance(value, dict):
            opts += _flatten(value, f"{prefix}{key}.")
        else:
            # As a command line has them (train_net argv), read back by yacs' literal_eval.
            opts += [f"{prefix}{key}", value if isinstance(value, str) else repr(value)]
    return opts


def _method_tiny_file(config_file: str) -> str:
    """The ``tiny.yaml`` of ``config_file``'s method: in its folder, or in the nearest folder
    above it (ablation leaves live in subfolders of their method's folder)."""
    folder = os.path.dirname(config_file)
    while not os.path.isfile(os.path.join(ROOT, folder, "tiny.yaml")) and os.path.dirname(folder):
        folder = os.path.dirname(folder)
    return os.path.join(ROOT, folder, "tiny.yaml")


def tiny_opts_for(config_file: str) -> list:
    """``KEY VALUE ...`` overrides that turn ``config_file`` (relative to the repository) into a
    CPU-sized run: the :data:`TINY_NODES` that its method's ``tiny.yaml`` (in the same folder,
    or the nearest one above) sets itself, then :data:`CPU_TEST_OVERRIDES`."""
    tiny_file = _method_tiny_file(config_file)
    with open(tiny_file) as f:
        own_layer = yaml.safe_load(f)  # its own keys, not those of its _BASE_
    opts = []
    for node_name in TINY_NODES:
        node = own_layer
        for part in node_name.split("."):
            node = node.get(part, {})
        opts += _flatten(node, node_name + ".")
    return opts + CPU_TEST_OVERRIDES


def tiny_cfg_for(config_file: str, *extra):
    """``config_file`` (relative to the repository) with :func:`tiny_opts_for`, then ``extra``."""
    from sed_d2.config import get_cfg

    return get_cfg(os.path.join(ROOT, config_file), tiny_opts_for(config_file) + list(extra))


def load_tool(name: str):
    """Import ``tools/<name>.py`` as a module (tools/ is scripts, not a package)."""
    path = os.path.join(ROOT, "tools", f"{name}.py")
    spec = importlib.util.spec_from_file_location(f"sed_d2_tools_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def build_tiny_model(config_file: str, *extra: str, seed: int = 0):
    """The detectron2 model of ``config_file`` made CPU-sized (:func:`tiny_cfg_for`, ``extra``
    overrides after it), its random init drawn at ``seed``."""
    import torch
    from detectron2.modeling import build_model

    import sed_d2  # noqa: F401  (registers the meta-architectures)

    torch.manual_seed(seed)
    return build_model(tiny_cfg_for(config_file, *extra))


def build_paper_config_on_meta(config_file: str, monkeypatch) -> tuple:
    """The detectron2 model of a real-size ViT ``config_file`` built on the meta device (no
    memory, no download: ``build_vit_clip``'s CLIP comes from open_clip on the meta device),
    its config, and the ``(model name, pretrained tag)`` pairs it asked the CLIP builder for."""
    import open_clip
    import torch
    from detectron2.modeling import build_model

    import sed_d2  # noqa: F401  (registers the meta-architectures)
    from sed_d2.config import get_cfg

    requested = []

    def clip_on_meta(name, pretrained, **kwargs):
        requested.append((name, pretrained))
        return open_clip.create_model(name, device="meta")

    monkeypatch.setattr("sed_d2.meta_arch.base.build_clip_model", clip_on_meta)  # build_vit_clip's
    cfg = get_cfg(os.path.join(ROOT, config_file), ["MODEL.DEVICE", "meta"])
    with torch.device("meta"):
        model = build_model(cfg)
    return model, cfg, requested


def detectron2_inputs(sizes, with_labels: bool = False, num_classes: int = 8, seed: int = 0) -> list:
    """detectron2 dicts of random uint8 images of ``sizes`` ((h, w) each) with "height"/"width";
    ``with_labels``: also random "sem_seg" labels in ``[0, num_classes)``, a few ignored (255)."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    out = []
    for h, w in sizes:
        x = {"image": torch.randint(0, 256, (3, h, w), generator=generator, dtype=torch.uint8), "height": h, "width": w}
        if with_labels:
            x["sem_seg"] = torch.randint(0, num_classes, (h, w), generator=generator)
            x["sem_seg"][0, :5] = 255  # ignored pixels
        out.append(x)
    return out
