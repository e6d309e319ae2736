import pytest
import torch
import torch.nn.functional as F

from sed_d2.losses import alignment_loss, downsampled_one_hot


def _official(align_out, targets, ignore_value):
    """FGA_seg_model.py: one-hot (B, H, W, T) at the label size with ignored pixels all zero,
    downsampled nearest to the alignment maps, BCE with logits."""
    num_classes = align_out.shape[1]
    mask = targets != ignore_value
    one_hot = torch.zeros(*targets.shape, num_classes)
    one_hot[mask] = F.one_hot(targets[mask], num_classes).float()
    small = F.interpolate(one_hot.permute(0, 3, 1, 2), align_out.shape[-2:], mode="nearest").permute(0, 2, 3, 1)
    return F.binary_cross_entropy_with_logits(align_out.permute(0, 2, 3, 1), small)


def test_bce_equals_the_official_loss():
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 5, 24, 24, generator=generator)
    targets = torch.randint(0, 5, (2, 96, 96), generator=generator)
    targets[:, :10] = 255
    torch.testing.assert_close(alignment_loss(logits, targets, 255), _official(logits, targets, 255))
    # golden, to see a change of the definition
    torch.testing.assert_close(alignment_loss(logits, targets, 255).item(), 0.803056001663208, atol=1e-6, rtol=0)


def test_downsampling_reads_every_fourth_label_and_keeps_ignore_all_negative():
    targets = torch.arange(16).view(1, 4, 4) % 3
    targets[0, 0, 0] = 65535
    one_hot = downsampled_one_hot(targets, 3, (2, 2), 65535)
    assert one_hot.shape == (1, 3, 2, 2)
    assert one_hot[0, :, 0, 0].sum() == 0  # ignored
    assert one_hot[0, :, 1, 1].argmax() == targets[0, 2, 2]
    assert torch.equal(downsampled_one_hot(targets, 3, (4, 4), 65535).sum(1)[0] == 0, targets[0] == 65535)


def test_mse_is_on_probabilities():
    logits, targets = torch.randn(1, 3, 4, 4), torch.randint(0, 3, (1, 8, 8))
    expected = F.mse_loss(logits.sigmoid(), downsampled_one_hot(targets, 3, (4, 4), 255))
    torch.testing.assert_close(alignment_loss(logits, targets, 255, kind="mse"), expected)
    with pytest.raises(ValueError, match="alignment loss"):
        alignment_loss(logits, targets, 255, kind="dice")
