import torch
import torch.nn.functional as F

from sed_d2.layers import LinearAttention, MultiHeadLinearAttention, linear_attention


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
    torch.testing.assert_close(LinearAttention()(q, k, v), out)
    # eps matters (it is not scaled with the sequence length)
    torch.testing.assert_close(linear_attention(q, k, v, eps=0.5), _explicit(q, k, v, 0.5))


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
