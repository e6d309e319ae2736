"""sed_d2.ops.conv3x3: the Triton 3x3 convolution equals F.conv2d, and the policy sends
everything but channels-last, grad-free, Cout = 16 inputs to F.conv2d.

As in test_layer_norm_mlp.py, the Triton kernel runs on CPU in Triton's interpreter (the tests
marked triton_interpreter: TRITON_INTERPRET=1, see tests/triton_interpreter_plugin.py).
"""

import pytest
import torch
import torch.nn.functional as F

from sed_d2.ops import conv3x3 as module
from sed_d2.ops.conv3x3 import conv3x3_no_bias, conv3x3_no_bias_applies

CL = torch.channels_last
ROWS = (16, 16, 4, 2, 0)  # BLOCK_M 16: three row-major tiles per 5 x 7 image, wrapping across rows
TILES_2D = (16, 16, 4, 2, 4)  # 4 x 4 tiles: 2 x 2 per 5 x 7 image, ragged both ways
EXACT = {"rtol": 1e-5, "atol": 1e-5}


@pytest.fixture()
def bf16_casts_round_to_nearest():
    """Triton's interpreter truncates float32 -> bfloat16 casts, where the GPU rounds to nearest
    even (cvt.rn.bf16.f32): round like the GPU (through torch), so the bf16 results are exact."""
    import numpy as np
    from triton.runtime import interpreter

    builder = interpreter.InterpreterBuilder
    cast = builder.cast_impl

    def cast_rn(self, src, dst_type):
        if src.dtype.scalar.name == "fp32" and dst_type.scalar.name == "bf16":
            bits = torch.from_numpy(np.ascontiguousarray(src.data)).bfloat16().view(torch.int16).numpy()
            return interpreter.TensorHandle(bits.view(np.uint16), dst_type.scalar)
        return cast(self, src, dst_type)

    builder.cast_impl = cast_rn
    try:
        yield
    finally:
        builder.cast_impl = cast


def _kernel_inputs(cin, dtype=torch.float32, cout=16, n=2):
    x = torch.randn(n, cin, 5, 7).to(dtype).contiguous(memory_format=CL)
    return x, (torch.randn(cout, cin, 3, 3) / (3 * cin**0.5)).to(dtype)


@pytest.mark.triton_interpreter
@pytest.mark.parametrize("cin", [8, 24, 32, 40])  # Cin 8 / 24 / 40 pad the channel chunks, 32 does not
@torch.no_grad()
def test_kernel_float32_exact_products(cin, monkeypatch):
    # float32, exact products ("ieee")
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    torch.manual_seed(0)
    x, w = _kernel_inputs(cin)
    assert conv3x3_no_bias_applies(x, w)
    out = conv3x3_no_bias(x, w)
    assert out.dtype == torch.float32 and out.shape == (2, 16, 5, 7) and out.is_contiguous(memory_format=CL)
    assert torch.equal(out, module._launch(x, w))  # the kernel ran
    torch.testing.assert_close(out, F.conv2d(x, w, padding=1), **EXACT)
    for config in (ROWS, TILES_2D):
        torch.testing.assert_close(module._launch(x, w, config), F.conv2d(x, w, padding=1), **EXACT)


@pytest.mark.triton_interpreter
@torch.no_grad()
def test_kernel_tf32_when_cudnn_allows_it(monkeypatch):
    # TF32 when cudnn.allow_tf32 (the interpreter multiplies in float32 anyway)
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", True)
    assert module._precision(torch.float32) == "tf32"
    torch.manual_seed(0)
    x, w = _kernel_inputs(24)
    torch.testing.assert_close(conv3x3_no_bias(x, w), F.conv2d(x, w, padding=1), rtol=1e-2, atol=1e-2)


# bf16 / fp16: 16-bit operands, float32 accumulation, one rounding. Cin 16 and 32 take the
# measured configs (BLOCK_M 256 row-major; 2-D tiles 16 wide)
@pytest.mark.triton_interpreter(bf16_dot=True)
@pytest.mark.parametrize(
    "dtype, cin", [(torch.bfloat16, c) for c in (8, 16, 24, 32, 40)] + [(torch.float16, 24)], ids=str
)
@torch.no_grad()
def test_kernel_16_bit(dtype, cin, bf16_casts_round_to_nearest):
    torch.manual_seed(0)
    x, w = _kernel_inputs(cin, dtype)
    assert conv3x3_no_bias_applies(x, w)
    out = conv3x3_no_bias(x, w)
    assert out.dtype == dtype and out.is_contiguous(memory_format=CL)
    want = F.conv2d(x.float(), w.float(), padding=1)
    # the rounded definition but for float32 summation order (a value near a rounding tie may
    # round apart)
    assert (out == want.to(dtype)).float().mean() > 0.98
    torch.testing.assert_close(out.float(), want, rtol=8e-3, atol=1e-3)


@pytest.mark.triton_interpreter(bf16_dot=True)
@torch.no_grad()
def test_kernel_bf16_2d_tiles(bf16_casts_round_to_nearest):
    torch.manual_seed(0)
    x, w = _kernel_inputs(24, torch.bfloat16)
    torch.testing.assert_close(
        module._launch(x, w, TILES_2D).float(), F.conv2d(x.float(), w.float(), padding=1), rtol=8e-3, atol=1e-3
    )


