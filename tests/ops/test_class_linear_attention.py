"""sed_d2.ops.class_linear_attention: the two Triton passes equal ``residual +
linear_attention`` along the class axis.

As in test_layer_norm_mlp.py, the kernels run on CPU in Triton's interpreter (the tests marked
triton_interpreter: TRITON_INTERPRET=1, see tests/triton_interpreter_plugin.py). (The kernels'
dots are float32, so the interpreter's bfloat16 dot problem does not arise.) Without it the CPU
path is the PyTorch reference, checked here against the module computation.
"""

import pytest
import torch
import torch.nn.functional as F

from sed_d2.layers import MultiHeadLinearAttention
from sed_d2.ops import class_linear_attention as fla
from sed_d2.ops.class_linear_attention import (
    class_linear_attention_reference,
    fused_class_linear_attention,
    fused_class_linear_attention_applies,
    linear_attention,
)


def _inputs(b, t, p, c, dtype=torch.float32, seed=0):
    torch.manual_seed(seed)
    qkv = torch.randn(b, t, p, 3 * c) * 1.5  # q, k well into both branches of elu + 1
    return qkv.to(dtype), torch.randn(b, t, p, c).to(dtype)


def _want(qkv, res, heads, eps=1e-6):
    # float64 reference on the same (rounded) inputs
    return class_linear_attention_reference(qkv.double(), res.double(), heads, eps)


# T = 1; T not a multiple of BLOCK_T (16 / 16 / 8); rows (P * 4) not a multiple of BLOCK_R
# (16 / 8 / 4 and 8 / 4 / 4); B = 2
@pytest.mark.triton_interpreter
@pytest.mark.parametrize("b, t, p, c", [(1, 1, 3, 32), (2, 19, 5, 32), (1, 21, 3, 64), (1, 11, 2, 128)])
@torch.no_grad()
def test_kernels_equal_the_reference(b, t, p, c):
    qkv, res = _inputs(b, t, p, c, seed=t + c)
    assert fused_class_linear_attention_applies(qkv, res, 4)
    out = fused_class_linear_attention(qkv, res, 4)
    assert out.shape == res.shape and out.dtype == torch.float32 and out.is_contiguous()
    expected = _want(qkv, res, 4)
    torch.testing.assert_close(out.double(), expected, rtol=1e-5, atol=1e-5)
    # class axis split in pass 1 (partial sums) and chunked in pass 2, with a ragged last part
    parted = fla._launch(qkv, res, 4, 1e-6, splits=3, chunks=2)
    torch.testing.assert_close(parted.double(), expected, rtol=1e-5, atol=1e-5)
    # eps is used as given
    torch.testing.assert_close(
        fused_class_linear_attention(qkv, res, 4, 0.5).double(), _want(qkv, res, 4, 0.5), rtol=1e-5, atol=1e-5
    )
    # 16-bit: loads / store in bf16 (fp16), float32 math; only the output rounding separates
    # it from float64 on the same inputs
    for dtype in (torch.bfloat16, torch.float16):
        qkv16, res16 = qkv.to(dtype), res.to(dtype)
        out = fused_class_linear_attention(qkv16, res16, 4)
        assert out.dtype == dtype
        torch.testing.assert_close(out.double(), _want(qkv16, res16, 4), rtol=1e-2, atol=1e-2)
    # mixed, as under autocast with float32 class maps: bf16 qkv, float32 residual
    qkv16 = qkv.bfloat16()
    out = fused_class_linear_attention(qkv16, res, 4)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out.double(), _want(qkv16, res, 4), rtol=1e-5, atol=1e-5)


# C = 32 with 2 heads (D = 16), C = 256 with 4 (D = 64)
@pytest.mark.triton_interpreter
@pytest.mark.parametrize("c, heads", [(32, 2), (256, 4)])
@torch.no_grad()
def test_kernels_with_other_head_counts(c, heads):
    qkv, res = _inputs(1, 9, 3, c, seed=c)
    assert fused_class_linear_attention_applies(qkv, res, heads)
    out = fused_class_linear_attention(qkv, res, heads)
    torch.testing.assert_close(out.double(), _want(qkv, res, heads), rtol=1e-5, atol=1e-5)


@pytest.mark.triton_interpreter
@pytest.mark.parametrize("shape", [(1, 0, 3), (1, 4, 0)], ids=["no_classes", "no_positions"])
@torch.no_grad()
def test_kernels_on_an_empty_axis(shape):
    qkv, res = torch.randn(*shape, 96), torch.randn(*shape, 32)
    assert fused_class_linear_attention(qkv, res, 4).shape == res.shape


@pytest.mark.triton_interpreter
@torch.no_grad()
def test_small_heads_and_strided_inputs_take_the_reference():
    # not covered by the kernels -> the reference: head dim 4, non-contiguous input
    qkv, res = _inputs(1, 5, 3, 16)
    assert not fused_class_linear_attention_applies(qkv, res, 4)
    torch.testing.assert_close(fused_class_linear_attention(qkv, res, 4), class_linear_attention_reference(qkv, res, 4))
    qkv, res = _inputs(1, 5, 3, 32)
    strided = torch.cat([qkv, qkv], dim=-1)[..., :96]
    assert not fused_class_linear_attention_applies(strided, res, 4)
    assert not fused_class_linear_attention_applies(qkv, res.transpose(1, 2).contiguous().transpose(1, 2), 4)


