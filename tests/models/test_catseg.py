import pytest
import torch
import torch.nn.functional as F

from sed_d2.clip import apply_clip_finetune, build_clip_model
from sed_d2.models.catseg import (
    PRUNED_CLASS_LOGIT,
    CATSegModel,
    build_catseg_decoder_for,
)

from tests.helpers import (
    TINY_CATSEG_DECODER,
    TINY_VIT as TINY_CLIP,
    TINY_VIT_EMBED as EMBED,
    TINY_VIT_GRID as GRID,
    TINY_VIT_SIZE as SIZE,
    clip_text_embeddings,
    redraw_constant_parameters,
)


def _model(pad_len=8, clip_finetune="attention", seed=0):
    torch.manual_seed(seed)
    clip = build_clip_model(TINY_CLIP)
    decoder = build_catseg_decoder_for(clip, pad_len=pad_len, **TINY_CATSEG_DECODER)
    model = CATSegModel(clip, decoder, guidance_layers=(1, 2), clip_finetune=clip_finetune)
    redraw_constant_parameters(model)
    return model


def _text(model, num_classes, seed=1):
    return clip_text_embeddings(model.clip_model, num_classes, seed)


def test_shapes_of_features_and_logits():
    model = _model().eval()
    images = torch.randn(2, 3, SIZE, SIZE)
    with torch.no_grad():
        features = model.image_features(images)
        assert {k: tuple(v.shape) for k, v in features.items()} == {
            "clip_vis_dense": (2, EMBED, GRID, GRID),
            "guidance_0": (2, 16, 2 * GRID, 2 * GRID),
            "guidance_1": (2, 8, 4 * GRID, 4 * GRID),
        }
        assert model(images, _text(model, 5)).logits.shape == (2, 5, 4 * GRID, 4 * GRID)


def test_decode_takes_random_features():
    """The network after CLIP runs on any features of the right shapes (FGAseg / DCP-CLIP
    subclasses feed their own)."""
    model = _model().eval()
    features = {
        "clip_vis_dense": torch.randn(1, EMBED, GRID, GRID),
        "guidance_0": torch.randn(1, 16, 2 * GRID, 2 * GRID),
        "guidance_1": torch.randn(1, 8, 4 * GRID, 4 * GRID),
    }
    with torch.no_grad():
        logits = model.decode(features, torch.randn(3, 1, EMBED)).logits
    assert logits.shape == (1, 3, 4 * GRID, 4 * GRID) and torch.isfinite(logits).all()


def test_every_trainable_parameter_gets_a_gradient_and_no_frozen_one():
    model = _model().train()
    images, targets = torch.randn(2, 3, SIZE, SIZE), torch.randint(0, 5, (2, 24, 24))
    targets[:, :3] = 255
    output = model(images, _text(model, 5))
    model.losses(output, targets, 255)["loss_sem_seg"].backward()
    parameters = dict(model.named_parameters())
    without = [n for n, p in parameters.items() if p.requires_grad and (p.grad is None or not p.grad.abs().sum() > 0)]
    assert without == []
    assert all(p.grad is None for p in parameters.values() if not p.requires_grad)
    trained_clip = sorted(n for n, p in parameters.items() if p.requires_grad and n.startswith("clip_model."))
    assert trained_clip == sorted(
        [f"clip_model.visual.transformer.resblocks.{i}.attn.in_proj_weight" for i in range(4)]
        + [f"clip_model.transformer.resblocks.{i}.attn.in_proj_weight" for i in range(2)]
    )
    for name in trained_clip:  # q and v rows train, k rows never get a gradient
        grad, width = parameters[name].grad, parameters[name].shape[1]
        assert grad[width : 2 * width].abs().max() == 0
        assert grad[2 * width :].abs().sum() > 0
        if name != "clip_model.visual.transformer.resblocks.3.attn.in_proj_weight":
            assert grad[:width].abs().sum() > 0  # the last visual block's q is unused (official)


