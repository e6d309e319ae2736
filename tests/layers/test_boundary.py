"""Boundary head, boundary downsampling, ConvGNReLU's shared input and the boundary-gated
decoder stage against a plain reference of its formulas."""
import pytest
import torch
import torch.nn.functional as F

from sed_d2.layers.boundary import (
    BoundaryGatedStage,
    BoundaryHead,
    ConvGNReLU,
    downsample_boundary,
    norm_groups,
)


def _levels(batch=2, seed=0):
    generator = torch.Generator().manual_seed(seed)
    sizes = [(8, 16), (12, 8), (16, 4), (20, 2)]  # (channels, side) at strides 4 .. 32
    return [torch.randn(batch, c, s, s, generator=generator) for c, s in sizes]


@pytest.mark.parametrize("kernel", [2, 4])
@pytest.mark.parametrize("norm", ["GN", "none"])
def test_boundary_head_shapes(kernel, norm):
    head = BoundaryHead([8, 12, 16, 20], 16, deconv_kernel=kernel, norm=norm)
    logits = head(_levels())
    assert logits.shape == (2, 1, 64, 64)  # 4x the finest level
    assert [tuple(p.weight.shape) for p in head.projections] == [(16, c, 1, 1) for c in (8, 12, 16, 20)]
    deconvs = [m.deconv for m in head.upsample]
    assert [d.out_channels for d in deconvs] == [8, 4] and all(d.kernel_size == (kernel, kernel) for d in deconvs)


def test_boundary_head_is_per_image_and_refuses_bad_settings():
    torch.manual_seed(0)
    head = BoundaryHead([8, 12, 16, 20], 16).eval()
    levels = _levels()
    batched = head(levels)
    single = head([level[1:] for level in levels])
    torch.testing.assert_close(batched[1:], single, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="even kernel"):
        BoundaryHead([8, 12, 16, 20], 16, deconv_kernel=3)
    with pytest.raises(ValueError, match="expected 4 feature levels"):
        head(levels[:3])


def test_norm_groups_divide():
    assert norm_groups(64) == 8 and norm_groups(4) == 4 and norm_groups(12) == 4


def test_downsample_boundary_area_keeps_a_thin_edge():
    boundary = torch.zeros(1, 1, 32, 32)
    boundary[..., 5, :] = 1.0  # a 1-pixel edge
    area = downsample_boundary(boundary, (2, 2), "area")
    torch.testing.assert_close(area, torch.tensor([[[[1 / 16, 1 / 16], [0.0, 0.0]]]]))
    assert downsample_boundary(boundary, (2, 2), "max").tolist() == [[[[1.0, 1.0], [0.0, 0.0]]]]
    assert downsample_boundary(boundary, (2, 2), "bilinear").abs().sum() == 0  # misses it
    assert downsample_boundary(boundary, (32, 32), "area") is boundary
    with pytest.raises(ValueError, match="mode must be one of"):
        downsample_boundary(boundary, (2, 2), "nearest")


@pytest.mark.parametrize("grad", [True, False])
def test_conv_gn_relu_shared_input_equals_the_concatenation(grad):
    torch.manual_seed(0)
    block = ConvGNReLU(12, 8)
    x = torch.randn(6, 8, 5, 5)  # 2 images x 3 classes
    shared = torch.randn(2, 4, 5, 5)
    with torch.set_grad_enabled(grad):
        fused = block(x, shared, shared_at=8)
        explicit = block(torch.cat([x, shared.repeat_interleave(3, 0)], 1))
    torch.testing.assert_close(fused, explicit, rtol=1e-5, atol=1e-5)


def _stage(gate_mode="input", per_channel=False, norm="layernorm"):
    torch.manual_seed(0)
    stage = BoundaryGatedStage(
        8, 4, skip_channels=6, skip_dim=8, kernel=3, norm=norm, gate_mode=gate_mode,
        attention_per_channel=per_channel,
    )
    with torch.no_grad():  # a non-trivial attention map
        stage.attention.weight.fill_(3.0)
        stage.attention.bias.fill_(-1.0)
    return stage


