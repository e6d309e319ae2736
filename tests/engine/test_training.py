"""tools/train_net.py end to end on CPU: train 2 iterations, evaluate, resume exactly."""
import os
import shutil

import pytest
import torch

from tests.conftest import requires_detectron2
from tests.d2_helpers import load_tool, tiny_opts_for

pytestmark = requires_detectron2

SHIPPED = [
    "configs/sed/convnextB_768.yaml", "configs/sed/convnextL_768.yaml", "configs/sed/tiny.yaml",
    "configs/catseg/vitb_384.yaml", "configs/catseg/vitl_336.yaml", "configs/catseg/tiny.yaml",
    "configs/fgaseg/vitb_384.yaml", "configs/fgaseg/vitb_384_fast.yaml", "configs/fgaseg/vitl_336.yaml",
    "configs/fgaseg/vitl_336_fast.yaml", "configs/fgaseg/tiny.yaml",
    "configs/clip_hbd/vitb_384.yaml", "configs/clip_hbd/tiny.yaml",
    "configs/dcp_clip/vitb_384.yaml", "configs/dcp_clip/vitl_336.yaml", "configs/dcp_clip/tiny.yaml",
    "configs/synseg/vitb_224.yaml", "configs/synseg/tiny.yaml",
]


def _run(config_file, output_dir, *extra, eval_only=False, resume=False, overwrite=False):
    train_net = load_tool("train_net")

    argv = ["--config-file", config_file]
    if eval_only:
        argv.append("--eval-only")
    if resume:
        argv.append("--resume")
    if overwrite:
        argv.append("--overwrite")
    argv += tiny_opts_for(config_file) + ["OUTPUT_DIR", str(output_dir), *extra]
    return train_net.main(train_net.argument_parser().parse_args(argv))


def _weights(path):
    return torch.load(path, map_location="cpu", weights_only=True)["model"]


