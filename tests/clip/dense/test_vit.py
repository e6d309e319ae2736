import pytest
import torch
import torch.nn.functional as F

from sed_d2.clip.dense.vit import (
    resized_positional_embedding,
    vit_dense_feature_channels,
    vit_dense_feature_strides,
    vit_dense_features,
)
from tests.helpers import tiny_clip

TINY_VIT = "sed_d2_tiny_vit_quickgelu"  # image 64, patch 16 (native grid 4x4), width 64, 4 blocks, embed 48
TAPS = (0, 2)


@pytest.fixture
def visual():
    return tiny_clip(TINY_VIT, seed=2).visual


def images(size=96, batch=2, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 3, size, size, generator=generator)


# ------------------------------------------------------------------ literal reference
# CAT-Seg's vendored OpenAI CLIP, step by step in its own layout (tokens, batch, width):
# VisualTransformer.forward(dense=True), resized_pos_embed, ResidualAttentionBlock.forward /
# forward_dense, and the forward hooks of CATSeg.__init__ with their rearrange.


def official_resized_pos_embed(positional_embedding, in_res, patch_size, tgt_res):
    length, width = positional_embedding.shape
    in_side = in_res // patch_size
    tgt_side = int((tgt_res - 1) ** 0.5)
    cls_pos = positional_embedding[0].unsqueeze(0)
    pos_embed = positional_embedding[1:].reshape(1, in_side, in_side, width).permute(0, 3, 1, 2)
    resized = F.interpolate(pos_embed, size=(tgt_side, tgt_side), mode="bicubic", align_corners=False)
    resized = resized.squeeze(0).reshape(width, -1).T
    return torch.cat((cls_pos, resized), dim=0)


def official_block(block, x):
    attention = block.attn
    y = block.ln_1(x)
    attended = F.multi_head_attention_forward(
        y, y, y, attention.embed_dim, attention.num_heads, attention.in_proj_weight, attention.in_proj_bias,
        None, None, False, 0.0, attention.out_proj.weight, attention.out_proj.bias, need_weights=False,
    )[0]
    x = x + attended
    return x + block.mlp(block.ln_2(x))


