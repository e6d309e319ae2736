import math

import pytest
import torch
import torch.nn.functional as F

from sed_d2.clip import build_clip_model
from sed_d2.layers.dynamic_conv import class_conditional_conv2d
from sed_d2.models.catseg import PRUNED_CLASS_LOGIT
from sed_d2.models.fgaseg import (
    FGASegModel,
    LocalCategorySupplementation,
    P2Tformer,
    T2PProjector,
    build_fgaseg_decoder_for,
)

from tests.helpers import (
    TINY_CATSEG_DECODER,
    TINY_VIT as TINY_CLIP,
    TINY_VIT_GRID as GRID,
    TINY_VIT_SIZE as SIZE,
    clip_text_embeddings,
    redraw_constant_parameters,
)


def _model(pad_len=8, clip_finetune="attention", seed=0, **options):
    torch.manual_seed(seed)
    clip = build_clip_model(TINY_CLIP)
    decoder_options = {k: options.pop(k) for k in list(options) if k in (
        "decoder_mode", "fusion", "lcs_kernel_size", "lcs_kernel_norm", "top_k", "top_k_union", "fast_scores")}
    decoder = build_fgaseg_decoder_for(clip, pad_len=pad_len, **TINY_CATSEG_DECODER, **decoder_options)
    model = FGASegModel(clip, decoder, guidance_layers=(1, 2), clip_finetune=clip_finetune, **options)
    redraw_constant_parameters(model)  # gammas too
    return model


def _text(model, num_classes, seed=1):
    return clip_text_embeddings(model.clip_model, num_classes, seed)


def _targets(seed=3, num_classes=5, size=24):
    generator = torch.Generator().manual_seed(seed)
    targets = torch.randint(0, num_classes, (2, size, size), generator=generator)
    targets[:, -4:] = 255
    return targets


@pytest.mark.parametrize("decoder_mode", ["no_fast", "fast"])
def test_shapes_in_training_and_inference(decoder_mode):
    model = _model(decoder_mode=decoder_mode).train()
    images = torch.randn(2, 3, SIZE, SIZE)
    output = model(images, _text(model, 5))
    assert output.logits.shape == (2, 5, 4 * GRID, 4 * GRID)
    assert output.align_logits.shape == (2, 5, 4 * GRID, 4 * GRID)
    expected_aux = [(2, 5, GRID, GRID), (2, 5, GRID, GRID), (2, 5, 2 * GRID, 2 * GRID)] if decoder_mode == "fast" else []
    assert [tuple(a.shape) for a in output.aux_logits] == expected_aux
    model.eval()
    with torch.no_grad():
        output = model(images, _text(model, 5))
    assert output.logits.shape == (2, 5, 4 * GRID, 4 * GRID)
    assert output.aux_logits == () and output.align_logits is None  # the T2P projector is skipped


@pytest.mark.parametrize("decoder_mode, fusion", [("no_fast", "cat"), ("fast", "cat"), ("fast", "add")])
def test_gradients_reach_exactly_the_trainable_parameters(decoder_mode, fusion):
    model = _model(decoder_mode=decoder_mode, fusion=fusion).train()
    output = model(torch.randn(2, 3, SIZE, SIZE), _text(model, 5))
    sum(model.losses(output, _targets(), 255).values()).backward()
    parameters = dict(model.named_parameters())
    without = [n for n, p in parameters.items() if p.requires_grad and (p.grad is None or not p.grad.abs().sum() > 0)]
    assert without == []
    assert all(p.grad is None for p in parameters.values() if not p.requires_grad)
    trained = {n for n, p in parameters.items() if p.requires_grad}
    clip = {f"clip_model.visual.transformer.resblocks.{i}.attn.in_proj_weight" for i in range(4)}
    clip |= {f"clip_model.transformer.resblocks.{i}.attn.in_proj_weight" for i in range(2)}
    assert {n for n in trained if n.startswith("clip_model.")} == clip
    assert {n.split(".")[0] for n in trained if not n.startswith("clip_model.")} == {
        "guidance_upsamplers", "p2t", "t2p", "decoder"}
    assert all(p.requires_grad for n, p in parameters.items() if not n.startswith("clip_model."))
    assert set(model.parameter_groups.values()) == {"clip", "frozen", "decoder"}
    assert {n for n, g in model.parameter_groups.items() if g != "frozen"} == trained
    for name in clip:  # q and v rows train, k rows never get a gradient
        width = parameters[name].shape[1]
        assert parameters[name].grad[width : 2 * width].abs().max() == 0
    assert ("decoder.fuse.0.weight" in parameters) == (fusion == "cat")
    assert ("decoder.aux_heads.2.weight" in parameters) == (decoder_mode == "fast")