# Metrics after 2 iterations at SEED 7 (tests/d2_helpers.py), evaluated on the synthetic val
# set; float32 on CPU with one thread, so a run repeats them exactly. mIoU and fwIoU are also
# what commit 8e651e6 gave. A different value means training or evaluation changed.
GOLDEN_METRICS = {
    "configs/sed/convnextB_768.yaml": {
        "mIoU": 5.642124910428647, "fwIoU": 6.412459224760786, "mACC": 12.935633745756025, "pACC": 14.184242699030856,
    },
    "configs/sed/convnextL_768.yaml": {
        "mIoU": 5.649493553265704, "fwIoU": 6.447941758195707, "mACC": 12.929099112889302, "pACC": 14.259377707248747,
    },
    "configs/sed/tiny.yaml": {
        "mIoU": 5.355247374708951, "fwIoU": 6.17060378950509, "mACC": 11.868046379373784, "pACC": 13.283594173798285,
    },
    # CAT-Seg B and L differ only in MODEL.OVSEG (CLIP and its resolution), which the tiny
    # overrides replace: the same run, the same metrics.
    "configs/catseg/vitb_384.yaml": {
        "mIoU": 3.9865498920797564, "fwIoU": 4.012005868251808, "mACC": 11.446395294686898, "pACC": 10.14759818963493,
    },
    "configs/catseg/vitl_336.yaml": {
        "mIoU": 3.9865498920797564, "fwIoU": 4.012005868251808, "mACC": 11.446395294686898, "pACC": 10.14759818963493,
    },
    "configs/catseg/tiny.yaml": {
        "mIoU": 4.417298772642944, "fwIoU": 4.6225907420718535, "mACC": 11.65777864705232, "pACC": 11.375666944644607,
    },
    # FGAseg B and L (no_fast) differ only in MODEL.OVSEG, replaced by the tiny overrides.
    "configs/fgaseg/vitb_384.yaml": {
        "mIoU": 4.018678628845572, "fwIoU": 4.202749464665225, "mACC": 10.53877460943859, "pACC": 9.987288581583826,
    },
    "configs/fgaseg/vitb_384_fast.yaml": {
        "mIoU": 4.1681374761475825, "fwIoU": 4.62966805104373, "mACC": 9.817909287815288, "pACC": 10.371788747560947,
    },
    "configs/fgaseg/vitl_336.yaml": {
        "mIoU": 4.018678628845572, "fwIoU": 4.202749464665225, "mACC": 10.53877460943859, "pACC": 9.987288581583826,
    },
    "configs/fgaseg/vitl_336_fast.yaml": {  # = vitb_384_fast: they differ only in MODEL.OVSEG
        "mIoU": 4.1681374761475825, "fwIoU": 4.62966805104373, "mACC": 9.817909287815288, "pACC": 10.371788747560947,
    },
    "configs/fgaseg/tiny.yaml": {
        "mIoU": 4.500842984272706, "fwIoU": 4.924206116155682, "mACC": 12.143406497810878, "pACC": 12.404725085215082,
    },
    # CLIP-HBD's configs ask for boundary IoU (TEST.BOUNDARY_IOU): it is checked too.
    "configs/clip_hbd/vitb_384.yaml": {
        "mIoU": 7.389732493160378, "fwIoU": 8.633341493683744, "mACC": 13.647472102976632, "pACC": 14.742087749269295,
        "mBoundaryIoU": 2.7589954480811896,
    },
    "configs/clip_hbd/tiny.yaml": {
        "mIoU": 7.637288898200845, "fwIoU": 8.35361340257778, "mACC": 15.672822581013449, "pACC": 16.525491656613582,
        "mBoundaryIoU": 2.69971626297893,
    },
    # DCP-CLIP B and L differ only in MODEL.OVSEG, replaced by the tiny overrides.
    "configs/dcp_clip/vitb_384.yaml": {
        "mIoU": 2.305026656155904, "fwIoU": 1.6136120695587917, "mACC": 14.00327483521103, "pACC": 10.031414206022134,
    },
    "configs/dcp_clip/vitl_336.yaml": {
        "mIoU": 2.305026656155904, "fwIoU": 1.6136120695587917, "mACC": 14.00327483521103, "pACC": 10.031414206022134,
    },
    "configs/dcp_clip/tiny.yaml": {
        "mIoU": 3.704617425396026, "fwIoU": 2.382330364243938, "mACC": 15.303188463887308, "pACC": 10.591850118612916,
    },
    # SynSeg trains from the synthetic captions (no label map) and evaluates with its five views.
    "configs/synseg/vitb_224.yaml": {
        "mIoU": 6.332446746856515, "fwIoU": 7.389176722904982, "mACC": 12.838803247816447, "pACC": 14.342042409178129,
    },
    "configs/synseg/tiny.yaml": {
        "mIoU": 5.223497495016652, "fwIoU": 5.765381289396523, "mACC": 11.003594438433808, "pACC": 11.745755438786828,
    },
}


@pytest.mark.parametrize("config_file", SHIPPED)
def test_train_two_iterations_then_evaluate(config_file, tmp_path):
    _run(config_file, tmp_path, "SOLVER.MAX_ITER", "2")
    assert os.path.isfile(tmp_path / "model_final.pth")
    results = _run(config_file, tmp_path, "MODEL.WEIGHTS", str(tmp_path / "model_final.pth"),
                   eval_only=True)
    metrics = {name: results["sem_seg"][name] for name in GOLDEN_METRICS[config_file]}
    # Summation order of the metrics may change (numpy vs torch): 1e-9 of a percentage.
    assert metrics == pytest.approx(GOLDEN_METRICS[config_file], rel=0, abs=1e-9)


def test_resume_continues_exactly(tmp_path):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    common = ["SOLVER.MAX_ITER", "4", "SOLVER.CHECKPOINT_PERIOD", "2"]
    _run("configs/sed/tiny.yaml", straight, *common)
    # Pretend the second run crashed after iteration 2: keep only that checkpoint.
    resumed.mkdir()
    shutil.copy(straight / "model_0000001.pth", resumed / "model_0000001.pth")
    (resumed / "last_checkpoint").write_text("model_0000001.pth")
    _run("configs/sed/tiny.yaml", resumed, *common, resume=True)
    a, b = _weights(straight / "model_final.pth"), _weights(resumed / "model_final.pth")
    assert a.keys() == b.keys()
    changed = [k for k in a if not torch.equal(a[k], b[k])]
    assert not changed, f"resumed weights differ from the uninterrupted run: {changed[:5]}"
    # And training did change the weights after the checkpoint.
    mid = _weights(straight / "model_0000001.pth")
    assert any(not torch.equal(mid[k], a[k]) for k in a)


