"""sed_d2.layers.kernels: the Triton kernels equal the PyTorch ops.

On a CPU machine the kernels run in Triton's interpreter (a subprocess with
TRITON_INTERPRET=1, set before Triton is imported); on CUDA they would run compiled.
Without the environment variable the CPU path is the F.conv2d / LayerNorm fallback.
"""

import textwrap

import pytest
import torch
import torch.nn.functional as F

from sed_d2.layers import depthwise_conv2d, normalize_last_dim
from tests.helpers import INTERPRETER_BF16_DOT, run_in_triton_interpreter


_CHECK = textwrap.dedent(
    """
    import torch, torch.nn.functional as F
    from sed_d2.layers.kernels import _DepthwiseConv, _NormalizeRows, depthwise_conv2d, normalize_rows
    torch.manual_seed(0)
    for n, c, h, w, k in [(2, 8, 5, 7, 3), (1, 70, 4, 9, 9)]:  # 70 channels: two channel blocks
        x = torch.randn(n, c, h, w).contiguous(memory_format=torch.channels_last).requires_grad_()
        weight, bias = torch.randn(c, 1, k, k, requires_grad=True), torch.randn(c, requires_grad=True)
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
    x = (torch.randn(3, 5, 32) * 3 + 1).requires_grad_()
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
    print("ok")
    """
)


def test_triton_kernels_in_the_interpreter():
    pytest.importorskip("triton", reason="Triton is not installed: the kernels cannot run here")
    run_in_triton_interpreter(_CHECK)


def test_cpu_fallbacks_are_the_pytorch_ops():
    torch.manual_seed(1)
    x = torch.randn(2, 6, 5, 5).contiguous(memory_format=torch.channels_last)
    weight, bias = torch.randn(6, 1, 3, 3), torch.randn(6)
    torch.testing.assert_close(depthwise_conv2d(x, weight, bias), F.conv2d(x, weight, bias, padding=1, groups=6))
    y = torch.randn(4, 10)
    torch.testing.assert_close(normalize_last_dim(y, 1e-6), F.layer_norm(y, (10,), eps=1e-6))


# The inference kernels of the SED heads and GroupNorm: single_output_conv2d and the two
# GroupNorm kernels (statistics, apply) against float64 PyTorch, odd sizes, ragged tiles
# and chunks, non-power-of-two channels; DoubleConv's kernel path against its autograd path.
_CHECK_HEAD_AND_GROUP_NORM = textwrap.dedent(
    """
    import torch, torch.nn.functional as F
    from torch import nn
    from sed_d2.layers import DoubleConv, group_norm
    from sed_d2.layers import kernels
    from sed_d2.layers.kernels import (
        group_norm_kernels_apply, group_norm_statistics, single_output_conv2d, single_output_conv2d_applies,
    )
    torch.manual_seed(0)
    cl = lambda t: t.contiguous(memory_format=torch.channels_last)

    # ---- single-output conv: k 1 / 3 / 5, one and two channel blocks (70 > 64), ragged rows / columns
    cases = [(3, 16, 7, 9, 3, True), (2, 70, 5, 6, 3, False), (1, 24, 3, 4, 5, True), (2, 8, 6, 5, 1, True)]
    for n, c, h, w, k, with_bias in cases:
        x = cl(torch.randn(n, c, h, w))
        weight = torch.randn(1, c, k, k)
        bias = torch.randn(1) if with_bias else None
        assert single_output_conv2d_applies(x, weight, bias)
        f64 = lambda t: None if t is None else t.double()
        out = single_output_conv2d(x, weight, bias)
        ref = F.conv2d(x.double(), weight.double(), f64(bias), padding=k // 2)
        assert out.dtype == torch.float32 and out.shape == (n, 1, h, w) and out.is_contiguous()
        torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=1e-5)
        # bf16: float32 accumulation over the bf16 input, one rounding of the output
        xb = x.bfloat16()
        out = single_output_conv2d(xb, weight, bias)
        assert out.dtype == torch.bfloat16
        ref16 = F.conv2d(xb.double(), weight.double(), f64(bias), padding=k // 2)
        torch.testing.assert_close(out.double(), ref16, rtol=1e-2, atol=1e-2)
        # autocast: the dtype F.conv2d returns there (bf16), from the float32 input
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out, plain = single_output_conv2d(x, weight, bias), F.conv2d(x, weight, bias, padding=k // 2)
        assert out.dtype == plain.dtype == torch.bfloat16
        torch.testing.assert_close(out.double(), ref, rtol=1e-2, atol=1e-2)
    # autograd: F.conv2d, differentiable
    x = cl(torch.randn(2, 16, 4, 5)).requires_grad_()
    weight = torch.randn(1, 16, 3, 3)
    assert not single_output_conv2d_applies(x, weight, None)
    assert single_output_conv2d(x, weight, None).grad_fn is not None

    # ---- GroupNorm statistics: float32 accuracy with |mean| >> std (no sum-of-squares cancellation)
    for n, c, g, h, w in [(2, 64, 4, 33, 35), (3, 16, 1, 40, 41)]:  # several chunks, ragged last one
        x = cl(torch.randn(n, c, h, w) * 2 + 50)
        mean, var = group_norm_statistics(x, g)
        xd = x.double().contiguous().view(n, g, -1)
        torch.testing.assert_close(mean.double(), xd.mean(-1), rtol=1e-6, atol=0)
        torch.testing.assert_close(var.double(), xd.var(-1, correction=0), rtol=1e-6, atol=0)

    # ---- group_norm through the kernels: groups 1 / 2 / 4, 48 channels (masked), N / B > 1
    def reference(x, addend, norm, relu):
        s = x if addend is None else (x.unflatten(0, (addend.shape[0], -1)) + addend.unsqueeze(1)).flatten(0, 1)
        y = F.group_norm(s.double(), norm.num_groups, norm.weight.double(), norm.bias.double(), norm.eps)
        return F.relu(y) if relu else y
    for n, c, g, h, w, b in [(4, 32, 2, 7, 9, 2), (3, 16, 1, 5, 5, 1), (2, 64, 4, 17, 19, 1), (6, 48, 4, 4, 3, 3)]:
        norm = nn.GroupNorm(g, c)
        with torch.no_grad():
            norm.weight.uniform_(0.5, 1.5)
            norm.bias.uniform_(-0.5, 0.5)
        x = cl(torch.randn(n, c, h, w) * 2 + 3)
        shared = torch.randn(b, c, h, w)
        for dtype, tol in ((torch.float32, 1e-5), (torch.bfloat16, 3e-2), (torch.float16, 5e-3)):
            xt, at = x.to(dtype), shared.to(dtype)
            for addend in (None, at):
                assert group_norm_kernels_apply(xt, addend, norm.weight, norm.bias) is False  # params need grad
                for relu in (False, True):
                    with torch.no_grad():
                        assert group_norm_kernels_apply(xt, addend, norm.weight, norm.bias)
                        out = group_norm(xt, norm, relu=relu, addend=addend)
                    assert out.dtype == dtype and out.is_contiguous(memory_format=torch.channels_last)
                    torch.testing.assert_close(out.double(), reference(xt, addend, norm, relu), rtol=tol, atol=tol)
    # no affine; an NCHW addend (made channels-last inside) of another dtype (cast to x's)
    norm = nn.GroupNorm(2, 32, affine=False)
    x, shared = cl(torch.randn(4, 32, 5, 6)), torch.randn(2, 32, 5, 6, dtype=torch.float64)
    out = group_norm(x, norm, addend=shared)
    ref = F.group_norm((x.unflatten(0, (2, -1)) + shared.float().unsqueeze(1)).flatten(0, 1).double(), 2)
    torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=1e-5)
    # autograd: the PyTorch path, differentiable
    xg = x.clone().requires_grad_()
    assert group_norm(xg, norm, addend=shared.float()).grad_fn is not None

    # ---- DoubleConv: the no-grad path (GroupNorm kernels, shared term as addend) equals the autograd path
    launches = []
    apply = kernels._gn_apply_kernel
    class Counting:
        def __getitem__(self, grid):
            launches.append(grid)
            return apply[grid]
    kernels._gn_apply_kernel = Counting()
    block = DoubleConv(40, 32)
    own, shared = cl(torch.randn(6, 32, 6, 5)), cl(torch.randn(2, 8, 6, 5))
    ref = block(own, shared, shared_at=24)
    assert ref.grad_fn is not None and not launches
    with torch.no_grad():
        out = block(own, shared, shared_at=24)
    assert len(launches) == 2 and out.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(out, ref.detach(), rtol=1e-5, atol=1e-5)
    print("ok")
    """
)


