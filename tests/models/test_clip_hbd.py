"""CLIP-HBD network on a tiny CLIP ViT and timm's tiny test ConvNeXt: shapes at every stage,
exact gradients, a batch equals its images one by one, class-chunked inference, golden losses,
the variants of the open choices."""
import pytest
import timm
import torch
import torch.nn.functional as F

from sed_d2.clip import build_clip_model, frozen_rows
from sed_d2.clip.dense.convnext import convnext_stage, convnext_stem
from sed_d2.models.clip_hbd import CLIPHBDCriterion, CLIPHBDModel, HBDDecoder
from tests.helpers import (
    TINY_VIT as TINY_CLIP,
)

SIZE, GRID, TEMPLATES, CLASSES = 64, 4, 3, 5
STAGE_CHANNELS = (24, 32, 48, 64)  # timm test_convnext


def _backbone():
    backbone = timm.create_model("test_convnext", pretrained=False, num_classes=0)
    backbone.head = torch.nn.Identity()
    return backbone


def _model(seed=0, redraw=True, decoder_kwargs=None, **kwargs):
    torch.manual_seed(seed)
    clip = build_clip_model(TINY_CLIP)
    decoder = HBDDecoder(
        num_templates=TEMPLATES, skip_channels=STAGE_CHANNELS[2::-1], hidden_dim=32, decoder_dims=(16, 16, 16),
        dwconv_kernel=3, **(decoder_kwargs or {}),
    )
    kwargs = {"clip_layers": (0, 1, 2), "boundary_dim": 16, **kwargs}
    model = CLIPHBDModel(clip, _backbone(), decoder, **kwargs)
    if redraw:  # norms and biases start constant: re-draw them so every term matters
        with torch.no_grad():
            for name, p in model.named_parameters():
                if p.dim() <= 1 and not name.startswith("clip_model."):
                    p.add_(0.3 * torch.randn_like(p))
    return model


def _data(batch=2, seed=1):
    generator = torch.Generator().manual_seed(seed)
    images = torch.randn(batch, 3, SIZE, SIZE, generator=generator)
    text = F.normalize(torch.randn(CLASSES, TEMPLATES, 48, generator=generator), dim=-1)
    targets = torch.zeros(batch, SIZE, SIZE, dtype=torch.long)
    targets[:, :, 20:] = 1
    targets[:, 40:, :30] = 3
    targets[0, :6] = 255
    return images, text, targets


