"""The method contract (sed_d2.meta_arch.base), checked alike for every registered method on its
configs/<method>/tiny.yaml (CPU-sized by tests/d2_helpers). Adding a method adds a parameter:
its tiny config, and its golden training losses below.

Checked: the contract is complete; gradients reach exactly the trainable parameters of
``parameter_groups``; training losses are a dict of finite scalars with golden values at a
fixed seed; inference takes any batch of mixed sizes and a batch equals its images one by
one; switching the vocabulary changes T and equals a fresh model given that vocabulary;
``network_logits`` routes through ``run_network`` as ``decode_capturable`` says, and on a GPU
the CUDA graphs give the eager logits bit for bit."""
import glob
import os

import pytest
import torch

from tests.conftest import requires_detectron2
from tests.d2_helpers import ROOT, build_tiny_model, detectron2_inputs

pytestmark = requires_detectron2

TINY_CONFIGS = sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, "configs", "*", "tiny.yaml")))

# Training losses of one batch of two 64x64 images at the fixed seed (float32, CPU, one thread).
GOLDEN_LOSSES = {
    "configs/catseg/tiny.yaml": {"loss_sem_seg": 0.81673663854599},
    "configs/fgaseg/tiny.yaml": {"loss_align": 0.018302898854017258, "loss_sem_seg": 0.8347907066345215},
    # random labels: nearly every pixel is an edge, and class balancing gives edges weight ~0
    "configs/clip_hbd/tiny.yaml": {"loss_ce": 2.079411506652832, "loss_dice": 0.8741841316223145, "loss_boundary": 0.0},
    "configs/dcp_clip/tiny.yaml": {"loss_sem_seg": 0.6630818843841553},
    "configs/synseg/tiny.yaml": {
        "loss_intra_align": 0.5636775493621826,
        "loss_intra_sep": 8.26229476928711,
        "loss_inter_align": 0.00025047725648619235,
        "loss_inter_sep": 8.292264938354492,
    },
    "configs/sed/tiny.yaml": {
        "loss_sem_seg_0": 0.632476270198822,
        "loss_sem_seg_1": 0.6884152293205261,
        "loss_sem_seg_2": 0.6989933252334595,
        "loss_sem_seg_3": 0.7662673592567444,
    },
}


def _build(config_file, *extra, seed=0):
    return build_tiny_model(config_file, *extra, seed=seed)


@pytest.fixture(params=TINY_CONFIGS)
def config_file(request):
    return request.param


def test_every_registered_method_has_a_tiny_config_and_golden_losses():
    from detectron2.modeling import META_ARCH_REGISTRY

    from sed_d2.config import get_cfg
    from sed_d2.meta_arch import OpenVocabSegmentor

    registered = {name for name, cls in META_ARCH_REGISTRY if isinstance(cls, type) and issubclass(cls, OpenVocabSegmentor)}
    tested = {get_cfg(os.path.join(ROOT, c)).MODEL.META_ARCHITECTURE for c in TINY_CONFIGS}
    assert registered == tested
    assert sorted(GOLDEN_LOSSES) == TINY_CONFIGS


def test_the_contract_is_complete(config_file):
    from sed_d2.meta_arch import OpenVocabSegmentor

    model = _build(config_file)
    for name in ("forward_train", "decode"):
        assert getattr(type(model), name) is not getattr(OpenVocabSegmentor, name), f"{name} not provided"
    # clip_model, parameter_groups and image_features come from the network held as self.model
    assert model.clip_model is model.model.clip_model
    assert set(model.image_features(torch.zeros(1, 3, *model.clip_resolution))) == set(
        model.model.image_features(torch.zeros(1, 3, *model.clip_resolution))
    )
    assert isinstance(model.benchmark_variants(), dict)
    # a parameter group for every parameter, from the shared table of groups
    from sed_d2.models.parameter_groups import FROZEN_GROUP, LR_MULTIPLIER_KEYS

    groups = model.parameter_groups
    assert sorted(groups) == sorted(name for name, _ in model.named_parameters())
    assert set(groups.values()) <= {FROZEN_GROUP, *LR_MULTIPLIER_KEYS}