def official_forward_dense(block, x):
    y = block.ln_1(x)
    y = F.linear(y, block.attn.in_proj_weight, block.attn.in_proj_bias)
    length, batch, three_width = y.shape
    y = y.reshape(length, batch, 3, three_width // 3).permute(2, 1, 0, 3).reshape(3 * batch, length, three_width // 3)
    y = F.linear(y, block.attn.out_proj.weight, block.attn.out_proj.bias)
    q, k, v = y.tensor_split(3, dim=0)
    v = v.transpose(1, 0) + x[:1]
    return v + block.mlp(block.ln_2(v))


def official_dense_features(visual, images, layer_indexes):
    hooked = []
    x = visual.conv1(images)
    x = x.reshape(x.shape[0], x.shape[1], -1).permute(0, 2, 1)
    x = torch.cat([visual.class_embedding + torch.zeros(x.shape[0], 1, x.shape[-1]), x], dim=1)
    if x.shape[1] != visual.positional_embedding.shape[0]:
        x = x + official_resized_pos_embed(visual.positional_embedding, visual.image_size[0], visual.patch_size[0], x.shape[1])
    else:
        x = x + visual.positional_embedding
    x = visual.ln_pre(x)
    x = x.permute(1, 0, 2)  # NLD -> LND
    blocks = visual.transformer.resblocks
    for index, block in enumerate(blocks):
        if index == len(blocks) - 1:
            x = official_forward_dense(block, x)
        else:
            x = official_block(block, x)
            if index in layer_indexes:
                hooked.append(x)
    x = x.permute(1, 0, 2)
    features = visual.ln_post(x) @ visual.proj
    side = int((features.shape[1] - 1) ** 0.5)
    # rearrange(image_features, "B (H W) C -> B C H W") and "(H W) B C -> B C H W"
    dense = features[:, 1:].reshape(features.shape[0], side, side, -1).permute(0, 3, 1, 2)
    guidance = [h[1:].reshape(side, side, h.shape[1], h.shape[2]).permute(2, 3, 0, 1) for h in hooked]
    return dense, features[:, 0], guidance


@pytest.mark.parametrize("size", [64, 96])  # native 4x4 grid, and resized to 6x6 (as B/16 14 -> 24)
def test_equals_the_official_computation(visual, size):
    batch = images(size)
    with torch.no_grad():
        ours = vit_dense_features(visual, batch, TAPS)
        dense, cls, guidance = official_dense_features(visual, batch, TAPS)
    grid = size // 16
    assert ours["clip_vis_dense"].shape == (2, 48, grid, grid)
    torch.testing.assert_close(ours["clip_vis_dense"], dense, rtol=0, atol=2e-5)
    torch.testing.assert_close(ours["cls"], cls, rtol=0, atol=2e-5)
    assert [g.shape for g in ours["guidance"]] == [(2, 64, grid, grid)] * len(TAPS)
    for tap, reference in zip(ours["guidance"], guidance):
        torch.testing.assert_close(tap, reference, rtol=0, atol=2e-5)


def test_outputs_contiguous_channels_and_strides(visual):
    features = vit_dense_features(visual, torch.randn(2, 3, 64, 112), TAPS)
    channels = vit_dense_feature_channels(visual)
    assert channels == {"clip_vis_dense": 48, "cls": 48, "guidance": 64}
    assert vit_dense_feature_strides(visual) == {"clip_vis_dense": 16, "guidance": 16}
    # A non-square input (64 x 112 -> 4 x 7 patches) resizes the embedding to that grid.
    assert features["clip_vis_dense"].shape == (2, 48, 4, 7)
    assert all(g.shape == (2, 64, 4, 7) for g in features["guidance"])
    assert features["clip_vis_dense"].is_contiguous() and all(g.is_contiguous() for g in features["guidance"])


def test_taps_are_the_stock_block_outputs_in_the_order_asked(visual):
    batch = images(size=64)
    with torch.no_grad():
        ours = vit_dense_features(visual, batch, (2, 0))["guidance"]
        stock = visual.forward_intermediates(batch, indices=[0, 2], intermediates_only=True)["image_intermediates"]
    assert torch.equal(ours[0], stock[1]) and torch.equal(ours[1], stock[0])


def test_attention_cls_is_clips_image_embedding(visual):
    batch = images(size=64)
    with torch.no_grad():
        attention_cls = vit_dense_features(visual, batch, (), cls="attention")["cls"]
        dense_cls = vit_dense_features(visual, batch, ())["cls"]
        expected = visual(batch)
    torch.testing.assert_close(attention_cls, expected, rtol=0, atol=2e-5)
    assert not torch.allclose(dense_cls, expected, atol=1e-3)  # the value path's token is another thing


# ------------------------------------------------------------------ positional embedding


def test_positional_embedding_resize_is_plain_bicubic(visual):
    embedding = visual.positional_embedding
    resized = resized_positional_embedding(visual, (6, 6))
    patch_part = embedding[1:].reshape(1, 4, 4, 64).permute(0, 3, 1, 2)
    expected = F.interpolate(patch_part, size=(6, 6), mode="bicubic", align_corners=False)
    assert resized.shape == (37, 64)
    assert torch.equal(resized[0], embedding[0])
    assert torch.equal(resized[1:], expected.reshape(64, 36).T)
    # open_clip's own resize antialiases: a different kernel, which we must not use.
    antialiased = F.interpolate(patch_part, size=(6, 6), mode="bicubic", align_corners=False, antialias=True)
    assert not torch.allclose(resized[1:], antialiased.reshape(64, 36).T, atol=1e-3)
    # The native grid is the parameter itself, and the parameter keeps its shape.
    assert resized_positional_embedding(visual, (4, 4)) is embedding
    assert visual.state_dict()["positional_embedding"].shape == (17, 64)


def test_cached_resize_follows_the_parameter(visual):
    with torch.no_grad():
        first = resized_positional_embedding(visual, (6, 6))
        assert resized_positional_embedding(visual, (6, 6)) is first
        visual.positional_embedding.mul_(2)
        second = resized_positional_embedding(visual, (6, 6))
    torch.testing.assert_close(second, 2 * first)


def test_embedding_cached_in_inference_mode_serves_training(visual):
    visual.positional_embedding.requires_grad_(False)  # frozen, as in every official mode
    with torch.inference_mode():
        vit_dense_features(visual, images(), TAPS)
    features = vit_dense_features(visual, images(), TAPS)
    features["clip_vis_dense"].sum().backward()
    assert visual.conv1.weight.grad is not None


# ------------------------------------------------------------------ gradients


def test_gradients_flow_as_in_the_official_code(visual):
    visual.requires_grad_(True)
    features = vit_dense_features(visual, images(), TAPS)
    loss = features["clip_vis_dense"].square().sum() + sum(g.square().sum() for g in features["guidance"])
    loss.backward()
    width = 64
    last = visual.transformer.resblocks[-1].attn
    q_grad, k_grad, v_grad = last.in_proj_weight.grad.split(width)
    # The value path computes no attention: q and k of the last block get no gradient.
    assert torch.count_nonzero(q_grad) == 0 and torch.count_nonzero(k_grad) == 0
    assert torch.count_nonzero(v_grad) > 0
    for name in ("conv1.weight", "class_embedding", "positional_embedding", "ln_pre.weight", "ln_post.weight", "proj",
                 "transformer.resblocks.0.attn.in_proj_weight", "transformer.resblocks.3.mlp.c_fc.weight"):
        assert torch.count_nonzero(visual.get_parameter(name).grad) > 0, name


def test_resized_embedding_is_differentiable_when_trainable(visual):
    embedding = visual.positional_embedding
    resized = resized_positional_embedding(visual, (6, 6))
    (resized * torch.arange(resized.numel()).view_as(resized)).sum().backward()
    reference = embedding.detach().clone().requires_grad_(True)
    patch_part = reference[1:].reshape(1, 4, 4, 64).permute(0, 3, 1, 2)
    expected = torch.cat([reference[:1], F.interpolate(patch_part, size=(6, 6), mode="bicubic").reshape(64, 36).T])
    (expected * torch.arange(expected.numel()).view_as(expected)).sum().backward()
    torch.testing.assert_close(embedding.grad, reference.grad)


def test_gradient_checkpointing_changes_nothing(visual):
    def outputs_and_grads():
        visual.zero_grad()
        features = vit_dense_features(visual, images(), TAPS)
        (features["clip_vis_dense"].sum() + features["guidance"][1].sum()).backward()
        return features["clip_vis_dense"].detach(), visual.conv1.weight.grad.clone()

    plain = outputs_and_grads()
    visual.set_grad_checkpointing(True)
    checkpointed = outputs_and_grads()
    assert torch.equal(plain[0], checkpointed[0])
    torch.testing.assert_close(plain[1], checkpointed[1], rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------ refusals


def test_refuses_other_towers_and_bad_arguments(visual):
    convnext = tiny_clip("sed_d2_tiny_convnext")
    with pytest.raises(TypeError, match="VisionTransformer, got TimmModel"):
        vit_dense_features(convnext.visual, images(64), TAPS)
    with pytest.raises(TypeError, match="pass clip_model.visual"):
        vit_dense_features(tiny_clip(TINY_VIT), images(64), TAPS)
    with pytest.raises(ValueError, match=r"guidance_layers \[3\] out of range.*blocks 0\.\.2"):
        vit_dense_features(visual, images(64), (0, 3))
    with pytest.raises(ValueError, match="repeated"):
        vit_dense_features(visual, images(64), (1, 1))
    with pytest.raises(ValueError, match="cls must be one of"):
        vit_dense_features(visual, images(64), TAPS, cls="pooled")
