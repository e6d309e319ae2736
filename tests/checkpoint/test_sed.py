import open_clip
import pytest
import torch

from sed_d2.checkpoint.sed import (
    OFFICIAL_SED_CLIP_PREFIX,
    OFFICIAL_SED_DECODER_PREFIX,
    convert_official_sed_state_dict,
    is_official_sed_state_dict,
    sed_decoder_key,
)
from sed_d2.models import SEDModel, build_sed_decoder_for
from tests.checkpoint.official_sed_layout import official_sed_shapes, to_official_sed
from tests.helpers import tiny_clip


def test_official_convnext_b_checkpoint_maps_onto_our_model():
    official = official_sed_shapes()
    assert is_official_sed_state_dict(official)
    converted = convert_official_sed_state_dict(official)
    with torch.device("meta"):
        clip = open_clip.create_model("convnext_base_w_320", device="meta")
        model = SEDModel(clip, build_sed_decoder_for(clip, num_templates=80))
    ours = {"model." + key: list(value.shape) for key, value in model.state_dict().items()}
    assert converted == ours  # no missing, no unexpected keys, the same shapes
    # the text tower is called `transformer` too: it must stay in the CLIP model
    text_key = OFFICIAL_SED_CLIP_PREFIX + "transformer.resblocks.0.ln_1.weight"
    assert text_key in official
    assert "model.clip_model.transformer.resblocks.0.ln_1.weight" in converted


def test_decoder_rename_is_injective_and_names_what_it_should():
    official_decoder = [key[len(OFFICIAL_SED_DECODER_PREFIX):] for key in official_sed_shapes()
                        if key.startswith(OFFICIAL_SED_DECODER_PREFIX)]
    ours = [sed_decoder_key(key) for key in official_decoder]
    assert None not in ours and len(set(ours)) == len(ours)
    assert sed_decoder_key("decoder2.cnext.gamma") == "stages.1.spatial_block.layer_scale"
    assert sed_decoder_key("head0.weight") == "aux_heads.0.weight"
    assert sed_decoder_key("head.bias") == "head.bias"
    assert sed_decoder_key("decoder1.conv.double_conv.4.bias") == "stages.0.fusion.double_conv.norm2.bias"
    assert sed_decoder_key("decoder0.up.weight") is None  # official stages count from 1
    assert sed_decoder_key("head.running_mean") is None  # a module prefix takes weight/bias only


def test_unknown_keys_raise_listing_them():
    state_dict = dict.fromkeys(official_sed_shapes())
    state_dict["sem_seg_head.predictor.transformer.text_guidance_projection.0.weight"] = None
    state_dict["backbone.clip_model.visual.trunk.stem.0.weight"] = None
    with pytest.raises(KeyError) as error:
        convert_official_sed_state_dict(state_dict)
    message = str(error.value)
    assert "2 official SED key(s)" in message
    assert "text_guidance_projection" in message and "backbone.clip_model" in message


def test_is_official_sed_state_dict():
    assert not is_official_sed_state_dict({"model.decoder.head.weight": None})
    cat_seg_like = {
        OFFICIAL_SED_CLIP_PREFIX + "visual.conv1.weight": None,
        OFFICIAL_SED_DECODER_PREFIX + "decoder1.up.weight": None,
    }
    assert not is_official_sed_state_dict(cat_seg_like)


def test_round_trip_on_the_tiny_model():
    torch.manual_seed(0)
    clip = tiny_clip(seed=0)
    source = SEDModel(clip, build_sed_decoder_for(clip, 4)).eval()
    official = to_official_sed(source.state_dict(), prefix="")
    assert is_official_sed_state_dict(official)
    torch.manual_seed(1)
    clip = tiny_clip(seed=1)
    target = SEDModel(clip, build_sed_decoder_for(clip, 4)).eval()
    assert not torch.equal(target.decoder.head.weight, source.decoder.head.weight)
    target.load_state_dict(convert_official_sed_state_dict(official, prefix=""), strict=True)
    images, text = torch.randn(1, 3, 64, 64), torch.randn(3, 4, 64)
    with torch.no_grad():
        assert torch.equal(target(images, text).logits, source(images, text).logits)