def test_shapes_at_every_stage():
    model = _model()
    images, text, _ = _data()
    features = model.image_features(images)
    assert {k: tuple(v.shape) for k, v in features.items()} == {
        "clip_vis_dense": (2, 48, GRID, GRID),
        "encoder_1": (2, 24, 16, 16),
        "encoder_2": (2, 32, 8, 8),
        "encoder_3": (2, 48, 4, 4),
        "boundary_logits": (2, 1, SIZE, SIZE),
    }
    shapes = []
    for stage in model.decoder.stages:
        run = stage.run
        stage.run = lambda x, a, s, run=run: (shapes.append((x.shape, a.shape, s.shape)), run(x, a, s))[1]
    output = model.decode(features, text)
    assert [(tuple(x), tuple(a), tuple(s)) for x, a, s in shapes] == [
        ((2, CLASSES, 32, 4, 4), (2, 1, 4, 4), (2, 32, 8, 8)),
        ((2, CLASSES, 16, 8, 8), (2, 1, 8, 8), (2, 16, 16, 16)),
        ((2, CLASSES, 16, 16, 16), (2, 1, 16, 16), (2, 16, 32, 32)),
    ]
    assert output.logits.shape == (2, CLASSES, SIZE // 2, SIZE // 2)
    assert output.boundary_logits is features["boundary_logits"]


def test_stage_stepping_equals_timm_forward_features():
    backbone = _backbone().eval()
    images = torch.randn(2, 3, SIZE, SIZE)
    for fast in (True, False):
        x = convnext_stem(backbone, images, fast=fast)
        for index in range(4):
            x = convnext_stage(backbone, index, x, fast=fast)
        torch.testing.assert_close(x, backbone.forward_features(images), rtol=1e-4, atol=1e-5)


def test_gradients_reach_exactly_the_trainable_parameters():
    model = _model()
    images, text, targets = _data()
    losses = CLIPHBDCriterion(chunk_classes=2)(model(images, text), targets, 255)
    sum(losses.values()).backward()
    groups = model.parameter_groups
    for name, parameter in model.named_parameters():
        if groups[name] == "frozen":
            assert not parameter.requires_grad and parameter.grad is None, name
        else:
            assert parameter.grad is not None and parameter.grad.abs().sum() > 0, f"{name} got no gradient"
    clip = {name for name, group in groups.items() if group == "clip"}
    assert clip == {f"clip_model.visual.transformer.resblocks.{i}.attn.in_proj_weight" for i in range(4)}
    assert {n.split(".")[0] for n, g in groups.items() if g == "backbone"} == {"backbone"}
    assert {n.split(".")[0] for n, g in groups.items() if g == "decoder"} == {"fusions", "boundary_head", "decoder"}
    # the text tower stays frozen (its embeddings are cached); k rows of the image tower get none
    assert groups["clip_model.transformer.resblocks.0.attn.in_proj_weight"] == "frozen"
    weight = model.clip_model.visual.transformer.resblocks[0].attn.in_proj_weight
    rows = frozen_rows(weight)
    assert rows == slice(64, 128) and weight.grad[rows].abs().sum() == 0 and weight.grad[:64].abs().sum() > 0


@pytest.mark.parametrize("clip_finetune, trainable", [("full", 4 * 12), ("frozen", 0)])
def test_clip_finetune_modes_touch_the_image_tower_only(clip_finetune, trainable):
    groups = _model(redraw=False, clip_finetune=clip_finetune).parameter_groups
    clip = [name for name, group in groups.items() if group == "clip"]
    assert all(name.startswith("clip_model.visual.transformer.") for name in clip) and len(clip) == trainable


def test_golden_losses():
    model = _model()
    images, text, targets = _data()
    output = model(images, text)
    losses = CLIPHBDCriterion()(output, targets, 255)
    torch.testing.assert_close(
        {k: v.item() for k, v in losses.items()},
        {"loss_ce": 1.609430193901062, "loss_dice": 0.7697127461433411, "loss_boundary": 0.06300852447748184},
        rtol=1e-5,
        atol=1e-7,
    )
    # at initialisation the classes' logits differ little (CE is near log 5): their spread is
    # what the CE golden value hardly sees, so it is checked on its own
    spread = (output.logits - output.logits.mean(1, keepdim=True)).abs().mean().item()
    assert spread == pytest.approx(0.003827414708212018, rel=1e-4)
    assert output.boundary_logits.mean().item() == pytest.approx(-0.3052126467227936, rel=1e-5)


def test_batch_equals_its_images_one_by_one_and_class_chunks_equal_all_classes():
    model = _model().eval()
    images, text, _ = _data(batch=3)
    with torch.no_grad():
        model.decoder.inference_chunk_pixels = 0
        whole = model(images, text).logits
        singles = torch.cat([model(images[i : i + 1], text).logits for i in range(3)])
        model.decoder.inference_chunk_pixels = 2 * (SIZE // 2) ** 2  # 2 classes per chunk
        chunked = model(images, text).logits
    torch.testing.assert_close(whole, singles, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(whole, chunked, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    "kwargs, decoder_kwargs",
    [
        ({"fusion_weight": "spatial"}, {}),
        ({"fusion_weight": "residual"}, {"gate_mode": "branch"}),
        ({"clip_layer_projection": "clip_proj", "boundary_deconv_kernel": 2}, {"gate_mode": "input_residual"}),
        ({"boundary_norm": "none"}, {"norm": "none", "attention_per_channel": True, "boundary_downsample": "max"}),
        ({}, {"skip_dims": (8, 8, 8)}),
    ],
)
def test_variants_of_the_open_choices_train_and_differ(kwargs, decoder_kwargs):
    images, text, targets = _data()
    reference = CLIPHBDCriterion()(_model()(images, text), targets, 255)
    model = _model(decoder_kwargs=decoder_kwargs, **kwargs)
    losses = CLIPHBDCriterion()(model(images, text), targets, 255)
    sum(losses.values()).backward()
    assert all(torch.isfinite(v) for v in losses.values())
    assert losses["loss_ce"].item() != reference["loss_ce"].item()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    if kwargs.get("clip_layer_projection") == "clip_proj":
        assert model.fusions[0].projection.in_channels == 48  # the joint space, not the width 64


def test_detached_boundary_gets_gradient_from_the_boundary_loss_only():
    images, text, targets = _data()
    for detach, reaches in ((True, False), (False, True)):
        model = _model(detach_boundary=detach)
        losses = CLIPHBDCriterion()(model(images, text), targets, 255)
        losses["loss_ce"].backward()
        grad = model.boundary_head.classifier.weight.grad
        assert (grad is not None and grad.abs().sum() > 0) == reaches


def test_loss_weights_scale_the_terms():
    model = _model()
    images, text, targets = _data()
    output = model(images, text)
    plain = CLIPHBDCriterion()(output, targets, 255)
    weighted = CLIPHBDCriterion(ce_weight=2.0, dice_weight=0.5, boundary_weight=3.0)(output, targets, 255)
    for name, factor in (("loss_ce", 2.0), ("loss_dice", 0.5), ("loss_boundary", 3.0)):
        assert weighted[name].item() == pytest.approx(factor * plain[name].item(), rel=1e-6)


def test_vit_input_size_and_misaligned_grids():
    images, text, _ = _data()
    model = _model(vit_input_size=(48, 48))  # a 3x3 CLIP grid beside a 4x4 stage-3 grid
    features = model.image_features(images)
    assert features["clip_vis_dense"].shape[-2:] == (3, 3) and features["encoder_3"].shape[-2:] == (4, 4)
    with pytest.raises(ValueError, match="the skips must be at the CLIP grid"):
        model.decode(features, text)
    with pytest.raises(ValueError, match="3 CLIP layers are fused"):
        _model(redraw=False, clip_layers=(0, 1))
