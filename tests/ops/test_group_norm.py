"""sed_d2.ops.group_norm: the two GroupNorm kernels (statistics, then normalise + affine +
ReLU, optionally of x + a shared addend) equal F.group_norm.

The kernels run on CPU in Triton's interpreter (the tests marked triton_interpreter:
TRITON_INTERPRET=1, see tests/triton_interpreter_plugin.py); the PyTorch reference is tested
through sed_d2.layers.group_norm in tests/layers/test_norms.py.
"""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sed_d2.layers import DoubleConv
from sed_d2.ops import group_norm as module
from sed_d2.ops.group_norm import fused_group_norm, fused_group_norm_applies, group_norm_reference


def _cl(t):
    return t.contiguous(memory_format=torch.channels_last)


# Against float64 PyTorch: odd sizes, ragged tiles and chunks, non-power-of-two channels.
@pytest.mark.triton_interpreter
@pytest.mark.parametrize("n, c, g, h, w", [(2, 64, 4, 33, 35), (3, 16, 1, 40, 41)])  # several chunks, ragged last one
def test_statistics_are_accurate_far_from_zero(n, c, g, h, w):
    # float32 accuracy with |mean| >> std (no sum-of-squares cancellation)
    torch.manual_seed(0)
    x = _cl(torch.randn(n, c, h, w) * 2 + 50)
    mean, var = module._statistics(x, g, None)
    xd = x.double().contiguous().view(n, g, -1)
    torch.testing.assert_close(mean.double(), xd.mean(-1), rtol=1e-6, atol=0)
    torch.testing.assert_close(var.double(), xd.var(-1, correction=0), rtol=1e-6, atol=0)


def _reference(x, addend, norm, relu):
    s = x if addend is None else (x.unflatten(0, (addend.shape[0], -1)) + addend.unsqueeze(1)).flatten(0, 1)
    y = F.group_norm(s.double(), norm.num_groups, norm.weight.double(), norm.bias.double(), norm.eps)
    return F.relu(y) if relu else y


# groups 1 / 2 / 4, 48 channels (masked), N / B > 1
@pytest.mark.triton_interpreter
@pytest.mark.parametrize("n, c, g, h, w, b", [(4, 32, 2, 7, 9, 2), (3, 16, 1, 5, 5, 1), (2, 64, 4, 17, 19, 1), (6, 48, 4, 4, 3, 3)])
def test_kernels_equal_group_norm(n, c, g, h, w, b):
    torch.manual_seed(0)
    norm = nn.GroupNorm(g, c)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
        norm.bias.uniform_(-0.5, 0.5)
    x = _cl(torch.randn(n, c, h, w) * 2 + 3)
    shared = torch.randn(b, c, h, w)
    for dtype, tol in ((torch.float32, 1e-5), (torch.bfloat16, 3e-2), (torch.float16, 5e-3)):
        xt, at = x.to(dtype), shared.to(dtype)
        for addend in (None, at):
            assert fused_group_norm_applies(xt, addend, norm.weight, norm.bias) is False  # params need grad
            for relu in (False, True):
                with torch.no_grad():
                    assert fused_group_norm_applies(xt, addend, norm.weight, norm.bias)
                    out = fused_group_norm(xt, g, norm.weight, norm.bias, norm.eps, relu=relu, addend=addend)
                assert out.dtype == dtype and out.is_contiguous(memory_format=torch.channels_last)
                torch.testing.assert_close(out.double(), _reference(xt, addend, norm, relu), rtol=tol, atol=tol)


@pytest.mark.triton_interpreter
def test_kernels_without_affine_with_an_nchw_addend_of_another_dtype():
    # no affine; an NCHW addend (made channels-last inside) of another dtype (cast to x's)
    torch.manual_seed(0)
    x, shared = _cl(torch.randn(4, 32, 5, 6)), torch.randn(2, 32, 5, 6).half()
    assert fused_group_norm_applies(x, shared, None, None)
    out = fused_group_norm(x, 2, None, None, 1e-5, addend=shared)
    ref = F.group_norm((x.unflatten(0, (2, -1)) + shared.float().unsqueeze(1)).flatten(0, 1).double(), 2)
    torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=1e-5)
    # autograd: the reference, differentiable
    xg = x.clone().requires_grad_()
    assert fused_group_norm(xg, 2, None, None, 1e-5, addend=shared.float()).grad_fn is not None


@pytest.mark.triton_interpreter
def test_double_conv_no_grad_path_equals_its_autograd_path(monkeypatch):
    # the no-grad path (GroupNorm kernels, shared term as addend) against the autograd path
    launches = []
    apply = module._gn_apply_kernel

    class Counting:
        def __getitem__(self, grid):
            launches.append(grid)
            return apply[grid]

    monkeypatch.setattr(module, "_gn_apply_kernel", Counting())
    torch.manual_seed(0)
    block = DoubleConv(40, 32)
    own, shared = _cl(torch.randn(6, 32, 6, 5)), _cl(torch.randn(2, 8, 6, 5))
    ref = block(own, shared, shared_at=24)
    assert ref.grad_fn is not None and not launches
    with torch.no_grad():
        out = block(own, shared, shared_at=24)
    assert len(launches) == 2 and out.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(out, ref.detach(), rtol=1e-5, atol=1e-5)


def test_cpu_fallback_is_the_reference():
    torch.manual_seed(3)
    x = torch.randn(4, 32, 5, 6).contiguous(memory_format=torch.channels_last)
    weight, bias, addend = torch.rand(32) + 0.5, torch.randn(32), torch.randn(2, 32, 5, 6)
    assert not fused_group_norm_applies(x, addend, weight, bias)
    out = fused_group_norm(x, 4, weight, bias, 1e-5, relu=True, addend=addend)
    assert torch.equal(out, group_norm_reference(x, 4, weight, bias, 1e-5, relu=True, addend=addend))
    assert out.is_contiguous(memory_format=torch.channels_last)


def test_groups_must_divide_the_channels():
    with pytest.raises(ValueError, match="32 channels do not split into 3 groups"):
        fused_group_norm(torch.randn(2, 32, 4, 4), 3, None, None, 1e-5)
