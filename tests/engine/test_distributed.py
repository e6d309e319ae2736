"""Multi-process training on CPU (detectron2 launch + Gloo) equals single-process training.

2 processes x 1 image must match 1 process x 2 images: same samples, same augmentations
(the stream depends only on (SEED, position)), gradients averaged by DDP instead of by the
batch mean. Evaluation results must be identical for 1 and 2 processes.
"""
import json
import os
import socket
import subprocess
import sys

import pytest
import torch

from tests.conftest import requires_detectron2
from tests.d2_helpers import ROOT, tiny_opts_for

pytestmark = requires_detectron2


def _free_port() -> int:
    # detectron2's default --dist-url port depends only on the user id: two runs at once
    # (e.g. two test sessions on one machine) would collide on it.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _train_net(output_dir, num_procs, *extra, flags=()):
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS="1", PYTHONPATH=ROOT)
    for attempt in range(3):
        cmd = [sys.executable, os.path.join(ROOT, "tools", "train_net.py"), *flags,
               "--dist-url", f"tcp://127.0.0.1:{_free_port()}",
               "--config-file", os.path.join(ROOT, "configs/sed/tiny.yaml"),
               "--num-gpus", str(num_procs), *tiny_opts_for("configs/sed/tiny.yaml"),
               "OUTPUT_DIR", str(output_dir), *extra]
        proc = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=600)
        # A free port can still be taken between our probe and the rendezvous: try another.
        if proc.returncode == 0 or "EADDRINUSE" not in proc.stderr:
            break
    # The head of stderr too: the first traceback of a worker is what explains a failure.
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[:3000] + "\n...\n" + proc.stderr[-3000:]
    return proc


def _losses(output_dir):
    rows = [json.loads(line) for line in open(os.path.join(output_dir, "metrics.json"))]
    return {r["iteration"]: {k: v for k, v in r.items() if k.startswith("loss_")}
            for r in rows if "loss_sem_seg_0" in r}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("distributed")
    common = ["SOLVER.MAX_ITER", "3", "SOLVER.IMS_PER_BATCH", "2", "SOLVER.CHECKPOINT_PERIOD", "100"]
    single, double = root / "1proc", root / "2proc"
    _train_net(single, 1, *common)
    _train_net(double, 2, *common)
    return single, double


def test_losses_and_weights_match(runs):
    single, double = runs
    l1, l2 = _losses(single), _losses(double)
    # metrics.json holds the iterations detectron2's PeriodicWriter wrote (the last one here).
    assert l1 and sorted(l1) == sorted(l2)
    for it in l1:
        for name, value in l1[it].items():
            assert l2[it][name] == pytest.approx(value, rel=1e-5, abs=1e-6), (it, name)
    w1 = torch.load(single / "model_final.pth", map_location="cpu", weights_only=True)["model"]
    w2 = torch.load(double / "model_final.pth", map_location="cpu", weights_only=True)["model"]
    assert w1.keys() == w2.keys()
    for k in w1:
        # AdamW turns float-level gradient noise into ~1e-6 weight noise where gradients are tiny.
        torch.testing.assert_close(w1[k], w2[k], rtol=1e-4, atol=2e-5, msg=k)


def test_evaluation_identical_for_one_and_two_processes(runs, tmp_path):
    single, _ = runs
    weights = str(single / "model_final.pth")
    copypaste = []
    for n in (1, 2):
        out = tmp_path / f"eval{n}"
        _train_net(out, n, "MODEL.WEIGHTS", weights, flags=["--eval-only"])
        lines = (out / "log.txt").read_text().splitlines()
        copypaste.append([line.split("copypaste: ")[1] for line in lines if "copypaste: " in line][-1])
    assert copypaste[0] == copypaste[1]