@pytest.mark.triton_interpreter
def test_autograd_takes_the_reference():
    # inputs requiring grad take the reference (differentiable) while grad is on
    qkv, res = _inputs(1, 5, 3, 32)
    qkv.requires_grad_()
    assert not fused_class_linear_attention_applies(qkv, res, 4)
    out = fused_class_linear_attention(qkv, res, 4)
    assert out.grad_fn is not None
    with torch.no_grad():
        assert fused_class_linear_attention_applies(qkv, res, 4)


def test_reference_is_the_module_attention_plus_residual():
    # float64: qkv_projection + reference == MultiHeadLinearAttention.forward (+ residual)
    torch.manual_seed(0)
    attn = MultiHeadLinearAttention(16, 4).double()
    norm = torch.nn.LayerNorm(16).double()
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
        norm.bias.uniform_(-0.5, 0.5)
    x = torch.randn(2, 5, 7, 16, dtype=torch.float64)  # (B, T, P, C), attention over T
    qkv = attn.qkv_projection(x, norm=norm)
    assert qkv.shape == (2, 5, 7, 48)
    torch.testing.assert_close(class_linear_attention_reference(qkv, x, 4), x + attn(x, norm=norm))
    q, k, v = (t.unflatten(-1, (4, 4)) for t in qkv.split(16, dim=-1))
    torch.testing.assert_close(class_linear_attention_reference(qkv, x, 4, 0.1), x + linear_attention(q, k, v, 0.1).flatten(-2))


def test_cpu_without_interpreter_falls_back():
    torch.manual_seed(1)
    qkv, res = torch.randn(1, 6, 5, 96), torch.randn(1, 6, 5, 32)
    with torch.no_grad():
        assert not fused_class_linear_attention_applies(qkv, res, 4)
        torch.testing.assert_close(fused_class_linear_attention(qkv, res, 4), class_linear_attention_reference(qkv, res, 4))
        out = fused_class_linear_attention(qkv.bfloat16(), res.bfloat16(), 4)
        assert out.dtype == torch.bfloat16


def test_every_dot_contraction_is_at_least_16():
    """Triton on Hopper rejects tl.dot contractions shorter than 16 (the CPU interpreter
    accepts them): pass 1 contracts over BLOCK_T classes, pass 2 over the head dim padded
    to max(D, 16)."""
    assert set(fla._SUM_CONFIGS) == set(fla._APPLY_CONFIGS)
    for head_dim, (_, block_t, _) in fla._SUM_CONFIGS.items():
        assert block_t >= 16, (head_dim, block_t)
    for _, block_t, _ in fla._APPLY_CONFIGS.values():
        assert block_t <= fla._MAX_BLOCK_T  # the host's int32 offset check uses the largest tile


# ----------------------------------------------------------------------------- linear_attention
def _explicit(q, k, v, eps):
    """out_l = sum_s (phi(q_l).phi(k_s)) v_s / (sum_s phi(q_l).phi(k_s) + eps), per head."""
    phi_q, phi_k = F.elu(q) + 1, F.elu(k) + 1
    scores = torch.einsum("nlhd,nshd->nhls", phi_q, phi_k)  # explicit (L, S) weights
    out = torch.einsum("nhls,nshe->nlhe", scores, v)
    return out / (scores.sum(-1).permute(0, 2, 1).unsqueeze(-1) + eps)


def test_linear_attention_equals_explicit_formula():
    torch.manual_seed(0)
    q = torch.randn(3, 7, 2, 4, dtype=torch.float64)
    k = torch.randn(3, 5, 2, 4, dtype=torch.float64)
    v = torch.randn(3, 5, 2, 6, dtype=torch.float64)
    out = linear_attention(q, k, v, eps=1e-6)
    assert out.shape == (3, 7, 2, 6)
    torch.testing.assert_close(out, _explicit(q, k, v, 1e-6))
    # eps matters (it is not scaled with the sequence length)
    torch.testing.assert_close(linear_attention(q, k, v, eps=0.5), _explicit(q, k, v, 0.5))


def test_extra_position_dims_attend_independently():
    torch.manual_seed(3)
    q = torch.randn(2, 5, 3, 4, 2, 4, dtype=torch.float64)  # (N, L, *P=(3, 4), H, D)
    k = torch.randn(2, 6, 3, 4, 2, 4, dtype=torch.float64)
    v = torch.randn(2, 6, 3, 4, 2, 3, dtype=torch.float64)
    out = linear_attention(q, k, v)
    assert out.shape == (2, 5, 3, 4, 2, 3)
    for i in range(3):
        for j in range(4):
            torch.testing.assert_close(out[:, :, i, j], _explicit(q[:, :, i, j], k[:, :, i, j], v[:, :, i, j], 1e-6))
