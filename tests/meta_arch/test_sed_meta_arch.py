"""The SED meta-architecture built from each shipped config (tiny CLIP swapped in): what is
particular to SED (category early rejection, its parameter groups, its configs); the checks
every method passes are in test_contract.py."""
from functools import partial

import pytest
import torch

from sed_d2.layers import top_k_union
from tests.conftest import requires_detectron2
from tests.d2_helpers import build_tiny_model, detectron2_inputs

pytestmark = requires_detectron2

SHIPPED = ["configs/sed/convnextB_768.yaml", "configs/sed/convnextL_768.yaml", "configs/sed/tiny.yaml"]


def _build(config_file, *extra):
    return build_tiny_model(config_file, *extra, seed=0)


@pytest.mark.parametrize("config_file", SHIPPED)
def test_train_step_losses_and_gradients(config_file):
    model = _build(config_file)
    model.train()
    losses = model(detectron2_inputs([(64, 64), (64, 64)], with_labels=True))
    assert sorted(losses) == [f"loss_sem_seg_{i}" for i in range(4)]
    assert all(torch.isfinite(v) and v.ndim == 0 for v in losses.values())
    sum(losses.values()).backward()
    groups = model.parameter_groups
    for name, p in model.named_parameters():
        if groups[name] == "frozen":
            assert not p.requires_grad and p.grad is None, name
        else:
            assert p.requires_grad and p.grad is not None, f"{name} got no gradient"
    # Text tower frozen; image tower fine-tuned ("full").
    assert groups["model.clip_model.token_embedding.weight"] == "frozen"
    assert groups["model.clip_model.visual.trunk.stem.0.weight"] == "clip"


def test_cer_with_all_classes_equals_plain_path_through_meta_arch():
    model = _build("configs/sed/tiny.yaml")
    model.eval()
    inputs = detectron2_inputs([(64, 64), (80, 72)])
    with torch.no_grad():
        plain = model(inputs)
        model.rejection_rule = partial(top_k_union, k=len(model.vocabulary))
        cer = model(inputs)
        model.rejection_rule = partial(top_k_union, k=1)
        rejected = model(inputs)
    for a, b in zip(plain, cer):
        assert torch.equal(a["sem_seg"], b["sem_seg"])
    # With k=1 some classes are rejected: their probability is exactly zero everywhere.
    zero_classes = [(r["sem_seg"].flatten(1).amax(1) == 0).sum().item() for r in rejected]
    assert max(zero_classes) > 0


def test_unknown_clip_model_error():
    with pytest.raises(ValueError, match="convnext_bse_w_320"):
        _build("configs/sed/tiny.yaml", "MODEL.OVSEG.CLIP_MODEL", "convnext_bse_w_320")


def test_bf16_inference_close_to_fp32():
    model = _build("configs/sed/tiny.yaml")
    model.eval()
    inputs = detectron2_inputs([(64, 64)])
    with torch.no_grad():
        fp32 = model(inputs)[0]["sem_seg"]
        model.test_dtype = torch.bfloat16
        bf16 = model(inputs)[0]["sem_seg"]
    assert bf16.dtype == torch.float32 and bf16.shape == fp32.shape
    # Random weights give near-tied classes, so compare probabilities, not the argmax.
    assert not torch.equal(bf16, fp32)
    torch.testing.assert_close(bf16, fp32, atol=0.03, rtol=0)


def test_cer_replays_only_the_image_tower():
    """With category early rejection the decoder's class counts depend on values, so only
    the image tower goes through run_network (a CUDA graph on GPUs)."""
    model = _build("configs/sed/tiny.yaml").eval()
    names = []
    run_network = model.run_network
    model.run_network = lambda name, fn, *inputs: (names.append(name), run_network(name, fn, *inputs))[1]
    inputs = detectron2_inputs([(64, 64)])
    with torch.no_grad():
        plain = model(inputs)[0]["sem_seg"]
        model.rejection_rule = partial(top_k_union, k=10**6)  # rejects nothing: the same result through the CER path
        with_cer = model(inputs)[0]["sem_seg"]
    assert names == ["sed_logits", "sed_image_features"]
    torch.testing.assert_close(with_cer, plain, rtol=0, atol=0)


def test_cer_topk_config_is_the_top_k_union_rule_and_the_benchmark_variant_swaps_it():
    off = _build("configs/sed/tiny.yaml")
    assert off.rejection_rule is None and off.decode_capturable
    model = _build("configs/sed/tiny.yaml", "MODEL.SED.CER_TOPK", "3").eval()
    assert model.rejection_rule.func is top_k_union and model.rejection_rule.keywords == {"k": 3}
    assert not model.decode_capturable
    inputs = detectron2_inputs([(64, 64), (72, 80)])
    with torch.no_grad():
        with model.benchmark_variants()["cer_keep"](2):
            kept = [r["sem_seg"].flatten(1).amax(1) > 0 for r in model(inputs)]  # rejected: probability 0
        assert [int(k.sum()) for k in kept] == [2, 2]  # exactly two survivors per image
        assert model.rejection_rule.keywords == {"k": 3}  # restored



def test_scores_are_the_float32_sigmoid_of_the_logits_resized_to_each_image():
    import torch.nn.functional as F

    model = _build("configs/sed/tiny.yaml").eval()
    inputs = detectron2_inputs([(64, 80), (70, 70)])
    with torch.no_grad():
        results = model(inputs)
        images = model.prepare_images([x["image"] for x in inputs])
        logits = model.network_logits(images, model.text_embeddings())
    for result, logit, x in zip(results, logits, inputs):
        expected = F.interpolate(logit[None].float().sigmoid(), size=(x["height"], x["width"]), mode="bilinear")[0]
        assert torch.equal(result["sem_seg"], expected)