def test_head_conv_and_group_norm_kernels_in_the_interpreter():
    pytest.importorskip("triton", reason="Triton is not installed: the kernels cannot run here")
    run_in_triton_interpreter(_CHECK_HEAD_AND_GROUP_NORM)


def test_single_output_conv_cpu_fallback_is_f_conv2d():
    from sed_d2.layers import single_output_conv2d
    from sed_d2.layers.kernels import single_output_conv2d_applies

    torch.manual_seed(2)
    x = torch.randn(3, 12, 5, 7, dtype=torch.float64).contiguous(memory_format=torch.channels_last)
    weight, bias = torch.randn(1, 12, 3, 3), torch.randn(1)  # float32: cast to x's dtype
    assert not single_output_conv2d_applies(x, weight, bias)
    out = single_output_conv2d(x, weight, bias)
    assert out.dtype == torch.float64
    torch.testing.assert_close(out, F.conv2d(x, weight.double(), bias.double(), padding=1), rtol=1e-12, atol=1e-12)


# ----------------------------------------------------------------------------- 2x2 transposed conv
_CONV_TRANSPOSE_CHECK = INTERPRETER_BF16_DOT + textwrap.dedent(
    """
    import numpy as np
    import torch, torch.nn.functional as F
    from triton.runtime import interpreter


    from sed_d2.layers import conv_transpose_2x2
    from sed_d2.layers.kernels import conv_transpose_2x2_applies
    torch.manual_seed(0)
    torch.backends.cuda.matmul.allow_tf32 = False
    for n, c, o, h, w in [(2, 8, 24, 3, 5), (1, 80, 32, 2, 3), (3, 32, 8, 1, 4)]:
        x = torch.randn(n, c, h, w).contiguous(memory_format=torch.channels_last)
        weight, bias = torch.randn(c, o, 2, 2) / c ** 0.5, torch.randn(o)
        assert conv_transpose_2x2_applies(x, weight, bias)
        ref = F.conv_transpose2d(x.double(), weight.double(), bias.double(), stride=2)
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
    print("ok")
    """
)


def test_conv_transpose_2x2_kernel_in_the_interpreter():
    pytest.importorskip("triton", reason="Triton is not installed: the kernels cannot run here")
    run_in_triton_interpreter(_CONV_TRANSPOSE_CHECK)
