"""The SED meta-architecture built from each shipped config (tiny CLIP swapped in): what is
particular to SED (category early rejection, its parameter groups, its configs); the checks
every method passes are in test_contract.py."""
from functools import partial

import pytest
import torch

from sed_d2.layers import top_k_union

from tests.conftest import requires_detectron2
from tests.d2_helpers import tiny_cfg_for

pytestmark = requires_detectron2

SHIPPED = ["configs/sed/convnextB_768.yaml", "configs/sed/convnextL_768.yaml", "configs/sed/tiny.yaml"]


def _build(config_file, *extra):
    from detectron2.modeling import build_model

    import sed_d2  # noqa: F401

    torch.manual_seed(0)
    return build_model(tiny_cfg_for(config_file, *extra))


def _inputs(sizes, with_labels=False, num_classes=8):
    g = torch.Generator().manual_seed(0)
    out = []
    for h, w in sizes:
        x = {"image": torch.randint(0, 256, (3, h, w), generator=g, dtype=torch.uint8),
             "height": h, "width": w}
        if with_labels:
            x["sem_seg"] = torch.randint(0, num_classes, (h, w), generator=g)
            x["sem_seg"][0, :5] = 255
        out.append(x)
    return out


@pytest.mark.parametrize("config_file", SHIPPED)
def test_train_step_losses_and_gradients(config_file):
    model = _build(config_file)
    model.train()
    losses = model(_inputs([(64, 64), (64, 64)], with_labels=True))
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


def test_inference_any_batch_and_sizes():
    model = _build("configs/sed/tiny.yaml")
    model.eval()
    sizes = [(64, 80), (96, 64), (70, 70)]
    inputs = _inputs(sizes)
    with torch.no_grad():
        batched = model(inputs)
        singles = [model([x])[0] for x in inputs]
    T = len(model.vocabulary)
    for out, single, (h, w) in zip(batched, singles, sizes):
        assert out["sem_seg"].shape == (T, h, w)
        assert 0 <= out["sem_seg"].min() and out["sem_seg"].max() <= 1
        torch.testing.assert_close(out["sem_seg"], single["sem_seg"], rtol=1e-4, atol=1e-5)


def test_cer_with_all_classes_equals_plain_path_through_meta_arch():
    model = _build("configs/sed/tiny.yaml")
    model.eval()
    inputs = _inputs([(64, 64), (80, 72)])
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


def test_vocabulary_switch_and_cache():
    model = _build("configs/sed/tiny.yaml")
    model.eval()
    with torch.no_grad():
        model.set_vocabulary(["cat", "dog, puppy", "grass"])
        out = model(_inputs([(64, 64)]))[0]
        assert out["sem_seg"].shape[0] == 3
        first = model.text_embeddings()
        model.set_vocabulary(["sky"])
        assert model(_inputs([(64, 64)]))[0]["sem_seg"].shape[0] == 1
        model.set_vocabulary(["cat", "dog, puppy", "grass"])
        assert torch.equal(model.text_embeddings(), first)
    # Text embeddings never enter the checkpoint.
    assert not any("text_embed" in k or "cache" in k for k in model.state_dict())


@pytest.mark.parametrize("bad,match", [([], "empty"), (["cat", "cat"], "Duplicated"),
                                       (["cat", " "], "index 1 is empty"), ("cat,dog", "single string")])
def test_bad_vocabulary_errors(bad, match):
    model = _build("configs/sed/tiny.yaml")
    with pytest.raises((ValueError, TypeError), match=match):
        model.set_vocabulary(bad)


def test_unknown_clip_model_error():
    with pytest.raises(ValueError, match="convnext_bse_w_320"):
        _build("configs/sed/tiny.yaml", "MODEL.OVSEG.CLIP_MODEL", "convnext_bse_w_320")


def test_bf16_inference_close_to_fp32():
    model = _build("configs/sed/tiny.yaml")
    model.eval()
    inputs = _inputs([(64, 64)])
    with torch.no_grad():
        fp32 = model(inputs)[0]["sem_seg"]
        model.test_dtype = torch.bfloat16
        bf16 = model(inputs)[0]["sem_seg"]
    assert bf16.dtype == torch.float32 and bf16.shape == fp32.shape
    # Random weights give near-tied classes, so compare probabilities, not the argmax.
    assert not torch.equal(bf16, fp32)
    torch.testing.assert_close(bf16, fp32, atol=0.03, rtol=0)


class _CudaLike:
    """Stands in for a CUDA tensor where only the routing is tested (no GPU here)."""

    is_cuda, dtype, device = True, torch.float32, torch.device("cpu")

    def __init__(self, shape=(1,)):
        self.shape = shape


