"""CAT-Seg's class padding in ClassTransformerLayer (``pad_len``) against a literal
reference that pads the class axis with real token copies, as the official layer does."""

import pytest
import torch
import torch.nn.functional as F

from sed_d2.layers import ClassTransformerLayer, MultiHeadLinearAttention


def _official_linear_attention(q, k, v, eps=1e-6):
    q, k = F.elu(q) + 1, F.elu(k) + 1
    length = v.shape[1]
    kv = torch.einsum("nshd,nshv->nhdv", k, v / length)
    z = 1 / (torch.einsum("nlhd,nhd->nlh", q, k.sum(dim=1)) + eps)
    return torch.einsum("nlhd,nhdv,nlh->nlhv", q, kv, z) * length


def _reference(layer, x, guidance):
    """Pool, pad classes to pad_len with copies of the padding token (and guidance),
    attend + MLP over the padded class axis, upsample, crop, add the input."""
    batch, classes, channels, height, width = x.shape
    pooling = layer.active_pooling_size
    pooled = F.avg_pool2d(x.flatten(0, 1), pooling).unflatten(0, (batch, classes))
    ph, pw = pooled.shape[-2:]
    extra = max(layer.pad_len - classes, 0)
    tokens = pooled.permute(0, 3, 4, 1, 2).reshape(batch * ph * pw, classes, channels)
    tokens = torch.cat([tokens, layer.padding_tokens.expand(tokens.shape[0], extra, channels)], dim=1)
    g = torch.cat([guidance, layer.padding_guidance.expand(batch, extra, guidance.shape[-1])], dim=1)
    g = g.repeat_interleave(ph * pw, dim=0)
    attention, heads = layer.attention, layer.attention.num_heads
    normed = F.layer_norm(tokens, (channels,), layer.attention_norm.weight, layer.attention_norm.bias)
    q = F.linear(torch.cat([normed, g], -1), attention.query.weight, attention.query.bias)
    k = F.linear(torch.cat([normed, g], -1), attention.key.weight, attention.key.bias)
    v = F.linear(normed, attention.value.weight, attention.value.bias)
    split = lambda t: t.unflatten(-1, (heads, -1))  # noqa: E731
    tokens = tokens + _official_linear_attention(split(q), split(k), split(v)).flatten(-2)
    normed = F.layer_norm(tokens, (channels,), layer.mlp_norm.weight, layer.mlp_norm.bias)
    tokens = tokens + F.linear(F.relu(F.linear(normed, layer.mlp.fc1.weight, layer.mlp.fc1.bias)), layer.mlp.fc2.weight, layer.mlp.fc2.bias)
    maps = tokens[:, :classes].reshape(batch, ph, pw, classes, channels).permute(0, 3, 4, 1, 2).flatten(0, 1)
    maps = F.interpolate(maps, size=(height, width), mode="bilinear", align_corners=True)
    return x + maps.unflatten(0, (batch, classes))


def _layer(pooling, pad_len=16):
    torch.manual_seed(0)
    layer = ClassTransformerLayer(16, 4, pooling_size=pooling, guidance_dim=8, pad_len=pad_len).train()
    for p in layer.parameters():
        torch.nn.init.normal_(p, std=0.3)  # padding tokens are zeros at init: re-draw them
    return layer


@pytest.mark.parametrize("classes, pooling", [(5, (2, 2)), (5, (1, 1)), (15, (2, 2)), (16, (1, 1))])
def test_padding_equals_concatenated_padding_tokens(classes, pooling):
    layer = _layer(pooling)
    x, guidance = torch.randn(2, classes, 16, 4, 4), torch.randn(2, classes, 8)
    with torch.no_grad():
        torch.testing.assert_close(layer(x, guidance), _reference(layer, x, guidance), atol=2e-5, rtol=1e-5)


def test_more_classes_than_pad_len_are_not_padded():
    padded, plain = _layer((1, 1), pad_len=4), _layer((1, 1), pad_len=0)
    plain.load_state_dict({k: v for k, v in padded.state_dict().items() if "padding" not in k})
    x, guidance = torch.randn(1, 6, 16, 4, 4), torch.randn(1, 6, 8)
    with torch.no_grad():
        torch.testing.assert_close(padded(x, guidance), plain(x, guidance))
        assert not torch.allclose(padded(x[:, :3], guidance[:, :3]), plain(x[:, :3], guidance[:, :3]))


def test_padding_parameters_and_their_gradients():
    layer = _layer((2, 2))
    assert layer.padding_tokens.shape == (1, 1, 16) and layer.padding_guidance.shape == (1, 1, 8)
    assert ClassTransformerLayer(16, 4, guidance_dim=8).padding_tokens is None  # SED: no new keys
    assert "padding_tokens" not in ClassTransformerLayer(16, 4).state_dict()
    layer(torch.randn(1, 3, 16, 4, 4), torch.randn(1, 3, 8)).square().sum().backward()
    assert layer.padding_tokens.grad.abs().sum() > 0 and layer.padding_guidance.grad.abs().sum() > 0


def test_constant_token_sums_equal_the_sums_over_copies():
    torch.manual_seed(1)
    attention = MultiHeadLinearAttention(8, 2, guidance_dim=4)
    norm = torch.nn.LayerNorm(8)
    token, guidance = torch.randn(8), torch.randn(4)
    sums = attention.constant_token_sums(token, guidance, 3, norm=norm)
    normed = norm(token)
    k = F.elu(attention.key(torch.cat([normed, guidance]))) + 1
    v = attention.value(normed)
    k, v = k.view(2, 4), v.view(2, 4)
    expected = 3 * torch.cat([torch.einsum("hd,he->hde", k, v), k.unsqueeze(-1)], dim=-1)
    torch.testing.assert_close(sums, expected)
