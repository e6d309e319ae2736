"""Softmax CE + Dice: golden values by hand, the chunked path equals the plain one (values and
gradients), and it keeps no class-sized full-resolution tensor for the backward pass."""
import math

import pytest
import torch

from sed_d2.losses import softmax_ce_dice_loss

I = 255


def test_golden_by_hand():
    logits = torch.zeros(1, 2, 1, 1)  # p = 1/2 everywhere after the upsampling to 2x2
    targets = torch.tensor([[[0, 1], [1, I]]])
    for chunk in (0, 1):
        ce, dice = softmax_ce_dice_loss(logits, targets, I, chunk_classes=chunk)
        assert ce.item() == pytest.approx(math.log(2))
        # class 0: I = 1/2, sum p = 3/2, sum g = 1; class 1: I = 1, sum p = 3/2, sum g = 2
        expected = ((1 - 2 / 3.5) + (1 - 3 / 4.5)) / 2
        assert dice.item() == pytest.approx(expected, rel=1e-6)


def test_present_classes_only_unless_all():
    logits = torch.zeros(1, 3, 2, 2)
    targets = torch.zeros(1, 2, 2, dtype=torch.long)  # only class 0 present; p = 1/3
    _, present = softmax_ce_dice_loss(logits, targets, I)
    _, every = softmax_ce_dice_loss(logits, targets, I, dice_classes="all")
    dice_0 = 1 - (2 * 4 / 3 + 1) / (4 / 3 + 4 + 1)
    dice_absent = 1 - 1 / (4 / 3 + 1)
    assert present.item() == pytest.approx(dice_0, rel=1e-6)
    assert every.item() == pytest.approx((dice_0 + 2 * dice_absent) / 3, rel=1e-6)


@pytest.mark.parametrize("dice_classes", ["present", "all"])
@pytest.mark.parametrize("chunk", [1, 3, 7])
def test_chunked_equals_plain_values_and_gradients(dice_classes, chunk):
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 7, 5, 6, dtype=torch.float64, generator=generator)
    targets = torch.randint(0, 5, (2, 11, 13), generator=generator)
    targets[0, :3] = I
    grads = []
    values = []
    for chunk_classes in (0, chunk):
        x = logits.clone().requires_grad_(True)
        ce, dice = softmax_ce_dice_loss(x, targets, I, dice_classes=dice_classes, chunk_classes=chunk_classes)
        (0.7 * ce + 1.3 * dice).backward()
        values.append((ce.item(), dice.item()))
        grads.append(x.grad)
    assert values[0] == pytest.approx(values[1], rel=1e-12)
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-10, atol=1e-14)
    x = logits[:1, :, :3, :3].clone().requires_grad_(True)
    assert torch.autograd.gradcheck(
        lambda t: softmax_ce_dice_loss(t, targets[:1, :5, :5], I, dice_classes=dice_classes, chunk_classes=2), (x,)
    )


def test_chunked_path_saves_no_upsampled_class_maps():
    logits = torch.randn(2, 16, 8, 8, requires_grad=True)
    targets = torch.randint(0, 16, (2, 64, 64))
    full = 2 * 16 * 64 * 64
    for chunk, keeps_full in ((0, True), (4, False)):
        sizes = []

        def pack(tensor, sizes=sizes):
            sizes.append(tensor.numel())
            return tensor

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
            softmax_ce_dice_loss(logits, targets, I, chunk_classes=chunk)
        assert (max(sizes) >= full) == keeps_full


def test_all_ignored_and_float32_results():
    logits = torch.randn(1, 3, 4, 4, requires_grad=True)
    for chunk in (0, 2):
        ce, dice = softmax_ce_dice_loss(logits, torch.full((1, 8, 8), I), I, chunk_classes=chunk)
        assert ce.item() == 0.0 and dice.item() == 0.0
        (ce + dice).backward()
        assert torch.equal(logits.grad, torch.zeros_like(logits))
        logits.grad = None
    ce, dice = softmax_ce_dice_loss(logits.bfloat16(), torch.zeros(1, 8, 8, dtype=torch.long), I, chunk_classes=2)
    assert ce.dtype == dice.dtype == torch.float32


def test_bad_arguments():
    with pytest.raises(ValueError, match=r"expected logits \(B, T, h, w\) and targets \(B, H, W\)"):
        softmax_ce_dice_loss(torch.zeros(2, 3, 4), torch.zeros(2, 4, 4, dtype=torch.long), I)
    with pytest.raises(ValueError, match="dice_classes must be one of"):
        softmax_ce_dice_loss(torch.zeros(1, 3, 4, 4), torch.zeros(1, 4, 4, dtype=torch.long), I, dice_classes="some")
