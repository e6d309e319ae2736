"""Every config key sed_d2 declares is read by code that runs.

The config handed to the code records every key read through it: the model of every shipped
config is built (the method's tiny CLIP swapped in), and the tiny config goes through what
``tools/train_net.py`` does: runtime flags, the trainer (model, optimizer, data loader and
mapper, scheduler, checkpointer), one training step, a checkpoint and the evaluation.
"""
from __future__ import annotations

from tests.conftest import requires_detectron2
from tests.d2_helpers import SHIPPED_CONFIGS, tiny_cfg_for

pytestmark = requires_detectron2

_READS: set[str] = set()  # dotted names of the leaves read through a recording config


def _recording(cfg):
    """A copy of ``cfg`` whose every node adds the keys read from it to ``_READS``."""
    from detectron2.config import CfgNode

    class RecordingCfgNode(CfgNode):
        def __getattr__(self, name):
            value = super().__getattr__(name)
            if not isinstance(value, CfgNode):
                _READS.add(self.__dict__.get("_key_path", "") + name)
            return value

    def set_paths(node, prefix):
        node.__dict__["_key_path"] = prefix  # yacs keeps non-key attributes in __dict__
        for key, value in node.items():
            if isinstance(value, CfgNode):
                set_paths(value, f"{prefix}{key}.")

    recording = RecordingCfgNode(cfg)  # converts the nested nodes too
    set_paths(recording, "")
    return recording


def _leaves(node, prefix=""):
    from detectron2.config import CfgNode

    for key, value in node.items():
        if isinstance(value, CfgNode):
            yield from _leaves(value, f"{prefix}{key}.")
        else:
            yield prefix + key


def _declared_keys() -> set[str]:
    from detectron2.config import get_cfg as detectron2_get_cfg

    from sed_d2.config import get_cfg

    return set(_leaves(get_cfg())) - set(_leaves(detectron2_get_cfg()))


def test_recording_sees_reads_through_nodes_and_clones():
    from sed_d2.config import get_cfg

    _READS.clear()
    cfg = _recording(get_cfg())
    sed = cfg.MODEL.SED
    assert sed.HIDDEN_DIM == 128
    assert cfg.clone().SOLVER.CLIP_MULTIPLIER == 0.01
    assert _READS == {"MODEL.SED.HIDDEN_DIM", "SOLVER.CLIP_MULTIPLIER"}


def test_every_declared_key_is_read(tmp_path, restore_runtime_flags):
    from detectron2.modeling import build_model

    import sed_d2  # noqa: F401
    from sed_d2.config import apply_runtime_flags
    from sed_d2.engine import Trainer

    _READS.clear()
    for path in SHIPPED_CONFIGS:
        build_model(_recording(tiny_cfg_for(path)))

    cfg = _recording(tiny_cfg_for("configs/sed/tiny.yaml", "SOLVER.MAX_ITER", "1", "OUTPUT_DIR", str(tmp_path)))
    cfg.freeze()
    apply_runtime_flags(cfg, training=True)
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=False)
    trainer.train()  # one step, the final checkpoint and the evaluation of DATASETS.TEST

    declared = _declared_keys()
    assert len(declared) >= 30
    unread = sorted(declared - _READS)
    assert not unread, f"config keys declared but never read: {unread}"
