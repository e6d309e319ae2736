"""The registered names: metadata contract, idempotent import, and loading prepared fixtures."""

import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip(
    "detectron2", reason="detectron2 not installed: dataset registration is untestable"
)

from detectron2.data import DatasetCatalog, MetadataCatalog  # noqa: E402

from sed_d2.data.datasets import builtin  # noqa: E402
from sed_d2.data.datasets.sem_seg_loader import (
    DatasetNotFoundError,
    IncompleteDatasetError,
)  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[3]

# name: (number of classes, ignore label, evaluator type, background handling, background index)
EXPECTED = {
    "coco_2017_train_stuff_all_sem_seg": (171, 255, "sem_seg", "none", None),
    "coco_2017_test_stuff_all_sem_seg": (171, 255, "sem_seg", "none", None),
    "ade20k_150_test_sem_seg": (150, 255, "sem_seg", "none", None),
    "ade20k_full_sem_seg_freq_val_all": (847, 65535, "sem_seg", "none", None),
    "context_59_test_sem_seg": (59, 255, "sem_seg", "none", None),
    "context_459_test_sem_seg": (459, 65535, "sem_seg", "none", None),
    "voc_2012_test_sem_seg": (20, 255, "sem_seg", "none", None),
    "voc_2012_test_background_sem_seg": (59, 255, "sem_seg_background", "proxy_prompts", 20),
    "voc_2012_val_bg21_sem_seg": (21, 255, "sem_seg", "unprompted_class", 0),
    "context_60_val_bg_sem_seg": (60, 255, "sem_seg", "unprompted_class", 0),
    "coco_object_val_sem_seg": (81, 255, "sem_seg", "unprompted_class", 0),
    "cityscapes_19_val_sem_seg": (19, 255, "sem_seg", "none", None),
}


def test_every_name_registered_with_the_metadata_contract():
    assert {d.name for d in builtin.SEM_SEG_DATASETS} == set(EXPECTED)
    registered = set(DatasetCatalog.list())
    for name, (num_classes, ignore, evaluator, background, background_index) in EXPECTED.items():
        assert name in registered, name
        meta = MetadataCatalog.get(name)
        assert len(meta.stuff_classes) == num_classes, name
        assert all(isinstance(c, str) and c for c in meta.stuff_classes), name
        assert (meta.ignore_label, meta.evaluator_type, meta.background_handling) == (
            ignore,
            evaluator,
            background,
        )
        assert meta.get("background_index", None) == background_index, name
        for key in ("image_root", "sem_seg_root", "image_ext", "gt_ext", "prepare_script"):
            assert isinstance(meta.get(key), str) and meta.get(key), (name, key)
        assert (REPO_ROOT / meta.prepare_script).is_file(), meta.prepare_script
        assert "seg_seg_root" not in meta.as_dict()
        if background == "unprompted_class":
            assert meta.background_class == "background" == meta.stuff_classes[0]
    voc20b = MetadataCatalog.get("voc_2012_test_background_sem_seg")
    assert voc20b.stuff_classes[:20] == MetadataCatalog.get("voc_2012_test_sem_seg").stuff_classes
    assert voc20b.stuff_classes[20] == "bag"  # first background proxy, as official voc20b.json
    coco = MetadataCatalog.get("coco_2017_test_stuff_all_sem_seg")
    assert (
        coco.stuff_dataset_id_to_contiguous_id[1] == 0
        and coco.stuff_dataset_id_to_contiguous_id[182] == 170
    )
    assert len(coco.stuff_dataset_id_to_contiguous_id) == 171
    ade847 = MetadataCatalog.get("ade20k_full_sem_seg_freq_val_all")
    assert ade847.stuff_dataset_id_to_contiguous_id[2978] == 0
    cc12m = MetadataCatalog.get("cc12m_train")
    assert (
        cc12m.prepare_script == "datasets/prepare/prepare_cc12m.py" and "cc12m_train" in registered
    )


def test_importing_again_does_not_register_twice():
    before = len(DatasetCatalog.list())
    importlib.reload(builtin)
    importlib.import_module("sed_d2.data.datasets")
    builtin.register_all_datasets("/somewhere/else")  # already registered: a no-op
    assert len(DatasetCatalog.list()) == before
    assert MetadataCatalog.get("ade20k_150_test_sem_seg").image_root != "/somewhere/else"


def test_detectron2_builtin_names_are_left_alone():
    # detectron2 owns these; sed_d2 registers its own, differently named splits
    for name in ("ade20k_sem_seg_val", "cityscapes_fine_sem_seg_val"):
        assert MetadataCatalog.get(name).get("prepare_script", None) is None
    with pytest.raises(RuntimeError, match="already registered by another package"):
        builtin._already_registered("ade20k_sem_seg_val", "datasets/prepare/prepare_ade20k_150.py")


@pytest.fixture
def registered_under(monkeypatch):
    """Re-register every sed_d2 name under another root for one test, then restore."""
    names = [d.name for d in builtin.SEM_SEG_DATASETS] + [builtin.CC12M_DATASET_NAME]

    def unregister():
        for name in names:
            if name in DatasetCatalog.list():
                DatasetCatalog.remove(name)
            if name in MetadataCatalog.list():
                MetadataCatalog.remove(name)

    def register(root):
        unregister()
        builtin.register_all_datasets(str(root))

    yield register
    unregister()
    builtin.register_all_datasets(builtin._root)


