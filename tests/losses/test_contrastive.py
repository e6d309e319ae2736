"""MCCL losses (sed_d2.losses.contrastive) against values computed by hand on 2-D vectors."""
import math

import pytest
import torch

from sed_d2.losses import (
    MCCL_LOSS_NAMES,
    bounded_similarity,
    cosine_similarity,
    mccl_losses,
)

EPS = 5e-4
R = 1 / math.sqrt(2)


def _affine(c):
    return (min(max(c, -1 + EPS), 1 - EPS) + 1) / 2


def _batch():
    # image 0: two categories; image 1: one category
    fg = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]], requires_grad=True)
    bg = torch.tensor([[0.0, 1.0], [1.0, 1.0], [-1.0, -1.0]], requires_grad=True)
    text = torch.tensor([[1.0, 0.0], [1.0, 1.0], [-1.0, 0.0]])
    return fg, bg, text, torch.tensor([0, 0, 1])


def test_each_loss_equals_the_hand_computed_value():
    fg, bg, text, pair_image = _batch()
    losses = mccl_losses(fg, bg, text, pair_image, 2)
    # L1: cos(f, t) = 1, 1/sqrt2 (image 0) and -1/sqrt2 (image 1)
    l1_image0 = (-math.log(_affine(1.0)) - math.log(_affine(R))) / 2
    l1_image1 = -math.log(_affine(-R))
    # L2: cos(f, b) = 0 (gated off), 1/sqrt2 (on), -1 (off); divisor K_i
    l2_image0 = -math.log(1 - _affine(R)) / 2
    # L3 / L4: the one pair of image 0; image 1 has none
    l3 = -math.log(_affine(R))  # cos(b1, b2)
    l4 = -math.log(1 - _affine(0.0))  # cos(f1, f2) = 0: log 2
    expected = {
        "loss_intra_align": (l1_image0 + l1_image1) / 2,
        "loss_intra_sep": (l2_image0 + 0.0) / 2,
        "loss_inter_align": l3,
        "loss_inter_sep": l4,
    }
    assert list(losses) == list(MCCL_LOSS_NAMES)
    torch.testing.assert_close({k: v.item() for k, v in losses.items()}, expected, rtol=1e-6, atol=1e-7)
    assert expected["loss_inter_sep"] == pytest.approx(math.log(2))


def test_weights_gate_normalisation_and_clamp_map():
    fg, bg, text, pair_image = _batch()
    plain = mccl_losses(fg, bg, text, pair_image, 2)
    weighted = mccl_losses(fg, bg, text, pair_image, 2, weights=(2.0, 0.5, 0.0, 3.0))
    for name, weight in zip(MCCL_LOSS_NAMES, (2.0, 0.5, 0.0, 3.0)):
        torch.testing.assert_close(weighted[name], weight * plain[name])
    # "active": image 0 divides by its one active pair, image 1 (none active) drops out
    active = mccl_losses(fg, bg, text, pair_image, 2, sep_normalize="active")
    assert active["loss_intra_sep"].item() == pytest.approx(-math.log(1 - _affine(R)), rel=1e-6)
    # a higher threshold switches the gate off everywhere: an exact zero
    assert mccl_losses(fg, bg, text, pair_image, 2, sep_threshold=0.8)["loss_intra_sep"].item() == 0.0
    clamp = mccl_losses(fg, bg, text, pair_image, 2, sim_map="clamp")
    assert clamp["loss_inter_sep"].item() == pytest.approx(-math.log(1 - EPS), rel=1e-6)  # cos 0 -> eps
    with pytest.raises(ValueError, match="4 loss weights"):
        mccl_losses(fg, bg, text, pair_image, 2, weights=(1.0, 1.0))


