"""Declarative frozen / fine-tuned parameter groups, shared by every method.

A method declares a small table of ``(pattern, group)`` rows. ``pattern`` is a regular
expression matched with :func:`re.match` against the full parameter name (so it is
anchored at the start; end it with ``$`` for an exact name). The first matching row wins.
Groups:

* ``"frozen"`` (:data:`FROZEN_GROUP`): ``requires_grad = False``, not given to the optimizer;
* every key of :data:`LR_MULTIPLIER_KEYS`: trainable, at ``SOLVER.BASE_LR`` times the config
  value named there (``"clip"``: ``SOLVER.CLIP_MULTIPLIER``; ``"decoder"``: the base rate).

A method that trains a part at its own rate (e.g. a ``"backbone"`` group) adds one entry to
:data:`LR_MULTIPLIER_KEYS` and declares that config key.

Every parameter must match a row: a parameter nobody thought about is an error, not a
silent default.
"""

from __future__ import annotations

import re
from typing import Sequence

from torch import nn

__all__ = [
    "FROZEN_GROUP",
    "LR_MULTIPLIER_KEYS",
    "ParameterGroupTable",
    "assign_parameter_groups",
    "match_parameter_groups",
]

FROZEN_GROUP = "frozen"

# Trainable group -> dotted config key of its learning-rate multiplier (None: 1, the base rate).
LR_MULTIPLIER_KEYS: dict[str, str | None] = {
    "clip": "SOLVER.CLIP_MULTIPLIER",
    "decoder": None,
    "backbone": "SOLVER.BACKBONE_MULTIPLIER",
}

ParameterGroupTable = Sequence[tuple[str, str]]


def match_parameter_groups(module: nn.Module, table: ParameterGroupTable) -> dict[str, str]:
    """Map every parameter name of ``module`` to its group (first matching row wins),
    without touching ``requires_grad``.

    Raises:
        ValueError: a row names an unknown group, or a parameter matches no row (the
            message lists the parameters).
    """
    rules = []
    for pattern, group in table:
        if group != FROZEN_GROUP and group not in LR_MULTIPLIER_KEYS:
            raise ValueError(f"unknown parameter group {group!r} for pattern {pattern!r}; "
                             f"expected one of {(FROZEN_GROUP, *LR_MULTIPLIER_KEYS)}")
        rules.append((re.compile(pattern), group))
    groups: dict[str, str] = {}
    unmatched = []
    for name, _ in module.named_parameters():
        for regex, group in rules:
            if regex.match(name):
                groups[name] = group
                break
        else:
            unmatched.append(name)
    if unmatched:
        shown = ", ".join(unmatched[:20]) + (" ..." if len(unmatched) > 20 else "")
        raise ValueError(f"{len(unmatched)} parameter(s) match no parameter-group pattern: {shown}")
    return groups


def assign_parameter_groups(module: nn.Module, table: ParameterGroupTable) -> dict[str, str]:
    """Match the table (see :func:`match_parameter_groups`), set ``requires_grad`` to
    ``False`` for ``"frozen"`` and ``True`` otherwise, and return ``{name: group}``."""
    groups = match_parameter_groups(module, table)
    for name, parameter in module.named_parameters():
        parameter.requires_grad_(groups[name] != FROZEN_GROUP)
    return groups
