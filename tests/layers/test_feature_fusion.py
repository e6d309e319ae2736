"""FeatureFusion: the mixing rules, the bypass rule, and projecting before the resize."""
import pytest
import torch
import torch.nn.functional as F

from sed_d2.layers.feature_fusion import FeatureFusion


def _inputs(seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(2, 8, 12, 12, generator=generator), torch.randn(2, 16, 3, 3, generator=generator)


def test_scalar_mix_projects_then_upsamples_which_equals_upsample_then_project():
    torch.manual_seed(0)
    fusion = FeatureFusion(16, 8, weight="scalar", alpha_init=0.3)
    feature, aux = _inputs()
    projected = F.interpolate(fusion.projection(aux), size=(12, 12), mode="bilinear", align_corners=False)
    torch.testing.assert_close(fusion(feature, aux), 0.3 * feature + 0.7 * projected)
    # the conv at the coarse grid equals the conv after the resize (bilinear weights sum to 1)
    after = fusion.projection(F.interpolate(aux, size=(12, 12), mode="bilinear", align_corners=False))
    torch.testing.assert_close(projected, after, rtol=1e-5, atol=1e-5)


def test_residual_and_spatial_weights():
    torch.manual_seed(0)
    feature, aux = _inputs()
    residual = FeatureFusion(16, 8, weight="residual", alpha_init=0.25)
    projected = F.interpolate(residual.projection(aux), size=(12, 12), mode="bilinear", align_corners=False)
    torch.testing.assert_close(residual(feature, aux), feature + 0.25 * projected)
    spatial = FeatureFusion(16, 8, weight="spatial")
    projected = F.interpolate(spatial.projection(aux), size=(12, 12), mode="bilinear", align_corners=False)
    alpha = torch.sigmoid(spatial.gate(torch.cat([feature, projected], 1)))
    assert alpha.shape == (2, 1, 12, 12)
    torch.testing.assert_close(spatial(feature, aux), alpha * feature + (1 - alpha) * projected)
    assert not hasattr(spatial, "alpha") and not hasattr(residual, "gate")


def test_bypass_rule_skips_identity_steps():
    fusion = FeatureFusion(8, 8)
    assert isinstance(fusion.projection, torch.nn.Identity)
    feature, aux = torch.randn(1, 8, 4, 4), torch.randn(1, 8, 4, 4)
    torch.testing.assert_close(fusion(feature, aux), 0.5 * feature + 0.5 * aux)


def test_gradients_reach_alpha_projection_and_both_inputs():
    fusion = FeatureFusion(16, 8)
    feature, aux = (t.requires_grad_(True) for t in _inputs())
    fusion(feature, aux).square().sum().backward()
    for tensor in (fusion.alpha, fusion.projection.weight, fusion.projection.bias, feature, aux):
        assert tensor.grad is not None and tensor.grad.abs().sum() > 0


def test_unknown_weight():
    with pytest.raises(ValueError, match="weight must be one of"):
        FeatureFusion(8, 8, weight="learned")
