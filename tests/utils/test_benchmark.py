"""sed_d2.utils.benchmark: summaries, the accuracy comparison, the timer and the table, on
hand-made numbers."""
import pytest
import torch

from sed_d2.utils.benchmark import Timer, compare, environment, format_table, summarize


def test_summarize_is_per_image_median_and_nearest_rank_p90():
    # sorted: 1 2 3 4 10 -> median 3, p90 at rank round(0.9 * 4) = 4 -> 10; two images each
    assert summarize([4.0, 1.0, 3.0, 2.0, 10.0], batch=2) == {
        "median_ms": 1.5,
        "p90_ms": 5.0,
        "images_per_s": 666.67,
        "iters": 5,
    }


def test_compare_errors_margins_and_agreement_by_hand():
    # four pixels, three classes; top-1 minus top-2 margins 2, 0.5, 0.1, 0.05
    reference = torch.tensor([[3.0, 1.0, 0.0], [0.0, 1.0, 0.5], [0.0, 0.0, 0.1], [2.0, 2.05, 0.0]])
    reference = reference.t().reshape(1, 3, 1, 4)
    value = reference.clone()
    value[0, 0, 0, 3] += 0.1  # the last pixel's winner flips from class 1 to class 0
    result = compare(value, reference)
    # 12 errors, one of 0.1: linear 99th percentile at position 0.99 * 11 = 10.89
    err_p99 = 0.89 * float(torch.tensor(0.1, dtype=torch.float32))
    assert result["err_p99"] == pytest.approx(err_p99, rel=1e-6)
    assert result["max_abs_err"] == pytest.approx(0.1, rel=1e-6)
    assert result["rel_err"] == pytest.approx(0.1 / float(reference.double().norm()), rel=1e-6)
    assert result["argmax_agreement"] == 0.75
    assert result["margin_median"] == pytest.approx(0.1, rel=1e-6)  # torch's lower median
    assert result["decided_fraction"] == 0.75  # margins 2, 0.5, 0.1 exceed 0.089; 0.05 does not
    assert result["argmax_agreement_decided"] == 1.0  # the flipped pixel was a near-tie


def test_compare_with_no_decided_pixel_reports_none():
    reference = torch.zeros(1, 2, 2, 2)
    result = compare(reference + 1.0, reference)
    assert result["decided_fraction"] == 0.0 and result["argmax_agreement_decided"] is None


def test_timer_runs_warmup_then_timed_iterations_on_cpu():
    calls = []
    timer = Timer(torch.device("cpu"))
    times = timer(lambda: calls.append(1), iters=4, warmup=2)
    assert len(calls) == 6 and len(times) == 4 and all(t >= 0 for t in times)
    timer.reset_peak()
    assert timer.peak() == {"peak_mem_gib": None, "peak_reserved_gib": None}


def test_environment_records_versions_and_device():
    env = environment(torch.device("cpu"))
    assert env["device"] == "cpu" and env["torch"] == torch.__version__
    assert {"date", "command", "python", "detectron2", "open_clip", "timm", "fvcore"} <= set(env)
    assert "gpu" not in env


def test_format_table_lines():
    timing = {"median_ms": 12.345, "p90_ms": 13.0, "images_per_s": 81.0, "peak_mem_gib": None}
    results = {
        "environment": {"device": "cpu", "torch": "2.x"},
        "cases": [
            {"mode": "inference", "vocabulary": "voc", "num_classes": 20, "precision": "bf16", "batch": 1,
             "variant": {"cer_keep": 8}, "network": timing, "flops": {"gflops": 450.0}},
            {"mode": "train", "vocabulary": "coco", "num_classes": 171, "precision": "fp32", "batch": 4,
             "variant": {}, "step": timing},
        ],
    }  # fmt: skip
    lines = format_table(results).splitlines()
    assert lines[0] == "cpu | torch 2.x"
    assert lines[4].split() == "inference voc 20 bf16 1 cer_keep=8 | 12.3 13.0 81.0 - | - - | 450.0".split()
    assert lines[5].split() == "train coco 171 fp32 4 - | 12.3 13.0 81.0 - | (ms/step) |".split()
