"""Which parameters of an open_clip model train: ``MODEL.OVSEG.CLIP_FINETUNE`` of the CAT-Seg family.

The official CAT-Seg rule (``CATSeg.__init__``), over the names of both towers:

* ``"attention"``: in every attention block of both towers (parameter names containing
  "transformer"), the q and v projection weights train; k, the input-projection bias, the
  output projection and everything else of CLIP stay frozen.
* ``"full"``: every parameter whose name contains "transformer" (the blocks of both
  towers); embeddings, ``ln_pre`` / ``ln_post`` / ``ln_final``, projections frozen.
* ``"frozen"``: nothing of CLIP trains.

(The official rule also unfreezes names containing both "transformer" and "position";
no parameter has such a name, in OpenAI's CLIP or open_clip's.)

open_clip keeps q, k and v of a block in one tensor, ``attn.in_proj_weight`` (3W, W) with
rows ``[q; k; v]``, where the official vendored CLIP splits it into three. The tensor is
therefore trainable as a whole, and its k rows ``[W, 2W)`` are kept frozen twice over:

1. a gradient hook on the tensor zeroes the k rows of its gradient before it is
   accumulated: gradient clipping, DDP's all-reduce and the optimizer's moments see what
   they see officially, a frozen k that has no gradient;
2. a zero gradient does not keep a row still: AdamW's decoupled weight decay
   ``p -= lr * wd * p`` shrinks it anyway (as would SGD's coupled decay or momentum left
   over from before). So :func:`keep_frozen_rows` hooks the optimizer: each ``step()``
   copies the k rows aside first and writes them back afterwards. The rows come back
   bit-identical whatever the optimizer, its groups' learning rate and weight decay, or
   the schedule; the q and v rows get exactly AdamW's elementwise update of the official
   separate ``q_proj_weight`` / ``v_proj_weight`` tensors (weight decay included). This was
   chosen over "weight decay 0 for the fused tensor plus a hand-written decay of the q/v
   rows", which is exact for AdamW only and would tie the optimizer builder to this rule.
   The copy costs the k rows' memory once (ViT-B/16 + text: 40 MB in fp32; ViT-L/14: 130
   MB) and one copy per step.

Use (the optimizer builder's side)::

    groups = apply_clip_finetune(clip_model, "attention")  # at model build: requires_grad + masks
    optimizer = build_optimizer(model)                      # q/v tensors in the CLIP lr group
    keep_frozen_rows(optimizer)                             # once, after building it

The masks belong to the parameter objects: a deep copy of the model (e.g. an EMA copy
that trains) has neither the gradient hook nor the row registration; call
:func:`apply_clip_finetune` on the copy. ``Module.to()`` keeps them.
"""

from __future__ import annotations

from typing import Any, Iterable, NamedTuple

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle
from torch.utils.weak import WeakIdKeyDictionary

__all__ = ["CLIP_FINETUNE_MODES", "StepHooks", "apply_clip_finetune", "frozen_rows", "keep_frozen_rows"]

CLIP_FINETUNE_MODES = ("attention", "full", "frozen")

# Substring of the names of the tower transformers' parameters (official rule).
_TRANSFORMER = "transformer"


class _FrozenRows(NamedTuple):
    rows: slice
    gradient_hook: RemovableHandle


# Parameter -> the rows of it that must not change, with its gradient hook. Keyed by
# identity and held weakly: dropping the model drops its entries.
_FROZEN_ROWS: WeakIdKeyDictionary = WeakIdKeyDictionary()


