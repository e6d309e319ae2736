"""sed_d2.ops.bilinear_resize: the matrix-product resize equals F.interpolate (values and
gradients), in full precision whatever autocast and TF32 say."""

import pytest
import torch
import torch.nn.functional as F

from sed_d2.ops.resize import bilinear_resize, bilinear_resize_matrix


@pytest.mark.parametrize(
    "size, out",
    [((96, 96), (768, 768)), ((24, 20), (768, 640)), ((5, 7), (13, 9)), ((7, 9), (3, 4)), ((1, 1), (4, 2))],
)
def test_bilinear_resize_equals_interpolate_values_and_gradients(size, out):
    torch.manual_seed(0)
    x = torch.randn(2, 3, *size, dtype=torch.float64, requires_grad=True)
    expected = F.interpolate(x, out, mode="bilinear", align_corners=False)
    actual = bilinear_resize(x, out)
    torch.testing.assert_close(actual, expected, rtol=1e-12, atol=1e-12)
    grad = torch.randn_like(expected)
    (grad_expected,) = torch.autograd.grad(expected, x, grad)
    (grad_actual,) = torch.autograd.grad(actual, x, grad)
    torch.testing.assert_close(grad_actual, grad_expected, rtol=1e-10, atol=1e-10)


def test_bilinear_resize_float32_ignores_autocast_and_keeps_dtype():
    x = torch.randn(1, 4, 6, 6)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = bilinear_resize(x, (24, 24))
    assert y.dtype == torch.float32
    torch.testing.assert_close(y, F.interpolate(x, (24, 24), mode="bilinear", align_corners=False))
    assert bilinear_resize(x, (6, 6)) is x  # same size: no work
    with pytest.raises(TypeError, match="floating"):
        bilinear_resize(torch.ones(1, 1, 2, 2, dtype=torch.long), (4, 4))


def test_bilinear_resize_matrix_rows_are_two_tap_partitions_of_unity():
    matrix = bilinear_resize_matrix(4, 8, torch.float64, "cpu")
    assert matrix.shape == (8, 4)
    torch.testing.assert_close(matrix.sum(1), torch.ones(8, dtype=torch.float64))
    assert int((matrix != 0).sum(1).max()) <= 2
    # x2 upsampling, align_corners=False: output 1 sits at source 0.25 -> 0.75 * x0 + 0.25 * x1
    assert matrix[1, 0] == 0.75 and matrix[1, 1] == 0.25 and matrix[0, 0] == 1.0


@pytest.mark.parametrize("allow_tf32", [True, False])
def test_products_leave_the_process_wide_tf32_flag_alone_where_it_does_not_matter(allow_tf32):
    """Only float32 CUDA products need TF32 off; elsewhere the flag is never written, and
    it is always what it was afterwards."""
    from sed_d2.ops import resize

    saved = torch.backends.cuda.matmul.allow_tf32
    seen = []
    try:
        torch.backends.cuda.matmul.allow_tf32 = allow_tf32
        for x in (torch.zeros(1), torch.zeros(1, dtype=torch.float64), torch.zeros(1, dtype=torch.bfloat16)):
            with resize._full_precision_products(x):
                seen.append(torch.backends.cuda.matmul.allow_tf32)
        assert seen == [allow_tf32] * 3 and torch.backends.cuda.matmul.allow_tf32 is allow_tf32
    finally:
        torch.backends.cuda.matmul.allow_tf32 = saved
