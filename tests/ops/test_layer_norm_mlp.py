"""sed_d2.ops.layer_norm_mlp: the fused LayerNorm-MLP kernel equals the unfused computation.

As in test_depthwise_conv.py, the Triton kernel runs on CPU in Triton's interpreter (the tests
marked triton_interpreter: TRITON_INTERPRET=1, see tests/triton_interpreter_plugin.py). Without
it the CPU path is the PyTorch reference, checked here in float64 against the plain module ops.
"""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sed_d2.layers import ConvNeXtBlock
from sed_d2.ops import depthwise_conv2d
from sed_d2.ops import layer_norm_mlp as fm
from sed_d2.ops.layer_norm_mlp import (
    _CONFIGS,
    fused_layer_norm_mlp,
    fused_layer_norm_mlp_applies,
    layer_norm_mlp_reference,
)


def _modules(c, dtype=torch.float64, seed=None):
    """LayerNorm (non-trivial affine), fc1, fc2 and a layer scale for C channels."""
    torch.manual_seed(c if seed is None else seed)
    norm, fc1, fc2 = nn.LayerNorm(c, eps=1e-6), nn.Linear(c, 4 * c), nn.Linear(4 * c, c)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
        norm.bias.normal_(0, 0.3)
    return norm.to(dtype), fc1.to(dtype), fc2.to(dtype), (torch.rand(c) + 0.5).to(dtype)


def _kernel_inputs(c):
    """float32 modules and (dw, r) whose rows are not a multiple of the kernel's BLOCK_M."""
    norm, fc1, fc2, ls = _modules(c, torch.float32)
    block_m = _CONFIGS[(c, 4)][0]
    dw = torch.randn(2, block_m + 5, c) * 2 + 0.5
    return norm, fc1, fc2, ls, dw, torch.randn_like(dw)


def _definition(dw, r, norm, fc1, fc2, ls, approximate="none"):
    return r + fc2(F.gelu(fc1(norm(dw)), approximate=approximate)) * ls


_CHANNELS = pytest.mark.parametrize("c", [16, 32, 64])


@pytest.mark.triton_interpreter
@_CHANNELS
@torch.no_grad()
def test_kernel_equals_the_unfused_computation(c):
    norm, fc1, fc2, ls, dw, r = _kernel_inputs(c)
    assert fused_layer_norm_mlp_applies(dw, r, norm, fc1, fc2, layer_scale=ls)
    out = fused_layer_norm_mlp(dw, r, norm, fc1, fc2, layer_scale=ls)
    assert out.shape == dw.shape and out.dtype == torch.float32
    torch.testing.assert_close(out, _definition(dw, r, norm, fc1, fc2, ls), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out, layer_norm_mlp_reference(dw, r, norm, fc1, fc2, layer_scale=ls), rtol=1e-5, atol=1e-5)

    out = fused_layer_norm_mlp(dw, r, norm, fc1, fc2, layer_scale=ls, gelu_approximate="tanh")
    torch.testing.assert_close(out, _definition(dw, r, norm, fc1, fc2, ls, "tanh"), rtol=1e-5, atol=1e-5)


@pytest.mark.triton_interpreter(bf16_dot=True)
@_CHANNELS
@torch.no_grad()
def test_kernel_relu_and_second_residual(c):
    # the class transformer layer's MLP: ReLU and a second residual in the same pass
    norm, fc1, fc2, ls, dw, r = _kernel_inputs(c)
    e = torch.randn_like(dw)
    relu = {"activation": "relu", "extra_residual": e}
    assert fused_layer_norm_mlp_applies(dw, r, norm, fc1, fc2, **relu)
    out = fused_layer_norm_mlp(dw, r, norm, fc1, fc2, **relu)
    want = r + e + fc2(F.relu(fc1(norm(dw))))
    torch.testing.assert_close(out, want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out, layer_norm_mlp_reference(dw, r, norm, fc1, fc2, **relu), rtol=1e-5, atol=1e-5)
    out = fused_layer_norm_mlp(dw, r, norm, fc1, fc2, layer_scale=ls, activation="relu")  # ReLU alone, with layer scale
    torch.testing.assert_close(out, r + fc2(F.relu(fc1(norm(dw)))) * ls, rtol=1e-5, atol=1e-5)
    out = fused_layer_norm_mlp(dw, r, norm, fc1, fc2, layer_scale=ls, extra_residual=e)  # second residual alone, GELU
    torch.testing.assert_close(out, _definition(dw, r, norm, fc1, fc2, ls) + e, rtol=1e-5, atol=1e-5)
    outb = fused_layer_norm_mlp(dw.bfloat16(), r.bfloat16(), norm, fc1, fc2, activation="relu", extra_residual=e.bfloat16())
    assert outb.dtype == torch.bfloat16
    wantb = r.bfloat16().float() + e.bfloat16().float() + fc2(F.relu(fc1(norm(dw.bfloat16().float()))))
    torch.testing.assert_close(outb.float(), wantb, rtol=2e-2, atol=3e-2)
    # a second residual the kernel cannot read with dw's offsets -> the reference
    for bad in (e.double(), e.transpose(0, 1).contiguous().transpose(0, 1)):
        assert not fused_layer_norm_mlp_applies(dw, r, norm, fc1, fc2, activation="relu", extra_residual=bad)
        out = fused_layer_norm_mlp(dw, r, norm, fc1, fc2, activation="relu", extra_residual=bad)
        torch.testing.assert_close(out, want.to(out.dtype), rtol=1e-5, atol=1e-5)
    assert not fused_layer_norm_mlp_applies(dw, r, norm, fc1, fc2, activation="silu")


