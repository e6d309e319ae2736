"""Test-wide setup: CPU only, a small synthetic dataset, a visible detectron2 skip reason, and
the ``triton_interpreter`` marker (tests/triton_interpreter_plugin.py)."""
import os

# Tests run on CPU whatever the machine has; GPU speed is measured by tools/benchmark.py.
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

import pytest  # noqa: E402
import torch  # noqa: E402

# One thread: the tiny models are too small to gain from more, and on a loaded 2-core
# machine extra threads make small ops up to 100x slower.
torch.set_num_threads(1)

# Tests marked triton_interpreter run in a child pytest with TRITON_INTERPRET=1.
pytest_plugins = ["tests.triton_interpreter_plugin"]

try:
    import detectron2  # noqa: F401
except ImportError:
    HAS_DETECTRON2 = False
else:
    HAS_DETECTRON2 = True

DETECTRON2_SKIP_REASON = (
    "detectron2 is not installed: install it from https://github.com/facebookresearch/detectron2 "
    "(see README) to run the detectron2 integration tests"
)
requires_detectron2 = pytest.mark.skipif(not HAS_DETECTRON2, reason=DETECTRON2_SKIP_REASON)


def pytest_report_header(config):
    return f"detectron2: {'present' if HAS_DETECTRON2 else 'ABSENT -> integration tests skip'}"
