import torch
import torch.nn.functional as F

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
