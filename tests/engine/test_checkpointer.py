"""Official SED checkpoints load through MODEL.WEIGHTS and tools/convert_checkpoint.py."""
import argparse

import pytest
import torch

from tests.checkpoint.official_sed_layout import to_official_sed
from tests.conftest import requires_detectron2
from tests.d2_helpers import load_tool, tiny_cfg_for

pytestmark = requires_detectron2


def _tiny_model():
    from detectron2.modeling import build_model

    import sed_d2  # noqa: F401

    return build_model(tiny_cfg_for("configs/sed/tiny.yaml"))


@pytest.fixture()
def official_file(tmp_path):
    torch.manual_seed(123)
    source = _tiny_model()
    path = tmp_path / "model_final.pth"
    # As detectron2 saves it in the official code: model + training state.
    official = to_official_sed({key: value.clone() for key, value in source.state_dict().items()})
    torch.save({"model": official, "iteration": 79999}, path)
    return source, path


def test_model_weights_loads_official_checkpoint(official_file):
    from sed_d2.engine import ConvertingCheckpointer

    source, path = official_file
    torch.manual_seed(0)
    target = _tiny_model()
    assert not torch.equal(target.model.decoder.head.weight, source.model.decoder.head.weight)
    result = ConvertingCheckpointer(target).load(str(path))
    assert result["iteration"] == 79999
    # strict equality of every tensor = no missing and no unexpected keys
    src, dst = source.state_dict(), target.state_dict()
    assert src.keys() == dst.keys()
    assert all(torch.equal(src[k], dst[k]) for k in src)


def test_convert_checkpoint_tool(official_file, tmp_path):
    source, path = official_file
    out = tmp_path / "converted.pth"
    tool = load_tool("convert_checkpoint")
    tool.main([str(path), str(out), "--config-file", "configs/sed/tiny.yaml"])
    converted = torch.load(out, map_location="cpu", weights_only=True)["model"]
    assert converted.keys() == source.state_dict().keys()


def test_unsafe_pickle_is_refused(tmp_path):
    from sed_d2.engine import ConvertingCheckpointer

    path = tmp_path / "unsafe.pth"
    # An arbitrary object (not a tensor or plain container) needs full unpickling.
    torch.save({"model": {"x": torch.zeros(1)}, "args": argparse.Namespace(lr=1)}, path)
    with pytest.raises(RuntimeError, match="weights_only"):
        ConvertingCheckpointer(_tiny_model()).load(str(path))