def test_several_test_datasets_one_process_one_table(tmp_path):
    _run("configs/sed/tiny.yaml", tmp_path, "SOLVER.MAX_ITER", "1")
    results = _run(
        "configs/sed/tiny.yaml", tmp_path,
        "MODEL.WEIGHTS", str(tmp_path / "model_final.pth"),
        "DATASETS.TEST", "('sed_d2_synthetic_val', 'sed_d2_synthetic_train')",
        eval_only=True,
    )
    assert list(results) == ["sed_d2_synthetic_val", "sed_d2_synthetic_train"]
    log = (tmp_path / "log.txt").read_text()
    assert "Summary over all test datasets" in log


# ---------------------------------------------------------------- nothing lost, nothing silent
def test_no_silent_overwrite_and_no_silent_fresh_start(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"--resume: OUTPUT_DIR .* holds no checkpoint"):
        _run("configs/sed/tiny.yaml", tmp_path, "SOLVER.MAX_ITER", "1", resume=True)
    _run("configs/sed/tiny.yaml", tmp_path, "SOLVER.MAX_ITER", "1")
    first = (tmp_path / "model_final.pth").read_bytes()
    with pytest.raises(FileExistsError, match=r"holds a previous run's checkpoints .*--resume.*--overwrite"):
        _run("configs/sed/tiny.yaml", tmp_path, "SOLVER.MAX_ITER", "1")
    assert (tmp_path / "model_final.pth").read_bytes() == first
    _run("configs/sed/tiny.yaml", tmp_path, "SOLVER.MAX_ITER", "1", overwrite=True)


def test_eval_only_refuses_missing_or_incomplete_weights(tmp_path):
    with pytest.raises(ValueError, match="--eval-only needs weights"):
        _run("configs/sed/tiny.yaml", tmp_path, eval_only=True)
    _run("configs/sed/tiny.yaml", tmp_path, "SOLVER.MAX_ITER", "1")
    state = _weights(tmp_path / "model_final.pth")
    del state["model.decoder.head.weight"]
    torch.save({"model": state}, tmp_path / "partial.pth")
    from sed_d2.engine.checkpointer import IncompleteWeightsError

    with pytest.raises(IncompleteWeightsError, match=r"model.decoder.head.weight"):
        _run("configs/sed/tiny.yaml", tmp_path, "MODEL.WEIGHTS", str(tmp_path / "partial.pth"), eval_only=True)


def test_bad_test_dataset_and_device_fail_before_any_work(tmp_path):
    with pytest.raises(KeyError, match="DATASETS.TEST entry 'ade20k_151' is not a registered dataset"):
        _run("configs/sed/tiny.yaml", tmp_path, "DATASETS.TEST", "('ade20k_151',)")
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="MODEL.DEVICE is 'cuda' but this machine has no usable CUDA GPU"):
            _run("configs/sed/tiny.yaml", tmp_path, "MODEL.DEVICE", "cuda")
    assert not (tmp_path / "last_checkpoint").exists()


def test_divergence_stops_with_iteration_lr_and_last_good_checkpoint(tmp_path, monkeypatch):
    from sed_d2.meta_arch.sed import SED

    forward_train = SED.forward_train
    calls = []

    def diverging(self, images, text, targets):
        losses = forward_train(self, images, text, targets)
        calls.append(1)
        if len(calls) > 2:  # iterations 0 and 1 are fine, then the loss is NaN
            losses = {k: v * float("nan") for k, v in losses.items()}
        return losses

    monkeypatch.setattr(SED, "forward_train", diverging)
    with pytest.raises(FloatingPointError, match=r"(?s)diverged at iteration 2 \(learning rate .*\).*model_0000001.pth; --resume restarts from it"):
        _run("configs/sed/tiny.yaml", tmp_path, "SOLVER.MAX_ITER", "6", "SOLVER.CHECKPOINT_PERIOD", "2")
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000001.pth"
    assert all(torch.isfinite(v).all() for v in _weights(tmp_path / "model_0000001.pth").values() if v.is_floating_point())