@pytest.mark.triton_interpreter
@_CHANNELS
@torch.no_grad()
def test_kernel_branch_free_erf(c, monkeypatch):
    # the branch-free erf of the 16-bit path, checked at float32 precision
    kernel = fm._ln_mlp_kernel

    class ForceFastErf:
        def __getitem__(self, grid):
            return lambda *args, **kwargs: kernel[grid](*args, **dict(kwargs, FAST_ERF=True))

    norm, fc1, fc2, ls, dw, r = _kernel_inputs(c)
    monkeypatch.setattr(fm, "_ln_mlp_kernel", ForceFastErf())
    out = fused_layer_norm_mlp(dw * 3, r, norm, fc1, fc2, layer_scale=ls)
    monkeypatch.undo()
    torch.testing.assert_close(out, _definition(dw * 3, r, norm, fc1, fc2, ls), rtol=1e-5, atol=1e-5)


@pytest.mark.triton_interpreter
@_CHANNELS
@torch.no_grad()
def test_kernel_without_biases_layer_scale_or_affine(c):
    _, _, _, _, dw, r = _kernel_inputs(c)
    bare = nn.LayerNorm(c, elementwise_affine=False)
    fc1b, fc2b = nn.Linear(c, 4 * c, bias=False), nn.Linear(4 * c, c, bias=False)
    want = r + fc2b(F.gelu(fc1b(bare(dw))))
    torch.testing.assert_close(fused_layer_norm_mlp(dw, r, bare, fc1b, fc2b), want, rtol=1e-5, atol=1e-5)


@pytest.mark.triton_interpreter(bf16_dot=True)
@_CHANNELS
@torch.no_grad()
def test_kernel_bf16(c):
    # bf16: operands bf16, float32 statistics / accumulation; output bf16
    norm, fc1, fc2, ls, dw, r = _kernel_inputs(c)
    dwb, rb = dw.bfloat16(), r.bfloat16()
    out = fused_layer_norm_mlp(dwb, rb, norm, fc1, fc2, layer_scale=ls)
    assert out.dtype == torch.bfloat16
    want = _definition(dwb.float(), rb.float(), norm, fc1, fc2, ls)
    torch.testing.assert_close(out.float(), want, rtol=2e-2, atol=3e-2)


@pytest.mark.triton_interpreter
@torch.no_grad()
def test_convnext_block_equals_its_forward():
    # depthwise conv + fused MLP + reshape equals the block's forward
    c = 32
    block = ConvNeXtBlock(c, 9).eval()
    norm, _, _, ls = _modules(c, torch.float32, seed=7)
    block.norm.load_state_dict(norm.state_dict())
    block.layer_scale.copy_(ls)
    x = torch.randn(2, c, 7, 9).contiguous(memory_format=torch.channels_last)
    conv = block.depthwise_conv
    dw = depthwise_conv2d(x, conv.weight, conv.bias).permute(0, 2, 3, 1)
    out = fused_layer_norm_mlp(dw, x.permute(0, 2, 3, 1), block.norm, block.fc1, block.fc2, layer_scale=block.layer_scale)
    out = out.permute(0, 3, 1, 2)
    assert out.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(out, block(x), rtol=1e-5, atol=1e-5)
    dw_ref = F.conv2d(x, conv.weight, conv.bias, padding=4, groups=c).permute(0, 2, 3, 1)
    want = _definition(dw_ref, x.permute(0, 2, 3, 1), block.norm, block.fc1, block.fc2, block.layer_scale)
    torch.testing.assert_close(out, want.permute(0, 3, 1, 2), rtol=1e-5, atol=1e-5)


