"""tools/benchmark.py on the tiny config (CPU): every mode runs and the JSON has its fields."""

import json
import os

import pytest

pytest.importorskip("detectron2", reason="detectron2 is not installed: tools/benchmark.py cannot be tested")

from tests.d2_helpers import load_tool  # noqa: E402

TINY = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "configs", "sed", "tiny.yaml")


@pytest.fixture(scope="module")  # not "benchmark": pytest-benchmark owns that name
def bench_tool():
    return load_tool("benchmark")


def test_inference_train_check_and_cer_cases(bench_tool, tmp_path, capsys):
    out = tmp_path / "bench.json"
    results = bench_tool.main([
        "--config-file", TINY, "--num-classes", "6", "--precision", "fp32", "bf16",
        "--mode", "inference", "train", "--cer-keep", "0", "2", "--train-batch-size", "2",
        "--iters", "2", "--warmup", "1", "--check", "--flops", "--image-size", "96", "120",
        "--json", str(out),
    ])
    assert "inference" in capsys.readouterr().out  # the table
    saved = json.loads(out.read_text())
    assert saved["cases"] == json.loads(json.dumps(results["cases"]))
    assert {"torch", "device", "command", "date"} <= set(saved["environment"])
    inference = [c for c in saved["cases"] if c["mode"] == "inference"]
    assert [(c["precision"], c["cer_keep"]) for c in inference] == [("fp32", 0), ("fp32", 2), ("bf16", 0), ("bf16", 2)]
    for case in inference:
        assert case["num_classes"] == 6 and case["input"] == [128, 128]
        for part in ("network", "end_to_end"):
            assert {"median_ms", "p90_ms", "images_per_s", "peak_mem_gib"} <= set(case[part])
            assert case[part]["median_ms"] > 0
        assert case["kept_classes"] == (2 if case["cer_keep"] else 6)
    assert inference[0]["flops"]["gflops"] > 0 and "flops" not in inference[1]
    train = [c for c in saved["cases"] if c["mode"] == "train"]
    assert [c["precision"] for c in train] == ["fp32", "bf16"]
    for case in train:
        assert case["batch"] == 2 and case["step"]["median_ms"] > 0 and case["step"]["images_per_s"] > 0
    (check,) = saved["checks"]
    assert check["fp32_vs_fp64"]["rel_err"] < 1e-4
    assert check["fp32_vs_plain_reference_fp32"]["rel_err"] < 1e-4
    assert 0 <= check["bf16_vs_fp32"]["argmax_agreement"] <= 1


def test_dataset_vocabulary(bench_tool):
    (vocab,) = bench_tool.vocabularies(bench_tool.get_parser().parse_args(
        ["--config-file", TINY, "--dataset", "ade20k_150_test_sem_seg"]
    ))
    assert vocab["name"] == "ade20k_150_test_sem_seg" and len(vocab["classes"]) == 150
    (synthetic,) = bench_tool.vocabularies(bench_tool.get_parser().parse_args(["--config-file", TINY, "--num-classes", "3"]))
    assert synthetic["classes"] == ["class 0", "class 1", "class 2"]
