import pytest
import torch


@pytest.fixture()
def restore_runtime_flags():
    """Undo what sed_d2.config.apply_runtime_flags sets process-wide."""
    from sed_d2 import ops

    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32,
             torch.backends.cudnn.benchmark, ops.enabled())
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32, torch.backends.cudnn.benchmark = saved[:3]
    ops.set_enabled(saved[3])