@pytest.mark.triton_interpreter
def test_autograd_unsupported_channels_and_strided_rows_take_the_reference():
    # fallbacks (the kernel is available here): autograd, unsupported C, non-contiguous
    norm, fc1, fc2, ls = _modules(32, torch.float32, seed=3)
    dw, r = torch.randn(40, 32), torch.randn(40, 32)
    assert not fused_layer_norm_mlp_applies(dw, r, norm, fc1, fc2, layer_scale=ls)  # parameters require grad
    out = fused_layer_norm_mlp(dw, r, norm, fc1, fc2, layer_scale=ls)
    assert out.grad_fn is not None
    torch.testing.assert_close(out, layer_norm_mlp_reference(dw, r, norm, fc1, fc2, layer_scale=ls))
    with torch.no_grad():
        assert fused_layer_norm_mlp_applies(dw, r, norm, fc1, fc2, layer_scale=ls)
        assert not fused_layer_norm_mlp_applies(dw.t().contiguous().t(), r, norm, fc1, fc2, layer_scale=ls)
        norm24, fc1_24, fc2_24, ls24 = _modules(24, torch.float32, seed=4)
        dw24, r24 = torch.randn(40, 24), torch.randn(40, 24)
        assert not fused_layer_norm_mlp_applies(dw24, r24, norm24, fc1_24, fc2_24, layer_scale=ls24)
        out = fused_layer_norm_mlp(dw24, r24, norm24, fc1_24, fc2_24, layer_scale=ls24)
        torch.testing.assert_close(out, layer_norm_mlp_reference(dw24, r24, norm24, fc1_24, fc2_24, layer_scale=ls24))


@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_reference_is_the_module_computation(approximate):
    # float64: the folds are exact algebra, so only rounding separates the two
    norm, fc1, fc2, ls = _modules(24)
    dw = (torch.randn(3, 5, 24, dtype=torch.float64) * 2).requires_grad_()
    r = torch.randn(3, 5, 24, dtype=torch.float64)
    want = r + fc2(F.gelu(fc1(norm(dw)), approximate=approximate)) * ls
    got = layer_norm_mlp_reference(dw, r, norm, fc1, fc2, layer_scale=ls, gelu_approximate=approximate)
    torch.testing.assert_close(got, want)
    grad = torch.randn_like(want)
    torch.testing.assert_close(torch.autograd.grad(got, dw, grad)[0], torch.autograd.grad(want, dw, grad)[0])


@pytest.mark.parametrize("second_residual", [False, True])
def test_reference_relu_and_second_residual(second_residual):
    # the class transformer layer's MLP: r + e + fc2(relu(fc1(norm(dw)))), float64
    norm, fc1, fc2, _ = _modules(24)
    dw = (torch.randn(3, 5, 24, dtype=torch.float64) * 2).requires_grad_()
    r = torch.randn(3, 5, 24, dtype=torch.float64)
    e = torch.randn(3, 5, 24, dtype=torch.float64) if second_residual else None
    want = r + fc2(F.relu(fc1(norm(dw))))
    if second_residual:
        want = want + e
    got = layer_norm_mlp_reference(dw, r, norm, fc1, fc2, activation="relu", extra_residual=e)
    torch.testing.assert_close(got, want)
    grad = torch.randn_like(want)
    torch.testing.assert_close(torch.autograd.grad(got, dw, grad)[0], torch.autograd.grad(want, dw, grad)[0])
    with pytest.raises(ValueError):
        layer_norm_mlp_reference(dw, r, norm, fc1, fc2, activation="silu")


def test_cpu_without_interpreter_falls_back():
    norm, fc1, fc2, ls = _modules(32, torch.float32)
    dw, r = torch.randn(10, 32), torch.randn(10, 32)
    with torch.no_grad():
        assert not fused_layer_norm_mlp_applies(dw, r, norm, fc1, fc2, layer_scale=ls)
        got = fused_layer_norm_mlp(dw, r, norm, fc1, fc2, layer_scale=ls)
        torch.testing.assert_close(got, r + fc2(F.gelu(fc1(norm(dw)))) * ls)
        # bf16 activations with float32 parameters: the reference casts the weights
        got = fused_layer_norm_mlp(dw.bfloat16(), r.bfloat16(), norm, fc1, fc2, layer_scale=ls)
        assert got.dtype == torch.bfloat16
