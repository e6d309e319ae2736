"""The built-in synthetic dataset: determinism, label contract, on-disk safety, registration."""

import json
import os
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from PIL import Image

from sed_d2.data import synthetic
from sed_d2.data.synthetic import (
    DEFAULT_NUM_IMAGES,
    GENERATOR_VERSION,
    SYNTHETIC_CLASSES,
    SYNTHETIC_DATASET_NAMES,
    draw_synthetic_sample,
    ensure_synthetic_dataset,
    generate_synthetic_dataset,
    load_synthetic_dataset,
    synthetic_dataset_dir,
)

NUM_CLASSES = len(SYNTHETIC_CLASSES)
SMALL = {"train": 4, "val": 2}


def _read_split(dataset_dir, split):
    """{id: (image array, label array, label PIL mode)} of one split on disk."""
    samples = {}
    for name in sorted(os.listdir(os.path.join(dataset_dir, "labels", split))):
        stem = os.path.splitext(name)[0]
        label = Image.open(os.path.join(dataset_dir, "labels", split, name))
        image = Image.open(os.path.join(dataset_dir, "images", split, stem + ".jpg"))
        samples[stem] = (np.asarray(image), np.asarray(label), label.mode)
    return samples


def test_classes_are_eight_distinct_names():
    assert len(SYNTHETIC_CLASSES) == 8
    assert len(set(SYNTHETIC_CLASSES)) == 8
    assert "brick wall" in SYNTHETIC_CLASSES


def test_generation_is_deterministic(tmp_path):
    first = generate_synthetic_dataset(str(tmp_path / "a"), "train", num_images=5)
    second = generate_synthetic_dataset(str(tmp_path / "b"), "train", num_images=5)
    assert first == second
    for folder, ext in (("labels", ".png"), ("images", ".jpg")):
        for record in first:
            name = os.path.join(folder, "train", record["id"] + ext)
            assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


def test_sample_depends_only_on_seed_split_and_index():
    image, labels = draw_synthetic_sample(3, "train", seed=0)
    again_image, again_labels = draw_synthetic_sample(3, "train", seed=0)
    np.testing.assert_array_equal(image, again_image)
    np.testing.assert_array_equal(labels, again_labels)
    for other in ((4, "train", 0), (3, "val", 0), (3, "train", 1)):
        assert not np.array_equal(draw_synthetic_sample(*other)[0], image), other


def test_sample_count_does_not_change_samples(tmp_path):
    generate_synthetic_dataset(str(tmp_path / "few"), "val", num_images=2)
    generate_synthetic_dataset(str(tmp_path / "more"), "val", num_images=4)
    few, more = _read_split(tmp_path / "few", "val"), _read_split(tmp_path / "more", "val")
    assert sorted(few) == ["000000", "000001"]
    for stem, (image, label, _) in few.items():
        np.testing.assert_array_equal(image, more[stem][0])
        np.testing.assert_array_equal(label, more[stem][1])


def test_unknown_split_is_named(tmp_path):
    with pytest.raises(ValueError, match="'test'"):
        draw_synthetic_sample(0, "test")
    with pytest.raises(ValueError, match="'test'"):
        generate_synthetic_dataset(str(tmp_path), "test")
    with pytest.raises(ValueError, match="'test'"):
        load_synthetic_dataset("test", str(tmp_path))


def test_files_follow_the_label_contract(tmp_path):
    records = generate_synthetic_dataset(str(tmp_path), "train", num_images=12)
    samples = _read_split(tmp_path, "train")
    assert sorted(samples) == [r["id"] for r in records]
    low, high = synthetic._SIDE_RANGE
    for record in records:
        image, label, mode = samples[record["id"]]
        assert mode == "L"
        assert label.dtype == np.uint8
        assert image.shape == (record["height"], record["width"], 3)
        assert label.shape == (record["height"], record["width"])
        assert low <= record["height"] <= high and low <= record["width"] <= high
        values = set(np.unique(label).tolist())
        assert values <= set(range(NUM_CLASSES)) | {255}, values
        assert 2 <= len(values - {255}) <= 5, values
        assert (label == 255).mean() < 0.06  # ignore is a thin border, not whole regions
    # Sizes vary, so the resize code paths of training and evaluation are exercised.
    assert len({(r["height"], r["width"]) for r in records}) > 1


