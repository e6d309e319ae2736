import logging

import open_clip
import pytest
import torch
from safetensors.torch import save_file
from timm.layers import DropPath

from sed_d2.clip import build_clip_model, register_model_configs
from tests.helpers import tiny_clip

TINY = "sed_d2_tiny_convnext"
TINY_MLP = "sed_d2_tiny_convnext_mlp"
B_TAG_REPO = "laion/CLIP-convnext_base_w_320-laion_aesthetic-s13B-b82K"


def assert_same_weights(model_a, model_b):
    state_a, state_b = model_a.state_dict(), model_b.state_dict()
    assert state_a.keys() == state_b.keys()
    for key in state_a:
        assert torch.equal(state_a[key], state_b[key]), key


# ------------------------------------------------------------------ names and registration


def test_tiny_configs_are_registered_once():
    assert {TINY, TINY_MLP} <= set(open_clip.list_models())
    search_path = list(open_clip.factory._MODEL_CONFIG_PATHS)
    register_model_configs()
    register_model_configs()
    assert open_clip.factory._MODEL_CONFIG_PATHS == search_path


def test_unknown_name_lists_close_matches_and_how_to_list():
    with pytest.raises(ValueError) as error:
        build_clip_model("convnext_base_w320")
    message = str(error.value)
    assert "'convnext_base_w320'" in message
    assert "convnext_base_w_320" in message
    assert "open_clip.list_models()" in message


def test_random_init_is_fp32_eval_and_quiet(caplog):
    with caplog.at_level(logging.WARNING):
        model = build_clip_model(TINY)
    assert not [r for r in caplog.records if "No pretrained weights" in r.getMessage()]
    assert isinstance(model, open_clip.model.CLIP)
    assert not model.training
    assert {p.dtype for p in model.parameters()} == {torch.float32}


def test_tiny_clip_is_seeded():
    assert_same_weights(tiny_clip(seed=3), tiny_clip(seed=3))
    assert not torch.equal(tiny_clip(seed=3).visual.head.proj.weight, tiny_clip(seed=4).visual.head.proj.weight)


# ------------------------------------------------------------------ tags


def test_unknown_tag_lists_valid_tags():
    with pytest.raises(ValueError) as error:
        build_clip_model("convnext_base_w_320", "laion_nope")
    message = str(error.value)
    assert "'laion_nope'" in message and "laion_aesthetic_s13b_b82k" in message


def test_tag_on_model_without_tags_points_to_local_files():
    with pytest.raises(ValueError, match="local weights file"):
        build_clip_model(TINY, "openai")


def test_failed_download_explains_what_to_do(monkeypatch):
    def offline(*args, **kwargs):
        raise OSError("network is unreachable")

    monkeypatch.setattr(open_clip, "download_pretrained", offline)
    with pytest.raises(RuntimeError) as error:
        build_clip_model("convnext_base_w_320", "laion_aesthetic_s13b_b82k")
    message = str(error.value)
    for expected in ("convnext_base_w_320", "laion_aesthetic_s13b_b82k", B_TAG_REPO,
                     "MODEL.OVSEG.CLIP_PRETRAINED", "network is unreachable"):
        assert expected in message


def test_tag_weights_are_downloaded_and_loaded(monkeypatch, tmp_path):
    source = tiny_clip(seed=1)
    weights_file = tmp_path / "open_clip_pytorch_model.bin"
    torch.save(source.state_dict(), weights_file)
    monkeypatch.setitem(open_clip.pretrained._PRETRAINED, TINY, {"fake_tag": {"hf_hub": "org/tiny/"}})
    requested = []

    def fake_download(pretrained_cfg, *args, **kwargs):
        requested.append(pretrained_cfg["hf_hub"])
        return str(weights_file)

    monkeypatch.setattr(open_clip, "download_pretrained", fake_download)
    assert_same_weights(build_clip_model(TINY, "fake_tag"), source)
    assert requested == ["org/tiny/"]


# ------------------------------------------------------------------ local files