@pytest.mark.triton_interpreter(bf16_dot=True)
@torch.no_grad()
def test_kernel_under_autocast(bf16_casts_round_to_nearest):
    # float32 x and weight under (CPU) autocast: bf16 products and output, like F.conv2d
    torch.manual_seed(0)
    x, w = _kernel_inputs(24)
    assert not conv3x3_no_bias_applies(x.bfloat16(), w)  # mixed dtypes: F.conv2d raises outside autocast
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert conv3x3_no_bias_applies(x, w) and conv3x3_no_bias_applies(x.bfloat16(), w)
        out = conv3x3_no_bias(x, w)
        ref = F.conv2d(x, w, padding=1)
    assert out.dtype == ref.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), F.conv2d(x.bfloat16().float(), w.bfloat16().float(), padding=1), rtol=1e-2, atol=1e-2)
    torch.testing.assert_close(out.float(), ref.float(), rtol=2e-2, atol=2e-2)


@pytest.mark.triton_interpreter
def test_int32_offsets_bound_the_image_size():
    # H * W * max(Cin, Cout) < 2^31 (meta tensors: no memory)
    big = torch.empty(1, 16, 2**14, 2**13, device="meta").contiguous(memory_format=CL)
    w_meta = torch.empty(16, 16, 3, 3, device="meta")
    with torch.no_grad():
        assert not conv3x3_no_bias_applies(big, w_meta)
        assert conv3x3_no_bias_applies(big[:, :, :, 1:].contiguous(memory_format=CL), w_meta)


@pytest.mark.triton_interpreter
def test_fallbacks_with_the_kernel_available():
    # exactly F.conv2d
    torch.manual_seed(0)
    x, w = _kernel_inputs(24)
    with torch.no_grad():
        for xs, ws in ((x, _kernel_inputs(24, cout=32)[1]), (x.contiguous(), w)):  # Cout 32; NCHW
            assert not conv3x3_no_bias_applies(xs, ws)
            assert torch.equal(conv3x3_no_bias(xs, ws), F.conv2d(xs, ws, padding=1))
    w.requires_grad_()
    assert not conv3x3_no_bias_applies(x, w)  # autograd
    out = conv3x3_no_bias(x, w)
    assert out.grad_fn is not None and torch.equal(out, F.conv2d(x, w, padding=1))


def _inputs(cin=24, cout=16, dtype=torch.float32):
    torch.manual_seed(0)
    x = torch.randn(3, cin, 5, 7, dtype=dtype).contiguous(memory_format=CL)
    return x, torch.randn(cout, cin, 3, 3, dtype=dtype) / 15


def test_policy_falls_back_to_conv2d():
    x, w16 = _inputs()
    _, w32 = _inputs(cout=32)
    with torch.no_grad():
        for xs, ws in ((x, w32), (x.contiguous(), w16)):  # Cout 32; NCHW
            assert not conv3x3_no_bias_applies(xs, ws)
            out = conv3x3_no_bias(xs, ws)
            assert torch.equal(out, F.conv2d(xs, ws, padding=1))
            assert out.is_contiguous(memory_format=CL) == xs.is_contiguous(memory_format=CL)
        with torch.autocast("cpu", dtype=torch.bfloat16):  # autocast as F.conv2d does it
            out = conv3x3_no_bias(x, w32)
            assert out.dtype == torch.bfloat16 and torch.equal(out, F.conv2d(x, w32, padding=1))
    # grad-enabled: F.conv2d's autograd
    xg, wg = x.clone().requires_grad_(), w16.clone().requires_grad_()
    assert not conv3x3_no_bias_applies(xg, wg)
    out = conv3x3_no_bias(xg, wg)
    want = F.conv2d(xg, wg, padding=1)
    assert torch.equal(out, want)
    grad = torch.randn_like(want)
    for g, e in zip(torch.autograd.grad(out, (xg, wg), grad), torch.autograd.grad(want, (xg, wg), grad), strict=True):
        assert torch.equal(g, e)


def test_cpu_without_interpreter_falls_back():
    x, w = _inputs()
    with torch.no_grad():
        assert not conv3x3_no_bias_applies(x, w)
        assert torch.equal(conv3x3_no_bias(x, w), F.conv2d(x, w, padding=1))


def test_bad_shapes_raise_with_the_shapes():
    x, w = _inputs()
    cases = [
        (x, torch.randn(16, 24, 5, 5), r"weight must be \(Cout, 24, 3, 3\).*got \(16, 24, 5, 5\)"),
        (x, torch.randn(16, 8, 3, 3), r"weight must be \(Cout, 24, 3, 3\).*got \(16, 8, 3, 3\)"),
        (x[0], w, r"x must be \(N, Cin, H, W\), got \(24, 5, 7\)"),
    ]
    for xs, ws, message in cases:
        assert not conv3x3_no_bias_applies(xs, ws)  # the predicate answers, never raises
        with pytest.raises(ValueError, match=message):
            conv3x3_no_bias(xs, ws)


def test_configs_keep_dot_k_at_least_16():
    # Triton on Hopper rejects tl.dot with K < 16 (the CPU interpreter accepts it)
    for cin in range(1, 257):
        for itemsize in (2, 4):
            block_m, block_k, _, _, block_w = module._config(cin, 16, itemsize)
            assert block_k >= 16 and block_m >= 16 and (block_w == 0 or block_m % block_w == 0)
    assert module._config(16, 16, 2) == (256, 16, 4, 2, 0)
    assert module._config(32, 16, 2) == (128, 32, 4, 2, 16)
    x, w = _inputs()
    with pytest.raises(ValueError, match="tl.dot"):
        module._launch(x, w, config=(128, 8, 4, 2, 0))


def test_precision_follows_cudnn_allow_tf32():
    saved = torch.backends.cudnn.allow_tf32
    try:
        torch.backends.cudnn.allow_tf32 = False
        assert module._precision(torch.float32) == "ieee"
        torch.backends.cudnn.allow_tf32 = True
        assert module._precision(torch.float32) == "tf32"
        assert module._precision(torch.bfloat16) == "ieee"
    finally:
        torch.backends.cudnn.allow_tf32 = saved