def _prepare_everything(raw, root):
    raw.write_coco_stuff_raw(root)
    raw.write_ade20k_150_raw(root)
    raw.write_ade20k_847_raw(root)
    raw.write_pascal_context_59_raw(root)
    raw.write_pascal_context_459_raw(root, with_missing=False)
    raw.write_voc_raw(root)
    raw.write_cityscapes_raw(root)
    raw.write_cc12m_raw(root)
    for script in (
        "prepare_coco_stuff",
        "prepare_coco_object",
        "prepare_ade20k_150",
        "prepare_ade20k_847",
        "prepare_pascal_context_59",
        "prepare_pascal_context_459",
        "prepare_voc",
        "prepare_cityscapes",
    ):
        assert raw.run_prepare(script, root) == 0, script
    assert raw.run_prepare("prepare_cc12m", root, "--nlp", "heuristic") == 0


# name: number of prepared fixture images
FIXTURE_SIZES = {
    "coco_2017_train_stuff_all_sem_seg": 1,
    "coco_2017_test_stuff_all_sem_seg": 2,
    "ade20k_150_test_sem_seg": 2,
    "ade20k_full_sem_seg_freq_val_all": 2,
    "context_59_test_sem_seg": 2,
    "context_459_test_sem_seg": 2,
    "voc_2012_test_sem_seg": 2,
    "voc_2012_test_background_sem_seg": 2,
    "voc_2012_val_bg21_sem_seg": 2,
    "context_60_val_bg_sem_seg": 2,
    "coco_object_val_sem_seg": 2,
    "cityscapes_19_val_sem_seg": 2,
}


def test_registered_names_load_prepared_fixtures(raw, datasets_root, registered_under, capsys):
    _prepare_everything(raw, datasets_root)
    capsys.readouterr()
    registered_under(datasets_root)
    for name, size in FIXTURE_SIZES.items():
        meta = MetadataCatalog.get(name)
        records = DatasetCatalog.get(name)
        assert len(records) == size, name
        # evaluated classes: the vocabulary, except VOC-20b whose 59 prompts score 21 classes
        num_classes = (
            meta.background_index + 1
            if meta.evaluator_type == "sem_seg_background"
            else len(meta.stuff_classes)
        )
        for record in records:
            assert os.path.isfile(record["file_name"]) and os.path.isfile(
                record["sem_seg_file_name"]
            )
            stem = Path(record["file_name"]).name.replace("_leftImg8bit.png", "").rsplit(".", 1)[0]
            assert Path(record["sem_seg_file_name"]).name.startswith(stem), (name, record)
            with Image.open(record["sem_seg_file_name"]) as image:
                values = set(np.unique(np.asarray(image)).tolist())
            valid = set(range(num_classes)) | {meta.ignore_label}
            assert values <= valid, (name, record["sem_seg_file_name"], values - valid)
    # images and labels line up in size (the label is the image's, after any resize)
    for record in DatasetCatalog.get("ade20k_full_sem_seg_freq_val_all"):
        with Image.open(record["file_name"]) as image, Image.open(
            record["sem_seg_file_name"]
        ) as label:
            assert image.size == label.size
    voc20b = {
        Path(r["sem_seg_file_name"]).name: r
        for r in DatasetCatalog.get("voc_2012_test_background_sem_seg")
    }
    with Image.open(voc20b["2007_000033.png"]["sem_seg_file_name"]) as image:
        assert np.asarray(image)[0, 0] == 20  # background is class 20 in the SED protocol
    cc12m = DatasetCatalog.get("cc12m_train")
    assert {r["image_id"]: r["nouns"] for r in cc12m} == raw.CC12M_HEURISTIC_NOUNS


def test_registered_names_report_missing_and_half_prepared(raw, datasets_root, registered_under):
    registered_under(datasets_root)
    with pytest.raises(DatasetNotFoundError) as error:
        DatasetCatalog.get("context_459_test_sem_seg")
    message = str(error.value)
    assert (
        "DETECTRON2_DATASETS" in message
        and str(datasets_root / "VOCdevkit" / "VOC2010" / "JPEGImages") in message
    )
    assert "datasets/prepare/prepare_pascal_context_459.py" in message

    raw.write_coco_stuff_raw(datasets_root)
    with pytest.raises(DatasetNotFoundError, match="prepare_coco_stuff.py"):
        DatasetCatalog.get("coco_2017_test_stuff_all_sem_seg")  # labels not prepared yet
    assert raw.run_prepare("prepare_coco_stuff", datasets_root) == 0
    (
        datasets_root / "coco-stuff" / "annotations_detectron2" / "val2017" / "000000000285.png"
    ).unlink()
    with pytest.raises(IncompleteDatasetError, match="half-prepared: 1 of the 2 images"):
        DatasetCatalog.get("coco_2017_test_stuff_all_sem_seg")


def test_root_is_read_from_environment_at_import(raw, tmp_path):
    """A fresh process: ``~`` in $DETECTRON2_DATASETS is expanded and the data loads."""
    home = tmp_path / "home"
    raw.write_voc_raw(home / "d2data")
    assert raw.run_prepare("prepare_voc", home / "d2data") == 0
    code = (
        "import json; import sed_d2.data.datasets; "
        "from detectron2.data import DatasetCatalog, MetadataCatalog; "
        "m = MetadataCatalog.get('voc_2012_test_sem_seg'); "
        "print(json.dumps([m.image_root, len(DatasetCatalog.get('voc_2012_test_sem_seg'))]))"
    )
    env = dict(
        os.environ, HOME=str(home), DETECTRON2_DATASETS="~/d2data", PYTHONPATH=str(REPO_ROOT)
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        env=env,
        capture_output=True,
        text=True,
        cwd=str(tmp_path),
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    image_root, count = json.loads(result.stdout.strip().splitlines()[-1])
    assert image_root == str(home / "d2data" / "VOCdevkit" / "VOC2012" / "JPEGImages")
    assert count == 2
