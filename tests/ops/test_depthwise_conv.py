"""sed_d2.ops.depthwise_conv: the Triton depthwise convolution (forward and both gradients)
equals F.conv2d.

On a CPU machine the kernels run in Triton's interpreter (the tests marked triton_interpreter:
TRITON_INTERPRET=1, see tests/triton_interpreter_plugin.py); on CUDA they would run compiled.
Without it the CPU path is the reference.
"""

import pytest
import torch
import torch.nn.functional as F

from sed_d2.ops.depthwise_conv import depthwise_conv2d, depthwise_conv2d_applies


@pytest.mark.triton_interpreter
@pytest.mark.parametrize("n, c, h, w, k", [(2, 8, 5, 7, 3), (1, 70, 4, 9, 9)])  # 70 channels: two channel blocks
def test_kernels_equal_conv2d_values_and_gradients(n, c, h, w, k):
    torch.manual_seed(0)
    x = torch.randn(n, c, h, w).contiguous(memory_format=torch.channels_last).requires_grad_()
    weight, bias = torch.randn(c, 1, k, k, requires_grad=True), torch.randn(c, requires_grad=True)
    assert depthwise_conv2d_applies(x, weight)
    out = depthwise_conv2d(x, weight, bias)
    assert out.grad_fn.name().startswith("_DepthwiseConv"), out.grad_fn.name()
    assert out.is_contiguous(memory_format=torch.channels_last)
    ref = F.conv2d(x, weight, bias, padding=k // 2, groups=c)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    grad = torch.randn_like(ref)
    got = torch.autograd.grad(out, (x, weight, bias), grad)
    want = torch.autograd.grad(ref, (x, weight, bias), grad)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    with torch.no_grad():  # inference: the kernel without an autograd node
        plain = depthwise_conv2d(x, weight, bias)
    assert plain.grad_fn is None and plain.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(plain, ref.detach(), rtol=1e-5, atol=1e-5)


@pytest.mark.triton_interpreter
def test_kernels_refuse_nchw_maps_and_even_filters():
    # not covered: NCHW maps, an even filter -> the reference
    x = torch.randn(1, 70, 4, 9).contiguous(memory_format=torch.channels_last)
    weight = torch.randn(70, 1, 9, 9)
    assert depthwise_conv2d_applies(x, weight)
    assert not depthwise_conv2d_applies(x.contiguous(), weight)
    assert not depthwise_conv2d_applies(x, torch.randn(70, 1, 2, 2))


def test_cpu_fallback_is_f_conv2d():
    torch.manual_seed(1)
    x = torch.randn(2, 6, 5, 5).contiguous(memory_format=torch.channels_last)
    weight, bias = torch.randn(6, 1, 3, 3), torch.randn(6)
    assert not depthwise_conv2d_applies(x, weight)
    torch.testing.assert_close(depthwise_conv2d(x, weight, bias), F.conv2d(x, weight, bias, padding=1, groups=6))
    # bf16 maps with float32 parameters: the filter is cast to the maps' dtype
    out = depthwise_conv2d(x.bfloat16(), weight, bias)
    assert out.dtype == torch.bfloat16
    assert torch.equal(out, F.conv2d(x.bfloat16(), weight.bfloat16(), bias.bfloat16(), padding=1, groups=6))