def test_some_images_mark_borders_as_ignore_and_some_do_not():
    with_ignore = [(draw_synthetic_sample(i)[1] == 255).any() for i in range(16)]
    assert any(with_ignore) and not all(with_ignore)


def test_every_class_appears_in_the_default_train_split():
    present = np.zeros(NUM_CLASSES, bool)
    for index in range(DEFAULT_NUM_IMAGES["train"]):
        labels = draw_synthetic_sample(index, "train")[1]
        present[labels[labels != 255]] = True
        if present.all():
            break
    missing = [c for c, seen in zip(SYNTHETIC_CLASSES, present) if not seen]
    assert not missing, f"classes never drawn in train: {missing}"


def test_classes_are_separable_by_colour_or_texture():
    """Each class's pixels are told apart from every other class by mean colour or texture."""
    stats = {c: [] for c in range(NUM_CLASSES)}
    for index in range(40):
        image, labels = draw_synthetic_sample(index)
        image = image.astype(np.float32)
        # Texture = mean absolute difference to the right/lower neighbour, inside one class.
        grad = np.zeros(labels.shape, np.float32)
        grad[:, :-1] += np.abs(image[:, 1:] - image[:, :-1]).mean(-1)
        grad[:-1, :] += np.abs(image[1:, :] - image[:-1, :]).mean(-1)
        for class_id in np.unique(labels[labels != 255]):
            inside = labels == class_id
            inside[1:-1, 1:-1] &= (labels[:-2, 1:-1] == class_id) & (labels[2:, 1:-1] == class_id)
            stats[class_id].append(np.r_[image[inside].mean(0), grad[inside].mean()])
    means = {c: np.mean(v, axis=0) for c, v in stats.items()}
    for a in range(NUM_CLASSES):
        for b in range(a + 1, NUM_CLASSES):
            colour_gap = np.abs(means[a][:3] - means[b][:3]).max()
            texture_gap = abs(means[a][3] - means[b][3])
            assert colour_gap > 25 or texture_gap > 2, (SYNTHETIC_CLASSES[a], SYNTHETIC_CLASSES[b])


# ----------------------------------------------------------------------------- on disk
def test_ensure_writes_manifest_then_reuses_the_folder(tmp_path, monkeypatch):
    dataset_dir = ensure_synthetic_dataset(str(tmp_path), num_images=SMALL, seed=5)
    assert dataset_dir == os.path.join(str(tmp_path), "sed_d2_synthetic")
    manifest = json.loads((tmp_path / "sed_d2_synthetic" / "manifest.json").read_text())
    assert manifest["generator_version"] == GENERATOR_VERSION
    assert manifest["seed"] == 5
    assert manifest["classes"] == SYNTHETIC_CLASSES
    assert manifest["num_images"] == SMALL
    for split, count in SMALL.items():
        assert len(manifest["images"][split]) == count
        assert len(os.listdir(os.path.join(dataset_dir, "images", split))) == count
    # Nothing but the dataset is left in the root (no temporary folders).
    assert os.listdir(tmp_path) == ["sed_d2_synthetic"]

    def must_not_generate(*args, **kwargs):
        raise AssertionError("a complete, current dataset was generated again")

    monkeypatch.setattr(synthetic, "generate_synthetic_dataset", must_not_generate)
    assert ensure_synthetic_dataset(str(tmp_path), num_images=SMALL, seed=5) == dataset_dir


@pytest.mark.parametrize(
    "spoil",
    ["old_version", "other_seed", "other_counts", "missing_label", "missing_image_folder"],
)
def test_stale_or_incomplete_folder_is_regenerated(tmp_path, spoil):
    dataset_dir = ensure_synthetic_dataset(str(tmp_path), num_images=SMALL)
    manifest_path = os.path.join(dataset_dir, "manifest.json")
    num_images = SMALL
    if spoil == "old_version":
        manifest = json.load(open(manifest_path))
        manifest["generator_version"] = GENERATOR_VERSION - 1
        json.dump(manifest, open(manifest_path, "w"))
    elif spoil == "other_seed":
        manifest = json.load(open(manifest_path))
        manifest["seed"] = 123
        json.dump(manifest, open(manifest_path, "w"))
    elif spoil == "other_counts":
        num_images = {"train": 3, "val": 1}
    elif spoil == "missing_label":
        os.remove(os.path.join(dataset_dir, "labels", "train", "000001.png"))
    else:
        synthetic.shutil.rmtree(os.path.join(dataset_dir, "images", "val"))

    assert ensure_synthetic_dataset(str(tmp_path), num_images=num_images) == dataset_dir
    manifest = json.load(open(manifest_path))
    assert manifest["generator_version"] == GENERATOR_VERSION
    assert manifest["seed"] == synthetic.DEFAULT_SEED
    assert manifest["num_images"] == num_images
    for split, count in num_images.items():
        for folder in ("images", "labels"):
            assert len(os.listdir(os.path.join(dataset_dir, folder, split))) == count
    assert os.listdir(tmp_path) == ["sed_d2_synthetic"]  # the stale copy was deleted


