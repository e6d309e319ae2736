"""sed_d2.layers.norms: the norms through sed_d2.ops equal F.layer_norm / F.group_norm (values and
gradients), keep the input dtype and the channels-last layout."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sed_d2.layers import group_norm, layer_norm, layer_norm_linear
from sed_d2.ops import normalize_rows


def _affine_norm(dim, seed=0):
    torch.manual_seed(seed)
    norm = nn.LayerNorm(dim, eps=1e-5).double()
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
        norm.bias.uniform_(-0.5, 0.5)
    return norm


@pytest.mark.parametrize("affine, bias", [(True, True), (True, False), (False, False)])
def test_layer_norm_equals_the_module(affine, bias):
    norm = _affine_norm(12) if affine and bias else nn.LayerNorm(12, elementwise_affine=affine, bias=bias).double()
    # an (N, H, W, C) view of a channels-last map, as the ConvNeXt trunk passes it
    x = torch.randn(2, 12, 3, 5, dtype=torch.float64).contiguous(memory_format=torch.channels_last)
    x = x.permute(0, 2, 3, 1).requires_grad_()
    out = layer_norm(x, norm)
    ref = norm(x)
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
    assert out.is_contiguous()
    params = [x, *norm.parameters()]
    grad = torch.randn_like(ref)
    for a, b in zip(torch.autograd.grad(out, params, grad), torch.autograd.grad(ref, params, grad)):
        torch.testing.assert_close(a, b)


def test_layer_norm_folded_into_the_following_linear():
    norm, linear = _affine_norm(16), nn.Linear(16, 40).double()
    x = torch.randn(4, 9, 16, dtype=torch.float64, requires_grad=True)
    out = layer_norm_linear(x, norm, linear)
    ref = linear(norm(x))
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
    # gradients reach the norm's parameters through the folded weights
    params = [x, norm.weight, norm.bias, linear.weight, linear.bias]
    grad = torch.randn_like(ref)
    for a, b in zip(torch.autograd.grad(out, params, grad), torch.autograd.grad(ref, params, grad)):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("groups, channels", [(1, 16), (2, 32), (4, 64), (3, 12)])
@pytest.mark.parametrize("channels_last", [False, True])
def test_group_norm_equals_f_group_norm(groups, channels, channels_last):
    torch.manual_seed(groups)
    norm = nn.GroupNorm(groups, channels).double()
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
        norm.bias.uniform_(-0.5, 0.5)
    x = torch.randn(3, channels, 5, 6, dtype=torch.float64) * 2 + torch.randn(1, channels, 1, 1, dtype=torch.float64)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_()
    for relu in (False, True):
        out = group_norm(x, norm, relu=relu)
        ref = norm(x)
        ref = F.relu(ref) if relu else ref
        torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
        assert out.is_contiguous(memory_format=torch.channels_last) == channels_last
        params = [x, norm.weight, norm.bias]
        grad = torch.randn_like(ref)
        for a, b in zip(torch.autograd.grad(out, params, grad), torch.autograd.grad(ref, params, grad)):
            torch.testing.assert_close(a, b)


def test_norms_keep_bf16_under_autocast():
    x = torch.randn(2, 16, 4, 4).to(torch.bfloat16).contiguous(memory_format=torch.channels_last)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert normalize_rows(x.permute(0, 2, 3, 1), 1e-6).dtype == torch.bfloat16
        assert layer_norm(x.permute(0, 2, 3, 1), _affine_norm(16).float()).dtype == torch.bfloat16
        y = group_norm(x, nn.GroupNorm(1, 16), relu=True)
    assert y.dtype == torch.bfloat16 and y.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(y.float(), F.relu(F.group_norm(x.float(), 1)), atol=0.05, rtol=0.02)


@pytest.mark.parametrize("groups, channels, batch, per_image", [(1, 16, 1, 3), (2, 32, 2, 2), (4, 64, 3, 1)])
@pytest.mark.parametrize("channels_last", [False, True])
def test_group_norm_with_addend_equals_f_group_norm_of_the_sum(groups, channels, batch, per_image, channels_last):
    """The CPU path (PyTorch): addend[n // (N / B)] is added before normalising; values and
    gradients (x, addend, affine) equal F.group_norm of the explicit sum."""
    torch.manual_seed(channels)
    norm = nn.GroupNorm(groups, channels).double()
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
        norm.bias.uniform_(-0.5, 0.5)
    x = torch.randn(batch * per_image, channels, 5, 6, dtype=torch.float64) * 2 + 1
    addend = torch.randn(batch, channels, 5, 6, dtype=torch.float64)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_(), addend.requires_grad_()
    total = x + addend.repeat_interleave(per_image, dim=0)
    for relu in (False, True):
        out = group_norm(x, norm, relu=relu, addend=addend)
        ref = F.relu(norm(total)) if relu else norm(total)
        torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
        assert out.is_contiguous(memory_format=torch.channels_last) == channels_last
        params = [x, addend, norm.weight, norm.bias]
        grad = torch.randn_like(ref)
        for a, b in zip(torch.autograd.grad(out, params, grad), torch.autograd.grad(ref, params, grad)):
            torch.testing.assert_close(a, b)
        with torch.no_grad():  # inference: the affine is written into the (own) sum
            before = x.clone()
            plain = group_norm(x, norm, relu=relu, addend=addend)
        torch.testing.assert_close(plain, ref.detach(), rtol=1e-12, atol=1e-12)
        assert torch.equal(x, before)  # the input is never modified


def test_group_norm_rejects_bad_addend_shapes():
    norm = nn.GroupNorm(2, 32)
    x = torch.randn(6, 32, 4, 5)
    for shape in [(4, 32, 4, 5), (0, 32, 4, 5), (2, 16, 4, 5), (2, 32, 5, 4), (2, 1, 32, 4, 5), (32, 4, 5)]:
        with pytest.raises(ValueError, match="addend must be"):
            group_norm(x, norm, addend=torch.randn(shape))
