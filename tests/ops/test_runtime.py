"""sed_d2.ops.runtime: the one switch over every fast path (``set_enabled`` and the
``SED_D2_FAST_OPS`` environment variable), availability and the dtype rules.

The switch is tested where the kernels would otherwise run: in Triton's interpreter (marked
triton_interpreter: TRITON_INTERPRET=1, see tests/triton_interpreter_plugin.py), with every
kernel launcher replaced by one that raises, a SED decoder's inference (all of its fast paths)
must not launch anything while the switch is off, must equal the same decoder's output as a
process without the interpreter computes it (plain PyTorch), and must launch once the switch is
on.
"""

import os
import types

import pytest
import torch

from sed_d2 import ops
from sed_d2.models import SEDDecoder
from sed_d2.ops import (
    class_linear_attention,
    conv3x3,
    conv_transpose,
    depthwise_conv,
    group_norm,
    head_conv,
    layer_norm_mlp,
    row_norm,
    runtime,
)

# Every kernel launcher of the decoder's fast paths.
_LAUNCHERS = [
    (class_linear_attention, "_launch"), (conv3x3, "_launch"), (conv_transpose, "_launch"),
    (depthwise_conv, "_depthwise_forward"), (group_norm, "_statistics"),
    (head_conv, "_single_output_conv_forward"), (layer_norm_mlp, "_launch"), (row_norm, "_normalize_forward"),
]


def _decoder_logits():
    torch.manual_seed(0)
    decoder = SEDDecoder(text_channels=4, skip_channels=(12, 10, 8)).eval()
    generator = torch.Generator().manual_seed(1)
    image = torch.randn(1, 16, 2, 2, generator=generator)
    text = torch.randn(3, 4, 16, generator=generator)
    skips = {
        name: torch.randn(1, channels, 2 * 2 ** (i + 1), 2 * 2 ** (i + 1), generator=generator)
        for i, (name, channels) in enumerate(zip(("res4", "res3", "res2"), (12, 10, 8)))
    }
    with torch.no_grad():
        return decoder(image, text, skips).logits


@pytest.mark.triton_interpreter
@pytest.mark.parametrize(
    "environment",
    [
        pytest.param("1", id="set_enabled"),
        pytest.param("0", id="environment", marks=pytest.mark.triton_interpreter(env={"SED_D2_FAST_OPS": "0"})),
    ],
)
def test_switched_off_layers_never_launch_a_kernel(environment, monkeypatch, restore_switch):
    launched = []

    def refusing(name):
        def launcher(*args, **kwargs):
            launched.append(name)
            raise RuntimeError("kernel launched")

        return launcher

    for module, name in _LAUNCHERS:
        assert isinstance(module, types.ModuleType) and callable(getattr(module, name))
        monkeypatch.setattr(module, name, refusing(f"{module.__name__}.{name}"))

    environment_off = os.environ.get("SED_D2_FAST_OPS", "1") == "0"
    assert environment_off == (environment == "0")
    if not environment_off:
        ops.set_enabled(False)
    assert not ops.enabled() and not ops.available(torch.zeros(1))
    logits = _decoder_logits()  # every op on its PyTorch reference
    assert not launched, launched
    with monkeypatch.context() as outside:  # as a process without the interpreter computes it
        outside.setattr(runtime, "_INTERPRET", False)
        outside.setattr(runtime, "_ALLOWED_BY_ENVIRONMENT", True)
        ops.set_enabled(True)
        assert not ops.available(torch.zeros(1))
        assert torch.equal(logits, _decoder_logits())

    ops.set_enabled(True)
    assert ops.enabled() == ops.available(torch.zeros(1)) == (not environment_off)
    try:
        _decoder_logits()
    except RuntimeError as error:
        assert str(error) == "kernel launched" and launched and not environment_off
    else:
        assert environment_off and not launched  # the environment's veto holds over set_enabled


@pytest.fixture()
def restore_switch():
    saved = ops.enabled()
    yield
    ops.set_enabled(saved)


def test_set_enabled_toggles_the_switch(restore_switch):
    ops.set_enabled(False)
    assert ops.enabled() is False
    ops.set_enabled(True)
    assert ops.enabled() is runtime._ALLOWED_BY_ENVIRONMENT


def test_cpu_tensors_take_no_kernel_outside_the_interpreter(restore_switch):
    ops.set_enabled(True)
    assert ops.available(torch.zeros(1)) is False


def test_operand_dtype_follows_autocast():
    x = torch.zeros(1)
    assert runtime.operand_dtype(x) == torch.float32 and runtime.autocast_dtype(x) is None
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert runtime.operand_dtype(x) == torch.bfloat16
        assert runtime.operand_dtype(x.half()) == torch.bfloat16  # autocast casts every 16/32-bit float
        assert runtime.operand_dtype(x.double()) == torch.float64  # but not float64
    assert runtime.autocast_dtype(torch.zeros(1, device="meta")) is None  # no autocast there: no error


def test_needs_autograd():
    leaf = torch.zeros(1, requires_grad=True)
    assert runtime.needs_autograd(None, torch.zeros(1), leaf)
    assert not runtime.needs_autograd(None, torch.zeros(1))
    with torch.no_grad():
        assert not runtime.needs_autograd(leaf)