def test_the_alignment_loss_alone_trains_clip_p2t_and_t2p():
    """loss_align reaches CLIP (both towers, through the dense embedding and the refined
    text), the P2Tformer and the T2P projector, and nothing of the decoder."""
    model = _model().train()
    output = model(torch.randn(2, 3, SIZE, SIZE), _text(model, 5))
    model.losses(output, _targets(), 255)["loss_align"].backward()
    reached = {n.split(".")[0] for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert reached == {"clip_model", "p2t", "t2p"}
    assert model.clip_model.transformer.resblocks[0].attn.in_proj_weight.grad.abs().sum() > 0


def test_golden_losses():
    generator = torch.Generator().manual_seed(5)
    images = torch.randn(2, 3, SIZE, SIZE, generator=generator)
    # recorded on this CPU build (one thread); the official modules agree within float
    # rounding (docs/fgaseg_parity.md)
    golden = {
        "no_fast": {"loss_sem_seg": 0.9352825880050659, "loss_align": 0.023884819820523262},
        "fast": {
            "loss_sem_seg": 0.8581735491752625,
            "loss_aux_0": 0.1595882922410965,
            "loss_aux_1": 0.7302849888801575,
            "loss_aux_2": 0.6608283519744873,
            "loss_align": 0.012388655915856361,
        },
    }
    for mode, expected in golden.items():
        model = _model(decoder_mode=mode).train()
        losses = model.losses(model(images, _text(model, 5)), _targets(), 255)
        assert list(losses) == list(expected)
        torch.testing.assert_close({k: v.item() for k, v in losses.items()}, expected, atol=1e-6, rtol=0)


def test_loss_switches():
    """AUX_WEIGHTS scale the auxiliary terms, LAMBDA_ALIGN the alignment term (0: no
    projector run), LOSS_TYPE "ce" is softmax cross-entropy without the ignored pixels."""
    images, targets = torch.randn(2, 3, SIZE, SIZE), _targets()
    base = _model(decoder_mode="fast").train()
    losses = base.losses(base(images, _text(base, 5)), targets, 255)
    scaled = _model(decoder_mode="fast", aux_weights=(1.0, 2.0, 0.5), align_weight=0.04).train()
    scaled_losses = scaled.losses(scaled(images, _text(scaled, 5)), targets, 255)
    for name, factor in (("loss_aux_0", 5.0), ("loss_aux_1", 2.0), ("loss_aux_2", 0.5), ("loss_align", 2.0)):
        torch.testing.assert_close(scaled_losses[name], factor * losses[name])
    torch.testing.assert_close(scaled_losses["loss_sem_seg"], losses["loss_sem_seg"])
    no_align = _model(align_weight=0.0).train()
    output = no_align(images, _text(no_align, 5))
    assert output.align_logits is None and "loss_align" not in no_align.losses(output, targets, 255)
    ce = _model(loss_type="ce").train()
    output = ce(images, _text(ce, 5))
    up = F.interpolate(output.logits, size=(24, 24), mode="bilinear", align_corners=False)
    torch.testing.assert_close(
        ce.losses(output, targets, 255)["loss_sem_seg"], F.cross_entropy(up, targets, ignore_index=255)
    )
    with pytest.raises(ValueError, match="loss_type"):
        _model(loss_type="focal")


@pytest.mark.parametrize("options", [{}, {"decoder_mode": "fast", "top_k_union": "image"}])
@pytest.mark.parametrize("num_classes", [5, 12])  # padded to pad_len 8, and pruned to it
def test_a_batch_equals_its_images_one_by_one(options, num_classes):
    model = _model(**options).eval()
    images = torch.randn(3, 3, SIZE, SIZE)
    with torch.no_grad():
        text = _text(model, num_classes)
        batch = model(images, text).logits
        for image in range(3):
            torch.testing.assert_close(model(images[image : image + 1], text).logits[0], batch[image], atol=1e-5, rtol=1e-5)


def test_fast_mode_keeping_every_class_equals_the_full_decoder():
    """With top_k >= T every class survives: the "probability" scores are the logits of the
    training path (all classes, no selection) and the "official" ones their sigmoid."""
    images = torch.randn(2, 3, SIZE, SIZE)
    full = _model(decoder_mode="fast", top_k=5).train()
    for module in full.modules():  # the training path without its batch statistics / pooling
        if isinstance(module, torch.nn.BatchNorm2d) or hasattr(module, "active_pooling_size"):
            module.eval()
    with torch.no_grad():
        text = _text(full, 5)
        reference = full(images, text).logits
        for scores, expected in (("probability", reference), ("official", reference.sigmoid())):
            model = _model(decoder_mode="fast", top_k=5, fast_scores=scores).eval()
            torch.testing.assert_close(model(images, text).logits, expected, atol=1e-5, rtol=1e-5)


def test_fast_mode_keeps_only_classes_in_some_pixels_top_k():
    model = _model(decoder_mode="fast", top_k=1).eval()
    images = torch.randn(2, 3, SIZE, SIZE)
    first_aux = {}
    model.decoder.aux_heads[0].register_forward_hook(lambda m, i, o: first_aux.setdefault("logits", o))
    with torch.no_grad():
        text = _text(model, 7)
        official = model(images, text).logits
        model.decoder.fast_scores = "probability"
        probability = model(images, text).logits
    rejected = (official == 0).all(-1).all(-1)  # (B, T): official "logit" 0 -> score 0.5
    assert rejected.any() and not rejected.all()
    assert torch.equal(rejected, (probability == PRUNED_CLASS_LOGIT).all(-1).all(-1))
    assert torch.equal(rejected[0], rejected[1])  # official: one class set for the whole call
    candidates = torch.zeros(7, dtype=torch.bool)
    candidates[first_aux["logits"].argmax(1).unique()] = True
    assert not (~rejected[0] & ~candidates).any()  # survivors are among the first head's top-1
    kept = ~rejected
    torch.testing.assert_close(official[kept], probability[kept].sigmoid())
    assert ((official[kept] > 0) & (official[kept] < 1)).all()


def test_pruning_keeps_the_classes_of_highest_cost_of_the_refined_text():
    model = _model(pad_len=4).eval()
    images = torch.randn(2, 3, SIZE, SIZE)
    with torch.no_grad():
        text = _text(model, 7)
        features = model.image_features(images)
        logits = model.decode(features, text).logits
        dense = features["clip_vis_dense"]
        refined = model.refine_text(dense, text)
        for image in range(2):
            scores = (F.normalize(refined[image], dim=-1) @ F.normalize(dense[image], dim=0).flatten(1)).amax(-1)
            kept = scores.topk(4).indices.sort().values
            pruned = torch.ones(7, dtype=torch.bool)
            pruned[kept] = False
            assert (logits[image, pruned] == PRUNED_CLASS_LOGIT).all()
            assert (logits[image, kept] != PRUNED_CLASS_LOGIT).all()


def _literal_p2tformer(module, image, text):
    """The official P2Tformer, written out: sequence-first nn.MultiheadAttention, DETR sine
    position embedding by cumsum, post-norm, text + gamma * out."""
    batch, channels, height, width = image.shape
    text_diff = text.repeat(1, batch, 1)
    ones = torch.ones(batch, height, width)
    y = ones.cumsum(1) / (height + 1e-6) * 2 * math.pi
    x = ones.cumsum(2) / (width + 1e-6) * 2 * math.pi
    dim_t = torch.arange(channels // 2, dtype=torch.float32)
    dim_t = 10000 ** (2 * (dim_t // 2) / (channels // 2))
    pos_x, pos_y = x[..., None] / dim_t, y[..., None] / dim_t
    pos_x = torch.stack((pos_x[..., 0::2].sin(), pos_x[..., 1::2].cos()), dim=4).flatten(3)
    pos_y = torch.stack((pos_y[..., 0::2].sin(), pos_y[..., 1::2].cos()), dim=4).flatten(3)
    pos = torch.cat((pos_y, pos_x), dim=3).permute(0, 3, 1, 2).flatten(2).permute(2, 0, 1)
    memory = image.flatten(2).permute(2, 0, 1)
    out = text_diff.clone()
    for layer in module.layers:
        mha = torch.nn.MultiheadAttention(channels, layer.attn.num_heads)
        mha.load_state_dict(layer.attn.state_dict())
        attended = mha(out, memory + pos, memory)[0]
        out = layer.norm(out + layer.proj(attended))
    return (text_diff + module.gamma * out).transpose(0, 1)


def test_p2tformer_equals_the_official_formulation():
    torch.manual_seed(0)
    p2t = P2Tformer(48, num_heads=8, num_layers=2)
    with torch.no_grad():
        for p in p2t.parameters():
            if p.dim() == 1:
                p.add_(0.2 * torch.randn_like(p))
    image, text = torch.randn(2, 48, 5, 6), F.normalize(torch.randn(7, 1, 48), dim=-1)
    with torch.no_grad():
        torch.testing.assert_close(p2t(image, text), _literal_p2tformer(p2t, image, text), atol=1e-5, rtol=1e-5)
    fixed = P2Tformer(48, gamma_trainable=False, gamma_init=0.5)
    assert "gamma" not in dict(fixed.named_parameters()) and torch.equal(fixed.gamma, torch.full((48,), 0.5))
    assert "gamma" in fixed.state_dict()
    with pytest.raises(ValueError, match="one prompt template"):
        p2t(image, torch.randn(7, 2, 48))


def test_pos_on_values_adds_the_position_embedding_to_the_values():
    torch.manual_seed(0)
    keys_only, both = P2Tformer(48), P2Tformer(48, pos_on_values=True)
    both.load_state_dict(keys_only.state_dict())
    image, text = torch.randn(1, 48, 4, 4), F.normalize(torch.randn(3, 1, 48), dim=-1)
    with torch.no_grad():
        assert not torch.allclose(keys_only(image, text), both(image, text), atol=1e-4)


def test_lcs_equals_a_convolution_per_image_and_class():
    torch.manual_seed(0)
    lcs = LocalCategorySupplementation(16, kernel_size=3)
    image, text = torch.randn(2, 16, 5, 6), torch.randn(2, 4, 16)
    with torch.no_grad():
        out = lcs(image, text)
        params = lcs.kernel_generator(F.normalize(text, dim=-1))
        for b in range(2):
            # official kernel_normalizer: view (T, C, k*k), softmax over the taps
            weight = params[b, :, :-1].view(4, 16, 9).softmax(-1).view(4, 16, 3, 3)
            expected = F.conv2d(F.normalize(image[b], dim=0), weight, params[b, :, -1], padding=1)
            torch.testing.assert_close(out[b], expected, atol=1e-6, rtol=1e-5)


def test_lcs_with_kernel_1_is_class_agnostic_but_for_the_bias():
    lcs = LocalCategorySupplementation(16, kernel_size=1)
    image, text = torch.randn(1, 16, 5, 6), torch.randn(1, 4, 16)
    with torch.no_grad():
        out = lcs(image, text)
    centred = out - out.flatten(2).mean(-1)[..., None, None]
    torch.testing.assert_close(centred, centred[:, :1].expand_as(centred), atol=1e-5, rtol=0)


@pytest.mark.parametrize("norm", ["channels", "none"])
def test_lcs_kernel_norm_switch(norm):
    lcs = LocalCategorySupplementation(8, kernel_size=3, kernel_norm=norm)
    text, image = torch.randn(1, 2, 8), torch.randn(1, 8, 4, 4)
    with torch.no_grad():
        params = lcs.kernel_generator(F.normalize(text, dim=-1))
        weight = params[..., :-1].view(1, 2, 8, 3, 3)
        weight = weight.softmax(dim=2) if norm == "channels" else weight
        expected = class_conditional_conv2d(F.normalize(image, dim=1), weight, params[..., -1])
        torch.testing.assert_close(lcs(image, text), expected)
    with pytest.raises(ValueError, match="kernel_norm"):
        LocalCategorySupplementation(8, kernel_norm="pixel_shuffle")


def test_t2p_projector_equals_the_official_loop_and_bn_statistics_are_per_image():
    torch.manual_seed(0)
    projector = T2PProjector(16)
    image, text = torch.randn(2, 16, 4, 4), torch.randn(2, 3, 16)
    with torch.no_grad():
        batch = projector(image, text)
        for b in range(2):
            alone = projector(image[b : b + 1], text[b : b + 1])[0]
            torch.testing.assert_close(batch[b], alone, atol=1e-5, rtol=1e-5)  # ghost BN of one image
            features = projector.vision(image[b : b + 1])
            params = projector.kernel_generator(text[b])
            for t in range(3):
                expected = F.conv2d(features, params[t, :-1].view(1, 8, 3, 3), params[t, -1:], padding=1)[0, 0]
                torch.testing.assert_close(batch[b, t], expected, atol=1e-5, rtol=1e-5)
    shared = T2PProjector(16, bn_per_image=False)
    shared.load_state_dict(projector.state_dict())
    with torch.no_grad():
        assert not torch.allclose(shared(image, text), batch, atol=1e-3)  # batch statistics differ


def test_parameter_counts_equal_the_official_models():
    """Trainable non-CLIP parameters of the official modules (instantiated from the official
    code, fgaseg_spec.md 1.12): ViT-B/16 and ViT-L/14@336 in the four decoder variants."""
    expected = {
        ("ViT-B-16-quickgelu", "no_fast", "cat"): 13_323_875, ("ViT-B-16-quickgelu", "fast", "cat"): 13_326_758,
        ("ViT-B-16-quickgelu", "no_fast", "add"): 13_249_827, ("ViT-B-16-quickgelu", "fast", "add"): 13_252_710,
        ("ViT-L-14-336-quickgelu", "no_fast", "cat"): 25_012_579, ("ViT-L-14-336-quickgelu", "fast", "add"): 24_941_414,
        ("ViT-L-14-336-quickgelu", "fast", "cat"): 25_015_462,
    }
    import open_clip

    for (arch, mode, fusion), count in expected.items():
        with torch.device("meta"):
            clip = open_clip.create_model(arch, device="meta")
            model = FGASegModel(clip, build_fgaseg_decoder_for(clip, decoder_mode=mode, fusion=fusion))
        ours = sum(p.numel() for n, p in model.named_parameters() if not n.startswith("clip_model."))
        assert ours == count, (arch, mode, fusion)


def test_fast_mode_per_image_path_equals_the_batched_path_when_the_images_share_their_classes():
    """Without class pruning every image holds the same classes: uniting the kept classes by
    class id image by image (the path of pruned vocabularies) equals the official batched run."""
    model = _model(decoder_mode="fast", top_k=2).eval()
    images = torch.randn(3, 3, SIZE, SIZE)
    with torch.no_grad():
        text = _text(model, 7)
        features = model.image_features(images)
        batched = model.decode(features, text).logits
        calls = []
        original = model._fast_per_image
        model._fast_per_image = lambda *args: calls.append(1) or original(*args)
        model.decoder.pad_len = 6  # 7 classes: pruned per image, so the per-image path runs
        pruned = model.decode(features, text).logits
        assert calls == [1]
        model.decoder.pad_len = 8
        dense = features["clip_vis_dense"]
        x = model.decoder.embed(model.decoder.cost_volume(dense, model.refine_text(dense, text).unsqueeze(2))[0])
        refined = model.refine_text(dense, text)
        local = model.decoder.embed_local(model.decoder.local_cost(dense, refined))
        guidance = [features["guidance_0"], features["guidance_1"]]
        per_image = original(x, local, model.decoder.appearance_guidance(dense),
                             model.decoder.text_guidance_of(refined), guidance, None)
    torch.testing.assert_close(per_image, batched, atol=1e-5, rtol=1e-5)
    assert ((pruned == PRUNED_CLASS_LOGIT).sum(1) == 1).all()  # one class pruned per image and pixel
