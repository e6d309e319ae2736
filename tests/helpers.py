"""Small helpers shared by the test suite (keep this file tiny)."""

import copy
import functools
import os
import subprocess
import sys
import textwrap

import torch

from sed_d2.clip import build_clip_model


def tiny_clip(name: str = "sed_d2_tiny_convnext", seed: int = 0):
    """A fresh random-init open_clip model (fp32, CPU, eval mode), the same for the same seed.

    ``name`` is one of the tiny configs in ``sed_d2/clip/model_configs``
    (``sed_d2_tiny_convnext``: linear head, ``sed_d2_tiny_convnext_mlp``: MLP head).
    Every call returns an independent copy, so tests may train or modify it freely;
    the global RNG state is left untouched.
    """
    return copy.deepcopy(_tiny_clip_prototype(name, seed))


@functools.lru_cache(maxsize=None)
def _tiny_clip_prototype(name: str, seed: int):
    # Built once per (name, seed): copying is much cheaper than initialising the
    # 49408-token embedding table again.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build_clip_model(name)


# Prepended to interpreter subprocess code that multiplies bf16 operands with tl.dot.
INTERPRETER_BF16_DOT = textwrap.dedent(
    """
    import numpy as np
    from triton.runtime import interpreter

    # Triton's interpreter multiplies bfloat16 dot operands as their raw uint16 bits
    # (numpy has no bfloat16). Widen them to float32 first: exact, so the kernel's bf16
    # rounding of the operands is still what is tested.
    _create_dot = interpreter.InterpreterBuilder.create_dot
    def _widen(t):
        if t.dtype.scalar.name != "bf16":
            return t
        bits = t.data.astype(np.uint32) << 16
        return interpreter.TensorHandle(bits.view(np.float32), interpreter.tl.float32)
    interpreter.InterpreterBuilder.create_dot = lambda self, a, b, d, *args: _create_dot(self, _widen(a), _widen(b), d, *args)
    """
)


_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_in_triton_interpreter(code: str, **environment: str) -> None:
    """Run ``code`` in a fresh Python with ``TRITON_INTERPRET=1`` (set before Triton is
    imported, so the kernels run in Triton's CPU interpreter), the fast ops on
    (``SED_D2_FAST_OPS=1`` whatever this process has) and the repository importable;
    ``environment`` overrides or adds variables. The code must print "ok" last. Fails with
    the subprocess's stderr."""
    env = {
        **os.environ,
        "TRITON_INTERPRET": "1",
        "SED_D2_FAST_OPS": "1",
        "PYTHONPATH": _ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""),
        **environment,
    }
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0 and result.stdout.strip().endswith("ok"), result.stderr[-3000:]
