"""The FGAseg meta-architecture, what tests/meta_arch/test_contract.py does not check for every
method: the paper configs build the official networks, every MODEL.FGASEG key reaches the
network, the fast decoder's inference is graphed only in its image half, the official sliding
window on the official fast-mode scores, FGAseg's losses in training, where the official code
crashes and ours does not, and official checkpoints through MODEL.WEIGHTS."""
import json
import os

import pytest
import torch

from tests.checkpoint.test_fgaseg import _to_official
from tests.conftest import requires_detectron2
from tests.d2_helpers import ROOT, build_paper_config_on_meta, build_tiny_model, detectron2_inputs

pytestmark = requires_detectron2

TINY = "configs/fgaseg/tiny.yaml"
FIXTURES = os.path.join(ROOT, "tests", "fixtures")


def _build(config_file=TINY, *extra, seed=0):
    return build_tiny_model(config_file, *extra, seed=seed)


@pytest.mark.parametrize(
    "config_file, fixture, clip_model, guidance_layers, resolution, mode",
    [
        ("configs/fgaseg/vitb_384.yaml", "vitb_384_no_fast_cat", "ViT-B-16-quickgelu", (3, 7), (384, 384), "no_fast"),
        ("configs/fgaseg/vitb_384_fast.yaml", "vitb_384_fast_cat", "ViT-B-16-quickgelu", (3, 7), (384, 384), "fast"),
        ("configs/fgaseg/vitl_336.yaml", "vitl_336_no_fast_cat", "ViT-L-14-336-quickgelu", (7, 15), (336, 336), "no_fast"),
        ("configs/fgaseg/vitl_336_fast.yaml", "vitl_336_fast_cat", "ViT-L-14-336-quickgelu", (7, 15), (336, 336), "fast"),
    ],
)
def test_paper_configs_build_the_official_network(config_file, fixture, clip_model, guidance_layers, resolution, mode,
                                                  monkeypatch):
    """Each paper config at its real size (meta device) is the network of the official
    checkpoint (fixture written by the official code): every key converts onto one of its
    tensors with the same shape, none is left over."""
    from sed_d2.checkpoint import convert_official
    from sed_d2.meta_arch import SlidingWindow

    model, cfg, built = build_paper_config_on_meta(config_file, monkeypatch)
    assert type(model).__name__ == "FGASeg" and built == [(clip_model, "openai")]
    with open(os.path.join(FIXTURES, f"official_fgaseg_{fixture}_keys_shapes.json")) as f:
        official = {key: torch.empty(shape, device="meta") for key, shape in json.load(f).items()}
    layout, converted = convert_official(official)
    assert layout == "FGAseg"
    assert {k: tuple(v.shape) for k, v in converted.items()} == {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert model.model.guidance_layers == guidance_layers and model.clip_resolution == resolution
    assert model.model.decoder.decoder_mode == mode and model.model.decoder.fusion == "cat"
    assert model.templates == ["A photo of a {} in the scene"] and model.synonym_rule == "first"
    assert isinstance(model.inference_protocol, SlidingWindow)
    assert model.decode_capturable == (mode == "no_fast")


def test_every_fgaseg_key_reaches_the_network():
    model = _build(
        TINY,
        "MODEL.FGASEG.DECODER_MODE", "fast",
        "MODEL.FGASEG.FUSION", "add",
        "MODEL.FGASEG.P2T_LAYERS", "2",
        "MODEL.FGASEG.P2T_HEADS", "4",
        "MODEL.FGASEG.P2T_GAMMA_INIT", "0.5",
        "MODEL.FGASEG.P2T_GAMMA_TRAINABLE", "False",
        "MODEL.FGASEG.P2T_POS_ON_VALUES", "True",
        "MODEL.FGASEG.LCS_KERNEL_SIZE", "5",
        "MODEL.FGASEG.LCS_KERNEL_NORM", "channels",
        "MODEL.FGASEG.T2P_KERNEL_SIZE", "1",
        "MODEL.FGASEG.T2P_BN_PER_IMAGE", "False",
        "MODEL.FGASEG.LAMBDA_ALIGN", "0.5",
        "MODEL.FGASEG.ALIGN_LOSS", "mse",
        "MODEL.FGASEG.AUX_WEIGHTS", "[0.3, 0.4, 0.5]",
        "MODEL.FGASEG.LOSS_TYPE", "ce",
        "MODEL.FGASEG.TOPK", "3",
        "MODEL.FGASEG.TOPK_UNION", "image",
        "MODEL.FGASEG.FAST_SCORES", "probability",
    )
    network, decoder = model.model, model.model.decoder
    assert (decoder.decoder_mode, decoder.fusion, decoder.fuse) == ("fast", "add", None)
    assert len(network.p2t.layers) == 2 and network.p2t.layers[0].attn.num_heads == 4
    assert network.p2t.layers[0].pos_on_values and "model.p2t.gamma" not in model.parameter_groups
    assert torch.equal(network.p2t.gamma, torch.full_like(network.p2t.gamma, 0.5))
    assert (decoder.lcs.kernel_size, decoder.lcs.kernel_norm) == (5, "channels")
    assert (network.t2p.kernel_size, network.t2p.bn_per_image) == (1, False)
    assert (network.align_weight, network.align_loss, network.aux_weights, network.loss_type) == (
        0.5, "mse", (0.3, 0.4, 0.5), "ce")
    assert (decoder.top_k, decoder.top_k_union, decoder.fast_scores) == (3, "image", "probability")


def test_training_losses_are_logged_apart_and_sum_to_the_official_total():
    model = _build(TINY, "MODEL.FGASEG.DECODER_MODE", "fast").train()
    losses = model(detectron2_inputs([(64, 64), (64, 64)], with_labels=True))
    assert sorted(losses) == ["loss_align", "loss_aux_0", "loss_aux_1", "loss_aux_2", "loss_sem_seg"]
    assert all(torch.isfinite(v) and v.ndim == 0 for v in losses.values())


def test_only_a_single_prompt_template_is_accepted():
    with pytest.raises(ValueError, match="PROMPT_TEMPLATES must be 'single'"):
        _build(TINY, "MODEL.OVSEG.PROMPT_TEMPLATES", "imagenet_select")


def test_fast_inference_graphs_only_the_image_half(monkeypatch):
    model = _build(TINY, "MODEL.FGASEG.DECODER_MODE", "fast").eval()
    calls = []
    original = model.run_network
    monkeypatch.setattr(model, "run_network", lambda name, fn, *inputs: calls.append(name) or original(name, fn, *inputs))
    with torch.no_grad():
        model(detectron2_inputs([(64, 80)]))
    assert calls == ["fgaseg_image_features"]


def test_fast_add_evaluates_where_the_official_code_raises():
    """The official Decoder_fast's inference always calls the "cat" layers, which "add" does
    not build (AttributeError 'conv_cat', official vitb_384_fast_add.yaml): ours evaluates."""
    model = _build(TINY, "MODEL.FGASEG.DECODER_MODE", "fast", "MODEL.FGASEG.FUSION", "add").eval()
    assert not hasattr(model.model.decoder, "conv_cat") and model.model.decoder.fuse is None
    with torch.no_grad():
        scores = model(detectron2_inputs([(64, 80)]))[0]["sem_seg"]
    assert scores.shape[-2:] == (64, 80) and torch.isfinite(scores).all()


def test_training_and_evaluation_run_without_the_official_debug_dumps(tmp_path, monkeypatch):
    """The official forward writes figures to /data01/... (FileNotFoundError) and calls numpy()
    on a tensor that requires grad (RuntimeError) on every training step, and dumps every
    class map at evaluation: ours writes nothing, in training or at inference."""
    monkeypatch.chdir(tmp_path)
    model = _build(TINY).train()
    sum(model(detectron2_inputs([(64, 64)], with_labels=True)).values()).backward()
    model.eval()
    with torch.no_grad():
        model(detectron2_inputs([(64, 80)]))
    assert list(tmp_path.iterdir()) == []


def test_fast_sliding_window_scores_are_the_official_double_sigmoid():
    """Official fast scoring in the sliding-window protocol: kept classes score
    sigmoid(sigmoid(logit)) in (0.5, 0.731), rejected ones exactly 0.5 before the views are
    merged; "probability" gives plain sigmoids (rejected classes 0)."""
    inputs = detectron2_inputs([(64, 80)])
    with torch.no_grad():
        official = _build(TINY, "MODEL.FGASEG.DECODER_MODE", "fast", "MODEL.FGASEG.TOPK", "1").eval()(inputs)[0]["sem_seg"]
        plain = _build(TINY, "MODEL.FGASEG.DECODER_MODE", "fast", "MODEL.FGASEG.TOPK", "1",
                       "MODEL.FGASEG.FAST_SCORES", "probability").eval()(inputs)[0]["sem_seg"]
    assert official.min() >= 0.5 - 1e-6 and official.max() <= 1 / (1 + torch.exp(torch.tensor(-1.0))) + 1e-6
    assert plain.min() >= 0 and plain.max() <= 1
    assert not torch.allclose(official, plain)


def test_the_t2p_projector_is_skipped_at_inference():
    model = _build(TINY).eval()
    calls = []
    model.model.t2p.register_forward_hook(lambda *args: calls.append(1))
    with torch.no_grad():
        model(detectron2_inputs([(64, 80)]))
    assert calls == []
    model.train()
    model(detectron2_inputs([(64, 64)], with_labels=True))
    assert calls == [1]


def test_official_checkpoint_loads_through_model_weights(tmp_path, monkeypatch):
    """An official FGAseg checkpoint (the tiny network in the official layout) loads through
    MODEL.WEIGHTS as tools/train_net.py loads it: no missing or unexpected keys, the same
    network."""
    from sed_d2.engine import ConvertingCheckpointer

    source = _build(seed=1).eval()
    with torch.no_grad():
        for p in source.parameters():
            p.add_(0.1 * torch.randn_like(p))
    state = {k[len("model."):]: v.clone() for k, v in source.state_dict().items()}
    path = tmp_path / "model_final.pth"
    torch.save({"model": _to_official(state, "vitb_384_no_fast_cat"), "iteration": 79999}, path)
    target = _build(seed=2).eval()
    incompatible = []
    monkeypatch.setattr(ConvertingCheckpointer, "_log_incompatible_keys", lambda self, keys: incompatible.append(keys))
    ConvertingCheckpointer(target, save_dir=str(tmp_path)).resume_or_load(str(path), resume=False)
    assert len(incompatible) == 1
    assert incompatible[0].missing_keys == [] and incompatible[0].unexpected_keys == []
    inputs = detectron2_inputs([(64, 80)])
    with torch.no_grad():
        assert torch.equal(target(inputs)[0]["sem_seg"], source(inputs)[0]["sem_seg"])
