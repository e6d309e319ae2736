from functools import partial

import pytest
import torch

from sed_d2.clip import build_clip_model, dense_feature_channels
from sed_d2.layers import cosine_cost_volume, top_k_union, top_n_classes
from sed_d2.models import SEDDecoder, SEDModel, SEDOutput, build_sed_decoder_for

P = 4  # templates
SKIP_CHANNELS = (12, 10, 8)  # res4, res3, res2


def _decoder(**kwargs):
    torch.manual_seed(0)
    return SEDDecoder(text_channels=P, skip_channels=SKIP_CHANNELS, **kwargs)


def _features(batch, num_classes, h=2, w=2, channels=16, seed=1):
    generator = torch.Generator().manual_seed(seed)
    image = torch.randn(batch, channels, h, w, generator=generator)
    text = torch.randn(num_classes, P, channels, generator=generator)
    skips = {
        name: torch.randn(batch, c, h * 2 ** (i + 1), w * 2 ** (i + 1), generator=generator)
        for i, (name, c) in enumerate(zip(("res4", "res3", "res2"), SKIP_CHANNELS))
    }
    return image, text, skips


def _tiny_model(clip_finetune="full", seed=0):
    torch.manual_seed(seed)
    clip = build_clip_model("sed_d2_tiny_convnext")
    return SEDModel(clip, build_sed_decoder_for(clip, P), clip_finetune=clip_finetune)


def _model_inputs(batch=2, num_classes=5, size=64, seed=2):
    generator = torch.Generator().manual_seed(seed)
    images = torch.randn(batch, 3, size, size, generator=generator)
    text = torch.randn(num_classes, P, 64, generator=generator)
    targets = torch.randint(0, num_classes, (batch, size, size), generator=generator)
    targets[:, :3] = 255
    return images, text, targets


def _slice(image, skips, index):
    return image[index : index + 1], {name: f[index : index + 1] for name, f in skips.items()}


# --------------------------------------------------------------------------- shapes


def test_shapes_at_each_stage():
    decoder = _decoder().train()
    B, T, h, w = 2, 5, 2, 3
    image, text, skips = _features(B, T, h, w)
    seen = {}
    # the embedding conv runs on the class-batched maps (B * T of them)
    decoder.cost_embed.conv.register_forward_hook(lambda m, a, out: seen.__setitem__("embed", out.shape))
    for i, stage in enumerate(decoder.stages):
        stage.register_forward_hook(lambda m, a, out, i=i: seen.__setitem__(f"stage{i}", out.shape))
    out = decoder(image, text, skips)
    assert isinstance(out, SEDOutput)
    assert seen == {
        "embed": (B * T, 128, h, w),
        "stage0": (B, T, 64, 2 * h, 2 * w),
        "stage1": (B, T, 32, 4 * h, 4 * w),
        "stage2": (B, T, 16, 8 * h, 8 * w),
    }
    assert out.logits.shape == (B, T, 8 * h, 8 * w)
    assert [a.shape for a in out.aux_logits] == [(B, T, h, w), (B, T, 2 * h, 2 * w), (B, T, 4 * h, 4 * w)]
    decoder.eval()
    out = decoder(image, text, skips)
    assert out.logits.shape == (B, T, 8 * h, 8 * w) and out.aux_logits == ()


def test_parameter_count_matches_official_aggregator():
    # hand count of the official Aggregator: ~1.376 M (ConvNeXt-B), ~1.473 M (ConvNeXt-L)
    base = SEDDecoder(text_channels=80, skip_channels=(512, 256, 128))
    large = SEDDecoder(text_channels=80, skip_channels=(768, 384, 192))
    assert sum(p.numel() for p in base.parameters()) == 1_376_396
    assert sum(p.numel() for p in large.parameters()) == 1_473_164


def test_wrong_skip_resolution_is_rejected():
    image, text, skips = _features(1, 3)
    skips["res3"] = skips["res3"][..., :-1, :]
    with pytest.raises(ValueError, match="res3"):
        _decoder()(image, text, skips)


