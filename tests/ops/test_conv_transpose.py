"""sed_d2.ops.conv_transpose_2x2: the 2x2 stride-2 transposed convolution (kernel and matrix
product reference) equals F.conv_transpose2d, also written into a channel slice.

The kernel runs on CPU in Triton's interpreter (the tests marked triton_interpreter:
TRITON_INTERPRET=1, see tests/triton_interpreter_plugin.py); without it the CPU path is the
reference.
"""

import pytest
import torch
import torch.nn.functional as F

from sed_d2.ops.conv_transpose import conv_transpose_2x2, conv_transpose_2x2_applies


def _inputs(n, c, o, h, w):
    torch.manual_seed(0)
    x = torch.randn(n, c, h, w).contiguous(memory_format=torch.channels_last)
    weight, bias = torch.randn(c, o, 2, 2) / c**0.5, torch.randn(o)
    return x, weight, bias, F.conv_transpose2d(x.double(), weight.double(), bias.double(), stride=2)


@pytest.mark.triton_interpreter(bf16_dot=True)
@pytest.mark.parametrize("n, c, o, h, w", [(2, 8, 24, 3, 5), (1, 80, 32, 2, 3), (3, 32, 8, 1, 4)])
def test_kernel_equals_conv_transpose2d(n, c, o, h, w, monkeypatch):
    # TF32 products for float32 operands (the interpreter computes them in full float32);
    # exact float32 products go to the reference (the next test)
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", True)
    x, weight, bias, ref = _inputs(n, c, o, h, w)
    assert conv_transpose_2x2_applies(x, weight, bias)
    with torch.no_grad():
        out = conv_transpose_2x2(x, weight, bias)
        assert out.is_contiguous(memory_format=torch.channels_last) and out.dtype == torch.float32
        torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(conv_transpose_2x2(x, weight, None, relu=True).double(),
                                   F.relu(ref - bias.double().view(1, o, 1, 1)), rtol=1e-5, atol=1e-5)
        # into a channel slice of a wider channels-last buffer: neighbours untouched
        buffer = torch.full((n, o + 5, 2 * h, 2 * w), 7.0).contiguous(memory_format=torch.channels_last)
        conv_transpose_2x2(x, weight, bias, out=buffer[:, 2 : 2 + o])
        torch.testing.assert_close(buffer[:, 2 : 2 + o].double(), ref, rtol=1e-5, atol=1e-5)
        assert (buffer[:, :2] == 7).all() and (buffer[:, 2 + o :] == 7).all()
        # bf16 activations (as under autocast in the decoder): bf16 out, float32 accumulation
        xb = x.bfloat16()
        with torch.autocast("cpu", torch.bfloat16):
            outb = conv_transpose_2x2(xb, weight, bias)
        assert outb.dtype == torch.bfloat16
        refb = F.conv_transpose2d(xb.double(), weight.bfloat16().double(), bias.double(), stride=2)
        torch.testing.assert_close(outb.double(), refb, rtol=2e-2, atol=2e-2)
    xg = x.clone().requires_grad_()
    assert not conv_transpose_2x2_applies(xg, weight, bias)  # autograd: the PyTorch path


@pytest.mark.triton_interpreter
def test_exact_float32_products_take_the_reference(monkeypatch):
    # Exact float32 products: the reference (an "ieee" dot of a whole tile compiles for
    # minutes); 16-bit operands keep the kernel
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    x, weight, bias, ref = _inputs(3, 32, 8, 1, 4)
    assert not conv_transpose_2x2_applies(x, weight, bias)
    with torch.no_grad():
        torch.testing.assert_close(conv_transpose_2x2(x, weight, bias).double(), ref, rtol=1e-5, atol=1e-5)
    assert conv_transpose_2x2_applies(x.bfloat16(), weight, bias)


def test_reference_into_a_channel_slice():
    torch.manual_seed(2)
    x = torch.randn(2, 6, 3, 5)
    weight, bias = torch.randn(6, 4, 2, 2), torch.randn(4)
    buffer = torch.zeros(2, 7, 6, 10).contiguous(memory_format=torch.channels_last)
    assert not conv_transpose_2x2_applies(x, weight, bias, buffer[:, 1:5])
    out = conv_transpose_2x2(x, weight, bias, out=buffer[:, 1:5])
    assert out.data_ptr() == buffer[:, 1:5].data_ptr()
    torch.testing.assert_close(buffer[:, 1:5], F.conv_transpose2d(x, weight, bias, stride=2), rtol=1e-5, atol=1e-5)
    assert buffer[:, 0].abs().sum() == 0 and buffer[:, 5:].abs().sum() == 0  # neighbours untouched
    with pytest.raises(ValueError, match="channel stride 1"):
        conv_transpose_2x2(x, weight, bias, out=torch.zeros(2, 4, 6, 10))  # NCHW: channel stride is not 1
    with pytest.raises(ValueError, match=r"\(2, 4, 6, 10\)"):
        conv_transpose_2x2(x, weight, bias, out=buffer[:, :3])


def test_reference_is_the_transposed_convolution():
    torch.manual_seed(4)
    x = torch.randn(3, 6, 4, 5, dtype=torch.float64).contiguous(memory_format=torch.channels_last)
    weight, bias = torch.randn(6, 7, 2, 2, dtype=torch.float64), torch.randn(7, dtype=torch.float64)
    out = conv_transpose_2x2(x, weight, bias)
    torch.testing.assert_close(out, F.conv_transpose2d(x, weight, bias, stride=2), rtol=1e-12, atol=1e-12)
    assert out.is_contiguous(memory_format=torch.channels_last)
    relu = conv_transpose_2x2(x, weight, bias, relu=True)
    torch.testing.assert_close(relu, F.relu(F.conv_transpose2d(x, weight, bias, stride=2)), rtol=1e-12, atol=1e-12)
