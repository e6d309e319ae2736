"""sed_d2.ops.row_norm: LayerNorm without affine in one pass (kernel and reference, values and
gradients), and the folding of a LayerNorm's affine part into the next linear layer.

The kernel runs on CPU in Triton's interpreter (the tests marked triton_interpreter:
TRITON_INTERPRET=1, see tests/triton_interpreter_plugin.py); without it the CPU path is the
reference.
"""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sed_d2.ops.row_norm import fold_layer_norm_into_linear, normalize_rows, normalize_rows_applies


@pytest.mark.triton_interpreter
def test_kernel_equals_layer_norm_values_and_gradients():
    torch.manual_seed(0)
    x = (torch.randn(3, 5, 32) * 3 + 1).requires_grad_()
    assert normalize_rows_applies(x)
    out = normalize_rows(x, 1e-5)
    assert out.grad_fn.name().startswith("_NormalizeRows")
    ref = F.layer_norm(x, (32,), eps=1e-5)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    grad = torch.randn_like(ref)
    torch.testing.assert_close(torch.autograd.grad(out, x, grad)[0], torch.autograd.grad(ref, x, grad)[0], rtol=1e-4, atol=1e-5)
    with torch.no_grad():
        plain = normalize_rows(x, 1e-5)
    assert plain.grad_fn is None
    torch.testing.assert_close(plain, ref.detach(), rtol=1e-5, atol=1e-5)


@pytest.mark.triton_interpreter
def test_kernel_refuses_one_channel_views_and_float64():
    # not covered: one channel, a non-contiguous view, float64 -> the reference
    x = torch.randn(3, 5, 32)
    for y in (torch.randn(4, 1), x.transpose(0, 1), x.double()):
        assert not normalize_rows_applies(y)
        assert normalize_rows(y, 1e-5).grad_fn is None


def test_reference_equals_layer_norm_without_affine():
    x = (torch.randn(3, 5, 7, 12, dtype=torch.float64) * 3 + 2).requires_grad_()
    assert not normalize_rows_applies(x)  # CPU, no interpreter: the reference
    out = normalize_rows(x, 1e-5)
    ref = F.layer_norm(x, (12,), eps=1e-5)
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
    grad = torch.randn_like(ref)
    torch.testing.assert_close(torch.autograd.grad(out, x, grad)[0], torch.autograd.grad(ref, x, grad)[0])


def test_fold_leaves_extra_input_columns_alone():
    torch.manual_seed(1)
    norm, linear = nn.LayerNorm(8).double(), nn.Linear(8 + 3, 6).double()
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
        norm.bias.uniform_(-0.5, 0.5)
    x, guidance = torch.randn(5, 8, dtype=torch.float64), torch.randn(5, 3, dtype=torch.float64)
    weight, bias = fold_layer_norm_into_linear(norm.weight, norm.bias, linear.weight, linear.bias, in_features=8)
    out = F.linear(torch.cat([normalize_rows(x, norm.eps), guidance], -1), weight, bias)
    torch.testing.assert_close(out, linear(torch.cat([norm(x), guidance], -1)))


def test_fold_without_affine_parts():
    weight, bias = torch.randn(6, 8), torch.randn(6)
    assert fold_layer_norm_into_linear(None, None, weight, bias) == (weight, bias)
    norm_bias = torch.randn(8)
    folded_weight, folded_bias = fold_layer_norm_into_linear(None, norm_bias, weight, None)
    assert folded_weight is weight
    torch.testing.assert_close(folded_bias, weight @ norm_bias)
