"""Loading CC12M image-caption records from img2dataset shards, with and without the index."""

import logging

import numpy as np
import pytest

from sed_d2.data.datasets.cc12m import list_shards, load_cc12m, open_cc12m_image
from sed_d2.data.datasets.sem_seg_loader import DatasetNotFoundError, IncompleteDatasetError

SCRIPT = "datasets/prepare/prepare_cc12m.py"


def _load(base, root):
    return load_cc12m("cc12m_train", str(base), datasets_root=str(root), prepare_script=SCRIPT)


def test_scan_without_index_gives_captions_only(raw, datasets_root, caplog):
    base = raw.write_cc12m_raw(datasets_root)
    assert [(s.name, s.kind) for s in list_shards(str(base))] == [
        ("00000", "folder"),
        ("00001", "tar"),
    ]
    with caplog.at_level(logging.WARNING):
        records = _load(base, datasets_root)
    assert "no noun-phrase index" in caplog.text and SCRIPT in caplog.text
    assert [(r["image_id"], r["caption"]) for r in records] == sorted(raw.CC12M_CAPTIONS.items())
    assert all("nouns" not in r for r in records)
    assert records[0]["file_name"] == str(base / "00000" / "000000000.jpg")
    assert (
        records[2]["file_name"] == str(base / "00001.tar")
        and records[2]["tar_member"] == "000010000.jpg"
    )


def test_index_adds_nouns_and_images_open_from_tar_offsets(raw, datasets_root):
    base = raw.write_cc12m_raw(datasets_root)
    assert raw.run_prepare("prepare_cc12m", datasets_root, "--nlp", "heuristic") == 0
    records = _load(base, datasets_root)
    assert {r["image_id"]: r["nouns"] for r in records} == raw.CC12M_HEURISTIC_NOUNS
    by_key = {r["image_id"]: r for r in records}
    # the fixture's JPEGs are flat grey: 40 * i for shard 00000 sample i, 200 for the tar sample
    tar_image = np.asarray(open_cc12m_image(by_key["000010000"]))
    assert tar_image.shape == (4, 5, 3) and abs(int(tar_image.mean()) - 200) <= 2
    file_image = np.asarray(open_cc12m_image(by_key["000000001"]))
    assert abs(int(file_image.mean()) - 40) <= 2


def test_partial_index_is_an_error_with_counts(raw, datasets_root):
    base = raw.write_cc12m_raw(datasets_root)
    assert raw.run_prepare("prepare_cc12m", datasets_root, "--nlp", "heuristic") == 0
    (base / "sed_d2_index" / "00001.jsonl").unlink()
    with pytest.raises(IncompleteDatasetError, match="covers 1 of 2 shards .*00001"):
        _load(base, datasets_root)


def test_missing_folder_names_env_and_script(datasets_root):
    with pytest.raises(DatasetNotFoundError) as error:
        _load(datasets_root / "cc12m", datasets_root)
    message = str(error.value)
    assert "$DETECTRON2_DATASETS" in message and str(datasets_root / "cc12m") in message
    assert SCRIPT in message and "img2dataset" in message


def test_folder_without_shards_is_an_error(datasets_root):
    (datasets_root / "cc12m" / "misc").mkdir(parents=True)
    with pytest.raises(DatasetNotFoundError, match="no img2dataset shard"):
        _load(datasets_root / "cc12m", datasets_root)