@pytest.mark.parametrize("manifest_text", [None, "{ truncated", '{"generator": "someone else"}'])
def test_folder_not_written_by_us_is_reported_and_kept(tmp_path, manifest_text):
    foreign = tmp_path / "sed_d2_synthetic"
    (foreign / "images" / "train").mkdir(parents=True)
    (foreign / "images" / "train" / "precious.jpg").write_bytes(b"user data")
    if manifest_text is not None:
        (foreign / "manifest.json").write_text(manifest_text)
    with pytest.raises(RuntimeError, match="sed_d2_synthetic.*manifest.json"):
        ensure_synthetic_dataset(str(tmp_path), num_images=SMALL)
    assert (foreign / "images" / "train" / "precious.jpg").read_bytes() == b"user data"


def test_losing_the_rename_race_accepts_the_winners_folder(tmp_path, monkeypatch):
    winner_dir = ensure_synthetic_dataset(str(tmp_path), num_images=SMALL)
    winner_manifest = open(os.path.join(winner_dir, "manifest.json")).read()
    # A second process that found no folder generates its own copy and loses the rename.
    synthetic._generate_atomically(winner_dir, dict(SMALL), synthetic.DEFAULT_SEED)
    assert open(os.path.join(winner_dir, "manifest.json")).read() == winner_manifest
    assert os.listdir(tmp_path) == ["sed_d2_synthetic"]  # the loser's copy is gone