def test_one_category_per_image_and_collapsed_maps_stay_finite():
    torch.manual_seed(0)
    fg = torch.randn(3, 8, requires_grad=True)
    bg = torch.zeros(3, 8, requires_grad=True)  # a map of ones: an all-zero background
    text = torch.randn(3, 8)
    losses = mccl_losses(fg, bg, text, torch.tensor([0, 1, 2]), 3)
    assert losses["loss_inter_align"].item() == 0.0 and losses["loss_inter_sep"].item() == 0.0
    total = sum(losses.values())
    assert torch.isfinite(total)
    total.backward()
    assert torch.isfinite(fg.grad).all() and torch.isfinite(bg.grad).all()
    # identical vectors (cosine 1) and opposite ones (-1): the bound keeps every log finite
    same = torch.ones(2, 4, requires_grad=True)
    losses = mccl_losses(same, -same, -same, torch.tensor([0, 0]), 1)
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    assert torch.isfinite(same.grad).all()


def test_bounded_similarity_ranges():
    cos = torch.tensor([-1.0, 0.0, 1.0])
    torch.testing.assert_close(bounded_similarity(cos), torch.tensor([EPS / 2, 0.5, 1 - EPS / 2]))
    torch.testing.assert_close(bounded_similarity(cos, mode="clamp"), torch.tensor([EPS, EPS, 1 - EPS]))
    torch.testing.assert_close(bounded_similarity(cos, mode="scale"), torch.tensor([EPS / 2, 0.5, 1 - EPS / 2]))
    # parallel vectors: "affine" clamps (no gradient), "scale" still repels them
    for mode, has_gradient in (("affine", False), ("scale", True)):
        c = torch.tensor(1.0, requires_grad=True)
        (-torch.log1p(-bounded_similarity(c, mode=mode))).backward()
        assert (c.grad.abs() > 0).item() == has_gradient, mode
    assert cosine_similarity(torch.zeros(4), torch.ones(4)).item() == 0.0
    with pytest.raises(ValueError, match="similarity map"):
        bounded_similarity(cos, mode="sigmoid")


def test_two_processes_average_to_the_whole_batch():
    """Under DDP each process normalises by the global count of images with a term (a fake
    2-process all-reduce here): the mean of their losses and gradients is the whole batch's."""
    torch.manual_seed(0)
    fg, bg, text = torch.randn(7, 6), torch.randn(7, 6), torch.randn(7, 6)
    pair_image = torch.tensor([0, 0, 1, 2, 2, 2, 3])  # process 0: images 0, 1; process 1: 2, 3
    shards = [(slice(0, 3), pair_image[:3]), (slice(3, 7), pair_image[3:] - 2)]

    def run(rows, images, count_reduce=None):
        f, b = fg[rows].clone().requires_grad_(), bg[rows].clone().requires_grad_()
        losses = mccl_losses(f, b, text[rows], images, 2, count_reduce=count_reduce, sep_threshold=-1.0)
        sum(losses.values()).backward()
        return losses, f.grad, b.grad

    # what each process contributes to the all-reduce, recorded call by call
    local_counts = []
    for rows, images in shards:
        calls = []
        run(rows, images, lambda x, calls=calls: calls.append(x.clone()) or x)
        local_counts.append(calls)
    processes = []
    for rank, (rows, images) in enumerate(shards):
        calls = iter(range(4))
        other = local_counts[1 - rank]
        processes.append(run(rows, images, lambda x, calls=calls, other=other: x + other[next(calls)]))
    whole_fg, whole_bg = fg.clone().requires_grad_(), bg.clone().requires_grad_()
    whole = mccl_losses(whole_fg, whole_bg, text, pair_image, 4, sep_threshold=-1.0)
    sum(whole.values()).backward()
    for name in MCCL_LOSS_NAMES:
        torch.testing.assert_close((processes[0][0][name] + processes[1][0][name]) / 2, whole[name])
    torch.testing.assert_close(torch.cat([processes[0][1], processes[1][1]]) / 2, whole_fg.grad)
    torch.testing.assert_close(torch.cat([processes[0][2], processes[1][2]]) / 2, whole_bg.grad)
