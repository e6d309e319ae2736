import json
from pathlib import Path

import open_clip
import pytest
import torch

from sed_d2.checkpoint import convert_official, official_layout
from sed_d2.checkpoint.catseg import is_official_catseg_state_dict
from sed_d2.checkpoint.fgaseg import convert_official_fgaseg_state_dict, fgaseg_key, is_official_fgaseg_state_dict
from sed_d2.models.fgaseg import FGASegModel, build_fgaseg_decoder_for
from tests.checkpoint.official_sed_layout import official_sed_shapes

FIXTURES = Path(__file__).parents[1] / "fixtures"
# official config -> (open_clip architecture, guidance layers, decoder mode, fusion); the fixtures
# were written by the official code (docs/fgaseg_parity.md)
VARIANTS = {
    "vitb_384_no_fast_cat": ("ViT-B-16-quickgelu", (3, 7), "no_fast", "cat"),
    "vitb_384_fast_cat": ("ViT-B-16-quickgelu", (3, 7), "fast", "cat"),
    "vitb_384_no_fast_add": ("ViT-B-16-quickgelu", (3, 7), "no_fast", "add"),
    "vitl_336_no_fast_cat": ("ViT-L-14-336-quickgelu", (7, 15), "no_fast", "cat"),
    "vitl_336_fast_cat": ("ViT-L-14-336-quickgelu", (7, 15), "fast", "cat"),
}


def _official_shapes(variant):
    return json.loads((FIXTURES / f"official_fgaseg_{variant}_keys_shapes.json").read_text())


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_official_checkpoint_maps_onto_our_model(variant):
    official = {key: torch.empty(shape, device="meta") for key, shape in _official_shapes(variant).items()}
    assert official_layout(official) == "FGAseg"
    layout, converted = convert_official(official)
    arch, guidance_layers, mode, fusion = VARIANTS[variant]
    with torch.device("meta"):
        clip = open_clip.create_model(arch, device="meta")
        decoder = build_fgaseg_decoder_for(clip, decoder_mode=mode, fusion=fusion)
        model = FGASegModel(clip, decoder, guidance_layers=guidance_layers)
    ours = {"model." + key: tuple(value.shape) for key, value in model.state_dict().items()}
    # no missing or unexpected keys, every shape equal
    assert {key: tuple(value.shape) for key, value in converted.items()} == ours


def _tiny(seed, **decoder_options):
    torch.manual_seed(seed)
    from sed_d2.clip import build_clip_model

    clip = build_clip_model("sed_d2_tiny_vit_quickgelu")
    decoder = build_fgaseg_decoder_for(clip, hidden_dim=32, num_heads=2, window_size=2, pad_len=8,
                                       decoder_dims=(32, 16), skip_proj_dims=(8, 4), skip_channels=(16, 8),
                                       **decoder_options)
    model = FGASegModel(clip, decoder, guidance_layers=(1, 2)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))  # no constant tensor: every mapping shows
        for name, buffer in model.named_buffers():
            if "running" in name:
                buffer.add_(0.1 * torch.rand_like(buffer))
    return model


def _to_official(state_dict, variant):
    """Our state_dict (no prefix) in the official layout: the inverse of the converter, names
    read off the fixture (so only official names can appear)."""
    official_names = {}
    for key in _official_shapes(variant):
        converted = convert_official_fgaseg_state_dict({key: None}, prefix="") if not key.endswith(
            ("q_proj_weight", "k_proj_weight", "v_proj_weight", "attn_mask")) else {}
        for ours in converted:
            official_names[ours] = key
    official = {}
    for key, value in state_dict.items():
        if key.endswith("attn.in_proj_weight") and key.startswith("clip_model."):
            name = "sem_seg_head.predictor." + key
            for part, rows in zip("qkv", value.chunk(3)):
                official[name.replace("in_proj_weight", f"{part}_proj_weight")] = rows
        else:
            official[official_names[key]] = value
    return official


@pytest.mark.parametrize("mode", ["no_fast", "fast"])
def test_round_trip_through_the_official_layout_gives_the_same_network(mode):
    variant = "vitb_384_no_fast_cat" if mode == "no_fast" else "vitb_384_fast_cat"
    source, target = _tiny(0, decoder_mode=mode), _tiny(1, decoder_mode=mode)
    official = _to_official(source.state_dict(), variant)
    assert is_official_fgaseg_state_dict(official)
    target.load_state_dict(convert_official_fgaseg_state_dict(official, prefix=""), strict=True)
    images, text = torch.randn(2, 3, 64, 64), torch.nn.functional.normalize(torch.randn(5, 1, 48), dim=-1)
    with torch.no_grad():
        assert torch.equal(target(images, text).logits, source(images, text).logits)


def test_fgaseg_names():
    p, d = "sem_seg_head.predictor.", "sem_seg_head.predictor.transformer."
    assert fgaseg_key(p + "DCDT.cross_atten_text.0.multihead_attn.in_proj_weight") == "p2t.layers.0.attn.in_proj_weight"
    assert fgaseg_key(p + "DCDT.cross_atten_text.1.MLP.bias") == "p2t.layers.1.proj.bias"
    assert fgaseg_key(p + "proj.vis.3.1.running_var") == "t2p.bn2.running_var"
    assert fgaseg_key(d + "conv_cat_decoder_2.weight") == "decoder.fuse.2.weight"
    assert fgaseg_key(d + "corr_local_decoder_projection.1.double_conv.4.bias") == "decoder.local_upsample.double_conv.norm2.bias"
    assert fgaseg_key(d + "head_auxi_2.weight") == "decoder.aux_heads.2.weight"
    assert fgaseg_key(d + "conv1.weight") is None  # CAT-Seg's, converted by its converter


def test_unknown_keys_raise_listing_them():
    state_dict = dict.fromkeys(_official_shapes("vitb_384_no_fast_cat"), torch.zeros(1))
    # the P2Tformer_dual variant of the stale bytecode
    state_dict["sem_seg_head.predictor.DCDT.gamma_vision"] = torch.zeros(1)
    del state_dict["sem_seg_head.predictor.clip_model.transformer.resblocks.0.attn.v_proj_weight"]
    with pytest.raises(KeyError) as error:
        convert_official_fgaseg_state_dict(state_dict)
    message = str(error.value)
    assert "3 official FGAseg key(s)" in message and "gamma_vision" in message
    assert "resblocks.0.attn.q_proj_weight" in message


def test_layout_detection_is_specific():
    fgaseg = _official_shapes("vitb_384_no_fast_cat")
    assert is_official_fgaseg_state_dict(fgaseg) and not is_official_catseg_state_dict(fgaseg)
    catseg = json.loads((FIXTURES / "official_catseg_vitb_keys_shapes.json").read_text())
    assert not is_official_fgaseg_state_dict(catseg) and official_layout(catseg) == "CAT-Seg"
    assert not is_official_fgaseg_state_dict(official_sed_shapes())
    assert not is_official_fgaseg_state_dict({"model.p2t.gamma": [512]})
