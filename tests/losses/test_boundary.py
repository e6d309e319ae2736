"""Boundary targets from hand-made label maps and the class-balanced boundary BCE."""
import math

import pytest
import torch

from sed_d2.losses import balanced_boundary_bce, boundary_loss, boundary_targets

I = 255  # ignore label
LABELS = [
    [0, 0, 0, 1, 1],
    [0, 0, 0, 1, 1],
    [0, 0, I, 1, 1],
    [2, 2, 2, 2, 2],
    [2, 2, 2, 2, 2],
]
# by hand: a valid pixel with a valid neighbour (3x3) of another label; the ignored pixel
# (2, 2) is no edge and makes none ((1, 1) sees only 0s and it); image borders make none
EDGES = [
    [0, 0, 1, 1, 0],
    [0, 0, 1, 1, 0],
    [1, 1, 0, 1, 1],
    [1, 1, 1, 1, 1],
    [0, 0, 0, 0, 0],
]


def test_edges_of_a_hand_made_map():
    edge, valid = boundary_targets(torch.tensor([LABELS]), I)
    assert edge.tolist() == [[[bool(v) for v in row] for row in EDGES]]
    assert valid.tolist() == [[[v != I for v in row] for row in LABELS]]


def test_ignore_as_label_marks_its_valid_neighbours_only():
    edge, _ = boundary_targets(torch.tensor([LABELS]), I, ignore_edges="as_label")
    expected = torch.tensor([EDGES], dtype=torch.bool)
    expected[0, 1, 1] = True  # next to the ignored pixel; the ignored pixel itself stays no edge
    assert torch.equal(edge, expected)


def test_wider_kernel_widens_the_band_and_one_label_has_no_edges():
    labels = torch.zeros(1, 1, 8, dtype=torch.long)
    labels[..., 4:] = 1
    edge3, _ = boundary_targets(labels, I, kernel=3)
    edge5, _ = boundary_targets(labels, I, kernel=5)
    assert edge3[0, 0].nonzero().flatten().tolist() == [3, 4]
    assert edge5[0, 0].nonzero().flatten().tolist() == [2, 3, 4, 5]
    assert not boundary_targets(torch.full((2, 4, 4), 3), I)[0].any()


def test_ignore_next_to_padding_never_makes_edges():
    labels = torch.full((1, 6, 6), I)
    labels[0, :3, :3] = 5  # one class, then crop padding (ignore)
    edge, valid = boundary_targets(labels, I)
    assert not edge.any() and valid.sum() == 9


def test_large_label_values_and_bad_arguments():
    labels = torch.tensor([[[65534, 65534, 3]]])
    assert boundary_targets(labels, 65535)[0].tolist() == [[[False, True, True]]]
    with pytest.raises(ValueError, match="kernel must be odd"):
        boundary_targets(labels, 255, kernel=2)
    with pytest.raises(ValueError, match="ignore_edges must be one of"):
        boundary_targets(labels, 255, ignore_edges="edge")
    with pytest.raises(ValueError, match=r"expected labels \(B, H, W\)"):
        boundary_targets(labels[0], 255)


def test_balanced_bce_golden():
    labels = torch.tensor([[[0, 0, 1, 1]]])  # edges at 1, 2; N = 4: w+ = w- = 2 / 4
    logits = torch.tensor([[[[0.0, math.log(3), -math.log(3), 0.0]]]])
    # BCE: log 2 (no edge, 0), log(4/3) (edge, ln 3), log 4 (edge, -ln 3), log 2
    expected = 0.5 * (2 * math.log(2) + math.log(4 / 3) + math.log(4)) / 4
    assert boundary_loss(logits, labels, I).item() == pytest.approx(expected, rel=1e-6)


def test_balanced_weights_are_per_image_and_fixed_weights_apply():
    labels = torch.tensor([[[0, 0, 1, 1]], [[0, 0, 0, 1]]])  # image 2: edges 2, 3 of 4 -> same
    labels[1, 0, 0] = I  # image 2: 3 valid, 2 edges: w+ = 1/3, w- = 2/3
    logits = torch.zeros(2, 1, 1, 4)
    edge, valid = boundary_targets(labels, I)
    bce = math.log(2)
    balanced = (4 * 0.5 * bce + 2 * (1 / 3) * bce + 1 * (2 / 3) * bce) / 7
    assert balanced_boundary_bce(logits, edge, valid).item() == pytest.approx(balanced, rel=1e-6)
    fixed = ((2 + 2) * 2.0 + (2 + 1) * 0.5) * bce / 7  # edges: 2 + 2, non-edges: 2 + 1
    got = balanced_boundary_bce(logits, edge, valid, weighting="fixed", pos_weight=2.0, neg_weight=0.5)
    assert got.item() == pytest.approx(fixed, rel=1e-6)


def test_all_ignored_gives_zero_with_zero_gradient_and_logits_are_resized():
    logits = torch.randn(1, 1, 2, 2, requires_grad=True)
    loss = boundary_loss(logits, torch.full((1, 4, 4), I), I)
    loss.backward()
    assert loss.item() == 0.0 and torch.equal(logits.grad, torch.zeros_like(logits))
    # (B, 1, h, w) logits are resized to the labels: a constant map stays constant
    labels = torch.tensor([[[0, 0, 1, 1]] * 4])
    small = boundary_loss(torch.full((1, 1, 2, 2), 0.3), labels, I)
    full = boundary_loss(torch.full((1, 1, 4, 4), 0.3), labels, I)
    assert small.item() == pytest.approx(full.item(), rel=1e-6)


def test_targets_follow_the_labels_device_and_shape_errors():
    labels = torch.tensor([LABELS])
    edge, _ = boundary_targets(labels.to("meta"), I)
    assert edge.device.type == "meta" and edge.shape == (1, 5, 5)
    with pytest.raises(ValueError, match="one boundary channel"):
        balanced_boundary_bce(torch.zeros(1, 2, 5, 5), *boundary_targets(labels, I))
    with pytest.raises(ValueError, match="weighting must be one of"):
        balanced_boundary_bce(torch.zeros(1, 1, 5, 5), *boundary_targets(labels, I), weighting="hed")
