import pytest
import torch
from torch import nn

from sed_d2.clip import (
    convnext_dense_feature_channels,
    convnext_dense_feature_strides,
    convnext_dense_features,
    dense_feature_channels,
    dense_feature_strides,
    dense_features,
    vit_dense_feature_channels,
    vit_dense_feature_strides,
    vit_dense_features,
)
from tests.helpers import tiny_clip


def test_convnext_towers_take_the_convnext_functions():
    visual = tiny_clip("sed_d2_tiny_convnext").visual
    images = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        features = dense_features(visual, images, fast=False)
        expected = convnext_dense_features(visual, images, fast=False)
    assert features.keys() == expected.keys()
    assert all(torch.equal(features[name], expected[name]) for name in expected)
    assert dense_feature_channels(visual) == convnext_dense_feature_channels(visual)
    assert dense_feature_strides(visual) == convnext_dense_feature_strides(visual)


def test_vit_towers_take_the_vit_functions():
    visual = tiny_clip("sed_d2_tiny_vit_quickgelu").visual
    images = torch.randn(1, 3, 96, 96)
    with torch.no_grad():
        features = dense_features(visual, images, guidance_layers=(1,), cls="attention")
        expected = vit_dense_features(visual, images, (1,), cls="attention")
    assert torch.equal(features["clip_vis_dense"], expected["clip_vis_dense"])
    assert torch.equal(features["cls"], expected["cls"])
    assert torch.equal(features["guidance"][0], expected["guidance"][0]) and len(features["guidance"]) == 1
    assert dense_feature_channels(visual) == vit_dense_feature_channels(visual) == {
        "clip_vis_dense": 48, "cls": 48, "guidance": 64,
    }
    assert dense_feature_strides(visual) == vit_dense_feature_strides(visual)


def test_other_modules_are_refused_by_name():
    with pytest.raises(TypeError, match=r"got CLIP \(pass clip_model.visual"):
        dense_feature_channels(tiny_clip("sed_d2_tiny_vit_quickgelu"))
    with pytest.raises(TypeError, match="got Linear"):
        dense_features(nn.Linear(2, 2), torch.randn(1, 2))
