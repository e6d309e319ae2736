"""OpenVocabSegmentor's own machinery (sed_d2/meta_arch/base.py) through a concrete method, the
tiny SED: vocabulary validation, the tokenizer, and run_network's CUDA-graph routing, capture
failures and graph keys (a stand-in CUDA tensor where no GPU exists)."""
import pytest
import torch

from tests.conftest import requires_detectron2
from tests.d2_helpers import build_tiny_model, tiny_cfg_for

pytestmark = requires_detectron2


def _build(config_file="configs/sed/tiny.yaml", *extra):
    return build_tiny_model(config_file, *extra, seed=0)


def _inputs(sizes):
    g = torch.Generator().manual_seed(0)
    return [
        {"image": torch.randint(0, 256, (3, h, w), generator=g, dtype=torch.uint8), "height": h, "width": w}
        for h, w in sizes
    ]


@pytest.mark.parametrize("bad,match", [([], "empty"), (["cat", "cat"], "Duplicated"),
                                       (["cat", " "], "index 1 is empty"), ("cat,dog", "single string")])
def test_bad_vocabulary_errors(bad, match):
    model = _build()
    with pytest.raises((ValueError, TypeError), match=match):
        model.set_vocabulary(bad)


class _CudaLike:
    """Stands in for a CUDA tensor where only the routing is tested (no GPU here)."""

    is_cuda, dtype, device = True, torch.float32, torch.device("cpu")

    def __init__(self, shape=(1,)):
        self.shape = shape


def test_run_network_routes_inference_through_cuda_graphs_only_where_they_apply():
    model = _build()
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


def test_graph_capture_failure_falls_back_to_eager_with_a_warning(monkeypatch):
    from sed_d2.meta_arch import base

    model = _build().eval()
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
    model = _build().eval()
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

    model = _build()
    assert model.clip_model_name == "sed_d2_tiny_convnext"
    expected = open_clip.get_tokenizer("sed_d2_tiny_convnext")
    assert type(model.text_encoder.tokenizer) is type(expected)
    assert torch.equal(model.text_encoder.tokenizer(["a photo of a cat"]), expected(["a photo of a cat"]))


def test_graph_keys_follow_the_fast_ops_switch():
    """A graph captured with the Triton kernels replays them: switching fast ops off needs
    another graph."""
    from sed_d2 import ops

    if not ops.enabled():
        pytest.skip("SED_D2_FAST_OPS=0 keeps the fast ops off in this process")
    model = _build().eval()
    keys = []
    model._graphs = lambda key, fn, *inputs: (keys.append(key), fn(*inputs))[1]
    with torch.no_grad():
        model.run_network("probe", lambda x: 1, _CudaLike())
        ops.set_enabled(False)
        try:
            model.run_network("probe", lambda x: 1, _CudaLike())
        finally:
            ops.set_enabled(True)
        model.run_network("probe", lambda x: 1, _CudaLike())
    assert keys[0] != keys[1] and keys[0] == keys[2]


def test_a_method_without_its_network_as_self_model_must_provide_the_contract():
    from sed_d2.meta_arch import OpenVocabSegmentor

    class Bare(OpenVocabSegmentor):
        pass

    bare = Bare(
        clip_pixel_mean=(0.0, 0.0, 0.0), clip_pixel_std=(1.0, 1.0, 1.0), clip_resolution=(8, 8),
        prompt_templates="single", train_vocabulary=None, test_vocabulary=["cat"], ignore_value=255,
    )
    for member, call in (
        ("clip_model", lambda: bare.clip_model),
        ("parameter_groups", lambda: bare.parameter_groups),
        ("image_features", lambda: bare.image_features(torch.zeros(1, 3, 8, 8))),
        ("forward_train", lambda: bare.forward_train(None, None, None)),
        ("decode", lambda: bare.decode({}, None)),
    ):
        with pytest.raises(NotImplementedError, match=f"Bare must provide {member} \\(the method contract\\)"):
            call()


@pytest.mark.parametrize(
    "config_file, method",
    [
        ("configs/catseg/tiny.yaml", "CAT-Seg"),
        ("configs/fgaseg/tiny.yaml", "FGAseg"),
        ("configs/dcp_clip/tiny.yaml", "DCP-CLIP"),
        ("configs/clip_hbd/tiny.yaml", "CLIP-HBD"),
        ("configs/synseg/tiny.yaml", "SynSeg"),
    ],
)
def test_vit_methods_refuse_convnext_only_clip_settings_and_convnext_towers(config_file, method):
    from detectron2.modeling import build_model

    with pytest.raises(ValueError, match=rf"MODEL.OVSEG.CLIP_HEAD_DROPOUT applies to timm .*{method}'s CLIP ViT"):
        build_model(tiny_cfg_for(config_file, "MODEL.OVSEG.CLIP_HEAD_DROPOUT", "0.1"))
    with pytest.raises(ValueError, match=rf"{method} needs a CLIP ViT image tower; MODEL.OVSEG.CLIP_MODEL 'sed_d2_tiny_convnext'"):
        build_model(tiny_cfg_for(config_file, "MODEL.OVSEG.CLIP_MODEL", "sed_d2_tiny_convnext"))