def test_pooling_size_train_vs_eval():
    decoder = _decoder()
    assert all(s.class_block.pooling_size == (2, 2) and s.class_block.test_pooling_size == (1, 1) for s in decoder.stages)
    tokens = []
    # tokens are (B, T, h*w, C): count the class sequences, B*h*w
    decoder.stages[0].class_block.attention.register_forward_hook(
        lambda m, a, out: tokens.append(a[0].shape[0] * a[0].shape[2])
    )
    B, h, w = 2, 4, 4
    image, text, skips = _features(B, 3, h, w)
    decoder.train()(image, text, skips)
    decoder.eval()(image, text, skips)
    assert tokens == [B * (h // 2) * (w // 2), B * h * w]
    custom = _decoder(pooling_size=(4, 4), test_pooling_size=(2, 2))
    assert custom.stages[2].class_block.active_pooling_size == (4, 4)
    assert custom.eval().stages[2].class_block.active_pooling_size == (2, 2)


def test_build_for_clip_reads_channels_from_the_tower():
    clip = build_clip_model("sed_d2_tiny_convnext")
    channels = dense_feature_channels(clip.visual)
    decoder = build_sed_decoder_for(clip, 7, hidden_dim=64, decoder_dims=(32, 16, 16))
    assert [p.in_channels for p in decoder.skip_projections] == [channels["res4"], channels["res3"], channels["res2"]]
    assert decoder.cost_embed.conv.in_channels == 7 and decoder.cost_embed.conv.out_channels == 64


# --------------------------------------------------------------------------- gradients


def test_every_trainable_parameter_gets_a_gradient_and_frozen_ones_none():
    model = _tiny_model().train()
    images, text, targets = _model_inputs()
    losses = model.losses(model(images, text), targets, ignore_value=255)
    assert sorted(losses) == ["loss_sem_seg_0", "loss_sem_seg_1", "loss_sem_seg_2", "loss_sem_seg_3"]
    sum(losses.values()).backward()
    for name, parameter in model.named_parameters():
        if model.parameter_groups[name] == "frozen":
            assert parameter.grad is None, name
        else:
            assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name
    assert any(model.parameter_groups[n] == "clip" for n, _ in model.named_parameters())


def test_frozen_clip_gets_no_gradient():
    model = _tiny_model(clip_finetune="frozen").train()
    images, text, targets = _model_inputs()
    sum(model.losses(model(images, text), targets, 255).values()).backward()
    for name, parameter in model.named_parameters():
        assert (parameter.grad is not None) == name.startswith("decoder."), name


def test_stop_gradient_1_skip_features_are_detached():
    model = _tiny_model().train()
    captured = {}

    def grab(module, args, kwargs):
        captured["image"], _, captured["skips"] = args[:3]

    model.decoder.register_forward_pre_hook(grab, with_kwargs=True)
    images, text, _ = _model_inputs()
    model(images, text)
    assert captured["image"].requires_grad  # the trunk is trained through clip_vis_dense
    assert set(captured["skips"]) == {"res2", "res3", "res4"}
    for feature in captured["skips"].values():
        assert not feature.requires_grad and feature.grad_fn is None


def test_stop_gradient_2_aux_losses_train_only_the_aux_heads():
    model = _tiny_model().train()
    images, text, targets = _model_inputs()
    losses = model.losses(model(images, text), targets, 255)
    (losses["loss_sem_seg_1"] + losses["loss_sem_seg_2"] + losses["loss_sem_seg_3"]).backward()
    with_grad = {n for n, p in model.named_parameters() if p.grad is not None}
    assert with_grad == {n for n, _ in model.named_parameters() if n.startswith("decoder.aux_heads.")}


def test_losses_paper_variant_is_selectable():
    model = _tiny_model().train()
    images, text, targets = _model_inputs()
    output = model(images, text)
    official = model.losses(output, targets, 255)
    paper = model.losses(output, targets, 255, ignore_as_negative=False)
    assert all(not torch.equal(official[k], paper[k]) for k in official)


# --------------------------------------------------------------------------- CER


@pytest.mark.parametrize("batch", [1, 2])
def test_cer_with_k_at_least_num_classes_equals_plain_path(batch):
    decoder = _decoder().eval()
    T = 5
    image, text, skips = _features(batch, T)
    with torch.no_grad():
        plain = decoder(image, text, skips).logits
        for k in (T, T + 7):
            assert torch.equal(decoder(image, text, skips, partial(top_k_union, k=k)).logits, plain)


def test_cer_through_the_model_with_k_at_least_num_classes():
    model = _tiny_model().eval()
    images, text, _ = _model_inputs(batch=2)
    with torch.no_grad():
        assert torch.equal(model(images, text, partial(top_k_union, k=5)).logits, model(images, text).logits)


def test_cer_with_small_k_rejects_classes():
    decoder = _decoder().eval()
    B, T, h, w = 2, 6, 2, 2  # top-1 at 4 pixels keeps at most 4 of 6 classes
    image, text, skips = _features(B, T, h, w)
    with torch.no_grad():
        logits = decoder(image, text, skips, partial(top_k_union, k=1)).logits
    assert logits.shape == (B, T, 8 * h, 8 * w)
    rejected = torch.isneginf(logits)
    per_class = rejected.flatten(2)
    assert torch.equal(per_class.all(-1), per_class.any(-1))  # a class is rejected as a whole map
    assert (per_class.all(-1).sum(1) >= 2).all()
    assert torch.isfinite(logits[~rejected]).all()
    assert (logits.sigmoid()[rejected] == 0).all()


def test_cer_is_per_image():
    decoder = _decoder().eval()
    image, text, skips = _features(2, 6)
    with torch.no_grad():
        batched = decoder(image, text, skips, partial(top_k_union, k=1)).logits
        singles = []
        for i in range(2):
            single_image, single_skips = _slice(image, skips, i)
            singles.append(decoder(single_image, text, single_skips, partial(top_k_union, k=1)).logits)
        singles = torch.cat(singles)
    assert torch.equal(torch.isneginf(batched), torch.isneginf(singles))
    assert not torch.equal(torch.isneginf(batched[0]), torch.isneginf(batched[1]))  # the images differ
    finite = torch.isfinite(batched)
    torch.testing.assert_close(batched[finite], singles[finite], rtol=1e-5, atol=1e-5)


def _reference_cer(decoder, image, text, skips, k):
    """The official fast_conv_decoder (B=1): argsort top-k, bincount union, nested subsets."""
    cost = cosine_cost_volume(image, text)
    x = decoder.cost_embed(cost)[0]  # (T, C, h, w)
    cost = cost.transpose(1, 2)[0]  # (T, P, h, w)
    guidance = [proj(skips[name]) for proj, name in zip(decoder.skip_projections, ("res4", "res3", "res2"))]
    alive = torch.arange(x.shape[0])
    for i, stage in enumerate(decoder.stages):
        aux = decoder.aux_heads[i](x.unsqueeze(0))[0]  # (t, h, w)
        top = aux.argsort(dim=0, descending=True)[:k]
        keep = torch.bincount(top.flatten(), minlength=x.shape[0]) > 0
        x, cost, alive = x[keep], cost[keep], alive[keep]
        cost = decoder.cost_upsamplers[i](cost)
        x = stage(x.unsqueeze(0), guidance[i], cost.unsqueeze(0))[0]
    logits = decoder.head(x.unsqueeze(0))[0]
    output = torch.full((1, text.shape[0], *logits.shape[-2:]), float("-inf"))
    output[0, alive] = logits
    return output


@pytest.mark.parametrize("k", [1, 2])
def test_cer_matches_the_official_algorithm(k):
    decoder = _decoder().eval()
    image, text, skips = _features(1, 7, 3, 3, seed=4)
    with torch.no_grad():
        ours = decoder(image, text, skips, partial(top_k_union, k=k)).logits
        reference = _reference_cer(decoder, image, text, skips, k)
    assert torch.isneginf(reference).any()
    assert torch.equal(torch.isneginf(ours), torch.isneginf(reference))
    finite = torch.isfinite(ours)
    torch.testing.assert_close(ours[finite], reference[finite], rtol=1e-5, atol=1e-5)


def test_cer_is_ignored_in_training():
    decoder = _decoder().train()
    image, text, skips = _features(1, 6)
    out = decoder(image, text, skips, partial(top_k_union, k=1))
    assert len(out.aux_logits) == 3 and torch.isfinite(out.logits).all()


# --------------------------------------------------------------------------- reference / speed paths


def _double_inputs(batch, num_classes, h=3, w=4, seed=5):
    image, text, skips = _features(batch, num_classes, h, w, seed=seed)
    return image.double(), text.double(), {k: v.double() for k, v in skips.items()}


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("batch", [1, 2])
@pytest.mark.parametrize("chunk_pixels", [0, 2**23, 100])  # 100: one class per chunk at every stage
def test_decoder_equals_the_plain_reference(training, batch, chunk_pixels):
    from tests.models.sed_reference import reference_decoder_forward

    decoder = _decoder(inference_chunk_pixels=chunk_pixels).double().train(training)
    image, text, skips = _double_inputs(batch, 5)
    with torch.set_grad_enabled(training):
        out = decoder(image, text, skips)
    logits, aux = reference_decoder_forward(decoder, image, text, skips)
    torch.testing.assert_close(out.logits, logits, rtol=1e-10, atol=1e-10)
    if training:
        for ours, ref in zip(out.aux_logits, aux):
            torch.testing.assert_close(ours, ref, rtol=1e-10, atol=1e-10)


def test_decoder_gradients_equal_the_plain_reference():
    from tests.models.sed_reference import reference_decoder_forward

    decoder = _decoder().double().train()
    image, text, skips = _double_inputs(2, 4)
    image.requires_grad_()
    params = [image, *decoder.parameters()]
    out = decoder(image, text, skips)
    loss = sum(t.square().mean() for t in (out.logits, *out.aux_logits))
    logits, aux = reference_decoder_forward(decoder, image, text, skips)
    reference = sum(t.square().mean() for t in (logits, *aux))
    for ours, ref in zip(torch.autograd.grad(loss, params), torch.autograd.grad(reference, params)):
        torch.testing.assert_close(ours, ref, rtol=1e-9, atol=1e-12)


def test_class_maps_stay_channels_last():
    decoder = _decoder().eval()
    seen = []
    for stage in decoder.stages:
        for block in (stage.spatial_block, stage.class_block, stage.fusion):
            block.register_forward_hook(lambda m, a, out: seen.append(out))
    image, text, skips = _features(1, 3)
    with torch.no_grad():
        decoder(image, text, skips)
    for out in seen:
        maps = out if out.dim() == 4 else out.flatten(0, 1)
        assert maps.is_contiguous(memory_format=torch.channels_last)


def test_bf16_autocast_keeps_the_decoder_in_bf16():
    decoder = _decoder().eval()
    dtypes = []
    for stage in decoder.stages:
        stage.register_forward_hook(lambda m, a, out: dtypes.append(out.dtype))
    image, text, skips = _features(1, 4)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        logits = decoder(image, text, skips).logits
    assert dtypes == [torch.bfloat16] * 3 and logits.dtype == torch.bfloat16
    with torch.no_grad():
        reference = decoder(image, text, skips).logits
    torch.testing.assert_close(logits.float(), reference, atol=0.05, rtol=0.05)


def test_trunk_precision_at_inference_under_autocast():
    """bf16 inference runs the trunk in bf16 (fast path); without autocast in float32. The
    decoder and its result are the same function either way."""
    model = _tiny_model().eval()
    images, text, _ = _model_inputs(batch=1)
    captured = {}
    model.decoder.register_forward_pre_hook(lambda m, a: captured.__setitem__("dense", a[0].dtype))
    with torch.no_grad():
        reference = model(images, text).logits
        assert captured["dense"] == torch.float32
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = model(images, text).logits
            assert captured["dense"] == torch.bfloat16
    torch.testing.assert_close(low.float(), reference, atol=0.05, rtol=0.05)


def test_forward_is_decode_of_image_features():
    model = _tiny_model().eval()
    images, text, _ = _model_inputs(batch=2)
    with torch.no_grad():
        features = model.image_features(images)
        assert set(features) == {"clip_vis_dense", *model.decoder.skip_feature_names}
        torch.testing.assert_close(model.decode(features, text).logits, model(images, text).logits, rtol=0, atol=0)
    model.train()
    features = model.image_features(images)
    assert features["clip_vis_dense"].requires_grad
    assert not any(features[name].requires_grad for name in model.decoder.skip_feature_names)  # stop-gradient #1


@pytest.mark.parametrize("batch", [1, 2])
def test_top_n_rule_keeps_exactly_n_classes(batch):
    decoder = _decoder().eval()
    T = 7
    image, text, skips = _features(batch, T, 3, 3, seed=6)
    with torch.no_grad():
        for n in (1, 3, T):
            logits = decoder(image, text, skips, partial(top_n_classes, n=n)).logits
            kept = torch.isfinite(logits.flatten(2)[..., 0])
            assert (kept.sum(1) == n).all()
        assert torch.equal(decoder(image, text, skips, partial(top_n_classes, n=T)).logits, decoder(image, text, skips).logits)


def test_top_n_rule_matches_a_top_n_reference():
    decoder = _decoder().eval()
    image, text, skips = _features(1, 7, 3, 3, seed=4)
    with torch.no_grad():
        ours = decoder(image, text, skips, partial(top_n_classes, n=3)).logits
        # the same nested-subset algorithm as _reference_cer, with "top 3 by max score"
        cost = cosine_cost_volume(image, text)
        x = decoder.cost_embed(cost)[0]
        cost = cost.transpose(1, 2)[0]
        guidance = [proj(skips[name]) for proj, name in zip(decoder.skip_projections, ("res4", "res3", "res2"))]
        alive = torch.arange(x.shape[0])
        for i, stage in enumerate(decoder.stages):
            score = decoder.aux_heads[i](x.unsqueeze(0))[0].flatten(1).amax(1)
            keep = score.topk(min(3, len(score))).indices.sort().values
            x, cost, alive = x[keep], cost[keep], alive[keep]
            cost = decoder.cost_upsamplers[i](cost)
            x = stage(x.unsqueeze(0), guidance[i], cost.unsqueeze(0))[0]
        reference = torch.full_like(ours, float("-inf"))
        reference[0, alive] = decoder.head(x.unsqueeze(0))[0]
    assert torch.equal(torch.isneginf(ours), torch.isneginf(reference))
    finite = torch.isfinite(ours)
    torch.testing.assert_close(ours[finite], reference[finite], rtol=1e-5, atol=1e-5)


def test_chunked_losses_equal_plain_losses():
    model = _tiny_model().train()
    images, text, targets = _model_inputs()
    output = model(images, text)
    plain = model.losses(output, targets, 255, chunk_classes=0)
    chunked = model.losses(output, targets, 255)
    assert sorted(plain) == sorted(chunked)
    params = [p for p in model.parameters() if p.requires_grad]
    for key in plain:
        torch.testing.assert_close(chunked[key], plain[key], rtol=1e-6, atol=1e-7)
    grads_plain = torch.autograd.grad(sum(plain.values()), params, retain_graph=True, allow_unused=True)
    grads_chunked = torch.autograd.grad(sum(chunked.values()), params, allow_unused=True)
    for a, b in zip(grads_chunked, grads_plain):
        if b is None:
            assert a is None
        else:
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-7)
