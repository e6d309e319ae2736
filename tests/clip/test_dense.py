import open_clip
import pytest
import torch
from open_clip.transformer import VisionTransformer

from sed_d2.clip import convnext_dense_features, dense_feature_channels, dense_feature_strides
from tests.helpers import tiny_clip

TINY_CHANNELS = {
    "sed_d2_tiny_convnext": {"res2": 24, "res3": 32, "res4": 48, "res5": 64, "clip_vis_dense": 64},
    "sed_d2_tiny_convnext_mlp": {"res2": 24, "res3": 32, "res4": 48, "res5": 64, "clip_vis_dense": 48},
}
STRIDES = {"res2": 4, "res3": 8, "res4": 16, "res5": 32, "clip_vis_dense": 32}


@pytest.fixture(params=sorted(TINY_CHANNELS))
def clip_name(request):
    return request.param


def test_shapes_channels_and_strides(clip_name):
    visual = tiny_clip(clip_name).visual
    images = torch.randn(2, 3, 64, 96)
    features = convnext_dense_features(visual, images)
    assert dense_feature_channels(visual) == TINY_CHANNELS[clip_name]
    assert dense_feature_strides(visual) == STRIDES
    assert list(features) == list(STRIDES)
    for name, feature in features.items():
        stride = STRIDES[name]
        assert feature.shape == (2, TINY_CHANNELS[clip_name][name], 64 // stride, 96 // stride), name
        assert feature.is_contiguous()


def test_one_pixel_dense_embedding_equals_pooled_clip_embedding(clip_name):
    # With a 1x1 res5 the global pool is the identity, so the per-pixel head must give
    # exactly open_clip's image embedding: proof that the CLIP head is reproduced.
    visual = tiny_clip(clip_name).visual
    images = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        dense = convnext_dense_features(visual, images)["clip_vis_dense"]
        pooled = visual(images)
    assert dense.shape[-2:] == (1, 1)
    torch.testing.assert_close(dense[:, :, 0, 0], pooled, rtol=0, atol=1e-6)


def test_dense_embedding_matches_the_official_fake_2d_formulation(clip_name):
    # The official code runs every res5 pixel as a (C, 1, 1) image through trunk.head
    # and then open_clip's head; our channels-last version must agree everywhere.
    visual = tiny_clip(clip_name).visual
    images = torch.randn(2, 3, 96, 64)
    with torch.no_grad():
        features = convnext_dense_features(visual, images)
        res5 = features["res5"]
        batch, channels, height, width = res5.shape
        pixels = res5.permute(0, 2, 3, 1).reshape(-1, channels, 1, 1)
        reference = visual.head(visual.trunk.head(pixels))
        reference = reference.view(batch, height, width, -1).permute(0, 3, 1, 2)
    torch.testing.assert_close(features["clip_vis_dense"], reference, rtol=0, atol=1e-6)


def test_gradients_reach_every_vision_parameter():
    visual = tiny_clip().visual.train()
    features = convnext_dense_features(visual, torch.randn(2, 3, 64, 64))
    features["clip_vis_dense"].square().sum().backward()
    for name, parameter in visual.named_parameters():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name


def test_rejects_towers_without_a_convnext_trunk():
    clip = tiny_clip()
    with pytest.raises(TypeError, match="clip_model.visual"):
        convnext_dense_features(clip, torch.randn(1, 3, 32, 32))
    vit = VisionTransformer(image_size=32, patch_size=16, width=32, layers=1, heads=2, mlp_ratio=2, output_dim=16)
    with pytest.raises(TypeError, match="ViT"):
        dense_feature_channels(vit)


@pytest.mark.parametrize("name, expected", [
    ("convnext_base_w_320", {"res2": 128, "res3": 256, "res4": 512, "res5": 1024, "clip_vis_dense": 640}),
    ("convnext_large_d_320", {"res2": 192, "res3": 384, "res4": 768, "res5": 1536, "clip_vis_dense": 768}),
])
def test_channels_of_the_real_sed_backbones(name, expected):
    # Built on the meta device: module structure without memory or init time.
    with torch.device("meta"):
        model = open_clip.create_model(name, device="meta")
    assert dense_feature_channels(model.visual) == expected
    assert dense_feature_strides(model.visual) == STRIDES
