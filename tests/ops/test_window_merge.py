"""sed_d2.ops.window_merge: the fused sliding-window merge equals the PyTorch reference (the
protocol's resize -> sigmoid -> average arithmetic) for CAT-Seg's and SynSeg's geometries.

The kernel runs on CPU in Triton's interpreter (the tests marked triton_interpreter:
TRITON_INTERPRET=1, see tests/triton_interpreter_plugin.py); without it the CPU path is the
reference.
"""

import pytest
import torch

from sed_d2.meta_arch.inference import window_boxes
from sed_d2.ops.window_merge import merge_window_scores, merge_window_scores_applies, merge_window_scores_reference


@pytest.mark.triton_interpreter
@pytest.mark.parametrize(
    "size, boxes, global_view, global_size, merge, logits_size",
    [
        # CAT-Seg: windows with overlap over the working image, global view resized twice
        pytest.param((40, 40), window_boxes((40, 40), (24, 24), (16, 16)), True, (24, 24), "mean", (6, 6), id="catseg"),
        # SynSeg: 2x2 grid of odd sizes, global view straight to the working size, max merge
        pytest.param((13, 17), window_boxes((13, 17), grid=(2, 2)), True, None, "max", (5, 7), id="synseg"),
        # windows only; logits larger than a window (down-sampling)
        pytest.param((20, 30), window_boxes((20, 30), (10, 12), (5, 9)), False, None, "mean", (16, 14), id="windows"),
    ],
)
def test_kernel_equals_reference(size, boxes, global_view, global_size, merge, logits_size):
    torch.manual_seed(0)
    views = len(boxes) + int(global_view)
    logits = torch.randn(views, 3, *logits_size) * 3
    kwargs = {"global_view": global_view, "global_size": global_size, "merge": merge}
    assert merge_window_scores_applies(logits)
    fused = merge_window_scores(logits, boxes, size, **kwargs)
    ref = merge_window_scores_reference(logits, boxes, size, **kwargs)
    assert fused.shape == ref.shape == (3, *size) and fused.dtype == torch.float32
    torch.testing.assert_close(fused, ref, rtol=0, atol=2e-6)
    # bf16 logits: the kernel interpolates in float32 (no bf16 rounding of resized logits)
    low = logits.bfloat16()
    fused = merge_window_scores(low, boxes, size, **kwargs)
    torch.testing.assert_close(fused, merge_window_scores_reference(low.float(), boxes, size, **kwargs), rtol=0, atol=2e-6)
    torch.testing.assert_close(fused, merge_window_scores_reference(low, boxes, size, **kwargs), rtol=0, atol=2e-2)


@pytest.mark.triton_interpreter
def test_kernel_refuses_custom_activations_and_autograd():
    # a custom activation, or autograd, takes the reference
    logits = torch.randn(2, 3, 4, 4)
    assert merge_window_scores_applies(logits)
    assert not merge_window_scores_applies(logits, activation=torch.tanh)
    assert not merge_window_scores_applies(logits.requires_grad_())


def test_reference_on_cpu_and_clear_errors():
    boxes = window_boxes((8, 8), (4, 4), (4, 4))
    logits = torch.randn(5, 2, 2, 2)
    assert not merge_window_scores_applies(logits)  # CPU without the interpreter
    out = merge_window_scores(logits, boxes, (8, 8), global_view=True, global_size=(4, 4))
    torch.testing.assert_close(
        out, merge_window_scores_reference(logits, boxes, (8, 8), global_view=True, global_size=(4, 4)), rtol=0, atol=0
    )
    # non-overlapping windows of a constant logit: every score is its sigmoid
    constant = torch.full((5, 2, 2, 2), 0.3)
    torch.testing.assert_close(
        merge_window_scores(constant, boxes, (8, 8), global_view=True, global_size=(4, 4)),
        torch.full((2, 8, 8), torch.tensor(0.3).sigmoid().item()),
    )
    with pytest.raises(ValueError, match=r"5 views \(4 windows \+ the global view\), got \(4, 2, 2, 2\)"):
        merge_window_scores(logits[:4], boxes, (8, 8), global_view=True)
    with pytest.raises(ValueError, match="merge must be 'mean' or 'max', got 'median'"):
        merge_window_scores(logits, boxes, (8, 8), global_view=True, merge="median")
