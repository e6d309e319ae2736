import open_clip
import pytest
import torch
from open_clip.transformer import VisionTransformer
from timm.layers import DropPath
from torch import nn

from sed_d2.clip import build_clip_model, convnext_dense_features, convnext_fast_path_applies
from sed_d2.clip.dense import convnext as dense_module
from sed_d2.clip.dense import convnext_dense_feature_channels, convnext_dense_feature_strides
from sed_d2.ops import depthwise_conv, row_norm
from tests.helpers import tiny_clip

TINY_CHANNELS = {
    "sed_d2_tiny_convnext": {"res2": 24, "res3": 32, "res4": 48, "res5": 64, "clip_vis_dense": 64},
    "sed_d2_tiny_convnext_mlp": {"res2": 24, "res3": 32, "res4": 48, "res5": 64, "clip_vis_dense": 48},
}
STRIDES = {"res2": 4, "res3": 8, "res4": 16, "res5": 32, "clip_vis_dense": 32}


@pytest.fixture(params=sorted(TINY_CHANNELS))
def clip_name(request):
    return request.param


def test_shapes_channels_and_strides(clip_name):
    visual = tiny_clip(clip_name).visual
    images = torch.randn(2, 3, 64, 96)
    features = convnext_dense_features(visual, images)
    assert convnext_dense_feature_channels(visual) == TINY_CHANNELS[clip_name]
    assert convnext_dense_feature_strides(visual) == STRIDES
    assert list(features) == list(STRIDES)
    for name, feature in features.items():
        stride = STRIDES[name]
        assert feature.shape == (2, TINY_CHANNELS[clip_name][name], 64 // stride, 96 // stride), name
        assert feature.is_contiguous()


def test_one_pixel_dense_embedding_equals_pooled_clip_embedding(clip_name):
    # With a 1x1 res5 the global pool is the identity, so the per-pixel head must give
    # exactly open_clip's image embedding: proof that the CLIP head is reproduced.
    visual = tiny_clip(clip_name).visual
    images = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        dense = convnext_dense_features(visual, images)["clip_vis_dense"]
        pooled = visual(images)
    assert dense.shape[-2:] == (1, 1)
    torch.testing.assert_close(dense[:, :, 0, 0], pooled, rtol=0, atol=1e-6)


def test_dense_embedding_matches_the_official_fake_2d_formulation(clip_name):
    # The official code runs every res5 pixel as a (C, 1, 1) image through trunk.head
    # and then open_clip's head; our channels-last version must agree everywhere.
    visual = tiny_clip(clip_name).visual
    images = torch.randn(2, 3, 96, 64)
    with torch.no_grad():
        features = convnext_dense_features(visual, images)
        res5 = features["res5"]
        batch, channels, height, width = res5.shape
        pixels = res5.permute(0, 2, 3, 1).reshape(-1, channels, 1, 1)
        reference = visual.head(visual.trunk.head(pixels))
        reference = reference.view(batch, height, width, -1).permute(0, 3, 1, 2)
    torch.testing.assert_close(features["clip_vis_dense"], reference, rtol=0, atol=1e-6)


def test_gradients_reach_every_vision_parameter():
    visual = tiny_clip().visual.train()
    features = convnext_dense_features(visual, torch.randn(2, 3, 64, 64))
    features["clip_vis_dense"].square().sum().backward()
    for name, parameter in visual.named_parameters():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name


def test_rejects_towers_without_a_convnext_trunk():
    clip = tiny_clip()
    with pytest.raises(TypeError, match="clip_model.visual"):
        convnext_dense_features(clip, torch.randn(1, 3, 32, 32))
    vit = VisionTransformer(image_size=32, patch_size=16, width=32, layers=1, heads=2, mlp_ratio=2, output_dim=16)
    with pytest.raises(TypeError, match="ViT towers: sed_d2.clip.vit_dense_features"):
        convnext_dense_feature_channels(vit)


@pytest.mark.parametrize("name, expected", [
    ("convnext_base_w_320", {"res2": 128, "res3": 256, "res4": 512, "res5": 1024, "clip_vis_dense": 640}),
    ("convnext_large_d_320", {"res2": 192, "res3": 384, "res4": 768, "res5": 1536, "clip_vis_dense": 768}),
])
def test_channels_of_the_real_sed_backbones(name, expected):
    # Built on the meta device: module structure without memory or init time.
    with torch.device("meta"):
        model = open_clip.create_model(name, device="meta")
    assert convnext_dense_feature_channels(model.visual) == expected
    assert convnext_dense_feature_strides(model.visual) == STRIDES


# --------------------------------------------------------------------------- fast trunk path


def _randomized_visual(name="sed_d2_tiny_convnext", seed=0):
    """A tiny tower whose 1-d trunk parameters (biases, norm affines, layer scales) are
    random: at init the layer scales are 1e-6 and the blocks would hardly matter."""
    visual = tiny_clip(name).visual
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for key, parameter in visual.trunk.named_parameters():
            if parameter.dim() == 1:
                scale = key.endswith("gamma") or ("norm" in key and key.endswith("weight"))
                parameter.copy_(torch.rand(parameter.shape, generator=generator) + (0.5 if scale else -0.5))
    return visual


def _count_fast_blocks(monkeypatch):
    calls = []
    block_forward = dense_module.convnext_block_forward

    def counting(*args, **kwargs):
        calls.append(1)
        return block_forward(*args, **kwargs)

    monkeypatch.setattr(dense_module, "convnext_block_forward", counting)
    return calls


def _num_blocks(visual):
    return sum(len(stage.blocks) for stage in visual.trunk.stages)


@pytest.mark.parametrize("train", [False, True])
def test_fast_path_equals_timm_forward(clip_name, train, monkeypatch):
    visual = _randomized_visual(clip_name).train(train)  # drop path 0 in the tiny configs
    calls = _count_fast_blocks(monkeypatch)
    images = torch.randn(2, 3, 64, 96)
    assert convnext_fast_path_applies(visual)
    with torch.no_grad():
        fast = convnext_dense_features(visual, images)
        assert len(calls) == _num_blocks(visual)
        stock = convnext_dense_features(visual, images, fast=False)
    assert len(calls) == _num_blocks(visual)
    for name in STRIDES:
        assert fast[name].is_contiguous() and fast[name].shape == stock[name].shape
        torch.testing.assert_close(fast[name], stock[name], rtol=1e-5, atol=1e-5, msg=name)


def test_fast_path_gradients_equal_timm_gradients():
    visual = _randomized_visual().train()
    generator = torch.Generator().manual_seed(1)
    images = torch.randn(2, 3, 64, 64, generator=generator)
    weights = None
    grads = {}
    for fast in (True, False):
        visual.zero_grad(set_to_none=True)
        inputs = images.clone().requires_grad_()
        features = convnext_dense_features(visual, inputs, fast=fast)
        if weights is None:
            weights = {name: torch.randn(f.shape, generator=generator) for name, f in features.items()}
        sum((features[name] * weights[name]).sum() for name in features).backward()
        grads[fast] = {"images": inputs.grad}
        grads[fast].update({n: p.grad for n, p in visual.named_parameters() if p.grad is not None})
    assert set(grads[True]) == set(grads[False])
    assert {n for n, _ in visual.trunk.named_parameters(prefix="trunk")} <= set(grads[True])
    # The two paths sum the same float32 products in different orders (fused LayerNorm-MLP,
    # depthwise conv); over the thousands of terms of a weight gradient the rounding error
    # grows to ~1e-6 of the gradient's largest entry, so entries near zero can differ by far
    # more than a fixed atol allows. Compare at 1e-4 of each gradient's scale instead.
    for name, grad in grads[False].items():
        scale = grad.abs().max().item()
        torch.testing.assert_close(grads[True][name], grad, rtol=1e-4, atol=1e-4 * scale, msg=name)


@pytest.mark.parametrize("breaker", ["drop_path", "dropout", "grad_checkpointing", "activation"])
def test_fast_path_falls_back_to_timm_where_not_exact(breaker, monkeypatch):
    visual = _randomized_visual().train()
    trunk = visual.trunk
    block = trunk.stages[2].blocks[1]
    if breaker == "drop_path":
        for stage in trunk.stages:
            for b in stage.blocks:
                b.drop_path = DropPath(0.5)
    elif breaker == "dropout":
        block.mlp.drop1 = nn.Dropout(0.3)
    elif breaker == "grad_checkpointing":
        visual.set_grad_checkpointing(True)
    else:
        block.mlp.act = nn.SiLU()
    assert not convnext_fast_path_applies(visual)
    calls = _count_fast_blocks(monkeypatch)
    images = torch.randn(2, 3, 64, 64)
    results = []
    for fast in (True, False):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(5)
            results.append(convnext_dense_features(visual, images, fast=fast))
    assert not calls
    for name in STRIDES:
        assert torch.equal(results[0][name], results[1][name]), name
    if breaker in ("drop_path", "dropout"):
        assert convnext_fast_path_applies(visual.eval())  # inactive in eval mode


def test_fast_path_keeps_bf16_under_autocast():
    visual = _randomized_visual().eval()
    images = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        reference = convnext_dense_features(visual, images)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            fast = convnext_dense_features(visual, images)
    for name in STRIDES:
        assert fast[name].dtype == torch.bfloat16, name
        error = (fast[name].float() - reference[name]).norm() / reference[name].norm()
        assert error < 0.02, (name, error)


@pytest.mark.triton_interpreter
def test_fast_path_with_the_triton_kernels(monkeypatch):
    # On CUDA the fast path runs the Triton kernels; on CPU they run in Triton's interpreter
    # (marked triton_interpreter: TRITON_INTERPRET=1, see tests/triton_interpreter_plugin.py),
    # as in tests/ops/test_depthwise_conv.py. Forward only: the kernels' backward is tested
    # there, and here it would take ~5 s.
    used = set()
    for module, name in ((depthwise_conv, "_depthwise_forward"), (row_norm, "_normalize_forward")):  # the kernel launchers
        launcher = getattr(module, name)
        monkeypatch.setattr(module, name, lambda *args, _launch=launcher, _name=name: used.add(_name) or _launch(*args))
    torch.manual_seed(0)
    visual = build_clip_model("sed_d2_tiny_convnext").visual.train()
    with torch.no_grad():
        for parameter in visual.trunk.parameters():
            if parameter.dim() == 1:
                parameter.uniform_(0.5, 1.5)
    images = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        fast = convnext_dense_features(visual, images)
        assert used == {"_depthwise_forward", "_normalize_forward"}, used
        stock = convnext_dense_features(visual, images, fast=False)
    for name, value in stock.items():
        torch.testing.assert_close(fast[name], value, rtol=1e-4, atol=1e-4)
