"""The training mapper: crop/pad to the crop size, label checks, colour augmentation."""
import numpy as np
import pytest
import torch
from PIL import Image

from tests.conftest import requires_detectron2

pytestmark = requires_detectron2


def _write_sample(tmp_path, labels, name="a"):
    h, w = labels.shape
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(tmp_path / f"{name}.jpg")
    Image.fromarray(labels.astype(np.uint8)).save(tmp_path / f"{name}.png")
    return {"file_name": str(tmp_path / f"{name}.jpg"), "sem_seg_file_name": str(tmp_path / f"{name}.png"),
            "height": h, "width": w}


def _mapper(crop=(32, 32), color=True, num_classes=4, dataset_ignore=255):
    from detectron2.data import transforms as T

    from sed_d2.data.mappers import RandomColorAugSSD, SemanticSegmentationMapper

    augs = [T.RandomCrop("absolute", crop)]
    if color:
        augs.append(RandomColorAugSSD("RGB"))
    augs.append(T.RandomFlip())
    return SemanticSegmentationMapper(
        augmentations=augs, image_format="RGB", ignore_label=255, num_classes=num_classes,
        dataset_ignore_label=dataset_ignore, crop_size=crop,
    )


def test_crop_and_pad_to_crop_size(tmp_path):
    labels = np.zeros((20, 40), np.uint8)
    labels[:, 20:] = 3
    out = _mapper()(_write_sample(tmp_path, labels))
    assert out["image"].shape == (3, 32, 32) and out["image"].dtype == torch.uint8
    assert out["sem_seg"].shape == (32, 32) and out["sem_seg"].dtype == torch.long
    # Rows 20..31 are padding: image 128, label ignore.
    assert (out["image"][:, 20:] == 128).all() and (out["sem_seg"][20:] == 255).all()
    assert set(out["sem_seg"][:20].unique().tolist()) <= {0, 3}


def test_label_out_of_range_names_the_file(tmp_path):
    labels = np.zeros((16, 16), np.uint8)
    labels[0, 0] = 7  # 4 classes: 7 is neither a class nor ignore
    with pytest.raises(ValueError, match=r"a\.png has values \[7\]"):
        _mapper(crop=(16, 16))(_write_sample(tmp_path, labels))


def test_dataset_ignore_value_is_remapped(tmp_path):
    labels = np.full((16, 16), 9, np.uint8)  # 9 = this dataset's ignore value
    labels[:8] = 1
    out = _mapper(crop=(16, 16), dataset_ignore=9)(_write_sample(tmp_path, labels))
    assert set(out["sem_seg"].unique().tolist()) == {1, 255}


def test_color_aug_changes_image_not_labels():
    import random

    from sed_d2.data.mappers import ColorAugSSDTransform

    img = np.random.default_rng(0).integers(0, 255, (8, 8, 3), dtype=np.uint8)
    seg = np.arange(64).reshape(8, 8)
    changed = 0
    for seed in range(10):
        t = ColorAugSSDTransform("RGB", rng=random.Random(seed))
        changed += not np.array_equal(t.apply_image(img), img)
        assert np.array_equal(t.apply_segmentation(seg), seg)
        # One instance applies the same distortion every time.
        assert np.array_equal(t.apply_image(img), t.apply_image(img))
    assert changed >= 5


def test_test_mapper_resizes_like_detectron2_and_names_bad_images(tmp_path):
    from detectron2.data import DatasetMapper
    from detectron2.data import transforms as T

    from sed_d2.data.mappers import TestImageMapper

    record = _write_sample(tmp_path, np.zeros((40, 60)))
    ours = TestImageMapper(min_size=32, max_size=100, image_format="RGB")(dict(record))
    theirs = DatasetMapper(is_train=False, augmentations=[T.ResizeShortestEdge(32, 100)], image_format="RGB")(dict(record))
    assert torch.equal(ours["image"], theirs["image"]) and ours["image"].shape == (3, 32, 48)
    assert (ours["height"], ours["width"]) == (40, 60) and "sem_seg_file_name" not in ours
    data = (tmp_path / "a.jpg").read_bytes()
    (tmp_path / "a.jpg").write_bytes(data[: len(data) // 3])
    with pytest.raises(OSError, match=r"cannot read image file .*a.jpg"):
        TestImageMapper(min_size=32, max_size=100, image_format="RGB")(dict(record))
