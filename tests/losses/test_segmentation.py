import math

import pytest
import torch
import torch.nn.functional as F

from sed_d2.losses import one_hot_bce_loss


def _golden_inputs():
    generator = torch.Generator().manual_seed(1234)
    logits = torch.randn(2, 5, 8, 8, generator=generator)
    targets = torch.randint(0, 5, (2, 32, 32), generator=generator)
    targets[:, :4] = 255
    targets[1, :, -3:] = 255
    return logits, targets


def _manual(logits, targets, ignore_value, ignore_as_negative):
    """Elementwise sigmoid BCE written out: max(x, 0) - x*y + log(1 + exp(-|x|))."""
    x = F.interpolate(logits, size=targets.shape[-2:], mode="bilinear", align_corners=False)
    valid = targets != ignore_value
    y = torch.zeros_like(x)
    for t in range(x.shape[1]):
        y[:, t] = ((targets == t) & valid).float()
    elementwise = x.clamp_min(0) - x * y + torch.log1p(torch.exp(-x.abs()))
    if ignore_as_negative:
        return elementwise.mean()
    return (elementwise * valid.unsqueeze(1)).sum() / (valid.sum() * x.shape[1])


def test_golden_values():
    logits, targets = _golden_inputs()
    assert abs(one_hot_bce_loss(logits, targets, 255).item() - 0.719406008720398) < 1e-5
    excluded = one_hot_bce_loss(logits, targets, 255, ignore_as_negative=False).item()
    assert abs(excluded - 0.7191824316978455) < 1e-5


def test_matches_manual_formula_both_modes():
    logits, targets = _golden_inputs()
    for ignore_as_negative in (True, False):
        torch.testing.assert_close(
            one_hot_bce_loss(logits, targets, 255, ignore_as_negative),
            _manual(logits, targets, 255, ignore_as_negative),
        )


def test_ignore_modes_by_hand():
    # B=1, T=2, one row of two pixels; pixel 0 is class 0, pixel 1 is ignored.
    logits = torch.tensor([[[[0.0, 2.0]], [[0.0, -1.0]]]])
    targets = torch.tensor([[[0, 255]]])
    log2 = math.log(2.0)
    softplus = lambda v: math.log1p(math.exp(v))  # noqa: E731  (BCE of logit v with target 0)
    official = (log2 + log2 + softplus(2.0) + softplus(-1.0)) / 4  # ignored pixel = all-negative
    paper = (log2 + log2) / 2  # ignored pixel excluded
    assert abs(one_hot_bce_loss(logits, targets, 255).item() - official) < 1e-6
    assert abs(one_hot_bce_loss(logits, targets, 255, ignore_as_negative=False).item() - paper) < 1e-6


def test_ignore_value_can_be_a_valid_looking_index_and_no_valid_pixel_gives_zero():
    logits = torch.randn(1, 3, 2, 2)
    targets = torch.full((1, 2, 2), 65535)
    assert one_hot_bce_loss(logits, targets, 65535, ignore_as_negative=False).item() == 0.0
    torch.testing.assert_close(
        one_hot_bce_loss(logits, targets, 65535), F.binary_cross_entropy_with_logits(logits, torch.zeros_like(logits))
    )


def test_gradient_is_sigmoid_minus_target():
    logits = torch.randn(1, 3, 4, 4, requires_grad=True)
    targets = torch.randint(0, 3, (1, 4, 4))
    one_hot_bce_loss(logits, targets, 255).backward()
    expected = (logits.detach().sigmoid() - F.one_hot(targets, 3).permute(0, 3, 1, 2)) / logits.numel()
    torch.testing.assert_close(logits.grad, expected)


@pytest.mark.parametrize("ignore_as_negative", [True, False])
@pytest.mark.parametrize("size", [(8, 8), (16, 20)])
@pytest.mark.parametrize("chunk", [1, 3, 7, 100])
def test_chunked_loss_equals_plain_loss(ignore_as_negative, size, chunk):
    generator = torch.Generator().manual_seed(7)
    logits = torch.randn(2, 7, 8, 8, dtype=torch.float64, generator=generator, requires_grad=True)
    targets = torch.randint(0, 7, (2, *size), generator=generator)
    targets[0, :3] = 255
    plain = one_hot_bce_loss(logits, targets, 255, ignore_as_negative)
    chunked = one_hot_bce_loss(logits, targets, 255, ignore_as_negative, chunk_classes=chunk)
    torch.testing.assert_close(chunked, plain, rtol=1e-13, atol=1e-15)
    grad_plain, = torch.autograd.grad(plain, logits)
    grad_chunked, = torch.autograd.grad(chunked, logits)
    torch.testing.assert_close(grad_chunked, grad_plain, rtol=1e-12, atol=1e-16)


def test_chunked_loss_from_bf16_logits_is_float32_and_close():
    generator = torch.Generator().manual_seed(8)
    logits = torch.randn(2, 5, 6, 6, generator=generator).to(torch.bfloat16).requires_grad_()
    targets = torch.randint(0, 5, (2, 12, 12), generator=generator)
    chunked = one_hot_bce_loss(logits, targets, 255, chunk_classes=2)
    assert chunked.dtype == torch.float32
    plain = one_hot_bce_loss(logits.float(), targets, 255)
    torch.testing.assert_close(chunked, plain)
    chunked.backward()
    assert logits.grad.dtype == torch.bfloat16
