"""prepare_pascal_context_59.py (PC-59 and PC-60) and prepare_pascal_context_459.py."""

import numpy as np
from PIL import Image


def test_pascal_context_59_and_60_from_trainval_merged(raw, datasets_root, capsys):
    raw.write_pascal_context_59_raw(datasets_root)
    raw.assert_prepares("prepare_pascal_context_59", datasets_root, raw.expected_pascal_context())
    out = datasets_root / "VOCdevkit" / "VOC2010" / "annotations_detectron2"
    # the train-phase image is not converted
    assert sorted(p.name for p in (out / "pc59_val").iterdir()) == [
        "2008_000002.png",
        "2008_000003.png",
    ]
    summary = capsys.readouterr().out
    assert (
        "note: category id 1 is not one of the 59 classes (PC-59: 255, PC-60: 0) (1 file)"
        in summary
    )
    assert "note: image without any annotation (written as all background) (1 file)" in summary
    assert "UNEXPECTED" not in summary


def test_pascal_context_59_only_variant(raw, datasets_root):
    raw.write_pascal_context_59_raw(datasets_root)
    assert raw.run_prepare("prepare_pascal_context_59", datasets_root, "--splits", "pc59_val") == 0
    out = datasets_root / "VOCdevkit" / "VOC2010" / "annotations_detectron2"
    assert (out / "pc59_val").is_dir() and not (out / "pc60_val").exists()


def test_pascal_context_459_tiff_and_missing_mat_reported(raw, datasets_root, capsys):
    raw.write_pascal_context_459_raw(datasets_root)
    # 2008_000007 is in the val list but has no .mat: reported, exit status 1, others written.
    assert raw.run_prepare("prepare_pascal_context_459", datasets_root) == 1
    for relative, array in raw.expected_pascal_context_459().items():
        with Image.open(datasets_root / relative) as image:
            assert (image.format, image.mode) == ("TIFF", "I;16"), relative
            label = np.asarray(image)
        assert label.dtype == np.uint16
        np.testing.assert_array_equal(label, array, err_msg=relative)
    out = datasets_root / "VOCdevkit" / "VOC2010" / "annotations_detectron2" / "pc459_val"
    assert sorted(p.name for p in out.iterdir()) == ["2008_000002.tif", "2008_000003.tif"]
    summary = capsys.readouterr().out
    assert "trainval/2008_000007.mat: missing" in summary
    assert "note: LabelMap contains 0 (unlabeled), written as 65535 (ignore) (1 file)" in summary
    assert "UNEXPECTED" not in summary


def test_pascal_context_459_uses_shipped_val_list(raw, datasets_root, capsys):
    raw.write_pascal_context_459_raw(datasets_root, with_missing=False)
    (datasets_root / "VOCdevkit" / "VOC2010" / "pascalcontext_val.txt").unlink()
    # The shipped list has the 5,104 official stems: the two fixture stems are among them,
    # every other stem has no .mat here and is reported as missing.
    status = raw.run_prepare("prepare_pascal_context_459", datasets_root)
    assert status == 1
    summary = capsys.readouterr().out
    assert "2 written, 0 already done (skipped), 5102 failed" in summary
    module = raw.load_prepare_script("prepare_pascal_context_459")
    stems = module.pu.read_split_list(module.SHIPPED_VAL_LIST)
    assert len(stems) == 5104 and stems[0] == "2008_000002" and stems[-1] == "2010_006086"
