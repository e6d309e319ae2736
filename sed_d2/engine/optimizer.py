"""Optimizer for the open-vocabulary methods: per-group lr multipliers, weight-decay rules, clipping."""
import functools
import itertools
from typing import Any, Dict, List

import torch
from torch import nn

from ..clip import frozen_rows, keep_frozen_rows
from ..models.parameter_groups import LR_MULTIPLIER_KEYS

__all__ = ["build_optimizer", "build_param_groups"]

# Parameters of these layers get SOLVER.WEIGHT_DECAY_NORM (embeddings get 0).
_NORM_TYPES = (
    nn.BatchNorm1d,
    nn.BatchNorm2d,
    nn.BatchNorm3d,
    nn.SyncBatchNorm,
    nn.GroupNorm,
    nn.InstanceNorm1d,
    nn.InstanceNorm2d,
    nn.InstanceNorm3d,
    nn.LayerNorm,
    nn.LocalResponseNorm,
)


def _parameter_groups_of(model: nn.Module) -> Dict[str, str]:
    groups = getattr(model, "parameter_groups", None)
    if groups is None:
        raise AttributeError(
            f"{type(model).__name__} has no 'parameter_groups' (parameter name -> group); "
            "every sed_d2 meta-architecture declares one"
        )
    return groups


def build_param_groups(cfg, model: nn.Module) -> List[Dict[str, Any]]:
    """Group trainable parameters by (learning rate, weight decay).

    * lr: SOLVER.BASE_LR times the multiplier that ``LR_MULTIPLIER_KEYS`` names for the
      parameter's group (SOLVER.CLIP_MULTIPLIER for "clip", none for "decoder").
    * weight decay: SOLVER.WEIGHT_DECAY, but SOLVER.WEIGHT_DECAY_NORM for parameters of
      normalisation layers and 0 for embeddings (frozen in every method anyway).
    Frozen parameters (requires_grad False) are left out.
    """
    groups_by_name = _parameter_groups_of(model)
    # every group's multiplier is read, used or not: a config key is validated the same for
    # every method (and the recording dead-key test sees them read)
    multipliers = {
        group: 1.0 if key is None else functools.reduce(getattr, key.split("."), cfg)
        for group, key in LR_MULTIPLIER_KEYS.items()
    }
    buckets: Dict[tuple, List[nn.Parameter]] = {}
    seen = set()
    for module_name, module in model.named_modules():
        for param_name, param in module.named_parameters(recurse=False):
            if not param.requires_grad or id(param) in seen:
                continue
            seen.add(id(param))
            full_name = f"{module_name}.{param_name}" if module_name else param_name
            group = groups_by_name.get(full_name)
            if group is None:
                raise KeyError(f"parameter '{full_name}' is in no parameter group of the model")
            if group not in LR_MULTIPLIER_KEYS:
                raise KeyError(f"trainable parameter '{full_name}' is in group {group!r}, which has no "
                               "learning rate (sed_d2.models.parameter_groups.LR_MULTIPLIER_KEYS)")
            lr = cfg.SOLVER.BASE_LR
            if LR_MULTIPLIER_KEYS[group] is not None:
                lr *= multipliers[group]
            weight_decay = cfg.SOLVER.WEIGHT_DECAY
            if isinstance(module, _NORM_TYPES):
                weight_decay = cfg.SOLVER.WEIGHT_DECAY_NORM
            elif isinstance(module, nn.Embedding):
                weight_decay = 0.0
            buckets.setdefault((group, lr, weight_decay), []).append(param)
    return [
        {"params": params, "lr": lr, "weight_decay": wd, "name": f"{group}/wd={wd:g}"}
        for (group, lr, wd), params in buckets.items()
    ]


def _with_full_model_clipping(optimizer_cls, max_norm: float, norm_type: float):
    """Subclass ``optimizer_cls`` so each step first clips the L2 norm of ALL its gradients."""

    class FullModelGradientClippingOptimizer(optimizer_cls):
        def step(self, closure=None):
            all_params = itertools.chain(*[g["params"] for g in self.param_groups])
            torch.nn.utils.clip_grad_norm_(all_params, max_norm, norm_type=norm_type)
            return super().step(closure=closure)

    FullModelGradientClippingOptimizer.__name__ = f"FullModelClipped{optimizer_cls.__name__}"
    return FullModelGradientClippingOptimizer


def build_optimizer(cfg, model: nn.Module) -> torch.optim.Optimizer:
    """AdamW (or SGD) over :func:`build_param_groups`, with detectron2's gradient clipping
    types plus "full_model" (one norm over every parameter, the official SED recipe), and
    :func:`sed_d2.clip.keep_frozen_rows` where a parameter is trained only in part."""
    from detectron2.solver.build import maybe_add_gradient_clipping

    name = cfg.SOLVER.OPTIMIZER.upper()
    if name == "ADAMW":
        optimizer_cls, kwargs = torch.optim.AdamW, {}
    elif name == "SGD":
        optimizer_cls, kwargs = torch.optim.SGD, {"momentum": cfg.SOLVER.MOMENTUM}
    else:
        raise ValueError(f"SOLVER.OPTIMIZER must be 'ADAMW' or 'SGD', got {cfg.SOLVER.OPTIMIZER!r}")

    clip_cfg = cfg.SOLVER.CLIP_GRADIENTS
    if clip_cfg.ENABLED and clip_cfg.CLIP_TYPE == "full_model":
        optimizer_cls = _with_full_model_clipping(
            optimizer_cls, clip_cfg.CLIP_VALUE, clip_cfg.NORM_TYPE
        )
    else:
        optimizer_cls = maybe_add_gradient_clipping(cfg, optimizer_cls)
    param_groups = build_param_groups(cfg, model)
    optimizer = optimizer_cls(param_groups, lr=cfg.SOLVER.BASE_LR, **kwargs)
    # Tensors trained only in part (CLIP_FINETUNE "attention": the k rows of the fused q/k/v
    # projection stay frozen) are restored around every step, so weight decay cannot move
    # those rows; optimizers without such tensors get no hooks.
    if any(frozen_rows(p) is not None for group in param_groups for p in group["params"]):
        keep_frozen_rows(optimizer)
    return optimizer