def test_run_network_routes_inference_through_cuda_graphs_only_where_they_apply():
    model = _build("configs/sed/tiny.yaml")
    assert model.cuda_graphs  # MODEL.OVSEG.CUDA_GRAPHS defaults to on
    calls = []

    def fake_cache(key, fn, *inputs):
        calls.append(key[0])
        return fn(*inputs)

    model._graphs = fake_cache  # records what would be captured / replayed
    model._graphs.clear = lambda: calls.append("clear")
    inputs = _inputs([(64, 64)])
    model.eval()
    with torch.no_grad():
        eager = model(inputs)[0]["sem_seg"]
    assert calls == []  # CPU tensors: no graphs
    # On CUDA inputs (faked), eval and no grad: the graph path; grads or training: eager.
    cuda_like = _CudaLike()
    with torch.no_grad():
        model.run_network("probe", lambda x: 1, cuda_like)
    assert calls == ["probe"]
    model.run_network("probe", lambda x: 1, cuda_like)  # gradients on
    model.train()
    with torch.no_grad():
        model.run_network("probe", lambda x: 1, cuda_like)
    assert calls == ["probe", "clear"]  # train() dropped the graphs, training runs eager
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(inputs)[0]["sem_seg"], eager)


def test_cer_replays_only_the_image_tower():
    """With category early rejection the decoder's class counts depend on values, so only
    the image tower goes through run_network (a CUDA graph on GPUs)."""
    model = _build("configs/sed/tiny.yaml").eval()
    names = []
    run_network = model.run_network
    model.run_network = lambda name, fn, *inputs: (names.append(name), run_network(name, fn, *inputs))[1]
    inputs = _inputs([(64, 64)])
    with torch.no_grad():
        plain = model(inputs)[0]["sem_seg"]
        model.rejection_rule = partial(top_k_union, k=10**6)  # rejects nothing: the same result through the CER path
        with_cer = model(inputs)[0]["sem_seg"]
    assert names == ["sed_logits", "sed_image_features"]
    torch.testing.assert_close(with_cer, plain, rtol=0, atol=0)


def test_graph_capture_failure_falls_back_to_eager_with_a_warning(monkeypatch):
    from sed_d2.meta_arch import base

    model = _build("configs/sed/tiny.yaml").eval()
    warnings = []
    monkeypatch.setattr(base.logger, "warning", lambda message, *args: warnings.append(message % args))

    def failing_cache(key, fn, *inputs):
        raise RuntimeError("operation not permitted when stream is capturing")

    calls = []
    model._graphs = lambda key, fn, *inputs: (calls.append(key[0]), failing_cache(key, fn, *inputs))
    model._graphs.clear = lambda: None
    with torch.no_grad():
        assert model.run_network("probe", lambda x: 7, _CudaLike()) == 7
        assert model.run_network("probe", lambda x: 8, _CudaLike()) == 8  # eager, no new capture
        assert model.run_network("probe", lambda x: 9, _CudaLike((2,))) == 9  # other shapes still try
        assert model.run_network("other", lambda x: 10, _CudaLike()) == 10  # other graphs still try
    assert model.cuda_graphs  # one failure never turns graphs off for the whole process
    assert calls == ["probe", "probe", "other"]
    assert len(warnings) == 3 and "CUDA graph capture of probe failed" in warnings[0]


def test_graph_keys_list_the_parameters_once_per_evaluation():
    model = _build("configs/sed/tiny.yaml").eval()
    model._graphs = lambda key, fn, *inputs: fn(*inputs)
    walks = []
    parameters = model.parameters
    model.parameters = lambda *args, **kwargs: (walks.append(1), parameters(*args, **kwargs))[1]
    with torch.no_grad():
        for _ in range(3):
            model.run_network("probe", lambda x: 1, _CudaLike())
        assert len(walks) == 1
        model.eval()  # a new evaluation may follow module surgery: listed again
        model.run_network("probe", lambda x: 1, _CudaLike())
    assert len(walks) == 2


def test_text_encoder_uses_the_tokenizer_of_the_configured_clip_model():
    import open_clip

    model = _build("configs/sed/tiny.yaml")
    assert model.clip_model_name == "sed_d2_tiny_convnext"
    expected = open_clip.get_tokenizer("sed_d2_tiny_convnext")
    assert type(model.text_encoder.tokenizer) is type(expected)
    assert torch.equal(model.text_encoder.tokenizer(["a photo of a cat"]), expected(["a photo of a cat"]))


def test_cer_topk_config_is_the_top_k_union_rule_and_the_benchmark_variant_swaps_it():
    off = _build("configs/sed/tiny.yaml")
    assert off.rejection_rule is None and off.decode_capturable
    model = _build("configs/sed/tiny.yaml", "MODEL.SED.CER_TOPK", "3").eval()
    assert model.rejection_rule.func is top_k_union and model.rejection_rule.keywords == {"k": 3}
    assert not model.decode_capturable
    inputs = _inputs([(64, 64), (72, 80)])
    with torch.no_grad():
        with model.benchmark_variants()["cer_keep"](2):
            kept = [r["sem_seg"].flatten(1).amax(1) > 0 for r in model(inputs)]  # rejected: probability 0
        assert [int(k.sum()) for k in kept] == [2, 2]  # exactly two survivors per image
        assert model.rejection_rule.keywords == {"k": 3}  # restored