@pytest.mark.parametrize("clip_finetune", ["attention", "full", "frozen"])
def test_parameter_groups_follow_the_clip_finetune_rule(clip_finetune):
    model = _model(clip_finetune=clip_finetune)
    clip_groups = apply_clip_finetune(model.clip_model, clip_finetune)
    assert {n: g for n, g in model.parameter_groups.items() if n.startswith("clip_model.")} == {
        "clip_model." + n: g for n, g in clip_groups.items()
    }
    assert {g for n, g in model.parameter_groups.items() if not n.startswith("clip_model.")} == {"decoder"}


@pytest.mark.parametrize("clip_finetune, trained", [("full", "transformer"), ("frozen", None)])
def test_other_finetune_modes(clip_finetune, trained):
    model = _model(clip_finetune=clip_finetune)
    clip_trained = {n for n, p in model.named_parameters() if p.requires_grad and n.startswith("clip_model.")}
    if trained is None:
        assert clip_trained == set()
    else:
        expected = {n for n, _ in model.named_parameters() if n.startswith(("clip_model.visual.transformer.", "clip_model.transformer."))}
        assert clip_trained == expected
    assert all(p.requires_grad for n, p in model.named_parameters() if n.startswith(("decoder.", "guidance_upsamplers.")))
    with pytest.raises(ValueError, match="clip_finetune"):
        _model(clip_finetune="prompt")


@pytest.mark.parametrize("num_classes", [5, 12])  # padded to pad_len 8, and pruned to it
def test_a_batch_equals_its_images_one_by_one(num_classes):
    model = _model().eval()
    images = torch.randn(3, 3, SIZE, SIZE)
    with torch.no_grad():
        text = _text(model, num_classes)
        batch = model(images, text).logits
        for image in range(3):
            single = model(images[image : image + 1], text).logits
            torch.testing.assert_close(single[0], batch[image], atol=1e-5, rtol=1e-5)


def test_pruning_keeps_the_classes_of_highest_cost_and_runs_them_alone():
    model = _model(pad_len=4).eval()
    images = torch.randn(2, 3, SIZE, SIZE)
    with torch.no_grad():
        text = _text(model, 7)
        features = model.image_features(images)
        logits = model.decode(features, text).logits
        cost, classes = model.decoder.cost_volume(features["clip_vis_dense"], text)
        for image in range(2):
            kept = classes[image].sort().values
            dense = F.normalize(features["clip_vis_dense"][image], dim=0).flatten(1)
            scores = (F.normalize(text[:, 0], dim=-1) @ dense).amax(-1)
            assert torch.equal(kept, scores.topk(4).indices.sort().values)
            pruned = torch.ones(7, dtype=torch.bool)
            pruned[kept] = False
            assert (logits[image, pruned] == PRUNED_CLASS_LOGIT).all()
            alone = model.decode({k: v[image : image + 1] for k, v in features.items()}, text[kept]).logits
            torch.testing.assert_close(alone[0], logits[image, kept], atol=1e-5, rtol=1e-5)


def test_class_padding_changes_the_result_below_pad_len():
    """The padding tokens take part in the class attention (official): a model with
    pad_len 0 gives other logits from the same weights."""
    padded = _model(pad_len=8).eval()
    plain = _model(pad_len=0).eval()
    plain.load_state_dict({k: v for k, v in padded.state_dict().items() if "padding" not in k})
    images = torch.randn(1, 3, SIZE, SIZE)
    with torch.no_grad():
        text = _text(padded, 5)
        assert not torch.allclose(padded(images, text).logits, plain(images, text).logits, atol=1e-4)


def test_golden_loss():
    model = _model().train()
    generator = torch.Generator().manual_seed(3)
    images = torch.randn(2, 3, SIZE, SIZE, generator=generator)
    targets = torch.randint(0, 5, (2, 24, 24), generator=generator)
    targets[:, -4:] = 255
    losses = model.losses(model(images, _text(model, 5)), targets, 255)
    assert list(losses) == ["loss_sem_seg"]
    # recorded on this CPU build; the network equals the official one within 4e-7 in
    # logits at full size (docs/catseg_parity.md)
    torch.testing.assert_close(losses["loss_sem_seg"].item(), 0.7707754, atol=1e-5, rtol=0)
