"""SynSeg's network (sed_d2.models.synseg) on the tiny random-init CLIP ViT."""
import pytest
import torch
import torch.nn.functional as F

from sed_d2.clip import build_clip_model
from sed_d2.models.synseg import (
    FeatureSynergy,
    SynSegDecoder,
    SynSegModel,
    vit_intermediate_tokens,
)
from tests.helpers import (
    TINY_VIT as TINY_CLIP,
    TINY_VIT_EMBED as EMBED,
    TINY_VIT_GRID as GRID,
    TINY_VIT_SIZE as SIZE,
)



def _model(seed=0, fss_features="decoder", extract_layers=(0, 1, 2), **kwargs):
    torch.manual_seed(seed)
    clip = build_clip_model(TINY_CLIP)
    decoder = SynSegDecoder(vision_width=64, text_dim=EMBED, reduce_dim=16, num_heads=2, ff_dim=32)
    synergy = FeatureSynergy(16 if fss_features == "decoder" else 64, EMBED)
    return SynSegModel(clip, decoder, synergy, extract_layers=extract_layers, fss_features=fss_features, **kwargs)


def _text(num, seed=1):
    return F.normalize(torch.randn(num, EMBED, generator=torch.Generator().manual_seed(seed)), dim=-1)


def test_intermediate_tokens_equal_open_clips_forward_intermediates():
    model = _model().eval()
    images = torch.randn(2, 3, SIZE, SIZE)
    with torch.no_grad():
        ours = vit_intermediate_tokens(model.clip_model.visual, images, (2, 0))
        reference = model.clip_model.visual.forward_intermediates(
            images, indices=[0, 2], output_fmt="NLC", output_extra_tokens=True, intermediates_only=True
        )
    for tokens, index in zip(ours, (1, 0)):  # ours in the order asked: block 2, then block 0
        expected = torch.cat([reference["image_intermediates_prefix"][index], reference["image_intermediates"][index]], 1)
        torch.testing.assert_close(tokens, expected)
    assert ours[0].shape == (2, 1 + GRID * GRID, 64)


def test_logits_shapes_and_class_chunks_change_nothing():
    model = _model().eval()
    images, text = torch.randn(2, 3, SIZE, SIZE), _text(5)
    with torch.no_grad():
        features = model.image_features(images)
        logits = model.logits(features, text, model.grid_of((SIZE, SIZE)))
        model.test_chunk_classes = 2
        chunked = model.logits(features, text, model.grid_of((SIZE, SIZE)))
    assert logits.shape == (2, 5, SIZE, SIZE)
    torch.testing.assert_close(chunked, logits)


def test_a_batch_equals_its_images_one_by_one():
    model = _model().eval()
    images, text = torch.randn(3, 3, SIZE, SIZE), _text(4)
    grid = model.grid_of((SIZE, SIZE))
    with torch.no_grad():
        batched = model.logits(model.image_features(images), text, grid)
        singles = torch.cat([model.logits(model.image_features(images[i : i + 1]), text, grid) for i in range(3)])
    torch.testing.assert_close(batched, singles, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("fss_features", ["decoder", "image"])
def test_gradients_reach_decoder_and_synergy_and_never_clip(fss_features):
    model = _model(fss_features=fss_features).train()
    images = torch.randn(2, 3, SIZE, SIZE)
    losses = model.losses(images, _text(3), torch.tensor([0, 0, 1]))
    assert sorted(losses) == sorted(["loss_intra_align", "loss_intra_sep", "loss_inter_align", "loss_inter_sep"])
    sum(losses.values()).backward()
    for name, parameter in model.named_parameters():
        if name.startswith("clip_model."):
            assert not parameter.requires_grad and parameter.grad is None, name
        else:
            assert parameter.grad is not None and torch.isfinite(parameter.grad).all(), name
    assert set(model.parameter_groups.values()) == {"frozen", "decoder"}


def test_synergy_per_token_equals_the_pixel_level_fusion():
    """Kernel = stride = patch: fusing the pixel map with the nearest-upsampled token features
    equals fusing the per-patch mean activation with the token features (CCAM at pixels)."""
    torch.manual_seed(0)
    synergy = FeatureSynergy(16, EMBED, patch_size=(16, 16))
    features, maps = torch.randn(3, GRID * GRID, 16), torch.rand(3, 1, SIZE, SIZE)
    fg, bg = synergy(features, maps)
    projected = synergy.proj(features).transpose(1, 2).reshape(3, EMBED, GRID, GRID)
    per_pixel = F.interpolate(projected, scale_factor=16, mode="nearest")  # (3, C, 64, 64)
    fg_pixels = (maps * per_pixel).sum((2, 3)) / (SIZE * SIZE)
    bg_pixels = ((1 - maps) * per_pixel).sum((2, 3)) / (SIZE * SIZE)
    torch.testing.assert_close(fg, fg_pixels, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(bg, bg_pixels, rtol=1e-5, atol=1e-6)
    mass = FeatureSynergy(16, EMBED, norm="mass")
    mass.load_state_dict(synergy.state_dict())
    fg_mass, _ = mass(features, maps)
    torch.testing.assert_close(fg_mass, fg_pixels * (SIZE * SIZE) / maps.sum((2, 3)), rtol=1e-5, atol=1e-6)


def test_paper_model_has_the_151M_parameters_of_table_1():
    import open_clip

    import sed_d2.clip  # noqa: F401  (registers nothing needed here, keeps imports alike)

    clip = open_clip.create_model("ViT-B-16-quickgelu", device="meta")
    with torch.device("meta"):
        decoder = SynSegDecoder(vision_width=768, text_dim=512)
        model = SynSegModel(clip, decoder, FeatureSynergy(64, 512), extract_layers=(3, 7, 9))
    count = lambda module: sum(p.numel() for p in module.parameters())
    # CLIPSeg rd64 with FiLM: 3 x 281,152 + 3 reduces 147,648 + FiLM 65,664 + trans-conv 16,385
    assert count(decoder) == 1_073_153
    assert count(model.synergy) == 33_280  # Linear(64, 512)
    assert count(clip) == 149_620_737
    assert count(model) == 150_727_170  # "151M"
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert trainable == 1_073_153 + 33_280


def test_bad_extract_layers_are_refused():
    with pytest.raises(ValueError, match="extract layers"):
        _model(extract_layers=(0, 1, 4))
    with pytest.raises(ValueError, match="FSS features"):
        _model(fss_features="pixels")