@pytest.mark.parametrize("filename, wrap", [
    ("clip.pt", lambda sd: sd),
    ("clip.pth", lambda sd: {"state_dict": sd, "epoch": 3}),
    ("clip.bin", lambda sd: {"model": sd}),
    ("ddp.pt", lambda sd: {f"module.{k}": v for k, v in sd.items()}),
])
def test_local_torch_file_round_trip(tmp_path, filename, wrap):
    source = tiny_clip(seed=1)
    torch.save(wrap(source.state_dict()), tmp_path / filename)
    assert_same_weights(build_clip_model(TINY, str(tmp_path / filename)), source)


def test_local_safetensors_round_trip(tmp_path):
    source = tiny_clip(TINY_MLP, seed=1)
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, tmp_path / "clip.safetensors")
    assert_same_weights(build_clip_model(TINY_MLP, str(tmp_path / "clip.safetensors")), source)


@pytest.mark.parametrize("pretrained", ["/no/such/dir/clip.bin", "clip_weights.safetensors", "weights/clip"])
def test_missing_file_is_named(pretrained):
    with pytest.raises(FileNotFoundError, match=pretrained):
        build_clip_model(TINY, pretrained)


def test_directory_is_rejected(tmp_path):
    with pytest.raises(IsADirectoryError):
        build_clip_model(TINY, str(tmp_path))


def test_key_mismatch_names_file_and_keys(tmp_path):
    state = tiny_clip().state_dict()
    del state["visual.head.proj.weight"]
    state["visual.head.extra.weight"] = torch.zeros(1)
    weights_file = tmp_path / "wrong.pt"
    torch.save(state, weights_file)
    with pytest.raises(RuntimeError) as error:
        build_clip_model(TINY, str(weights_file))
    message = str(error.value)
    assert str(weights_file) in message
    assert "visual.head.proj.weight" in message and "visual.head.extra.weight" in message


def test_whole_model_checkpoint_gets_a_hint(tmp_path):
    prefix = "sem_seg_head.predictor.clip_model."
    state = {prefix + k: v for k, v in tiny_clip().state_dict().items()}
    torch.save({"model": state}, tmp_path / "sed.pth")
    with pytest.raises(RuntimeError, match="MODEL.WEIGHTS") as error:
        build_clip_model(TINY, str(tmp_path / "sed.pth"))
    assert prefix in str(error.value)


def test_other_architecture_weights_name_the_file(tmp_path):
    torch.save(tiny_clip(TINY_MLP).state_dict(), tmp_path / "mlp.pt")
    with pytest.raises(RuntimeError, match="mlp.pt"):
        build_clip_model(TINY, str(tmp_path / "mlp.pt"))


def test_unreadable_file_is_named(tmp_path):
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(RuntimeError, match="junk.pt"):
        build_clip_model(TINY, str(tmp_path / "junk.pt"))


# ------------------------------------------------------------------ regularisation overrides


def drop_path_rates(model):
    return [m.drop_prob for m in model.visual.trunk.modules() if isinstance(m, DropPath)]


def test_json_regularisation_is_kept_by_default():
    model = build_clip_model(TINY)
    assert drop_path_rates(model) == []  # the tiny JSON says 0.0
    assert model.visual.head.drop.p == 0.0


def test_drop_path_and_head_dropout_overrides_linear_head():
    model = build_clip_model(TINY, drop_path_rate=0.1, head_dropout=0.2)
    rates = drop_path_rates(model)
    assert rates and max(rates) == pytest.approx(0.1)  # timm ramps linearly to the rate
    assert model.visual.head.drop.p == pytest.approx(0.2)
    assert model.visual.image_size == (64, 64)  # the rest of the JSON's vision_cfg is kept
    assert open_clip.get_model_config(TINY)["vision_cfg"]["timm_drop_path"] == 0.0


def test_head_dropout_override_mlp_head():
    model = build_clip_model(TINY_MLP, head_dropout=0.1)
    assert model.visual.head.mlp.drop1.p == pytest.approx(0.1)
    assert drop_path_rates(model) == []


def test_invalid_overrides():
    with pytest.raises(ValueError, match="timm_drop_path"):
        build_clip_model(TINY, drop_path_rate=1.5)
    with pytest.raises(ValueError, match="non-timm"):
        build_clip_model("ViT-B-32", drop_path_rate=0.1)
