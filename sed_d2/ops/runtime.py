"""What every fast op shares: the Triton import, when the kernels may run, and the dtype rules.

* ``triton`` / ``tl``: the Triton modules, or ``None`` where Triton is not installed (it ships
  with CUDA builds of PyTorch; elsewhere every op runs its PyTorch reference).
* :func:`enabled` / :func:`set_enabled`: the one switch over every Triton fast path, like
  timm's ``TIMM_FUSED_ATTN``. ``SED_D2_FAST_OPS=0`` in the environment (read once, at import)
  turns them all off for the process, whatever :func:`set_enabled` or a config later asks:
  the way to rule the kernels out when a result looks wrong on a GPU. Tools set the switch
  from ``MODEL.OVSEG.FAST_OPS`` (:func:`sed_d2.config.apply_runtime_flags`).
* :func:`available`: whether the kernels may run for a tensor (the first check of every
  op's ``*_applies`` predicate).
* :data:`FLOAT_DTYPES`, :func:`autocast_dtype`, :func:`operand_dtype`: the dtypes the kernels
  take and the dtype PyTorch's own op would compute in (autocast casts every floating operand).
* :func:`needs_autograd`: whether a call must record an autograd graph.
"""

from __future__ import annotations

import os

import torch
from torch import Tensor

try:
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - depends on the installation
    triton = None
    tl = None

__all__ = [
    "FLOAT_DTYPES",
    "autocast_dtype",
    "available",
    "enabled",
    "needs_autograd",
    "operand_dtype",
    "set_enabled",
    "tl",
    "triton",
]

# The kernels run on CPU tensors too when Triton interprets them (tests; read at import, as
# Triton reads it).
_INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
# The environment's veto: SED_D2_FAST_OPS=0 keeps every fast path off in this process.
_ALLOWED_BY_ENVIRONMENT = os.environ.get("SED_D2_FAST_OPS", "1") != "0"
_switch = True

FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def enabled() -> bool:
    """Whether the fast paths are on: :func:`set_enabled`'s last value (default True), and
    ``SED_D2_FAST_OPS`` is not ``0``."""
    return _switch and _ALLOWED_BY_ENVIRONMENT


def set_enabled(flag: bool) -> None:
    """Turn every fast path on or off for this process (``SED_D2_FAST_OPS=0`` still wins)."""
    global _switch
    _switch = bool(flag)


def available(x: Tensor) -> bool:
    """Whether the Triton kernels may run for ``x``: the switch is on (:func:`enabled`), Triton
    is installed, and ``x`` is a CUDA tensor (any tensor under ``TRITON_INTERPRET=1``). Never
    while ``torch.jit`` traces (fvcore's FLOP counter): traced shapes are tensors."""
    return (
        _switch
        and _ALLOWED_BY_ENVIRONMENT
        and triton is not None
        and (x.is_cuda or _INTERPRET)
        and not torch.jit.is_tracing()
    )


def needs_autograd(*tensors: Tensor | None) -> bool:
    """Whether an op on ``tensors`` must be differentiable: gradients are on and one of them
    requires grad."""
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def autocast_dtype(x: Tensor) -> torch.dtype | None:
    """The autocast dtype when autocast is on for ``x``'s device type, else ``None`` (also
    for device types without autocast, such as ``meta``, where the query raises)."""
    try:
        if torch.is_autocast_enabled(x.device.type):
            return torch.get_autocast_dtype(x.device.type)
    except RuntimeError:
        pass
    return None


def operand_dtype(x: Tensor) -> torch.dtype:
    """The dtype ``F.conv2d`` / ``F.linear`` compute in for ``x`` (weights in ``x``'s dtype):
    the autocast dtype when autocast is on for ``x``'s device (it casts every float32 /
    bf16 / fp16 operand), else ``x``'s."""
    return (x.dtype in FLOAT_DTYPES and autocast_dtype(x)) or x.dtype