def apply_clip_finetune(clip_model: nn.Module, mode: str) -> dict[str, str]:
    """Set ``requires_grad`` of every CLIP parameter for ``mode`` and, for ``"attention"``,
    install the k-row gradient masks (replacing those of an earlier call).

    Args:
        clip_model: an open_clip ``CLIP`` / ``CustomTextCLIP`` (both towers).
        mode: one of :data:`CLIP_FINETUNE_MODES`.

    Returns:
        ``{parameter name (relative to clip_model): "clip" | "frozen"}``, in the group
        names of :mod:`sed_d2.models.parameter_groups`. A ``"clip"`` tensor of mode
        ``"attention"`` is a fused ``in_proj_weight`` whose k rows stay frozen
        (:func:`frozen_rows`).

    Raises:
        ValueError: unknown mode, or ``"attention"`` on a model without fused q/k/v
            attention blocks.
    """
    if mode not in CLIP_FINETUNE_MODES:
        raise ValueError(f"CLIP fine-tuning mode must be one of {CLIP_FINETUNE_MODES}, got {mode!r}")
    attention_weights = {
        f"{module_name}.in_proj_weight": module
        for module_name, module in clip_model.named_modules()
        if _TRANSFORMER in module_name and isinstance(module, nn.MultiheadAttention)
    }
    for module in attention_weights.values():
        _unmask(module.in_proj_weight)

    groups = {}
    for name, parameter in clip_model.named_parameters():
        if mode == "attention":
            trainable = name in attention_weights
        else:
            trainable = mode == "full" and _TRANSFORMER in name
        parameter.requires_grad_(trainable)
        groups[name] = "clip" if trainable else "frozen"

    if mode == "attention":
        if not attention_weights:
            raise ValueError(
                f"CLIP fine-tuning mode 'attention' needs nn.MultiheadAttention blocks in the towers' "
                f"transformers; {type(clip_model).__name__} has none"
            )
        for name, module in attention_weights.items():
            if not module._qkv_same_embed_dim:
                raise ValueError(f"{name}: q/k/v projections are not fused in in_proj_weight")
            width = module.embed_dim
            _mask(module.in_proj_weight, slice(width, 2 * width))
    return groups


def frozen_rows(parameter: Tensor) -> slice | None:
    """The rows of ``parameter`` that :func:`apply_clip_finetune` keeps frozen, or None."""
    entry = _FROZEN_ROWS.get(parameter)
    return None if entry is None else entry.rows


def keep_frozen_rows(optimizer: torch.optim.Optimizer) -> StepHooks:
    """Make every ``optimizer.step()`` leave the frozen rows of its parameters
    bit-identical (see the module docstring): the rows are copied aside before the
    step and written back after it.

    Call once, after the optimizer is built (its parameter groups are read on every
    step, so groups added later are covered too). Calling it for an optimizer without
    such parameters is harmless. Returns the hooks' handles (``remove()`` drops both).
    """
    saved: dict[int, Tensor] = {}

    def masked_parameters() -> Iterable[tuple[Tensor, slice]]:
        for group in optimizer.param_groups:
            for parameter in group["params"]:
                rows = frozen_rows(parameter)
                if rows is not None:
                    yield parameter, rows

    @torch.no_grad()
    def save_rows(opt: Any, args: Any, kwargs: Any) -> None:
        saved.clear()
        for parameter, rows in masked_parameters():
            saved[id(parameter)] = parameter[rows].clone()

    @torch.no_grad()
    def restore_rows(opt: Any, args: Any, kwargs: Any) -> None:
        # Some optimizers wrap step() in a subclass (detectron2's gradient clipping), which
        # runs both hooks twice around the same step: restoring is idempotent, so is this.
        for parameter, rows in masked_parameters():
            kept = saved.get(id(parameter))
            if kept is not None:
                parameter[rows].copy_(kept)

    return StepHooks(optimizer.register_step_pre_hook(save_rows), optimizer.register_step_post_hook(restore_rows))


class StepHooks(NamedTuple):
    """The optimizer hooks installed by :func:`keep_frozen_rows`."""

    save: RemovableHandle
    restore: RemovableHandle

    def remove(self) -> None:
        self.save.remove()
        self.restore.remove()


# ---------------------------------------------------------------------------------------


def _mask(parameter: Tensor, rows: slice) -> None:
    def zero_rows(gradient: Tensor) -> Tensor:
        gradient = gradient.clone()  # a hook must not modify its argument
        gradient[rows] = 0
        return gradient

    _FROZEN_ROWS[parameter] = _FrozenRows(rows, parameter.register_hook(zero_rows))


def _unmask(parameter: Tensor) -> None:
    entry = _FROZEN_ROWS.pop(parameter, None)
    if entry is not None:
        entry.gradient_hook.remove()

