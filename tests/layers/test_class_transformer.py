import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sed_d2 import ops
from sed_d2.layers import ClassTransformerLayer


def _sequence_update(layer, seq):
    """The transformer update of one (..., T, C) class sequence, written out."""
    lead = seq.shape[:-2]
    flat = seq.flatten(0, len(lead) - 1)  # (N, T, C)
    seq = seq + layer.attention(layer.attention_norm(flat)).view(seq.shape)
    return seq + layer.mlp.fc2(F.relu(layer.mlp.fc1(layer.mlp_norm(seq))))


def test_parameters_match_official_class_transformer_layer():
    layer = ClassTransformerLayer(64, 4)
    shapes = {name: tuple(p.shape) for name, p in layer.named_parameters()}
    assert shapes == {
        "attention_norm.weight": (64,), "attention_norm.bias": (64,),          # norm1
        "attention.query.weight": (64, 64), "attention.query.bias": (64,),     # attention.q
        "attention.key.weight": (64, 64), "attention.key.bias": (64,),         # attention.k
        "attention.value.weight": (64, 64), "attention.value.bias": (64,),     # attention.v
        "mlp_norm.weight": (64,), "mlp_norm.bias": (64,),                      # norm2
        "mlp.fc1.weight": (256, 64), "mlp.fc1.bias": (256,),                   # MLP.0
        "mlp.fc2.weight": (64, 256), "mlp.fc2.bias": (64,),                    # MLP.2
    }
    assert layer.attention_norm.eps == 1e-5 and layer.mlp_norm.eps == 1e-5


def test_unpooled_output_has_the_doubled_residual():
    torch.manual_seed(0)
    layer = ClassTransformerLayer(8, 2, pooling_size=(1, 1))
    x = torch.randn(2, 5, 8, 3, 4)  # (B, T, C, H, W)
    out = layer(x)
    assert out.shape == x.shape
    seq = x.permute(0, 3, 4, 1, 2)  # (B, H, W, T, C): attention over the class axis
    expected = x + _sequence_update(layer, seq).permute(0, 3, 4, 1, 2)  # 2x + attn + mlp
    torch.testing.assert_close(out, expected)


def test_pooled_output_is_input_plus_upsampled_pooled_update():
    torch.manual_seed(1)
    layer = ClassTransformerLayer(8, 2, pooling_size=(2, 2)).train()
    x = torch.randn(2, 3, 8, 4, 6)
    pooled = F.avg_pool2d(x.flatten(0, 1), 2).view(2, 3, 8, 2, 3)
    updated = _sequence_update(layer, pooled.permute(0, 3, 4, 1, 2)).permute(0, 3, 4, 1, 2)
    upsampled = F.interpolate(updated.reshape(6, 8, 2, 3), size=(4, 6), mode="bilinear", align_corners=True)
    torch.testing.assert_close(layer(x), x + upsampled.view(2, 3, 8, 4, 6))


def test_train_and_eval_pooling_sizes():
    layer = ClassTransformerLayer(8, 2, pooling_size=(2, 2), test_pooling_size=(1, 1))
    seen = []
    layer.attention.register_forward_hook(lambda module, args, out: seen.append(args[0].shape))
    x = torch.randn(1, 3, 8, 4, 4)
    layer.train()
    assert layer.active_pooling_size == (2, 2)
    layer(x)
    layer.eval()
    assert layer.active_pooling_size == (1, 1)
    layer(x)
    assert seen == [(1, 3, 2 * 2, 8), (1, 3, 4 * 4, 8)]  # (B, T, h*w, C) tokens, sequence = T
    assert ClassTransformerLayer(8, 2, pooling_size=3).test_pooling_size == (3, 3)


def test_class_permutation_equivariance():
    torch.manual_seed(2)
    layer = ClassTransformerLayer(8, 2, pooling_size=(2, 2)).train()
    x = torch.randn(2, 5, 8, 4, 4)
    perm = torch.tensor([3, 0, 4, 1, 2])
    torch.testing.assert_close(layer(x[:, perm]), layer(x)[:, perm])


def test_text_guidance_variant():
    torch.manual_seed(3)
    layer = ClassTransformerLayer(8, 2, pooling_size=(1, 1), guidance_dim=4)
    x, guidance = torch.randn(2, 3, 8, 2, 2), torch.randn(2, 3, 4)
    out = layer(x, guidance)
    seq = x.permute(0, 3, 4, 1, 2)
    g = guidance[:, None, None].expand(2, 2, 2, 3, 4)
    seq = seq + layer.attention(layer.attention_norm(seq).flatten(0, 2), g.flatten(0, 2)).view(2, 2, 2, 3, 8)
    seq = seq + layer.mlp(layer.mlp_norm(seq))
    torch.testing.assert_close(out, x + seq.permute(0, 3, 4, 1, 2))


