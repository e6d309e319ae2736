"""The shared prepare machinery: atomic writes, skip/resume, failure reporting, summary."""

import io
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sed_d2.data import prepare_utils as pu


def _double(task: pu.Task) -> pu.TaskResult:
    """A converter for the tests: label = 2 * source, or fail on a 'bad' source."""
    if "bad" in task.source:
        raise pu.CorruptInputError(f"{task.source}: cannot decode (broken on purpose)")
    label = np.full((2, 3), int(Path(task.source).stem) * 2, dtype=np.uint8)
    pu.save_label_png(label, Path(task.outputs[0]))
    return pu.TaskResult(values=pu.unique_values(label), notes=("seen",))


def _tasks(tmp_path, names):
    return [
        pu.Task("val", str(tmp_path / "in" / f"{n}.png"), (str(tmp_path / "out" / f"{n}.png"),))
        for n in names
    ]


def test_atomic_output_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "x.png"
    with pytest.raises(RuntimeError):
        with pu.atomic_output(target) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("interrupted")
    assert list(tmp_path.iterdir()) == []
    with pu.atomic_output(target) as tmp:
        assert tmp.name.startswith(".") and tmp.name.endswith(".tmp") and tmp.parent == tmp_path
        tmp.write_bytes(b"done")
    assert target.read_bytes() == b"done" and len(list(tmp_path.iterdir())) == 1


def test_run_tasks_writes_skips_and_reports_failures(tmp_path):
    tasks = _tasks(tmp_path, ["1", "2", "bad3"])
    report = pu.run_tasks(tasks, _double, workers=1, desc="t")
    split = report.splits["val"]
    assert (split.written, split.skipped, len(split.failures)) == (2, 0, 1)
    assert "bad3.png: cannot decode" in split.failures[0][1]
    assert dict(split.values) == {2: 1, 4: 1} and split.notes["seen"] == 2
    np.testing.assert_array_equal(
        np.asarray(Image.open(tmp_path / "out" / "2.png")), np.full((2, 3), 4)
    )

    # A rerun converts only what failed before; finished outputs are untouched.
    mtime = os.stat(tmp_path / "out" / "1.png").st_mtime_ns
    again = pu.run_tasks(tasks, _double, workers=1, desc="t").splits["val"]
    assert (again.written, again.skipped, len(again.failures)) == (0, 2, 1)
    assert os.stat(tmp_path / "out" / "1.png").st_mtime_ns == mtime
    # --verify re-reads the skipped outputs so the summary covers them.
    verified = pu.run_tasks(tasks[:2], _double, workers=1, desc="t", verify=pu.read_back_outputs)
    assert verified.splits["val"].verified == 2 and set(verified.splits["val"].values) == {2, 4}
    # --overwrite redoes them.
    redone = pu.run_tasks(tasks[:2], _double, workers=1, desc="t", overwrite=True).splits["val"]
    assert (redone.written, redone.skipped) == (2, 0)


def test_pool_gives_the_same_outputs_and_removes_stale_temporaries(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / ".1.png.4242.tmp").write_bytes(b"left by a killed run")
    report = pu.run_tasks(_tasks(tmp_path, ["1", "2", "3", "bad4"]), _double, workers=2, desc="t")
    split = report.splits["val"]
    assert (split.written, len(split.failures)) == (3, 1)
    assert sorted(p.name for p in out.iterdir()) == ["1.png", "2.png", "3.png"]


def test_summary_counts_values_and_flags_unexpected(tmp_path):
    tasks = _tasks(tmp_path, ["1", "2", "3", "bad"])
    report = pu.run_tasks(tasks, _double, workers=1, desc="t")
    stream = io.StringIO()
    status = pu.summarize(
        "prepare_test",
        report,
        {
            "val": pu.SplitOutput(
                tmp_path / "out", ".png", expected=5, allowed_values=frozenset({2, 4})
            )
        },
        stream=stream,
    )
    text = stream.getvalue()
    assert status == 1
    assert "[val] 3 files in" in text and "(official split: 5)  <-- differs" in text
    assert "3 written, 0 already done (skipped), 1 failed" in text
    assert "label values in the 3 files converted this run: 2, 4, 6" in text
    assert (
        "UNEXPECTED label values (outside the registered classes and ignore value): 6 in 1 file(s)"
        in text
    )
    assert "bad.png: cannot decode" in text


def test_format_values_and_lut():
    assert pu.format_values([255, 0, 1, 2, 3, 7, 8]) == "0-3, 7-8, 255"
    assert pu.format_values([]) == "(none)"
    lut = pu.make_lut({0: 5, 3: 1}, size=6, default=255)
    np.testing.assert_array_equal(lut, [5, 255, 255, 1, 255, 255])


def test_read_image_array_reports_path_of_corrupt_file(tmp_path):
    broken = tmp_path / "broken.png"
    buffer = io.BytesIO()
    Image.fromarray(np.zeros((20, 20), np.uint8)).save(buffer, format="PNG")
    broken.write_bytes(buffer.getvalue()[:40])  # truncated
    with pytest.raises(pu.CorruptInputError, match="broken.png: cannot decode"):
        pu.read_image_array(broken)
    rgb = tmp_path / "rgb.png"
    Image.fromarray(np.zeros((2, 2, 3), np.uint8)).save(rgb)
    with pytest.raises(pu.CorruptInputError, match="rgb.png: PIL mode 'RGB'"):
        pu.read_image_array(rgb)
    with pytest.raises(pu.CorruptInputError, match="absent.png: missing"):
        pu.read_image_array(tmp_path / "absent.png")


def test_uint16_tiff_round_trips_exactly(tmp_path):
    label = np.array([[0, 255, 458], [846, 65535, 1]], dtype=np.uint16)
    pu.save_label_tiff(label, tmp_path / "x.tif")
    with Image.open(tmp_path / "x.tif") as image:
        assert (image.format, image.mode) == ("TIFF", "I;16")
        read = np.asarray(image)
    assert read.dtype == np.uint16
    np.testing.assert_array_equal(read, label)


def test_default_root_reads_environment(monkeypatch):
    monkeypatch.setenv("DETECTRON2_DATASETS", "~/some/where")
    assert pu.default_dataset_root() == Path(os.path.expanduser("~/some/where"))
    monkeypatch.delenv("DETECTRON2_DATASETS")
    assert pu.default_dataset_root() == Path("datasets")


def test_input_missing_names_the_path(tmp_path):
    with pytest.raises(pu.InputMissingError) as error:
        pu.require_dir(tmp_path / "nope", "thing", "download it")
    assert str(error.value) == f"thing not found: {tmp_path / 'nope'} is not a folder.\ndownload it"
