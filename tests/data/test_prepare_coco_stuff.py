"""prepare_coco_stuff.py and prepare_coco_object.py on a tiny stuff-thing-map download."""

import os

import pytest


def test_coco_stuff_labels_match_hand_computed(raw, datasets_root, capsys):
    raw.write_coco_stuff_raw(datasets_root)
    raw.assert_prepares("prepare_coco_stuff", datasets_root, raw.expected_coco_stuff())
    summary = capsys.readouterr().out
    assert "[val2017] 2 files in" in summary and "[train2017] 1 files in" in summary
    assert (
        "label values in the 2 files converted this run: 0, 11, 23-24, 79-80, 170, 255" in summary
    )
    assert "note: raw value 11 is not a COCO-Stuff class (written as 255) (1 file)" in summary
    assert "UNEXPECTED" not in summary


def test_coco_stuff_is_resumable_idempotent_and_reports_corrupt_maps(raw, datasets_root, capsys):
    raw.write_coco_stuff_raw(datasets_root)
    ann = datasets_root / "coco-stuff" / "annotations" / "val2017"
    (ann / "000000000632.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    assert raw.run_prepare("prepare_coco_stuff", datasets_root, "--splits", "val2017") == 1
    out_dir = datasets_root / "coco-stuff" / "annotations_detectron2" / "val2017"
    assert sorted(p.name for p in out_dir.iterdir()) == ["000000000139.png", "000000000285.png"]
    assert not (datasets_root / "coco-stuff" / "annotations_detectron2" / "train2017").exists()
    summary = capsys.readouterr().out
    assert "000000000632.png: cannot decode" in summary and "1 failed" in summary

    (ann / "000000000632.png").unlink()
    mtimes = {p.name: os.stat(p).st_mtime_ns for p in out_dir.iterdir()}
    assert raw.run_prepare("prepare_coco_stuff", datasets_root, "--splits", "val2017") == 0
    assert "0 written, 2 already done (skipped), 0 failed" in capsys.readouterr().out
    assert {p.name: os.stat(p).st_mtime_ns for p in out_dir.iterdir()} == mtimes

    assert (
        raw.run_prepare("prepare_coco_stuff", datasets_root, "--splits", "val2017", "--verify") == 0
    )
    assert (
        "label values in the 2 files converted or verified this run: 0, 11, 23-24, 79-80, 170, 255"
        in (capsys.readouterr().out)
    )


def test_coco_stuff_parallel_run_equals_serial(raw, datasets_root):
    raw.write_coco_stuff_raw(datasets_root)
    raw.assert_prepares("prepare_coco_stuff", datasets_root, raw.expected_coco_stuff(), workers=2)


def test_coco_stuff_missing_download_names_folder_and_source(raw, datasets_root):
    script = raw.load_prepare_script("prepare_coco_stuff")
    from sed_d2.data.prepare_utils import InputMissingError

    with pytest.raises(InputMissingError) as error:
        raw.run_prepare("prepare_coco_stuff", datasets_root)
    message = str(error.value)
    assert str(datasets_root / "coco-stuff" / "annotations" / "train2017") in message
    assert "stuffthingmaps_trainval2017.zip" in message
    assert script.LUT.shape == (256,)


def test_coco_object_labels_match_hand_computed(raw, datasets_root, capsys):
    raw.write_coco_stuff_raw(datasets_root)
    raw.assert_prepares("prepare_coco_object", datasets_root, raw.expected_coco_object())
    # val2017 only by default (the benchmark split).
    assert not (datasets_root / "coco-stuff/annotations_detectron2_object/train2017").exists()
    summary = capsys.readouterr().out
    # The fixture's unused raw values 11 and 90 are the only 255s: flagged, not hidden.
    assert (
        "UNEXPECTED label values (outside the registered classes and ignore value): 255" in summary
    )


def test_summaries_are_titled_with_the_script_name(raw, datasets_root, capsys):
    raw.write_coco_stuff_raw(datasets_root)
    for script in ("prepare_coco_stuff", "prepare_coco_object"):
        assert raw.run_prepare(script, datasets_root) == 0
        assert f"===== {script}: summary =====" in capsys.readouterr().out
