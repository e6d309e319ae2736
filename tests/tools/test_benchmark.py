"""tools/benchmark.py on the tiny configs (CPU): every mode runs through the method contract, the
JSON has its fields, variants come from the method, and the accuracy check compares against the
model's own plain path."""

import json
import os

import pytest

pytest.importorskip("detectron2", reason="detectron2 is not installed: tools/benchmark.py cannot be tested")

from tests.d2_helpers import ROOT, load_tool  # noqa: E402

SED_TINY = os.path.join(ROOT, "configs", "sed", "tiny.yaml")
CATSEG_TINY = os.path.join(ROOT, "configs", "catseg", "tiny.yaml")


@pytest.fixture(scope="module")  # not "benchmark": pytest-benchmark owns that name
def bench_tool():
    return load_tool("benchmark")


def test_inference_train_check_and_cer_cases(bench_tool, tmp_path, capsys):
    out = tmp_path / "bench.json"
    results = bench_tool.main([
        "--config-file", SED_TINY, "--num-classes", "6", "--precision", "fp32", "bf16",
        "--mode", "inference", "train", "--cer-keep", "0", "2", "--train-batch-size", "2",
        "--iters", "2", "--warmup", "1", "--check", "--flops", "--image-size", "96", "120",
        "--json", str(out),
    ])
    assert "cer_keep=2" in capsys.readouterr().out  # the table
    saved = json.loads(out.read_text())
    assert saved["cases"] == json.loads(json.dumps(results["cases"]))
    assert {"torch", "device", "command", "date"} <= set(saved["environment"])
    assert saved["settings"]["method"] == "SED" and saved["settings"]["fast_ops"] is True
    inference = [c for c in saved["cases"] if c["mode"] == "inference"]
    assert [(c["precision"], c["variant"]) for c in inference] == [
        ("fp32", {}), ("fp32", {"cer_keep": 2}), ("bf16", {}), ("bf16", {"cer_keep": 2})
    ]
    for case in inference:
        assert case["num_classes"] == 6 and case["input"] == [128, 128]
        assert case["cuda_graphs"] == "off"  # CPU
        for part in ("network", "end_to_end"):
            assert {"median_ms", "p90_ms", "images_per_s", "peak_mem_gib"} <= set(case[part])
            assert case[part]["median_ms"] > 0
        assert case["kept_classes"] == (2 if case["variant"] else 6)
    flops = inference[0]["flops"]
    assert flops["gflops_image_features"] > 0 and flops["gflops_decode"] > 0
    assert flops["gflops"] == round(flops["gflops_image_features"] + flops["gflops_decode"], 2)
    assert "flops" not in inference[1]  # counted for the plain network only
    train = [c for c in saved["cases"] if c["mode"] == "train"]
    assert [c["precision"] for c in train] == ["fp32", "bf16"]
    for case in train:
        assert case["batch"] == 2 and case["step"]["median_ms"] > 0 and case["step"]["images_per_s"] > 0
    (check,) = saved["checks"]
    # On CPU no fast op runs and TF32 does not exist: fp32 and tf32 are the plain path itself.
    for precision in ("fp32", "tf32"):
        assert check[f"{precision}_vs_plain_fp32"]["rel_err"] == 0.0
        assert check[f"{precision}_vs_plain_fp32"]["argmax_agreement"] == 1.0
    assert 0 < check["plain_fp32_vs_fp64"]["rel_err"] < 1e-5
    assert check["fp32_vs_fp64"] == check["plain_fp32_vs_fp64"]
    # bf16 really ran in bf16 (an error of bf16's size, not 0), and both float32 references agree
    assert 1e-4 < check["bf16_vs_fp32"]["rel_err"] < 0.05
    assert check["bf16_vs_fp32"] == check["bf16_vs_plain_fp32"]


def test_check_without_float64_compares_to_the_plain_float32_path_only(bench_tool):
    results = bench_tool.main([
        "--config-file", CATSEG_TINY, "--num-classes", "3", "--image-size", "100", "90", "--mode", "inference",
        "--precision", "fp32", "--iters", "1", "--warmup", "0", "--no-end-to-end", "--check", "--check-without-float64",
    ])
    (check,) = results["checks"]
    assert not [key for key in check if "fp64" in key]
    assert check["fp32_vs_plain_fp32"]["rel_err"] == 0.0  # CPU: no fast op, the same path
    assert 1e-4 < check["bf16_vs_plain_fp32"]["rel_err"] < 0.05


def test_any_method_runs_through_the_contract(bench_tool):
    results = bench_tool.main([
        "--config-file", CATSEG_TINY, "--num-classes", "3", "--iters", "1", "--warmup", "0",
        "--image-size", "100", "90", "--flops",
    ])
    (case,) = results["cases"]
    assert results["settings"]["method"] == "CATSeg"
    assert case["num_classes"] == 3 and case["kept_classes"] == 3 and case["variant"] == {}
    assert case["flops"]["gflops_image_features"] > 0 and case["flops"]["gflops_decode"] > 0


def test_variants_are_the_method_s_own(bench_tool, capsys):
    parse = bench_tool.get_parser().parse_args
    assert bench_tool.variants(parse(["--config-file", SED_TINY])) == [None]
    assert bench_tool.variants(parse(["--config-file", SED_TINY, "--cer-keep", "0", "8"])) == [None, ("cer_keep", 8)]
    assert bench_tool.variants(parse(["--config-file", SED_TINY, "--variant", "plain", "cer_keep=3"])) == [
        None, ("cer_keep", 3)
    ]
    with pytest.raises(SystemExit):
        parse(["--config-file", SED_TINY, "--variant", "cer_keep=many"])
    assert "a variant is 'plain' or NAME=INTEGER, got 'cer_keep=many'" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        bench_tool.main(["--config-file", CATSEG_TINY, "--cer-keep", "8", "--iters", "1"])
    assert exit_info.value.code == 2
    assert "CATSeg has no benchmark variant 'cer_keep'; it offers none" in capsys.readouterr().err


def test_dataset_vocabulary(bench_tool):
    (vocab,) = bench_tool.vocabularies(bench_tool.get_parser().parse_args(
        ["--config-file", SED_TINY, "--dataset", "ade20k_150_test_sem_seg"]
    ))
    assert vocab["name"] == "ade20k_150_test_sem_seg" and len(vocab["classes"]) == 150
    (synthetic,) = bench_tool.vocabularies(bench_tool.get_parser().parse_args(["--config-file", SED_TINY, "--num-classes", "3"]))
    assert synthetic["classes"] == ["class 0", "class 1", "class 2"]
