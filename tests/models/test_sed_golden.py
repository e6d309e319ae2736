"""SED's outputs on a fixed seed are bit-identical to those of commit 8e651e6.

``tests/fixtures/sed_tiny_golden.pt`` holds what ``_outputs()`` returned at 8e651e6 (float32,
CPU, one thread): train-mode logits, the four losses and two gradients, and eval-mode logits
with and without category early rejection (k=2). Any change to SED's numerics, however small,
fails here; a deliberate one regenerates the fixture with ``_outputs()`` and says why.
"""
from __future__ import annotations

import os
from functools import partial

import torch

from sed_d2.clip import build_clip_model
from sed_d2.layers import top_k_union
from sed_d2.models import SEDModel, build_sed_decoder_for

FIXTURE = os.path.join(os.path.dirname(os.path.dirname(__file__)), "fixtures", "sed_tiny_golden.pt")
TEMPLATES, CLASSES, SIZE = 4, 5, 64


def _outputs() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    clip = build_clip_model("sed_d2_tiny_convnext")
    model = SEDModel(clip, build_sed_decoder_for(clip, TEMPLATES), clip_finetune="full")
    generator = torch.Generator().manual_seed(1)
    images = torch.randn(2, 3, SIZE, SIZE, generator=generator)
    text = torch.randn(CLASSES, TEMPLATES, clip.text_projection.shape[1], generator=generator)
    targets = torch.randint(0, CLASSES, (2, SIZE, SIZE), generator=generator)
    targets[:, :5] = 255
    model.train()
    train = model(images, text)
    losses = model.losses(train, targets, ignore_value=255)
    sum(losses.values()).backward()
    model.eval()
    with torch.no_grad():
        logits = model(images, text).logits
        logits_cer = model(images, text, partial(top_k_union, k=2)).logits
    result = {f"train_{name}": value.detach() for name, value in losses.items()}
    result["train_logits"] = train.logits.detach()
    result["grad_decoder_head"] = model.decoder.head.weight.grad
    result["grad_clip_stem"] = model.clip_model.visual.trunk.stem[0].weight.grad
    result["eval_logits"] = logits
    result["eval_logits_cer2"] = logits_cer
    return result


def test_fp32_outputs_bit_identical_to_8e651e6():
    golden = torch.load(FIXTURE, weights_only=True)
    outputs = _outputs()
    assert sorted(outputs) == sorted(golden)
    for name, expected in golden.items():
        assert torch.equal(outputs[name], expected), f"{name} differs from 8e651e6"
