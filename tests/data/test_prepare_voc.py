"""prepare_voc.py: palette PNGs -> VOC-20, VOC-20b (bg = 20) and VOC-21 (bg = 0) layouts."""

from PIL import Image


def test_voc_palette_masks_to_three_layouts(raw, datasets_root, capsys):
    raw.write_voc_raw(datasets_root)
    mask = datasets_root / "VOCdevkit" / "VOC2012" / "SegmentationClass" / "2007_000033.png"
    with Image.open(mask) as image:  # the fixture really is a palette PNG with the VOC colours
        assert image.mode == "P" and image.getpalette()[3:6] == [128, 0, 0]
    raw.assert_prepares("prepare_voc", datasets_root, raw.expected_voc())
    voc = datasets_root / "VOCdevkit" / "VOC2012"
    # only the val stems, not train's 2007_000061 nor the image-only 2007_000001
    for layout in (
        "annotations_detectron2",
        "annotations_detectron2_bg",
        "annotations_detectron2_bg0",
    ):
        assert sorted(p.name for p in (voc / layout / "val").iterdir()) == [
            "2007_000033.png",
            "2007_000042.png",
        ]
    assert "UNEXPECTED" not in capsys.readouterr().out


def test_voc_from_segmentation_class_aug(raw, datasets_root):
    raw.write_voc_raw(datasets_root, aug=True)
    (datasets_root / "VOCdevkit" / "VOC2012" / "SegmentationClass" / "2007_000042.png").unlink()
    raw.assert_prepares(
        "prepare_voc", datasets_root, raw.expected_voc(), "--masks", "SegmentationClassAug"
    )


def test_voc_missing_mask_of_a_val_stem_is_reported(raw, datasets_root, capsys):
    raw.write_voc_raw(datasets_root)
    (datasets_root / "VOCdevkit" / "VOC2012" / "SegmentationClass" / "2007_000042.png").unlink()
    assert raw.run_prepare("prepare_voc", datasets_root, "--layouts", "annotations_detectron2") == 1
    summary = capsys.readouterr().out
    assert "SegmentationClass/2007_000042.png: missing" in summary
    assert not (datasets_root / "VOCdevkit" / "VOC2012" / "annotations_detectron2_bg").exists()
