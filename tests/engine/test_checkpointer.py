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


# ---------------------------------------------------------------- nothing lost, nothing silent
class _Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.a = torch.nn.Linear(3, 2)
        self.b = torch.nn.Linear(2, 2)


def test_unreadable_files_say_what_they_are(tmp_path):
    from sed_d2.engine.checkpointer import ConvertingCheckpointer

    good = tmp_path / "good.pth"
    torch.save({"model": _Net().state_dict()}, good)
    data = good.read_bytes()
    (tmp_path / "truncated.pth").write_bytes(data[: len(data) // 2])
    (tmp_path / "notes.pth").write_text("learning rate 2e-4\n")
    (tmp_path / "garbage.pth").write_bytes(bytes(range(7, 256)) * 3)

    class Unsafe:
        def __reduce__(self):
            return (print, ("this must never run",))

    torch.save({"model": _Net().state_dict(), "extra": Unsafe()}, tmp_path / "unsafe.pth")
    expected = {
        "truncated.pth": r"truncated.pth is a truncated or corrupt PyTorch checkpoint",
        "notes.pth": r"notes.pth is a text file, not a checkpoint \(it starts with 'learning rate 2e-4'\)",
        "garbage.pth": r"garbage.pth is not a PyTorch checkpoint: unknown binary content",
        "unsafe.pth": r"unsafe.pth is a PyTorch file that holds objects beyond tensors \(an unsafe pickle\)",
    }
    for name, message in expected.items():
        with pytest.raises(RuntimeError, match=message):
            ConvertingCheckpointer(_Net()).load(str(tmp_path / name))
    with pytest.raises(FileNotFoundError, match="missing.pth does not exist"):
        ConvertingCheckpointer(_Net())._torch_load(str(tmp_path / "missing.pth"))


def test_incomplete_weights_are_refused_unless_allowed(tmp_path):
    from sed_d2.engine.checkpointer import ConvertingCheckpointer, IncompleteWeightsError

    state = _Net().state_dict()
    del state["b.bias"]
    state["a.weight"] = torch.zeros(5, 3)
    torch.save({"model": state}, tmp_path / "partial.pth")
    with pytest.raises(IncompleteWeightsError, match=r"1 model tensors missing \(b.bias\) and 1 shape-mismatched \(a.weight \(5, 3\) in file vs \(2, 3\)"):
        ConvertingCheckpointer(_Net()).load(str(tmp_path / "partial.pth"))
    net = _Net()
    before = net.a.weight.clone()
    ConvertingCheckpointer(net, strict=False).load(str(tmp_path / "partial.pth"))  # fine-tuning opt-in
    assert torch.equal(net.a.weight, before) and torch.equal(net.b.weight, state["b.weight"])


def test_save_is_atomic_and_refuses_non_finite_parameters(tmp_path, monkeypatch):
    from sed_d2.engine import checkpointer as module

    net = _Net()
    saver = module.ConvertingCheckpointer(net, save_dir=str(tmp_path))
    saver.save("model_0000001")
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000001.pth"
    good = (tmp_path / "model_0000001.pth").read_bytes()

    # a kill in the middle of writing (simulated: torch.save dies half way) leaves the old file
    def dying_save(data, f):
        f.write(good[:100])
        raise KeyboardInterrupt("killed")

    monkeypatch.setattr(module.torch, "save", dying_save)
    with pytest.raises(KeyboardInterrupt):
        saver.save("model_0000001")
    monkeypatch.undo()
    assert (tmp_path / "model_0000001.pth").read_bytes() == good
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last_checkpoint", "model_0000001.pth"]

    with torch.no_grad():
        net.b.weight[0, 0] = float("nan")
    with pytest.raises(FloatingPointError, match=r"not saving checkpoint model_0000002: 1 parameters/buffers are not finite \(b.weight\); the last checkpoint with finite parameters is .*model_0000001.pth"):
        saver.save("model_0000002")
    assert not (tmp_path / "model_0000002.pth").exists()
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000001.pth"
