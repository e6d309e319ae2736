import pytest
import torch
import torch.nn.functional as F

from sed_d2.layers import Conv2dReLU, ConvTranspose2dReLU, DoubleConv, SkipFusion


def test_double_conv_structure():
    block = DoubleConv(40, 32)
    shapes = {name: tuple(p.shape) for name, p in block.named_parameters()}
    assert shapes == {
        "conv1.weight": (32, 40, 3, 3), "norm1.weight": (32,), "norm1.bias": (32,),
        "conv2.weight": (32, 32, 3, 3), "norm2.weight": (32,), "norm2.bias": (32,),
    }
    assert block.norm1.num_groups == 2 and block.norm2.num_groups == 2  # out // 16
    with pytest.raises(ValueError, match="GroupNorm"):
        DoubleConv(8, 8)


def test_conv_relu_blocks_have_plain_parameter_names():
    assert sorted(n for n, _ in Conv2dReLU(4, 2, 3, padding=1).named_parameters()) == ["bias", "weight"]
    up = ConvTranspose2dReLU(4, 2, kernel_size=2, stride=2)
    assert up.weight.shape == (4, 2, 2, 2)
    x = torch.randn(1, 4, 3, 3)
    torch.testing.assert_close(up(x), F.relu(F.conv_transpose2d(x, up.weight, up.bias, stride=2)))


def test_skip_fusion_concatenation_order_and_shapes():
    torch.manual_seed(0)
    fusion = SkipFusion(32, 16, skip_channels=8, cost_channels=8)
    assert fusion.upsample.weight.shape == (32, 24, 2, 2)  # ConvTranspose2d(C, C - g)
    assert fusion.double_conv.conv1.weight.shape == (16, 40, 3, 3)  # C + g
    B, T = 2, 3
    x = torch.randn(B, T, 32, 4, 4)
    skip = torch.randn(B, 8, 8, 8)
    cost = torch.randn(B, T, 8, 8, 8)
    out = fusion(x, skip, cost)
    assert out.shape == (B, T, 16, 8, 8)
    up = fusion.upsample(x.reshape(B * T, 32, 4, 4))
    repeated = skip.repeat_interleave(T, dim=0)  # (B*T): batch outer, class inner
    expected = fusion.double_conv(torch.cat([up, repeated, cost.reshape(B * T, 8, 8, 8)], dim=1))
    torch.testing.assert_close(out, expected.view(B, T, 16, 8, 8))


def test_skip_fusion_without_cost_guidance():
    fusion = SkipFusion(64, 32, skip_channels=16)
    out = fusion(torch.randn(1, 2, 64, 3, 3), torch.randn(1, 16, 6, 6))
    assert out.shape == (1, 2, 32, 6, 6)
    with pytest.raises(ValueError):
        fusion(torch.randn(1, 2, 64, 3, 3), torch.randn(1, 16, 6, 6), torch.randn(1, 2, 16, 6, 6))
