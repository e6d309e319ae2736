import pytest
import torch
import torch.nn.functional as F

from sed_d2.layers import Conv2dReLU, ConvTranspose2dReLU, DoubleConv, SkipFusion
from sed_d2.ops import conv_transpose_2x2


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


def test_skip_fusion_inference_writes_parts_into_one_buffer():
    """Without gradients, the upsampling's pixel shuffle and the cost guidance are written
    straight into the concatenation buffer: same values as the torch.cat path."""
    torch.manual_seed(1)
    fusion = SkipFusion(32, 16, skip_channels=8, cost_channels=8).double()
    B, T = 2, 3
    x = torch.randn(B, T, 32, 5, 4, dtype=torch.float64)
    skip = torch.randn(B, 8, 10, 8, dtype=torch.float64)
    cost = torch.randn(B, T, 8, 10, 8, dtype=torch.float64)
    reference = fusion(x, skip, cost)  # grad enabled: the torch.cat path
    with torch.no_grad():
        direct = fusion(x, skip, cost)
        fused = fusion._upsample_and_concat(x.flatten(0, 1), cost.flatten(0, 1))
    torch.testing.assert_close(direct, reference.detach(), rtol=1e-12, atol=1e-12)
    up = fusion.upsample(x.flatten(0, 1))
    torch.testing.assert_close(fused, torch.cat([up, cost.flatten(0, 1)], 1).detach(), rtol=1e-12, atol=1e-12)
    assert fused.is_contiguous(memory_format=torch.channels_last)
    with torch.no_grad(), torch.autocast("cpu", torch.bfloat16):
        assert fusion.float()._upsample_and_concat(x.flatten(0, 1).float(), cost.flatten(0, 1).bfloat16()).dtype == torch.bfloat16


def test_skip_fusion_without_cost_guidance():
    fusion = SkipFusion(64, 32, skip_channels=16)
    out = fusion(torch.randn(1, 2, 64, 3, 3), torch.randn(1, 16, 6, 6))
    assert out.shape == (1, 2, 32, 6, 6)
    with pytest.raises(ValueError):
        fusion(torch.randn(1, 2, 64, 3, 3), torch.randn(1, 16, 6, 6), torch.randn(1, 2, 16, 6, 6))


def test_double_conv_shared_input_equals_repeated_concatenation():
    torch.manual_seed(3)
    block = DoubleConv(40, 16).double()
    B, T, H, W = 2, 3, 6, 5
    own = torch.randn(B * T, 32, H, W, dtype=torch.float64).contiguous(memory_format=torch.channels_last)
    shared = torch.randn(B, 8, H, W, dtype=torch.float64)
    own.requires_grad_(), shared.requires_grad_()
    out = block(own, shared, shared_at=24)  # channels [0, 24) own, [24, 32) shared, [32, 40) own
    full = torch.cat([own[:, :24], shared.repeat_interleave(T, dim=0), own[:, 24:]], dim=1)
    ref = block(full)
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
    assert out.is_contiguous(memory_format=torch.channels_last)
    params = [own, shared, *block.parameters()]
    grad = torch.randn_like(ref)
    for a, b in zip(torch.autograd.grad(out, params, grad), torch.autograd.grad(ref, params, grad)):
        torch.testing.assert_close(a, b)
    with torch.no_grad():  # the in-place (no-grad) branch
        torch.testing.assert_close(block(own, shared, shared_at=24), ref.detach(), rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="shared channels"):
        block(own[:, :30], shared, shared_at=24)


def test_conv_transpose_relu_runs_the_2x2_op_and_keeps_other_geometries():
    torch.manual_seed(4)
    x = torch.randn(3, 6, 4, 5, dtype=torch.float64).contiguous(memory_format=torch.channels_last)
    up = ConvTranspose2dReLU(6, 7, kernel_size=2, stride=2).double()
    out = up(x)
    assert torch.equal(out, conv_transpose_2x2(x, up.weight, up.bias, relu=True))
    torch.testing.assert_close(out, F.relu(F.conv_transpose2d(x, up.weight, up.bias, stride=2)))
    wide = ConvTranspose2dReLU(6, 7, kernel_size=3, stride=2).double()
    torch.testing.assert_close(wide(x), F.relu(F.conv_transpose2d(x, wide.weight, wide.bias, stride=2)))
