"""Declarative frozen / fine-tuned parameter groups, shared by every method.

A method declares a small table of ``(pattern, group)`` rows. ``pattern`` is a regular
expression matched with :func:`re.match` against the full parameter name (so it is
anchored at the start; end it with ``$`` for an exact name). The first matching row wins.
Groups:

* ``"frozen"``: ``requires_grad = False``, not given to the optimizer;
* ``"clip"``: trainable, gets the CLIP learning-rate multiplier in the optimizer;
* ``"decoder"``: trainable, base learning rate.

Every parameter must match a row: a parameter nobody thought about is an error, not a
silent default.
"""

from __future__ import annotations

import re
from typing import Sequence

from torch import nn

__all__ = ["PARAMETER_GROUP_NAMES", "ParameterGroupTable", "assign_parameter_groups", "match_parameter_groups"]

PARAMETER_GROUP_NAMES = ("frozen", "clip", "decoder")

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
        if group not in PARAMETER_GROUP_NAMES:
            raise ValueError(f"unknown parameter group {group!r} for pattern {pattern!r}; "
                             f"expected one of {PARAMETER_GROUP_NAMES}")
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
        parameter.requires_grad_(groups[name] != "frozen")
    return groups
