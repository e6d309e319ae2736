import torch

from sed_d2.layers.cross_attention import TextImageCrossAttention


def test_post_norm_cross_attention_equals_its_definition():
    torch.manual_seed(0)
    layer = TextImageCrossAttention(16, 4)
    text, image, pos = torch.randn(2, 3, 16), torch.randn(2, 10, 16), torch.randn(10, 16)
    with torch.no_grad():
        attended = layer.attn(text, image + pos, image)[0]
        torch.testing.assert_close(layer(text, image, pos), layer.norm(text + layer.proj(attended)))
        layer.pos_on_values = True
        attended = layer.attn(text, image + pos, image + pos)[0]
        torch.testing.assert_close(layer(text, image, pos), layer.norm(text + layer.proj(attended)))


def test_official_initialisation():
    layer = TextImageCrossAttention(64, 8)
    assert layer.attn.in_proj_bias.abs().max() == 0 and layer.attn.out_proj.bias.abs().max() == 0
    bound = (6 / (64 + 64)) ** 0.5  # xavier-uniform of out_proj (official _reset_parameters)
    assert layer.attn.out_proj.weight.abs().max() <= bound
