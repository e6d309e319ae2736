"""Pairing images and labels by stem, and the errors for missing or half-prepared folders."""

import logging

import pytest

from sed_d2.data.datasets.sem_seg_loader import (
    DatasetNotFoundError,
    IncompleteDatasetError,
    file_suffix,
    load_sem_seg_pairs,
)


def _touch(folder, *names):
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(b"x")


def _load(root, split_defined_by="images", **kwargs):
    arguments = dict(
        image_root=str(root / "images"),
        gt_root=str(root / "labels"),
        image_ext="jpg",
        gt_ext="png",
        split_defined_by=split_defined_by,
        prepare_script="datasets/prepare/prepare_thing.py",
        datasets_root=str(root),
        download="thing.zip",
    )
    arguments.update(kwargs)
    return load_sem_seg_pairs("thing_val_sem_seg", **arguments)


def test_pairs_by_stem_sorted(tmp_path):
    _touch(tmp_path / "images", "b.jpg", "a.jpg", "notes.txt")
    _touch(tmp_path / "labels", "a.png", "b.png", ".b.png.123.tmp")
    records = _load(tmp_path)
    assert records == [
        {
            "file_name": str(tmp_path / "images" / "a.jpg"),
            "sem_seg_file_name": str(tmp_path / "labels" / "a.png"),
        },
        {
            "file_name": str(tmp_path / "images" / "b.jpg"),
            "sem_seg_file_name": str(tmp_path / "labels" / "b.png"),
        },
    ]


def test_extra_images_are_fine_when_labels_define_the_split(tmp_path, caplog):
    _touch(tmp_path / "images", "a.jpg", "b.jpg", "c.jpg")
    _touch(tmp_path / "labels", "b.png")
    with caplog.at_level(logging.WARNING):
        records = _load(tmp_path, "labels", official_size=1)
    assert [r["file_name"] for r in records] == [str(tmp_path / "images" / "b.jpg")]
    assert not caplog.records  # official size matched: nothing to warn about


def test_missing_image_folder_names_env_folder_and_script(tmp_path):
    with pytest.raises(DatasetNotFoundError) as error:
        _load(tmp_path)
    message = str(error.value)
    assert "Dataset 'thing_val_sem_seg' not found" in message
    assert "$DETECTRON2_DATASETS" in message and repr(str(tmp_path)) in message
    assert str(tmp_path / "images") in message
    assert "python datasets/prepare/prepare_thing.py" in message and "thing.zip" in message
    assert isinstance(error.value, FileNotFoundError)


def test_missing_label_folder_says_not_prepared(tmp_path):
    _touch(tmp_path / "images", "a.jpg")
    with pytest.raises(
        DatasetNotFoundError, match="is not prepared: the label folder .*labels does not exist"
    ):
        _load(tmp_path)


def test_empty_label_folder_is_an_error(tmp_path):
    _touch(tmp_path / "images", "a.jpg")
    (tmp_path / "labels").mkdir()
    with pytest.raises(IncompleteDatasetError, match=r"holds no \*\.png file.*prepare_thing\.py"):
        _load(tmp_path)


def test_labels_without_images_reported_with_counts(tmp_path):
    _touch(tmp_path / "images", "a.jpg")
    _touch(tmp_path / "labels", "a.png", "b.png", "c.png")
    with pytest.raises(IncompleteDatasetError) as error:
        _load(tmp_path, "labels")
    assert "2 of the 3 label files" in str(error.value) and "(e.g. b, c)" in str(error.value)


def test_half_prepared_labels_reported_with_counts(tmp_path):
    _touch(tmp_path / "images", *[f"{i}.jpg" for i in range(7)])
    _touch(tmp_path / "labels", "0.png", "1.png")
    with pytest.raises(IncompleteDatasetError) as error:
        _load(tmp_path)
    message = str(error.value)
    assert "half-prepared: 5 of the 7 images" in message and "only 2 labels exist" in message
    assert (
        "(e.g. 2, 3, 4, 5, 6)" in message
        and "Rerun: python datasets/prepare/prepare_thing.py" in message
    )


def test_official_size_mismatch_warns(tmp_path, caplog):
    _touch(tmp_path / "images", "a.jpg")
    _touch(tmp_path / "labels", "a.png")
    with caplog.at_level(logging.WARNING):
        _load(tmp_path, official_size=5000)
    assert "1 image/label pairs" in caplog.text and "the official split has 5000" in caplog.text


def test_cityscapes_suffixes_and_city_folders(tmp_path):
    _touch(tmp_path / "images", "lindau/l_1_leftImg8bit.png", "frankfurt/f_1_leftImg8bit.png")
    _touch(
        tmp_path / "labels",
        "lindau/l_1_gtFine_labelTrainIds.png",
        "lindau/l_1_gtFine_labelIds.png",
        "frankfurt/f_1_gtFine_labelTrainIds.png",
        "frankfurt/f_1_gtFine_color.png",
    )
    records = _load(
        tmp_path, image_ext="_leftImg8bit.png", gt_ext="_gtFine_labelTrainIds.png", recursive=True
    )
    assert [r["sem_seg_file_name"] for r in records] == [
        str(tmp_path / "labels" / "frankfurt" / "f_1_gtFine_labelTrainIds.png"),
        str(tmp_path / "labels" / "lindau" / "l_1_gtFine_labelTrainIds.png"),
    ]
    assert records[0]["file_name"] == str(tmp_path / "images" / "frankfurt" / "f_1_leftImg8bit.png")


def test_file_suffix():
    assert file_suffix("png") == ".png" and file_suffix(".tif") == ".tif"
    assert file_suffix("_gtFine_labelTrainIds.png") == "_gtFine_labelTrainIds.png"
