"""The CAT-Seg meta-architecture, what tests/meta_arch/test_contract.py does not check for every
method: the paper configs build the official network, CLIP's q/v rows train and its k rows stay
exact through the trainer's optimizer, the official sliding-window computation, class pruning
(with every protocol, through one CUDA graph), the first-synonym rule, and official checkpoints
through MODEL.WEIGHTS."""
import json
import os

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tests.checkpoint.test_catseg import _to_official
from tests.conftest import requires_detectron2
from tests.d2_helpers import ROOT, build_paper_config_on_meta, build_tiny_model, detectron2_inputs, tiny_cfg_for

pytestmark = requires_detectron2

TINY = "configs/catseg/tiny.yaml"
FIXTURES = os.path.join(ROOT, "tests", "fixtures")
requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA device")


def _build(config_file=TINY, *extra, seed=0):
    return build_tiny_model(config_file, *extra, seed=seed)


# The CLIP tensors of the tiny config that train (CLIP_FINETUNE "attention"): the fused q/k/v
# projection of every block of both towers of the tiny ViT (4 visual, 2 text blocks).
TRAINED_CLIP_TENSORS = sorted(
    [f"model.clip_model.visual.transformer.resblocks.{i}.attn.in_proj_weight" for i in range(4)]
    + [f"model.clip_model.transformer.resblocks.{i}.attn.in_proj_weight" for i in range(2)]
)


