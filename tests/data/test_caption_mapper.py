"""The image-caption training mapper (sed_d2/data/caption_mapper.py)."""
import io
import tarfile

import numpy as np
import pytest
import torch
from PIL import Image

from tests.conftest import requires_detectron2

pytestmark = requires_detectron2

PHRASES = [f"thing {i}" for i in range(12)]


def _mapper(**kwargs):
    from sed_d2.data.caption_mapper import ImageCaptionMapper

    return ImageCaptionMapper(**{"image_size": (32, 48), "max_phrases": 3, **kwargs})


def _image_file(tmp_path, name="a.jpg", size=(40, 30)):
    path = tmp_path / name
    Image.fromarray(np.random.RandomState(0).randint(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(path)
    return str(path)


def test_phrase_sampling_is_reproducible_by_position(tmp_path):
    from sed_d2.data.loader import PositionSeededDataset

    record = {"file_name": _image_file(tmp_path), "image_id": "a", "caption": "...", "nouns": PHRASES}
    dataset = PositionSeededDataset([record], _mapper(), seed=42)
    first = [dataset[(position, 0)]["nouns"] for position in range(6)]
    assert all(len(p) == 3 and len(set(p)) == 3 for p in first)
    for phrases in first:  # a subset, in caption order
        assert phrases == sorted(phrases, key=PHRASES.index)
    assert len({tuple(p) for p in first}) > 1  # positions draw different subsets
    # any order of access, a fresh dataset (a resumed run): the same phrases per position
    again = PositionSeededDataset([record], _mapper(), seed=42)
    assert [again[(position, 0)]["nouns"] for position in reversed(range(6))] == first[::-1]
    other_seed = PositionSeededDataset([record], _mapper(), seed=43)
    assert [other_seed[(position, 0)]["nouns"] for position in range(6)] != first


def test_output_is_the_squashed_image_and_the_cleaned_phrases(tmp_path):
    record = {"file_name": _image_file(tmp_path), "image_id": "a", "caption": "c", "nouns": [" sky ", "", "sky", "a dog"]}
    out = _mapper()(record)
    assert out["image"].dtype == torch.uint8 and out["image"].shape == (3, 32, 48)
    assert out["nouns"] == ["sky", "a dog"]
    assert out["image_id"] == "a" and out["caption"] == "c"
    assert "nouns" in record and record["nouns"][0] == " sky "  # the record is not modified
    # the same image at its own size is passed through unchanged
    same = _mapper(image_size=(30, 40))(record)["image"]
    assert torch.equal(same, torch.as_tensor(np.array(Image.open(record["file_name"]))).permute(2, 0, 1))
    flipped = _mapper(image_size=(30, 40), flip=True)
    np.random.seed(0)
    draws = [bool(np.random.rand() < 0.5) for _ in range(4)]
    np.random.seed(0)
    outs = [flipped(record)["image"] for _ in range(4)]
    for out_image, flip in zip(outs, draws):
        assert torch.equal(out_image, same.flip(-1) if flip else same)


def test_image_read_from_its_tar_offset(tmp_path):
    data = io.BytesIO()
    Image.fromarray(np.full((30, 40, 3), 200, np.uint8)).save(data, format="PNG")
    tar_path = tmp_path / "00000.tar"
    with tarfile.open(tar_path, "w") as archive:
        info = tarfile.TarInfo("000000001.png")
        info.size = len(data.getvalue())
        archive.addfile(info, io.BytesIO(data.getvalue()))
    with tarfile.open(tar_path) as archive:
        member = archive.getmember("000000001.png")
    record = {
        "file_name": str(tar_path), "tar_member": member.name, "tar_offset": member.offset_data,
        "tar_size": member.size, "image_id": "000000001", "nouns": ["a wall"],
    }
    out = _mapper(image_size=(30, 40))(record)
    assert torch.equal(out["image"], torch.full((3, 30, 40), 200, dtype=torch.uint8))


def test_unreadable_image_or_caption_names_the_record(tmp_path):
    from sed_d2.data.caption_mapper import clean_phrases

    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not an image")
    with pytest.raises(OSError, match=r"caption record 'x7' \(.*broken.jpg\)"):
        _mapper()({"file_name": str(broken), "image_id": "x7", "nouns": ["sky"]})
    with pytest.raises(OSError, match=r"caption record 'gone'.*does not exist"):
        _mapper()({"file_name": str(tmp_path / "missing.jpg"), "image_id": "gone", "nouns": ["sky"]})
    with pytest.raises(ValueError, match=r"caption record 'x8' .*unreadable noun phrases"):
        clean_phrases({"file_name": "f.jpg", "image_id": "x8", "nouns": "sky"})
    with pytest.raises(ValueError, match=r"caption record 'x9' .*prepare_cc12m.py"):
        clean_phrases({"file_name": "f.jpg", "image_id": "x9", "caption": "a sky"})


def test_records_without_phrases_are_dropped_before_training():
    mapper = _mapper()
    records = [{"image_id": str(i), "file_name": "f", "nouns": nouns} for i, nouns in enumerate([["a"], [], [" "], ["b", "c"]])]
    assert [r["image_id"] for r in mapper.select_records(records)] == ["0", "3"]
    with pytest.raises(ValueError, match="none of the 2 image-caption records"):
        mapper.select_records(records[1:3])
