import pytest
import torch
import torch.nn.functional as F

from sed_d2.layers.dynamic_conv import class_conditional_conv2d, normalize_kernels


@pytest.mark.parametrize("kernel", [1, 3, 5])
def test_one_grouped_convolution_equals_a_convolution_per_image_and_class(kernel):
    generator = torch.Generator().manual_seed(0)
    features = torch.randn(3, 6, 7, 5, generator=generator)
    weight = torch.randn(3, 4, 6, kernel, kernel, generator=generator)
    bias = torch.randn(3, 4, generator=generator)
    out = class_conditional_conv2d(features, weight, bias)
    assert out.shape == (3, 4, 7, 5)
    for b in range(3):
        for t in range(4):
            expected = F.conv2d(features[b : b + 1], weight[b, t : t + 1], bias[b, t : t + 1], padding=kernel // 2)
            torch.testing.assert_close(out[b, t], expected[0, 0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(class_conditional_conv2d(features, weight), out - bias[..., None, None], atol=1e-5, rtol=1e-5)


def test_bad_kernels_are_refused():
    with pytest.raises(ValueError, match="expected kernels"):
        class_conditional_conv2d(torch.randn(2, 6, 4, 4), torch.randn(1, 3, 6, 3, 3))
    with pytest.raises(ValueError, match="odd size"):
        class_conditional_conv2d(torch.randn(1, 6, 4, 4), torch.randn(1, 3, 6, 2, 2))


def test_kernel_normalisations():
    weight = torch.randn(2, 3, 4, 3, 3)
    taps = normalize_kernels(weight, "taps")
    torch.testing.assert_close(taps.sum((-1, -2)), torch.ones(2, 3, 4))  # every (class, channel)
    channels = normalize_kernels(weight, "channels")
    torch.testing.assert_close(channels.sum(2), torch.ones(2, 3, 3, 3))  # every (class, tap)
    assert normalize_kernels(weight, "none") is weight
    with pytest.raises(ValueError, match="kernel norm"):
        normalize_kernels(weight, "hamming")
