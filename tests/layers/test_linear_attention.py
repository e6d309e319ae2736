import pytest
import torch

from sed_d2.layers import LinearAttention, MultiHeadLinearAttention
from sed_d2.ops import linear_attention


def test_linear_attention_module_is_the_function():
    torch.manual_seed(0)
    q, k, v = torch.randn(3, 7, 2, 4), torch.randn(3, 5, 2, 4), torch.randn(3, 5, 2, 6)
    extra = torch.rand(2, 4, 7)
    assert torch.equal(LinearAttention(eps=0.5)(q, k, v, extra), linear_attention(q, k, v, 0.5, extra_sums=extra))


def test_multi_head_projections_without_output_projection():
    torch.manual_seed(1)
    attn = MultiHeadLinearAttention(8, 2)
    assert sorted(n for n, _ in attn.named_parameters()) == [
        "key.bias", "key.weight", "query.bias", "query.weight", "value.bias", "value.weight",
    ]
    x = torch.randn(4, 5, 8)
    q, k, v = (layer(x).view(4, 5, 2, 4) for layer in (attn.query, attn.key, attn.value))
    torch.testing.assert_close(attn(x), linear_attention(q, k, v).reshape(4, 5, 8))


def test_guidance_is_concatenated_into_queries_and_keys_only():
    torch.manual_seed(2)
    attn = MultiHeadLinearAttention(8, 2, guidance_dim=3)
    assert attn.query.in_features == 11 and attn.key.in_features == 11 and attn.value.in_features == 8
    x, g = torch.randn(2, 4, 8), torch.randn(2, 4, 3)
    xg = torch.cat([x, g], -1)
    q, k = attn.query(xg).view(2, 4, 2, 4), attn.key(xg).view(2, 4, 2, 4)
    v = attn.value(x).view(2, 4, 2, 4)
    torch.testing.assert_close(attn(x, g), linear_attention(q, k, v).reshape(2, 4, 8))


def test_folded_pre_norm_equals_norm_then_attention():
    torch.manual_seed(4)
    for guidance_dim in (0, 3):
        attn = MultiHeadLinearAttention(8, 2, guidance_dim=guidance_dim).double()
        norm = torch.nn.LayerNorm(8).double()
        with torch.no_grad():
            norm.weight.uniform_(0.5, 1.5)
            norm.bias.uniform_(-0.5, 0.5)
        x = torch.randn(2, 5, 7, 8, dtype=torch.float64)  # sequence = dim 1, 7 positions
        g = torch.randn(2, 5, 7, guidance_dim, dtype=torch.float64) if guidance_dim else None
        torch.testing.assert_close(attn(x, g, norm=norm), attn(norm(x), g))


def test_qkv_projection_needs_no_guidance():
    with pytest.raises(ValueError, match="no guidance input"):
        MultiHeadLinearAttention(8, 2, guidance_dim=3).qkv_projection(torch.randn(2, 3, 8))
