"""prepare_ade20k_150.py and prepare_ade20k_847.py on tiny copies of the two releases."""

import io

import numpy as np
from PIL import Image


def test_ade20k_150_shifts_labels(raw, datasets_root, capsys):
    raw.write_ade20k_150_raw(datasets_root)
    raw.assert_prepares("prepare_ade20k_150", datasets_root, raw.expected_ade20k_150())
    # validation only by default, as the official script
    assert not (datasets_root / "ADEChallengeData2016/annotations_detectron2/training").exists()
    assert (
        "label values in the 2 files converted this run: 0-1, 36, 148-149, 255"
        in capsys.readouterr().out
    )


def test_ade20k_150_flags_values_above_150(raw, datasets_root, capsys):
    raw.write_ade20k_150_raw(datasets_root)
    ann = datasets_root / "ADEChallengeData2016" / "annotations" / "validation"
    raw.write_png_l(ann / "ADE_val_00000003.png", [[151, 0]])
    raw.write_jpeg(
        datasets_root / "ADEChallengeData2016" / "images" / "validation" / "ADE_val_00000003.jpg",
        1,
        2,
    )
    assert raw.run_prepare("prepare_ade20k_150", datasets_root) == 0
    summary = capsys.readouterr().out
    assert "note: raw value 151 is above the 150 classes" in summary
    assert (
        "UNEXPECTED label values (outside the registered classes and ignore value): 150 "
        "in 1 file(s)" in summary
    )


def _pil_default_jpeg(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG")  # PIL defaults: quality 75
    return buffer.getvalue()


def test_ade20k_847_labels_resize_and_reencode(raw, datasets_root):
    import cv2

    written = raw.write_ade20k_847_raw(datasets_root)
    assert raw.run_prepare("prepare_ade20k_847", datasets_root) == 0
    base = datasets_root / "ADE20K_2021_17_01"

    # Small image: labels pixel by pixel; the image is re-encoded (not copied) with PIL defaults.
    label_path = base / "annotations_detectron2" / "validation" / "ADE_val_00000001.tif"
    with Image.open(label_path) as image:
        assert (image.format, image.mode, image.size) == ("TIFF", "I;16", (4, 3))
        label = np.asarray(image)
    assert label.dtype == np.uint16
    np.testing.assert_array_equal(label, raw.ADE847_SMALL_EXPECTED)
    image_path = base / "images_detectron2" / "validation" / "ADE_val_00000001.jpg"
    assert image_path.read_bytes() == _pil_default_jpeg(written["small_decoded"])
    assert image_path.read_bytes() != written["small_image_path"].read_bytes()

    # Large image: short side 520 > 512 -> 512 x round(700 / 520 * 512) = 512 x 689.
    with Image.open(
        base / "annotations_detectron2" / "validation" / "ADE_val_00000002.tif"
    ) as image:
        assert image.size == (689, 512)
        large = np.asarray(image)
    assert set(np.unique(large).tolist()) == {0, 1}
    assert (large[:, :340] == 0).all() and (large[:, 350:] == 1).all()  # wall | building halves
    with Image.open(written["large_image_path"]) as image:
        original = np.asarray(image)
    resized = cv2.resize(original, (689, 512), interpolation=cv2.INTER_LINEAR)
    large_out = base / "images_detectron2" / "validation" / "ADE_val_00000002.jpg"
    assert large_out.read_bytes() == _pil_default_jpeg(resized)

    # The training entry of the index is not converted, and outputs are flat.
    assert not (base / "images_detectron2" / "training").exists()
    assert sorted(p.name for p in (base / "annotations_detectron2" / "validation").iterdir()) == [
        "ADE_val_00000001.tif",
        "ADE_val_00000002.tif",
    ]


def test_ade20k_847_reports_missing_seg_and_goes_on(raw, datasets_root, capsys):
    raw.write_ade20k_847_raw(datasets_root)
    seg = next((datasets_root / "ADE20K_2021_17_01").rglob("ADE_val_00000002_seg.png"))
    seg.unlink()
    assert raw.run_prepare("prepare_ade20k_847", datasets_root) == 1
    summary = capsys.readouterr().out
    assert "ADE_val_00000002_seg.png: missing" in summary
    assert (
        datasets_root
        / "ADE20K_2021_17_01"
        / "annotations_detectron2"
        / "validation"
        / "ADE_val_00000001.tif"
    ).is_file()
    assert not (
        datasets_root
        / "ADE20K_2021_17_01"
        / "images_detectron2"
        / "validation"
        / "ADE_val_00000002.jpg"
    ).exists()


def test_official_resize_rule(raw):
    module = raw.load_prepare_script("prepare_ade20k_847")
    assert module.official_resized_shape(512, 900) is None  # short side not above 512
    assert module.official_resized_shape(513, 513) == (512, 512)
    assert module.official_resized_shape(520, 700) == (512, 689)
    assert module.official_resized_shape(1000, 600) == (853, 512)  # round(853.33)
    assert module.official_resized_shape(600, 1001) == (512, 854)  # round(854.19)
