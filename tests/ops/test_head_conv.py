"""sed_d2.ops.head_conv: the single-output ("logit head") convolution kernel equals F.conv2d.

The kernel runs on CPU in Triton's interpreter (the tests marked triton_interpreter:
TRITON_INTERPRET=1, see tests/triton_interpreter_plugin.py); without it the CPU path is the
reference.
"""

import pytest
import torch
import torch.nn.functional as F

from sed_d2.ops.head_conv import single_output_conv2d, single_output_conv2d_applies


def _cl(t):
    return t.contiguous(memory_format=torch.channels_last)


def _f64(t):
    return None if t is None else t.double()


# Against float64 PyTorch: kernel sizes 1 / 3 / 5, one and two channel blocks (70 > 64),
# ragged row and column tiles, float32 / bf16 / autocast.
@pytest.mark.triton_interpreter
@pytest.mark.parametrize(
    "n, c, h, w, k, with_bias", [(3, 16, 7, 9, 3, True), (2, 70, 5, 6, 3, False), (1, 24, 3, 4, 5, True), (2, 8, 6, 5, 1, True)]
)
def test_kernel_equals_conv2d(n, c, h, w, k, with_bias):
    torch.manual_seed(0)
    x = _cl(torch.randn(n, c, h, w))
    weight = torch.randn(1, c, k, k)
    bias = torch.randn(1) if with_bias else None
    assert single_output_conv2d_applies(x, weight, bias)
    out = single_output_conv2d(x, weight, bias)
    ref = F.conv2d(x.double(), weight.double(), _f64(bias), padding=k // 2)
    assert out.dtype == torch.float32 and out.shape == (n, 1, h, w) and out.is_contiguous()
    torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=1e-5)
    # bf16: float32 accumulation over the bf16 input, one rounding of the output
    xb = x.bfloat16()
    out = single_output_conv2d(xb, weight, bias)
    assert out.dtype == torch.bfloat16
    ref16 = F.conv2d(xb.double(), weight.double(), _f64(bias), padding=k // 2)
    torch.testing.assert_close(out.double(), ref16, rtol=1e-2, atol=1e-2)
    # autocast: the dtype F.conv2d returns there (bf16), from the float32 input
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, plain = single_output_conv2d(x, weight, bias), F.conv2d(x, weight, bias, padding=k // 2)
    assert out.dtype == plain.dtype == torch.bfloat16
    torch.testing.assert_close(out.double(), ref, rtol=1e-2, atol=1e-2)


@pytest.mark.triton_interpreter
def test_kernel_leaves_autograd_to_the_reference():
    torch.manual_seed(0)
    x = _cl(torch.randn(2, 16, 4, 5)).requires_grad_()
    weight = torch.randn(1, 16, 3, 3)
    assert not single_output_conv2d_applies(x, weight, None)
    assert single_output_conv2d(x, weight, None).grad_fn is not None


def test_cpu_fallback_is_f_conv2d():
    torch.manual_seed(2)
    x = torch.randn(3, 12, 5, 7, dtype=torch.float64).contiguous(memory_format=torch.channels_last)
    weight, bias = torch.randn(1, 12, 3, 3), torch.randn(1)  # float32: cast to x's dtype
    assert not single_output_conv2d_applies(x, weight, bias)
    out = single_output_conv2d(x, weight, bias)
    assert out.dtype == torch.float64
    torch.testing.assert_close(out, F.conv2d(x, weight.double(), bias.double(), padding=1), rtol=1e-12, atol=1e-12)