# The fused inference path (Triton kernels) against the general path, in Triton's interpreter
# (marked triton_interpreter: TRITON_INTERPRET=1, see tests/triton_interpreter_plugin.py). The
# general path is what runs with autograd on: parameters require grad, so `layer(x)` under
# enable_grad never fuses.
@pytest.fixture()
def fused_calls(monkeypatch):
    """The calls of ops.fused_class_linear_attention (the fused path's attention)."""
    calls = []
    fused_attention = ops.fused_class_linear_attention

    def counting(*args, **kwargs):
        calls.append(1)
        return fused_attention(*args, **kwargs)

    monkeypatch.setattr(ops, "fused_class_linear_attention", counting)
    return calls


def _class_maps(b, t, c, h, w, dtype=torch.float32):
    x = torch.randn(b * t, c, h, w).contiguous(memory_format=torch.channels_last)
    return x.to(dtype).unflatten(0, (b, t))


def _layer_for(c, heads, seed, act=nn.ReLU):
    torch.manual_seed(seed)
    layer = ClassTransformerLayer(c, heads, pooling_size=(2, 2), test_pooling_size=(1, 1))
    layer.mlp.act = act()
    for norm in (layer.attention_norm, layer.mlp_norm):  # non-trivial LayerNorm affines
        with torch.no_grad():
            norm.weight.uniform_(0.5, 1.5)
            norm.bias.uniform_(-0.3, 0.3)
    return layer.eval()


def _same_layout(a, b):  # strides of size-1 dims are arbitrary
    return all(sa == sb for sa, sb, n in zip(a.stride(), b.stride(), a.shape) if n > 1)


def _general(layer, x, calls):
    with torch.enable_grad():
        n = len(calls)
        out = layer(x).detach()
        assert len(calls) == n, "autograd on: the general path must run"
        return out


def _fused(layer, x, calls):
    with torch.no_grad():
        n = len(calls)
        out = layer(x)
        assert len(calls) == n + 1, "no autograd, eval, pooling (1, 1): the fused path must run"
        return out


# C = 32 / 64: attention and MLP kernels; C = 8 (head dim 4): attention and MLP fall back to
# PyTorch inside the fused path. T = 1 and T not a multiple of the tiles.
@pytest.mark.triton_interpreter(bf16_dot=True)
@pytest.mark.parametrize(
    "c, heads, t, h, w, act",
    [(32, 4, 19, 3, 5, nn.ReLU), (64, 4, 1, 2, 3, nn.ReLU), (32, 4, 6, 2, 2, nn.GELU), (8, 2, 5, 3, 2, nn.ReLU)],
)
def test_fused_inference_path_equals_the_general_path(c, heads, t, h, w, act, fused_calls):
    layer = _layer_for(c, heads, c + t, act)
    x = _class_maps(2 if c == 32 else 1, t, c, h, w)
    want, got = _general(layer, x, fused_calls), _fused(layer, x, fused_calls)
    assert got.shape == x.shape and _same_layout(got, want) and _same_layout(got, x), (got.stride(), want.stride())
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    # bf16 weights and maps
    layer16, x16 = _layer_for(c, heads, c + t, act).bfloat16(), x.bfloat16()
    got = _fused(layer16, x16, fused_calls)
    assert got.dtype == torch.bfloat16 and _same_layout(got, x16)
    torch.testing.assert_close(got.float(), _general(layer16, x16, fused_calls).float(), rtol=5e-2, atol=5e-2)
    # bf16 autocast over float32 maps and weights (the model's inference mode)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got, want = _fused(layer, x, fused_calls), _general(layer, x, fused_calls)
    assert got.dtype == want.dtype
    torch.testing.assert_close(got.float(), want.float(), rtol=5e-2, atol=5e-2)


@pytest.mark.triton_interpreter
def test_fused_inference_path_only_where_it_applies(fused_calls):
    layer, x = _layer_for(32, 4, 0), _class_maps(1, 3, 32, 2, 2)
    with torch.no_grad():
        layer.train()  # training mode never fuses, whatever the pooling
        layer.pooling_size = (1, 1)
        layer(x)
        layer.eval()
        layer.test_pooling_size = (2, 2)  # pooled eval: general path
        layer(x)
        layer.test_pooling_size = (1, 1)
        layer(x.flatten(0, 1).contiguous().unflatten(0, (1, 3)))  # NCHW class maps: general path
        for p in layer.parameters():
            p.requires_grad_(False)
    with torch.enable_grad():
        layer(x.clone().requires_grad_())  # input requires grad
        layer(x)  # nothing requires grad: fuses even with grad mode on
    assert len(fused_calls) == 1, len(fused_calls)


def test_cpu_without_interpreter_never_fuses():
    layer = ClassTransformerLayer(32, 4, pooling_size=(1, 1)).eval()
    x = torch.randn(3, 32, 2, 2).contiguous(memory_format=torch.channels_last).unflatten(0, (1, 3))
    with torch.no_grad():
        assert not layer._fused_inference_applies(x)
        assert layer(x).shape == x.shape