def test_concurrent_generation_yields_one_complete_folder(tmp_path):
    results, errors = [], []

    def generate():
        try:
            results.append(ensure_synthetic_dataset(str(tmp_path), num_images=SMALL))
        except Exception as e:  # noqa: BLE001 - reported by the assertion below
            errors.append(e)

    threads = [threading.Thread(target=generate) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    assert len(set(results)) == 1
    assert os.listdir(tmp_path) == ["sed_d2_synthetic"]
    assert len(load_synthetic_dataset("train", str(tmp_path), SMALL)) == SMALL["train"]


def test_abandoned_temporary_folders_are_removed(tmp_path):
    abandoned = tmp_path / ".sed_d2_synthetic.tmp-1-deadbeef"
    in_progress = tmp_path / ".sed_d2_synthetic.tmp-2-cafecafe"
    abandoned.mkdir()
    in_progress.mkdir()
    two_hours_ago = time.time() - 7200
    os.utime(abandoned, (two_hours_ago, two_hours_ago))
    ensure_synthetic_dataset(str(tmp_path), num_images=SMALL)
    assert not abandoned.exists()
    assert in_progress.exists()  # could belong to a process that is still generating


def test_root_comes_from_environment(monkeypatch, tmp_path):
    monkeypatch.delenv("SED_D2_SYNTHETIC_ROOT", raising=False)
    monkeypatch.setenv("DETECTRON2_DATASETS", str(tmp_path / "d2"))
    assert synthetic_dataset_dir() == os.path.join(str(tmp_path / "d2"), "sed_d2_synthetic")
    monkeypatch.setenv("SED_D2_SYNTHETIC_ROOT", str(tmp_path / "own"))
    assert synthetic_dataset_dir() == os.path.join(str(tmp_path / "own"), "sed_d2_synthetic")
    monkeypatch.delenv("SED_D2_SYNTHETIC_ROOT")
    monkeypatch.delenv("DETECTRON2_DATASETS")
    assert synthetic_dataset_dir() == os.path.join("datasets", "sed_d2_synthetic")


def test_bad_counts_are_rejected(tmp_path):
    with pytest.raises(ValueError, match="test"):
        ensure_synthetic_dataset(str(tmp_path), num_images={"test": 3})
    with pytest.raises(ValueError, match="at least one"):
        ensure_synthetic_dataset(str(tmp_path), num_images={"val": 0})


def test_module_imports_and_reports_clearly_without_detectron2():
    # A fresh interpreter where importing detectron2 fails; the module is loaded from its file
    # so that the sed_d2 package (which needs detectron2) is not imported.
    code = (
        "import sys, importlib.util\n"
        "sys.modules['detectron2'] = None\n"
        f"spec = importlib.util.spec_from_file_location('synthetic', {synthetic.__file__!r})\n"
        "module = importlib.util.module_from_spec(spec)\n"
        "spec.loader.exec_module(module)\n"
        "assert module.draw_synthetic_sample(0)[0].ndim == 3\n"
        "try:\n"
        "    module.register_synthetic_datasets()\n"
        "except ImportError as e:\n"
        "    print('IMPORT ERROR:', e)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "IMPORT ERROR: register_synthetic_datasets needs detectron2" in result.stdout


# ----------------------------------------------------------------------------- detectron2
@pytest.fixture
def restore_catalogs():
    """Put the synthetic registrations back as they were (other tests rely on them)."""
    catalog = pytest.importorskip(
        "detectron2.data", reason="detectron2 is not installed: registration is not tested"
    )
    saved = {}
    for name in SYNTHETIC_DATASET_NAMES.values():
        if name in catalog.DatasetCatalog.list():
            saved[name] = (
                catalog.DatasetCatalog[name],
                catalog.MetadataCatalog.get(name).as_dict(),
                synthetic._REGISTERED.get(name),
            )
    yield catalog
    for name in SYNTHETIC_DATASET_NAMES.values():
        if name in catalog.DatasetCatalog.list():
            catalog.DatasetCatalog.remove(name)
        if name in catalog.MetadataCatalog.list():
            catalog.MetadataCatalog.remove(name)
        synthetic._REGISTERED.pop(name, None)
        if name in saved:
            loader, metadata, arguments = saved[name]
            catalog.DatasetCatalog.register(name, loader)
            metadata.pop("name")
            catalog.MetadataCatalog.get(name).set(**metadata)
            if arguments is not None:
                synthetic._REGISTERED[name] = arguments


def test_registration_and_lazy_loading(tmp_path, restore_catalogs):
    DatasetCatalog, MetadataCatalog = (
        restore_catalogs.DatasetCatalog,
        restore_catalogs.MetadataCatalog,
    )
    synthetic.register_synthetic_datasets(str(tmp_path), num_images=SMALL)
    synthetic.register_synthetic_datasets(str(tmp_path), num_images=SMALL)  # idempotent
    assert not (tmp_path / "sed_d2_synthetic").exists()  # registering generates nothing

    dataset_dir = os.path.join(str(tmp_path), "sed_d2_synthetic")
    for split, name in SYNTHETIC_DATASET_NAMES.items():
        dicts = DatasetCatalog.get(name)
        assert len(dicts) == SMALL[split]
        assert len({d["image_id"] for d in dicts}) == len(dicts)
        for d in dicts:
            assert set(d) == {"file_name", "sem_seg_file_name", "height", "width", "image_id"}
            width, height = Image.open(d["sem_seg_file_name"]).size
            assert Image.open(d["file_name"]).size == (width, height)
            assert (d["height"], d["width"]) == (height, width)
        meta = MetadataCatalog.get(name)
        assert meta.stuff_classes == SYNTHETIC_CLASSES
        assert meta.ignore_label == 255
        assert meta.evaluator_type == "sem_seg"
        assert meta.image_root == os.path.join(dataset_dir, "images", split)
        assert meta.sem_seg_root == os.path.join(dataset_dir, "labels", split)
        assert (meta.gt_ext, meta.image_ext) == ("png", "jpg")
        assert meta.prepare_script == "(generated automatically on first use)"
        assert all(os.path.dirname(d["file_name"]) == meta.image_root for d in dicts)

    # Another root replaces the registration instead of raising on changed metadata.
    synthetic.register_synthetic_datasets(str(tmp_path / "other"), num_images=SMALL)
    assert MetadataCatalog.get("sed_d2_synthetic_val").image_root.startswith(
        str(tmp_path / "other")
    )


def test_registration_survives_a_second_import(restore_catalogs):
    """Re-executing the module (as a second import path would) must not raise."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("synthetic_again", synthetic.__file__)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.register_synthetic_datasets()
    module.register_synthetic_datasets()
    assert "sed_d2_synthetic_train" in restore_catalogs.DatasetCatalog.list()
