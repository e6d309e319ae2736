"""sed_d2.data.io: images and label maps read correctly, bad files named with their path."""
import numpy as np
import pytest
from PIL import Image

from sed_d2.data.io import read_image, read_label_map


def _png(tmp_path, name, array, mode=None):
    path = str(tmp_path / name)
    Image.fromarray(array, mode=mode).save(path)
    return path


def test_label_map_modes(tmp_path):
    labels = np.array([[0, 1], [2, 255]], dtype=np.uint8)
    assert read_label_map(_png(tmp_path, "grey.png", labels)).tolist() == labels.tolist()
    # palette PNG: the indices, never the palette colours
    palette = Image.fromarray(labels, mode="L").convert("P")
    palette.putpalette([255, 0, 0] * 256)
    palette.save(tmp_path / "palette.png")
    assert read_label_map(str(tmp_path / "palette.png")).tolist() == labels.tolist()
    # 16-bit labels keep values above 255 (ADE20K-847 TIFFs)
    wide = np.array([[0, 846], [300, 65535]], dtype=np.uint16)
    Image.fromarray(wide).save(tmp_path / "wide.tif")
    assert read_label_map(str(tmp_path / "wide.tif")).tolist() == wide.tolist()
    np.save(tmp_path / "labels.npy", labels)
    assert read_label_map(str(tmp_path / "labels.npy")).dtype == np.int64


def test_label_map_refuses_colour_and_names_bad_files(tmp_path):
    rgb = _png(tmp_path, "colour.png", np.zeros((2, 2, 3), dtype=np.uint8))
    with pytest.raises(ValueError, match=r"colour.png has image mode 'RGB'.*not a colour image"):
        read_label_map(rgb)
    with pytest.raises(FileNotFoundError, match=r"label file .*missing.png does not exist"):
        read_label_map(str(tmp_path / "missing.png"))
    (tmp_path / "text.png").write_text("not an image")
    with pytest.raises(OSError, match=r"cannot read label file .*text.png: UnidentifiedImageError"):
        read_label_map(str(tmp_path / "text.png"))


def test_truncated_image_is_named(tmp_path):
    path = _png(tmp_path, "full.png", np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8))
    data = open(path, "rb").read()
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(OSError, match=r"cannot read image file .*truncated.png"):
        read_image(str(truncated))
    (tmp_path / "garbage.jpg").write_bytes(bytes(range(256)) * 4)
    with pytest.raises(OSError, match=r"cannot read image file .*garbage.jpg: UnidentifiedImageError"):
        read_image(str(tmp_path / "garbage.jpg"))


def test_image_conversions(tmp_path):
    rgb = np.random.default_rng(1).integers(0, 255, (3, 4, 3), dtype=np.uint8)
    path = _png(tmp_path, "rgb.png", rgb)
    np.testing.assert_array_equal(read_image(path), rgb)
    np.testing.assert_array_equal(read_image(path, format="BGR"), rgb[:, :, ::-1])
    grey = _png(tmp_path, "grey.png", rgb[:, :, 0])
    np.testing.assert_array_equal(read_image(grey), np.repeat(rgb[:, :, :1], 3, axis=2))
    # 16-bit grey photos are scaled to 8 bits, not clipped at 255
    wide = np.array([[0, 65535], [32768, 257]], dtype=np.uint16)
    Image.fromarray(wide).save(tmp_path / "wide.png")
    assert read_image(str(tmp_path / "wide.png"))[:, :, 0].tolist() == [[0, 255], [128, 1]]
    with pytest.raises(ValueError, match="'RGB' or 'BGR'"):
        read_image(path, format="YUV")
