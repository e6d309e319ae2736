"""Every config key sed_d2 reads, and the one way tools build and apply a config.

Keys shared by all methods (``MODEL.OVSEG`` and the few new ``INPUT``/``SOLVER``/``TEST`` keys)
are declared in ``common.py``; each method declares its own node (``MODEL.SED``, ...) in its
own module. Each key is declared once with a one-line meaning; ``tests/config`` fails if a
declared key is never read while building and training the shipped configs.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
from detectron2.config import CfgNode
from detectron2.config import get_cfg as detectron2_get_cfg

from .catseg import add_catseg_config
from .clip_hbd import add_clip_hbd_config
from .common import add_ovseg_config
from .dcp_clip import add_dcp_clip_config
from .fgaseg import add_fgaseg_config
from .sed import add_sed_config
from .synseg import add_synseg_config

__all__ = ["add_sed_d2_config", "get_cfg", "apply_runtime_flags"]


def add_sed_d2_config(cfg: CfgNode) -> None:
    """Add every key of sed_d2 (shared and per method) to a detectron2 config."""
    add_ovseg_config(cfg)
    add_sed_config(cfg)
    add_catseg_config(cfg)
    add_fgaseg_config(cfg)
    add_clip_hbd_config(cfg)
    add_dcp_clip_config(cfg)
    add_synseg_config(cfg)


def get_cfg(config_file: Optional[str] = None, opts: Sequence[str] = ()) -> CfgNode:
    """Detectron2's defaults + sed_d2's keys, then ``config_file``, then ``opts`` (KEY VALUE ...).

    The result is not frozen: callers adjust it, then freeze.
    """
    cfg = detectron2_get_cfg()
    add_sed_d2_config(cfg)
    if config_file:
        cfg.merge_from_file(config_file)
    cfg.merge_from_list(list(opts))
    return cfg


def apply_runtime_flags(cfg: CfgNode, *, training: bool = False) -> None:
    """Set the process-wide switches a config asks for, the same in every tool.

    TF32 (``MODEL.OVSEG.ALLOW_TF32``): the official SED trains and evaluates with TF32 matmuls;
    sed_d2 keeps exact fp32 unless asked. cuDNN autotuning (``CUDNN_BENCHMARK``) in training
    only, as detectron2's ``default_setup`` does: at inference every new input shape would pay
    the search. ``MODEL.OVSEG.FAST_OPS`` turns every Triton fast path on or off
    (``SED_D2_FAST_OPS=0`` in the environment keeps them off whatever the config says).
    """
    from sed_d2 import ops  # here, not at module level: sed_d2.ops imports Triton when present

    torch.backends.cuda.matmul.allow_tf32 = cfg.MODEL.OVSEG.ALLOW_TF32
    torch.backends.cudnn.allow_tf32 = cfg.MODEL.OVSEG.ALLOW_TF32
    torch.backends.cudnn.benchmark = training and cfg.CUDNN_BENCHMARK
    ops.set_enabled(cfg.MODEL.OVSEG.FAST_OPS)