def test_gradients_reach_exactly_the_trainable_parameters_and_losses_are_golden(config_file):
    model = _build(config_file).train()
    losses = model(detectron2_inputs([(64, 64), (64, 64)], with_labels=True))
    assert sorted(losses) == sorted(GOLDEN_LOSSES[config_file])
    for name, value in losses.items():
        assert value.dtype == torch.float32 and value.ndim == 0 and torch.isfinite(value), name
    torch.testing.assert_close(
        {k: v.item() for k, v in losses.items()}, GOLDEN_LOSSES[config_file], rtol=1e-5, atol=1e-7
    )
    sum(losses.values()).backward()
    groups = model.parameter_groups
    for name, parameter in model.named_parameters():
        if groups[name] == "frozen":
            assert not parameter.requires_grad and parameter.grad is None, name
        else:
            assert parameter.requires_grad and parameter.grad is not None, f"{name} got no gradient"
            assert torch.isfinite(parameter.grad).all(), name
    assert any(g != "frozen" for g in groups.values()) and any(g == "frozen" for g in groups.values())


def test_any_batch_of_mixed_sizes_equals_its_images_one_by_one(config_file):
    model = _build(config_file).eval()
    sizes = [(64, 80), (96, 64), (70, 70)]
    inputs = detectron2_inputs(sizes)
    with torch.no_grad():
        batched = model(inputs)
        singles = [model([x])[0] for x in inputs]
    num_classes = len(model.vocabulary)
    for out, single, (h, w) in zip(batched, singles, sizes):
        assert out["sem_seg"].shape == (num_classes, h, w) and out["sem_seg"].dtype == torch.float32
        torch.testing.assert_close(out["sem_seg"], single["sem_seg"], rtol=1e-4, atol=1e-5)
    # the per-image scores before the resize are what forward resizes
    with torch.no_grad():
        scores = model.inference_scores([x["image"] for x in inputs])
    assert [s.shape[0] for s in scores] == [num_classes] * 3


def test_vocabulary_switching_equals_a_fresh_model_with_that_vocabulary(config_file):
    words = ["cat", "dog, puppy", "grass"]
    inputs = detectron2_inputs([(64, 64)])
    model = _build(config_file).eval()
    default_vocabulary = list(model.vocabulary)
    with torch.no_grad():
        default = model(inputs)[0]["sem_seg"]
        model.set_vocabulary(words)
        switched = model(inputs)[0]["sem_seg"]
        model.set_vocabulary(["sky"])
        assert model(inputs)[0]["sem_seg"].shape[0] == 1
        fresh = _build(config_file).eval()
        fresh.set_vocabulary(words)
        assert switched.shape[0] == 3
        assert torch.equal(switched, fresh(inputs)[0]["sem_seg"])
        model.set_vocabulary(default_vocabulary)
        assert torch.equal(model(inputs)[0]["sem_seg"], default)  # back: the same scores
    assert not any("text" in k and "cache" in k for k in model.state_dict())  # no embeddings saved


def test_network_logits_route_through_run_network_as_decode_capturable_says(config_file):
    model = _build(config_file).eval()
    names = []
    run_network = model.run_network
    model.run_network = lambda name, fn, *inputs: (names.append(name), run_network(name, fn, *inputs))[1]
    with torch.no_grad():
        images = model.prepare_images([x["image"] for x in detectron2_inputs([(64, 64)])])
        logits = model.network_logits(images, model.text_embeddings())
        direct = model.decode(model.image_features(images), model.text_embeddings())
    assert logits.shape[:2] == (1, len(model.vocabulary))
    assert torch.equal(logits, direct)
    part = "logits" if model.decode_capturable else "image_features"
    assert names == [f"{type(model).__name__.lower()}_{part}"]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA device")
@pytest.mark.parametrize("cudnn_deterministic", [True, False])
def test_cuda_graphs_replay_the_eager_logits_bit_for_bit(config_file, cudnn_deterministic, monkeypatch):
    """Bit for bit with deterministic cuDNN. Without it, cuDNN may pick another convolution
    algorithm inside a capture than eagerly: CLIP-HBD's tiny config (cuDNN convolutions in
    float32) replayed 1.2e-6 away from eager on an H200, 0.0 with deterministic cuDNN."""
    monkeypatch.setattr(torch.backends.cudnn, "deterministic", cudnn_deterministic)
    model = _build(config_file, "MODEL.DEVICE", "cuda").eval()
    assert model.cuda_graphs
    inputs = detectron2_inputs([(64, 80), (70, 70)])
    with torch.no_grad():
        model.cuda_graphs = False
        eager = [r["sem_seg"] for r in model(inputs)]
        model.cuda_graphs = True
        for _ in range(2):  # the capture, then a replay
            graphed = [r["sem_seg"] for r in model(inputs)]
            for a, b in zip(graphed, eager):
                if cudnn_deterministic:
                    assert torch.equal(a, b)
                else:
                    torch.testing.assert_close(a, b, rtol=0, atol=1e-5)
