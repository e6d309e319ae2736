import logging

import open_clip
import pytest
import torch
from open_clip.transformer import QuickGELU
from safetensors.torch import save_file
from timm.layers import DropPath
from torch import nn

from sed_d2.clip import build_clip_model, register_model_configs
from tests.helpers import tiny_clip

TINY = "sed_d2_tiny_convnext"
TINY_MLP = "sed_d2_tiny_convnext_mlp"
TINY_VIT = "sed_d2_tiny_vit_quickgelu"
B_TAG_REPO = "laion/CLIP-convnext_base_w_320-laion_aesthetic-s13B-b82K"
# Entries of OpenAI's CLIP state_dicts besides the weights.
OPENAI_METADATA = {"input_resolution": 64, "context_length": 77, "vocab_size": 49408}


def assert_same_weights(model_a, model_b):
    state_a, state_b = model_a.state_dict(), model_b.state_dict()
    assert state_a.keys() == state_b.keys()
    for key in state_a:
        assert torch.equal(state_a[key], state_b[key]), key


# ------------------------------------------------------------------ names and registration


def test_tiny_configs_are_registered_once():
    assert {TINY, TINY_MLP, TINY_VIT} <= set(open_clip.list_models())
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
        build_clip_model("convnext_base_w_320", "laion_aesthetic_s13b_b82k", pretrained_key="MODEL.OVSEG.CLIP_PRETRAINED")
    message = str(error.value)
    for expected in ("convnext_base_w_320", "laion_aesthetic_s13b_b82k", B_TAG_REPO,
                     "set MODEL.OVSEG.CLIP_PRETRAINED to its local path", "network is unreachable"):
        assert expected in message


def test_messages_name_the_weights_argument_as_the_caller_says(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"\(from pretrained\)"):
        build_clip_model(TINY, "weights/clip.pt")
    with pytest.raises(IsADirectoryError, match=r"^MODEL\.OVSEG\.CLIP_PRETRAINED="):
        build_clip_model(TINY, str(tmp_path), pretrained_key="MODEL.OVSEG.CLIP_PRETRAINED")


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


# ------------------------------------------------------------------ activation (QuickGELU) check


def test_tiny_vit_uses_quick_gelu_in_both_towers():
    model = build_clip_model(TINY_VIT)
    activations = [block.mlp.gelu for block in model.visual.transformer.resblocks]
    activations += [block.mlp.gelu for block in model.transformer.resblocks]
    assert activations and all(isinstance(act, QuickGELU) for act in activations)


@pytest.mark.parametrize("name, right_name", [
    ("ViT-B-16", "ViT-B-16-quickgelu"),
    ("ViT-L-14-336", "ViT-L-14-336-quickgelu"),
])
def test_openai_tag_on_a_gelu_architecture_is_refused_before_downloading(monkeypatch, name, right_name):
    def must_not_download(*args, **kwargs):
        raise AssertionError("downloaded although the architecture is wrong")

    monkeypatch.setattr(open_clip, "download_pretrained", must_not_download)
    with pytest.raises(ValueError) as error:
        build_clip_model(name, "openai")
    message = str(error.value)
    assert f"architecture {right_name!r} instead" in message
    assert "tag 'openai' were trained with QuickGELU" in message and f"{name!r} uses GELU" in message


@pytest.mark.parametrize("name, repo", [
    ("ViT-B-16-quickgelu", "timm/vit_base_patch16_clip_224.openai/"),
    ("ViT-L-14-336-quickgelu", "timm/vit_large_patch14_clip_336.openai/"),
])
def test_openai_tag_on_the_quickgelu_architecture_goes_to_download(monkeypatch, name, repo):
    requested = []

    def offline(pretrained_cfg, *args, **kwargs):
        requested.append(pretrained_cfg["hf_hub"])
        raise OSError("offline")

    monkeypatch.setattr(open_clip, "download_pretrained", offline)
    with pytest.raises(RuntimeError, match="Could not download"):
        build_clip_model(name, "openai")
    assert requested == [repo]


def test_gelu_tag_on_a_quickgelu_architecture_is_refused(monkeypatch):
    monkeypatch.setitem(open_clip.pretrained._PRETRAINED, TINY_VIT, {"gelu_tag": {"hf_hub": "org/tiny/"}})
    with pytest.raises(ValueError) as error:
        build_clip_model(TINY_VIT, "gelu_tag")
    message = str(error.value)
    assert "trained with GELU" in message and f"{TINY_VIT!r} uses QuickGELU" in message
    assert '"quick_gelu": false' in message  # no "-quickgelu"-less twin to name


def save_openai_torchscript(state_dict, path):
    """An archive shaped like OpenAI's own CLIP files: a TorchScript module whose
    state_dict holds the (fp16) weights under the OpenAI names plus the hyperparameters."""
    root = nn.Module()
    for key, value in state_dict.items():
        *parents, leaf = key.split(".")
        module = root
        for part in parents:
            if not hasattr(module, part):
                module.add_module(part, nn.Module())
            module = getattr(module, part)
        module.register_buffer(leaf, value.clone())
    for key, value in OPENAI_METADATA.items():
        root.register_buffer(key, torch.tensor(value))
    torch.jit.save(torch.jit.script(root), path)


def openai_fp16_weights(source):
    return {key: value.half() for key, value in source.state_dict().items()}


def test_local_openai_torchscript_file_loads(tmp_path):
    weights = openai_fp16_weights(tiny_clip(TINY_VIT, seed=1))
    save_openai_torchscript(weights, tmp_path / "ViT-tiny.pt")
    model = build_clip_model(TINY_VIT, str(tmp_path / "ViT-tiny.pt"))
    state = model.state_dict()
    assert state.keys() == weights.keys()
    for key, value in weights.items():
        assert state[key].dtype == torch.float32 and torch.equal(state[key], value.float()), key


def test_local_openai_state_dict_file_loads(tmp_path):
    weights = openai_fp16_weights(tiny_clip(TINY_VIT, seed=1))
    metadata = {key: torch.tensor(value) for key, value in OPENAI_METADATA.items()}
    torch.save({**weights, **metadata}, tmp_path / "openai_state_dict.pt")
    state = build_clip_model(TINY_VIT, str(tmp_path / "openai_state_dict.pt")).state_dict()
    assert all(torch.equal(state[key], value.float()) for key, value in weights.items())


def test_local_openai_file_on_a_gelu_architecture_is_refused(tmp_path):
    save_openai_torchscript(openai_fp16_weights(tiny_clip(TINY_VIT)), tmp_path / "ViT-tiny.pt")
    # Refused for the activation before any shape is compared.
    with pytest.raises(ValueError, match=r"OpenAI CLIP file.*architecture 'ViT-B-16-quickgelu' instead"):
        build_clip_model("ViT-B-16", str(tmp_path / "ViT-tiny.pt"))


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
