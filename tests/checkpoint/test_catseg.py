import json
from pathlib import Path

import open_clip
import pytest
import torch

from sed_d2.checkpoint import convert_official, official_layout
from sed_d2.checkpoint.catseg import (
    OFFICIAL_CATSEG_CLIP_PREFIX,
    OFFICIAL_CATSEG_DECODER_PREFIX,
    catseg_decoder_key,
    convert_official_catseg_state_dict,
    is_official_catseg_state_dict,
)
from sed_d2.clip import build_clip_model
from sed_d2.models.catseg import CATSegModel, build_catseg_decoder_for
from tests.checkpoint.official_sed_layout import official_sed_shapes

FIXTURES = Path(__file__).parents[1] / "fixtures"
VARIANTS = {
    # fixture, open_clip architecture, guidance layers (official configs/vitb_384.yaml, vitl_336.yaml)
    "vitb": ("official_catseg_vitb_keys_shapes.json", "ViT-B-16-quickgelu", (3, 7)),
    "vitl": ("official_catseg_vitl_keys_shapes.json", "ViT-L-14-336-quickgelu", (7, 15)),
}


def _official_shapes(variant):
    return json.loads((FIXTURES / VARIANTS[variant][0]).read_text())


def _official_meta_state_dict(variant):
    """A state_dict in the official layout with meta tensors of the fixture's shapes."""
    return {key: torch.empty(shape, device="meta") for key, shape in _official_shapes(variant).items()}


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_official_checkpoint_maps_onto_our_model(variant):
    official = _official_meta_state_dict(variant)
    assert official_layout(official) == "CAT-Seg"
    layout, converted = convert_official(official)
    _, arch, guidance_layers = VARIANTS[variant]
    with torch.device("meta"):
        clip = open_clip.create_model(arch, device="meta")
        model = CATSegModel(clip, build_catseg_decoder_for(clip), guidance_layers=guidance_layers)
    ours = {"model." + key: tuple(value.shape) for key, value in model.state_dict().items()}
    assert {key: tuple(value.shape) for key, value in converted.items()} == ours  # no missing/unexpected keys
    width = clip.visual.transformer.width
    assert converted["model.clip_model.visual.transformer.resblocks.0.attn.in_proj_weight"].shape == (3 * width, width)
    assert "model.clip_model.transformer.resblocks.11.attn.in_proj_weight" in converted  # the text tower too


def _to_official(state_dict):
    """A CATSegModel state_dict (no prefix) in the official layout, the inverse of the
    converter: decoder names read off the ViT-B fixture, q/k/v split, the Swin masks added."""
    official_decoder = {
        catseg_decoder_key(key[len(OFFICIAL_CATSEG_DECODER_PREFIX):]): key
        for key in _official_shapes("vitb")
        if key.startswith(OFFICIAL_CATSEG_DECODER_PREFIX) and not key.endswith("attn_mask")
    }
    official = {}
    for key, value in state_dict.items():
        if key.startswith("clip_model."):
            name = OFFICIAL_CATSEG_CLIP_PREFIX + key[len("clip_model."):]
            if name.endswith("attn.in_proj_weight"):
                for part, rows in zip("qkv", value.chunk(3)):
                    official[name.replace("in_proj_weight", f"{part}_proj_weight")] = rows
            else:
                official[name] = value
        elif key.startswith("guidance_upsamplers."):
            index, leaf = key[len("guidance_upsamplers."):].split(".")
            official[f"upsample{int(index) + 1}.{leaf}"] = value
        else:
            official[official_decoder[key[len("decoder."):]]] = value
    for layer in range(2):
        official[f"{OFFICIAL_CATSEG_DECODER_PREFIX}layers.{layer}.swin_block.block_2.attn_mask"] = torch.zeros(1)
    return official


def _tiny_model(seed):
    torch.manual_seed(seed)
    clip = build_clip_model("sed_d2_tiny_vit_quickgelu")
    decoder = build_catseg_decoder_for(clip, hidden_dim=32, num_heads=2, window_size=2, pad_len=8,
                                       decoder_dims=(32, 16), skip_proj_dims=(8, 4), skip_channels=(16, 8))
    model = CATSegModel(clip, decoder, guidance_layers=(1, 2)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))  # no constant tensor: every mapping shows
    return model


def test_round_trip_through_the_official_layout_gives_the_same_network():
    source, target = _tiny_model(0), _tiny_model(1)
    official = _to_official(source.state_dict())
    assert is_official_catseg_state_dict(official)
    target.load_state_dict(convert_official_catseg_state_dict(official, prefix=""), strict=True)
    images, text = torch.randn(2, 3, 64, 64), torch.randn(5, 1, 48)
    with torch.no_grad():
        assert torch.equal(target(images, text).logits, source(images, text).logits)


def test_decoder_rename_is_injective_and_names_what_it_should():
    decoder_keys = [key[len(OFFICIAL_CATSEG_DECODER_PREFIX):] for key in _official_shapes("vitl")
                    if key.startswith(OFFICIAL_CATSEG_DECODER_PREFIX) and not key.endswith("attn_mask")]
    ours = [catseg_decoder_key(key) for key in decoder_keys]
    assert None not in ours and len(set(ours)) == len(ours)
    assert catseg_decoder_key("layers.1.swin_block.block_2.attn.proj.bias") == "layers.1.spatial.block1.attn.proj.bias"
    assert catseg_decoder_key("layers.0.attention.MLP.2.weight") == "layers.0.class_block.mlp.fc2.weight"
    assert catseg_decoder_key("layers.0.attention.padding_guidance") == "layers.0.class_block.padding_guidance"
    assert catseg_decoder_key("decoder2.conv.double_conv.4.bias") == "stages.1.double_conv.norm2.bias"
    assert catseg_decoder_key("decoder_guidance_projection.1.0.weight") == "skip_projections.1.weight"
    assert catseg_decoder_key("layers.0.swin_block.block_2.attn_mask") is None
    assert catseg_decoder_key("decoder3.up.weight") is None


def test_unknown_keys_and_incomplete_projections_raise_listing_them():
    state_dict = dict.fromkeys(_official_shapes("vitb"), torch.zeros(1))
    del state_dict[OFFICIAL_CATSEG_CLIP_PREFIX + "visual.transformer.resblocks.5.attn.k_proj_weight"]
    state_dict[OFFICIAL_CATSEG_CLIP_PREFIX + "visual.transformer.prompt_tokens"] = torch.zeros(1)
    state_dict[OFFICIAL_CATSEG_DECODER_PREFIX + "layers.0.swin_block.padding_tokens"] = torch.zeros(1)
    with pytest.raises(KeyError) as error:
        convert_official_catseg_state_dict(state_dict)
    message = str(error.value)
    assert "4 official CAT-Seg key(s)" in message
    assert "prompt_tokens" in message and "swin_block.padding_tokens" in message
    assert "resblocks.5.attn.q_proj_weight" in message and "resblocks.5.attn.v_proj_weight" in message


def test_layout_detection_is_specific():
    catseg = _official_shapes("vitb")
    assert is_official_catseg_state_dict(catseg) and official_layout(catseg) == "CAT-Seg"
    assert not is_official_catseg_state_dict(official_sed_shapes())
    assert official_layout(official_sed_shapes()) == "SED"
    fga_seg = dict(catseg, **{"sem_seg_head.predictor.DCDT.gamma_text": [512]})
    assert not is_official_catseg_state_dict(fga_seg)
    assert not is_official_catseg_state_dict({"model.decoder.head.weight": [1, 32, 3, 3]})
