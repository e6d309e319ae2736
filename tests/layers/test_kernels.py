"""sed_d2.layers.kernels: the Triton kernels equal the PyTorch ops.

On a CPU machine the kernels run in Triton's interpreter (a subprocess with
TRITON_INTERPRET=1, set before Triton is imported); on CUDA they would run compiled.
Without the environment variable the CPU path is the F.conv2d / LayerNorm fallback.
"""

import os
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn.functional as F

from sed_d2.layers import depthwise_conv2d, normalize_last_dim

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

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
    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    result = subprocess.run([sys.executable, "-c", _CHECK], env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0 and result.stdout.strip().endswith("ok"), result.stderr[-3000:]


def test_cpu_fallbacks_are_the_pytorch_ops():
    torch.manual_seed(1)
    x = torch.randn(2, 6, 5, 5).contiguous(memory_format=torch.channels_last)
    weight, bias = torch.randn(6, 1, 3, 3), torch.randn(6)
    torch.testing.assert_close(depthwise_conv2d(x, weight, bias), F.conv2d(x, weight, bias, padding=1, groups=6))
    y = torch.randn(4, 10)
    torch.testing.assert_close(normalize_last_dim(y, 1e-6), F.layer_norm(y, (10,), eps=1e-6))