def _reference(stage, x, boundary, skip):
    """The stage's formulas with plain PyTorch ops on NCHW maps."""
    batch, classes, channels, h, w = x.shape
    maps = x.flatten(0, 1)
    d = F.conv2d(maps, stage.depthwise.weight, stage.depthwise.bias, padding=stage.depthwise.padding, groups=channels)
    d = F.linear(d.permute(0, 2, 3, 1), stage.pointwise.weight, stage.pointwise.bias)
    if stage.norm is not None:
        d = F.layer_norm(d, (channels,), stage.norm.weight, stage.norm.bias, stage.norm.eps)
    m = F.linear(F.gelu(F.linear(d, stage.fc1.weight, stage.fc1.bias)), stage.fc2.weight, stage.fc2.bias)
    m = m.permute(0, 3, 1, 2)
    a = torch.sigmoid(stage.attention(F.adaptive_avg_pool2d(boundary, (h, w))))
    a = a.repeat_interleave(classes, 0)
    gated = {"input": m + a * maps, "branch": maps + a * m, "input_residual": m + (1 + a) * maps}[stage.gate_mode]
    up = F.interpolate(gated, scale_factor=2, mode="bilinear", align_corners=False)
    aligned = stage.skip_align(skip).repeat_interleave(classes, 0)
    y = F.conv2d(torch.cat([up, aligned], 1), stage.fusion.conv.weight, padding=1)
    y = F.relu(F.group_norm(y, stage.fusion.norm.num_groups, stage.fusion.norm.weight, stage.fusion.norm.bias))
    return y.unflatten(0, (batch, classes))


@pytest.mark.parametrize(
    "gate_mode, per_channel, norm",
    [("input", False, "layernorm"), ("branch", False, "layernorm"), ("input_residual", True, "none")],
)
@pytest.mark.parametrize("grad", [True, False])
def test_gated_stage_equals_its_formulas(gate_mode, per_channel, norm, grad):
    stage = _stage(gate_mode, per_channel, norm)
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(2, 3, 8, 4, 4, generator=generator)
    boundary = torch.rand(2, 1, 32, 32, generator=generator)
    skip = torch.randn(2, 6, 4, 4, generator=generator)
    with torch.set_grad_enabled(grad):
        out = stage(x, boundary, skip)
        expected = _reference(stage, x, boundary, skip)
    assert out.shape == (2, 3, 4, 8, 8)
    assert out.flatten(0, 1).is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-5)
    assert stage.attention.out_channels == (8 if per_channel else 1)


def test_gated_stage_classes_are_independent_and_the_gate_matters():
    stage = _stage().eval()
    generator = torch.Generator().manual_seed(2)
    x = torch.randn(1, 3, 8, 4, 4, generator=generator)
    boundary = torch.rand(1, 1, 32, 32, generator=generator)
    skip = torch.randn(1, 6, 4, 4, generator=generator)
    with torch.no_grad():
        out = stage(x, boundary, skip)
        torch.testing.assert_close(out[:, 1:2], stage(x[:, 1:2], boundary, skip), rtol=1e-5, atol=1e-6)
        assert not torch.allclose(out, stage(x, torch.zeros_like(boundary), skip))


def test_gated_stage_bad_settings():
    with pytest.raises(ValueError, match="gate_mode must be one of"):
        BoundaryGatedStage(8, 4, skip_channels=6, skip_dim=8, gate_mode="output")
    with pytest.raises(ValueError, match="kernel must be odd"):
        BoundaryGatedStage(8, 4, skip_channels=6, skip_dim=8, kernel=4)
    with pytest.raises(ValueError, match="downsample must be one of"):
        BoundaryGatedStage(8, 4, skip_channels=6, skip_dim=8, downsample="nearest")