@pytest.mark.parametrize(
    "config_file, fixture, clip_model, guidance_layers, resolution, clip_tensors",
    [
        ("configs/catseg/vitb_384.yaml", "official_catseg_vitb_keys_shapes.json", "ViT-B-16-quickgelu", (3, 7), (384, 384), 24),
        ("configs/catseg/vitl_336.yaml", "official_catseg_vitl_keys_shapes.json", "ViT-L-14-336-quickgelu", (7, 15), (336, 336), 36),
    ],
)
def test_paper_configs_build_the_official_network(
    config_file, fixture, clip_model, guidance_layers, resolution, clip_tensors, monkeypatch
):
    """Each paper config, at its real size (on the meta device), is the network of the
    official checkpoint: every official key converts onto one of its parameters, with the
    same shape, and no parameter is left over."""
    from sed_d2.checkpoint import convert_official
    from sed_d2.meta_arch import SlidingWindow

    model, cfg, built = build_paper_config_on_meta(config_file, monkeypatch)
    assert built == [(clip_model, "openai")]
    with open(os.path.join(FIXTURES, fixture)) as f:
        official = {key: torch.empty(shape, device="meta") for key, shape in json.load(f).items()}
    layout, converted = convert_official(official)
    assert layout == "CAT-Seg"
    assert {k: tuple(v.shape) for k, v in converted.items()} == {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert model.model.guidance_layers == guidance_layers
    assert model.clip_resolution == resolution
    assert model.templates == ["A photo of a {} in the scene"] and model.synonym_rule == "first"
    assert sum(group == "clip" for group in model.parameter_groups.values()) == clip_tensors  # q/v of every block
    protocol = model.inference_protocol  # the official eval.sh protocol
    assert isinstance(protocol, SlidingWindow)
    assert (protocol.image_size, protocol.window, protocol.stride, protocol.global_size, protocol.merge) == (
        (640, 640), (384, 384), (256, 256), (384, 384), "mean"
    )


def test_default_guidance_layers_are_the_official_ones():
    from sed_d2.meta_arch.catseg import default_guidance_layers

    assert default_guidance_layers(12, 2) == (3, 7)  # ViT-B/16
    assert default_guidance_layers(24, 2) == (7, 15)  # ViT-L/14
    assert default_guidance_layers(4, 2) == (0, 1)  # the tiny test ViT
    with pytest.raises(ValueError, match="MODEL.CATSEG.GUIDANCE_LAYERS"):
        default_guidance_layers(2, 2)


def test_drop_path_keys_are_refused_for_the_vit():
    with pytest.raises(ValueError, match="MODEL.OVSEG.CLIP_DROP_PATH_RATE"):
        _build(TINY, "MODEL.OVSEG.CLIP_DROP_PATH_RATE", "0.1")


def test_clip_trains_q_and_v_rows_of_both_towers_and_k_rows_get_no_gradient():
    model = _build().train()
    sum(model(detectron2_inputs([(64, 64), (64, 64)], with_labels=True)).values()).backward()
    groups = model.parameter_groups
    # The fused q/k/v projections of both towers (the text tower trains, so the text
    # embeddings carry gradients); every other CLIP parameter is frozen.
    assert sorted(n for n, g in groups.items() if g == "clip") == TRAINED_CLIP_TENSORS
    assert all(g == "frozen" for n, g in groups.items() if n.startswith("model.clip_model.") and n not in TRAINED_CLIP_TENSORS)
    parameters = dict(model.named_parameters())
    for name in TRAINED_CLIP_TENSORS:
        grad, width = parameters[name].grad, parameters[name].shape[1]
        assert grad[width : 2 * width].abs().max() == 0, name  # k
        assert grad[2 * width :].abs().sum() > 0, name  # v
        if name != "model.clip_model.visual.transformer.resblocks.3.attn.in_proj_weight":
            assert grad[:width].abs().sum() > 0, name  # q (unused in the last visual block, as officially)


def test_trainer_optimizer_keeps_k_rows_and_evaluation_sees_the_new_text_tower():
    """The trainer's optimizer (sed_d2.engine.build_optimizer) restores the k rows around
    every step, weight decay included; after the steps, evaluation encodes the vocabulary
    with the updated text tower, never from a stale cache."""
    from detectron2.modeling import build_model

    from sed_d2.clip import TextEncoder
    from sed_d2.engine import build_optimizer

    torch.manual_seed(0)
    cfg = tiny_cfg_for(TINY, "SOLVER.WEIGHT_DECAY", "0.1")  # a decay that would show on any row
    model = build_model(cfg)
    optimizer = build_optimizer(cfg, model)
    in_proj = {n: p for n, p in model.named_parameters() if n in TRAINED_CLIP_TENSORS}
    before = {n: p.detach().clone() for n, p in in_proj.items()}
    model.eval()
    with torch.no_grad():
        text_before = model.text_embeddings().clone()
    model.train()
    batch = detectron2_inputs([(64, 64), (64, 64)], with_labels=True)
    for _ in range(2):
        optimizer.zero_grad()
        sum(model(batch).values()).backward()
        optimizer.step()
    for name, p in in_proj.items():
        width = p.shape[1]
        assert torch.equal(p[width : 2 * width], before[name][width : 2 * width]), name  # k
        assert not torch.equal(p[:width], before[name][:width]), name  # q
        assert not torch.equal(p[2 * width :], before[name][2 * width :]), name  # v
    model.eval()
    with torch.no_grad():
        text_after = model.text_embeddings()
        encoder = TextEncoder(model.clip_model, model.templates, model_name=model.clip_model_name, synonym_rule="first")
        fresh = encoder(model.vocabulary)
    assert not torch.allclose(text_after, text_before)
    assert torch.equal(text_after, fresh)


def _official_sliding_window(model, image, text, kernel, overlap, out_res):
    """The official ``CATSeg.inference_sliding_window`` (cvlab-kaist/CAT-Seg) step by step,
    with its kernel / overlap / output size as arguments, through ``model.network_logits``;
    returns the scores at the image's size (``sem_seg_postprocess``)."""
    stride = int(kernel * (1 - overlap))
    unfold = nn.Unfold(kernel_size=kernel, stride=stride)
    fold = nn.Fold(out_res, kernel_size=kernel, stride=stride)
    resized = F.interpolate(image[None], size=out_res, mode="bilinear", align_corners=False)[0]
    crops = unfold(resized).T.reshape(-1, 3, kernel, kernel)  # "(C H W) L -> L C H W"
    whole = F.interpolate(image[None], size=(kernel, kernel), mode="bilinear", align_corners=False)
    views = torch.cat([crops, whole])
    views = (views - model.pixel_mean) / model.pixel_std
    views = F.interpolate(views, size=model.clip_resolution, mode="bilinear", align_corners=False)
    outputs = F.interpolate(model.network_logits(views, text), size=kernel, mode="bilinear", align_corners=False)
    outputs = outputs.sigmoid()
    global_output = F.interpolate(outputs[-1:], size=out_res, mode="bilinear", align_corners=False)
    outputs = fold(outputs[:-1].flatten(1).T) / fold(unfold(torch.ones([1] + list(out_res))))
    outputs = (outputs + global_output) / 2
    return F.interpolate(outputs, size=image.shape[-2:], mode="bilinear", align_corners=False)[0]


def test_sliding_window_protocol_is_the_official_computation():
    """The tiny config's protocol is the official one at 1/4 scale (kernel 96, overlap
    0.333 -> stride 64, image 160x160, global view 96x96)."""
    model = _build().eval()
    inputs = detectron2_inputs([(64, 80)])
    with torch.no_grad():
        ours = model(inputs)[0]["sem_seg"]
        official = _official_sliding_window(
            model, inputs[0]["image"].float(), model.text_embeddings(), kernel=96, overlap=0.333, out_res=[160, 160]
        )
    torch.testing.assert_close(ours, official, rtol=0, atol=1e-5)


# The tiny config's own case (sliding window, 8 classes padded to 16) is in test_contract.
@pytest.mark.parametrize("protocol, pad_len", [("sliding_window", 4), ("whole", 16), ("whole", 4)])
def test_a_batch_equals_its_images_one_by_one_with_class_pruning_and_both_protocols(protocol, pad_len):
    model = _build(TINY, "TEST.PROTOCOL", protocol, "MODEL.CATSEG.PAD_LEN", str(pad_len)).eval()
    sizes = [(64, 80), (96, 64), (70, 70)]
    inputs = detectron2_inputs(sizes)
    with torch.no_grad():
        batched = model(inputs)
        singles = [model([x])[0] for x in inputs]
    num_classes = len(model.vocabulary)
    for out, single, (h, w) in zip(batched, singles, sizes):
        assert out["sem_seg"].shape == (num_classes, h, w)
        assert 0 <= out["sem_seg"].min() and out["sem_seg"].max() <= 1
        torch.testing.assert_close(out["sem_seg"], single["sem_seg"], rtol=1e-4, atol=1e-5)


def test_class_pruning_keeps_pad_len_classes_per_image():
    from sed_d2.models.catseg import PRUNED_CLASS_LOGIT

    model = _build(TINY, "MODEL.CATSEG.PAD_LEN", "5").eval()
    images = model.prepare_images([x["image"].float() for x in detectron2_inputs([(64, 64), (80, 72)])])
    with torch.no_grad():
        logits = model.network_logits(images, model.text_embeddings())
    pruned = (logits == PRUNED_CLASS_LOGIT).flatten(2).all(dim=-1)  # (B, T)
    assert pruned.sum(dim=1).tolist() == [len(model.vocabulary) - 5] * 2


def test_a_class_with_synonyms_is_embedded_as_its_first_name():
    model = _build().eval()
    with torch.no_grad():
        model.set_vocabulary(["cat", "dog, puppy", "grass"])
        with_synonyms = model.text_embeddings().clone()
        model.set_vocabulary(["cat", "dog", "grass"])
        assert torch.equal(model.text_embeddings(), with_synonyms)
        model.set_vocabulary(["cat", "puppy", "grass"])
        assert not torch.equal(model.text_embeddings(), with_synonyms)


def test_with_class_pruning_inference_runs_the_whole_network_through_one_cuda_graph_call():
    """The decoder is capturable, class pruning included: inference calls run_network once,
    for the whole network (image tower and decoder)."""
    model = _build(TINY, "TEST.PROTOCOL", "whole", "MODEL.CATSEG.PAD_LEN", "4").eval()
    names = []
    run_network = model.run_network
    model.run_network = lambda name, fn, *inputs: (names.append(name), run_network(name, fn, *inputs))[1]
    with torch.no_grad():
        model(detectron2_inputs([(64, 64)]))
    assert names == ["catseg_logits"]


@requires_cuda
def test_with_class_pruning_cuda_graph_replay_equals_eager():
    model = _build(TINY, "MODEL.CATSEG.PAD_LEN", "4").cuda().eval()
    inputs = detectron2_inputs([(64, 80), (96, 64)])
    with torch.no_grad():
        model.cuda_graphs = False
        eager = [x["sem_seg"] for x in model(inputs)]
        model.cuda_graphs = True
        for _ in range(2):  # capture, then replay
            replayed = [x["sem_seg"] for x in model(inputs)]
            for a, b in zip(replayed, eager):
                assert torch.equal(a, b)
    assert len(model._graphs) == 1


def test_official_checkpoint_loads_through_model_weights(tmp_path, monkeypatch):
    """An official CAT-Seg checkpoint (the tiny network in the official layout: OpenAI
    CLIP names with split q/k/v, Aggregator names, upsample1/2, Swin masks) loads through
    MODEL.WEIGHTS as tools/train_net.py loads it: no missing or unexpected keys, the same
    network; the text embeddings cached before loading are not reused."""
    from sed_d2.engine import ConvertingCheckpointer

    source = _build(seed=1).eval()
    with torch.no_grad():
        for p in source.parameters():
            p.add_(0.1 * torch.randn_like(p))  # no constant tensor: every mapping shows
    official = _to_official({k[len("model."):]: v.clone() for k, v in source.state_dict().items()})
    path = tmp_path / "model_base.pth"
    torch.save({"model": official, "iteration": 79999}, path)

    target = _build(seed=2).eval()
    inputs = detectron2_inputs([(64, 80)])
    with torch.no_grad():
        target(inputs)  # fills the text-embedding cache with the old weights
    incompatible = []
    monkeypatch.setattr(ConvertingCheckpointer, "_log_incompatible_keys", lambda self, keys: incompatible.append(keys))
    ConvertingCheckpointer(target, save_dir=str(tmp_path)).resume_or_load(str(path), resume=False)
    assert len(incompatible) == 1
    assert incompatible[0].missing_keys == [] and incompatible[0].unexpected_keys == []
    src, dst = source.state_dict(), target.state_dict()
    assert all(torch.equal(src[k], dst[k]) for k in src)
    with torch.no_grad():
        assert torch.equal(target(inputs)[0]["sem_seg"], source(inputs)[0]["sem_seg"])
