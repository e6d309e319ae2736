"""sed_d2.ops.window_merge: the fused sliding-window merge equals the PyTorch reference (the
protocol's resize -> sigmoid -> average arithmetic) for CAT-Seg's and SynSeg's geometries.

The kernel runs on CPU in Triton's interpreter (a subprocess with TRITON_INTERPRET=1); without
it the CPU path is the reference.
"""

import textwrap

import pytest
import torch

from sed_d2.meta_arch.inference import window_boxes
from sed_d2.ops.window_merge import merge_window_scores, merge_window_scores_applies, merge_window_scores_reference
from tests.helpers import run_in_triton_interpreter

_CHECK = textwrap.dedent(
    """
    import torch
    from sed_d2.meta_arch.inference import window_boxes
    from sed_d2.ops.window_merge import merge_window_scores, merge_window_scores_applies, merge_window_scores_reference
    torch.manual_seed(0)
    cases = [
        # CAT-Seg: windows with overlap over the working image, global view resized twice
        dict(size=(40, 40), boxes=window_boxes((40, 40), (24, 24), (16, 16)), global_view=True,
             global_size=(24, 24), merge="mean", logits=(6, 6)),
        # SynSeg: 2x2 grid of odd sizes, global view straight to the working size, max merge
        dict(size=(13, 17), boxes=window_boxes((13, 17), grid=(2, 2)), global_view=True,
             global_size=None, merge="max", logits=(5, 7)),
        # windows only; logits larger than a window (down-sampling)
        dict(size=(20, 30), boxes=window_boxes((20, 30), (10, 12), (5, 9)), global_view=False,
             global_size=None, merge="mean", logits=(16, 14)),
    ]
    for case in cases:
        views = len(case["boxes"]) + int(case["global_view"])
        logits = torch.randn(views, 3, *case["logits"]) * 3
        kwargs = dict(global_view=case["global_view"], global_size=case["global_size"], merge=case["merge"])
        assert merge_window_scores_applies(logits)
        fused = merge_window_scores(logits, case["boxes"], case["size"], **kwargs)
        ref = merge_window_scores_reference(logits, case["boxes"], case["size"], **kwargs)
        assert fused.shape == ref.shape == (3, *case["size"]) and fused.dtype == torch.float32
        torch.testing.assert_close(fused, ref, rtol=0, atol=2e-6)
        # bf16 logits: the kernel interpolates in float32 (no bf16 rounding of resized logits)
        low = logits.bfloat16()
        fused = merge_window_scores(low, case["boxes"], case["size"], **kwargs)
        torch.testing.assert_close(fused, merge_window_scores_reference(low.float(), case["boxes"], case["size"], **kwargs), rtol=0, atol=2e-6)
        torch.testing.assert_close(fused, merge_window_scores_reference(low, case["boxes"], case["size"], **kwargs), rtol=0, atol=2e-2)
    # a custom activation, or autograd, takes the reference
    logits = torch.randn(2, 3, 4, 4)
    assert not merge_window_scores_applies(logits, activation=torch.tanh)
    assert not merge_window_scores_applies(logits.requires_grad_())
    print("ok")
    """
)


def test_kernel_equals_reference_in_the_interpreter():
    pytest.importorskip("triton", reason="Triton is not installed: the kernel cannot run here")
    run_in_triton_interpreter(_CHECK)


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
