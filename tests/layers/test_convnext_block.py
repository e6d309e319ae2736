import pytest
import torch
import torch.nn.functional as F
from timm.models.convnext import ConvNeXtBlock as TimmConvNeXtBlock

from sed_d2.layers import ConvNeXtBlock, convnext_block_forward


def test_parameter_shapes_match_official_convnext_block():
    block = ConvNeXtBlock(128, 9)
    # official name -> (our name, shape) for SED's decoder1.cnext
    expected = {
        "dwconv.weight": ("depthwise_conv.weight", (128, 1, 9, 9)),
        "dwconv.bias": ("depthwise_conv.bias", (128,)),
        "norm.weight": ("norm.weight", (128,)),
        "norm.bias": ("norm.bias", (128,)),
        "pwconv1.weight": ("fc1.weight", (512, 128)),
        "pwconv1.bias": ("fc1.bias", (512,)),
        "pwconv2.weight": ("fc2.weight", (128, 512)),
        "pwconv2.bias": ("fc2.bias", (128,)),
        "gamma": ("layer_scale", (128,)),
    }
    shapes = {name: tuple(p.shape) for name, p in block.named_parameters()}
    assert shapes == dict(expected.values())
    assert torch.equal(block.layer_scale, torch.ones(128))  # layer scale init 1.0 (official)
    assert block.norm.eps == 1e-6
    assert block.depthwise_conv.groups == 128 and block.depthwise_conv.padding == (4, 4)


def test_forward_matches_formula():
    torch.manual_seed(0)
    block = ConvNeXtBlock(8, 5)
    with torch.no_grad():
        block.layer_scale.uniform_(0.5, 1.5)
    x = torch.randn(3, 8, 6, 7)
    y = F.conv2d(x, block.depthwise_conv.weight, block.depthwise_conv.bias, padding=2, groups=8)
    y = y.permute(0, 2, 3, 1)
    y = F.layer_norm(y, (8,), block.norm.weight, block.norm.bias, eps=1e-6)
    y = F.linear(y, block.fc1.weight, block.fc1.bias)
    y = 0.5 * y * (1.0 + torch.erf(y / 2**0.5))  # exact GELU
    y = F.linear(y, block.fc2.weight, block.fc2.bias) * block.layer_scale
    expected = x + y.permute(0, 3, 1, 2)
    out = block(x)
    assert out.shape == x.shape
    torch.testing.assert_close(out, expected)


@pytest.mark.parametrize("act, approximate", [("gelu", "none"), ("gelu_tanh", "tanh")])
@pytest.mark.parametrize("layer_scale", [0.7, None])
def test_shared_forward_equals_timm_convnext_block(act, approximate, layer_scale):
    # convnext_block_forward also runs the CLIP image trunk (sed_d2.clip.dense.convnext): it must be
    # timm's block, for both GELU variants and with or without layer scale.
    torch.manual_seed(3)
    block = TimmConvNeXtBlock(8, kernel_size=5, ls_init_value=layer_scale, act_layer=act).double()
    with torch.no_grad():
        for parameter in block.parameters():
            if parameter.dim() == 1:  # biases, norm affine, layer scale: away from their init
                parameter.uniform_(0.5, 1.5)
    x = torch.randn(2, 8, 6, 7, dtype=torch.float64, requires_grad=True)
    out = convnext_block_forward(x, block.conv_dw, block.norm, block.mlp.fc1, block.mlp.fc2, block.gamma, approximate)
    ref = block(x)
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
    params = [x, *block.parameters()]
    grad = torch.randn_like(ref)
    for a, b in zip(torch.autograd.grad(out, params, grad), torch.autograd.grad(ref, params, grad)):
        torch.testing.assert_close(a, b)
