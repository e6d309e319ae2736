"""tools/demo.py: vocabulary parsing, and a real run of the tiny SED on synthetic images."""

import argparse
import glob
import json
import logging
import os

import numpy as np
import pytest
from PIL import Image

pytest.importorskip(
    "detectron2", reason="detectron2 is not installed: tools/demo.py cannot be tested"
)

from tests.d2_helpers import ROOT, load_tool  # noqa: E402

TINY_CONFIG = os.path.join(ROOT, "configs", "sed", "tiny.yaml")


@pytest.fixture(scope="module")
def demo():
    return load_tool("demo")


@pytest.fixture
def tiny_config():
    return TINY_CONFIG


@pytest.fixture
def scenes(tmp_path):
    """Two synthetic photos of different sizes and formats, plus a file that is no image."""
    from sed_d2.data.synthetic import draw_synthetic_sample

    folder = tmp_path / "inputs"
    folder.mkdir()
    paths = []
    for index, ext in ((0, ".jpg"), (1, ".png")):
        image = draw_synthetic_sample(index, "val")[0]
        path = folder / f"scene{index}{ext}"
        Image.fromarray(image).save(path)
        paths.append(str(path))
    broken = folder / "broken.jpg"
    broken.write_text("this is not an image")
    return paths, str(broken)


# ----------------------------------------------------------------------------- parsing
def test_parse_vocabulary_joins_synonyms_and_strips(demo):
    assert demo.parse_vocabulary(" cat | kitten ,dog,  grass") == ["cat, kitten", "dog", "grass"]
    assert demo.parse_vocabulary("brick wall") == ["brick wall"]


@pytest.mark.parametrize(
    "text, message",
    [
        ("cat,,dog", "class 2 .* empty"),
        ("cat,dog,", "class 3 .* empty"),
        ("cat||kitten", "empty synonym"),
        (" ", "class 1 .* empty"),
        ("cat,dog,Cat", r"'Cat' appears twice .*classes 1 and 3"),
        ("cat|kitten,kitten", "'kitten' appears twice"),
    ],
)
def test_parse_vocabulary_rejects_empty_and_repeated_names(demo, text, message):
    with pytest.raises(argparse.ArgumentTypeError, match=message):
        demo.parse_vocabulary(text)


def test_bad_vocabulary_is_a_usage_error(demo, capsys):
    with pytest.raises(SystemExit) as exit_info:
        demo.get_parser().parse_args(
            ["--config-file", "c.yaml", "--input", "a.jpg", "--output", "o", "--vocabulary", "a,,b"]
        )
    assert exit_info.value.code == 2
    assert "--vocabulary" in capsys.readouterr().err


def test_vocabulary_and_dataset_are_exclusive(demo):
    with pytest.raises(SystemExit):
        demo.get_parser().parse_args(
            ["--config-file", "c", "--input", "a", "--output", "o", "--vocabulary", "a",
             "--dataset", "sed_d2_synthetic_val"]
        )  # fmt: skip


def test_opts_take_the_rest_of_the_line(demo):
    args = demo.get_parser().parse_args(
        ["--config-file", "c", "--input", "a.jpg", "b.jpg", "--output", "o",
         "--opts", "MODEL.WEIGHTS", "w.pth", "MODEL.DEVICE", "cpu"]
    )  # fmt: skip
    assert args.input == ["a.jpg", "b.jpg"]
    assert args.opts == ["MODEL.WEIGHTS", "w.pth", "MODEL.DEVICE", "cpu"]


def test_unique_stems_never_overwrite(demo):
    paths = ["a/x.jpg", "b/x.png", "c/y.jpg", "d/x.jpeg"]
    assert demo.unique_stems(paths) == ["x", "x-2", "y", "x-3"]


def test_expand_inputs_reads_folders_and_globs(demo, scenes, tmp_path):
    good, broken = scenes
    folder = os.path.dirname(good[0])
    assert demo.expand_inputs([folder]) == sorted(good + [broken])
    assert demo.expand_inputs([os.path.join(folder, "*.png")]) == [good[1]]
    missing = os.path.join(folder, "no_such.jpg")  # a plain path: reading it will name it
    assert demo.expand_inputs([missing, good[0]]) == [missing, good[0]]
    with pytest.raises(ValueError, match=r"pattern .*\*\.gif matches no files"):
        demo.expand_inputs([good[0], os.path.join(folder, "*.gif")])


def test_save_outputs_writes_16_bit_labels_for_large_vocabularies(demo, tmp_path):
    vocabulary = [f"class {i}" for i in range(300)]
    labels = np.arange(12 * 20).reshape(12, 20) % 300
    image = np.zeros((12, 20, 3), np.uint8)
    paths = demo.save_outputs(str(tmp_path), "big", "big.jpg", image, labels, vocabulary, 0.5)
    saved_image = Image.open(paths["labels"])
    assert saved_image.mode == "I;16"  # a 16-bit PNG: indices up to 299 survive
    saved = np.asarray(saved_image)
    np.testing.assert_array_equal(saved, labels)
    summary = json.loads(open(paths["classes"]).read())
    assert sum(c["pixel_count"] for c in summary["classes"]) == labels.size


# ----------------------------------------------------------------------------- real runs
def _check_outputs(output_dir, stem, input_path, vocabulary):
    width, height = Image.open(input_path).size
    labels_image = Image.open(os.path.join(output_dir, f"{stem}_labels.png"))
    assert labels_image.mode == "L"
    labels = np.asarray(labels_image)
    assert labels.shape == (height, width)
    assert labels.max() < len(vocabulary)

    overlay = Image.open(os.path.join(output_dir, f"{stem}_overlay.png"))
    assert overlay.mode == "RGB"
    assert overlay.width == width and overlay.height > height  # legend strip underneath

    summary = json.loads(open(os.path.join(output_dir, f"{stem}_classes.json")).read())
    assert summary["vocabulary"] == vocabulary
    assert (summary["height"], summary["width"]) == (height, width)
    counts = [c["pixel_count"] for c in summary["classes"]]
    assert [c["name"] for c in summary["classes"]] == vocabulary
    np.testing.assert_array_equal(counts, np.bincount(labels.ravel(), minlength=len(vocabulary)))


class _ListHandler(logging.Handler):
    def __init__(self):
        super().__init__(level=logging.ERROR)
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def test_demo_segments_with_a_free_vocabulary_and_reports_bad_inputs(
    demo, tiny_config, scenes, tmp_path
):
    good, broken = scenes
    output_dir = str(tmp_path / "out")
    # detectron2's setup_logger stops propagation, so caplog would see nothing: listen directly.
    errors = _ListHandler()
    demo.logger.addHandler(errors)
    try:
        exit_code = demo.main(
            ["--config-file", tiny_config, "--input", good[0], broken, good[1],
             "--output", output_dir, "--vocabulary", "sky|blue sky,grass,water",
             "--opts", "MODEL.DEVICE", "cpu"]
        )  # fmt: skip
    finally:
        demo.logger.removeHandler(errors)
    assert exit_code == 1  # the broken input fails, after the others were processed
    vocabulary = ["sky, blue sky", "grass", "water"]
    for path in good:
        _check_outputs(output_dir, os.path.splitext(os.path.basename(path))[0], path, vocabulary)
    assert not any(name.startswith("broken") for name in os.listdir(output_dir))
    assert any(broken in message for message in errors.messages), errors.messages


@pytest.mark.parametrize("batch_size", [1, 2])
def test_one_failing_input_is_reported_and_the_others_still_run(
    demo, tiny_config, scenes, tmp_path, monkeypatch, batch_size
):
    good, _ = scenes
    third = str(tmp_path / "inputs" / "scene2.png")
    Image.fromarray(np.asarray(Image.open(good[0]))[:40]).save(third)  # batched with the failing one
    failing_shape = np.asarray(Image.open(good[1])).shape[:2]
    segment = demo.OpenVocabPredictor.__call__
    calls = []

    def fail_on_png(self, images, vocabulary=None):
        batch = images if isinstance(images, list) else [images]
        calls.append(len(batch))
        if any(image.shape[:2] == failing_shape for image in batch):
            raise RuntimeError("CUDA out of memory (simulated)")
        return segment(self, images, vocabulary)

    monkeypatch.setattr(demo.OpenVocabPredictor, "__call__", fail_on_png)
    output_dir = str(tmp_path / "out")
    errors = _ListHandler()
    demo.logger.addHandler(errors)
    try:
        exit_code = demo.main(
            ["--config-file", tiny_config, "--input", good[1], third, good[0], "--output", output_dir,
             "--vocabulary", "sky,grass", "--opts", "TEST.IMS_PER_BATCH", str(batch_size)]
        )  # fmt: skip
    finally:
        demo.logger.removeHandler(errors)
    assert exit_code == 1
    # batch of 2 fails -> its images one by one, then the last image alone
    assert calls == ([1, 1, 1] if batch_size == 1 else [2, 1, 1, 1])
    _check_outputs(output_dir, "scene2", third, ["sky", "grass"])  # batched with the failure
    _check_outputs(output_dir, "scene0", good[0], ["sky", "grass"])  # after the failure
    assert not any(name.startswith("scene1") for name in os.listdir(output_dir))
    assert f"Cannot segment {good[1]}: RuntimeError: CUDA out of memory (simulated)" in errors.messages
    assert f"1 input(s) failed: {good[1]}" in errors.messages


@pytest.mark.parametrize("kind", ["folder", "glob"])
def test_a_folder_or_glob_without_images_is_a_usage_error_before_any_work(
    demo, tiny_config, tmp_path, capsys, monkeypatch, kind
):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("no image here")
    given, message = {
        "folder": (str(empty), f"folder {empty} holds no images (looked for .jpg"),
        "glob": (str(empty / "*.jpg"), f"pattern {empty / '*.jpg'} matches no files"),
    }[kind]
    monkeypatch.setattr(demo, "OpenVocabPredictor", None)  # building a model would fail the test
    with pytest.raises(SystemExit) as exit_info:
        demo.main(["--config-file", tiny_config, "--input", given, "--output", str(tmp_path / "o")])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_demo_defaults_to_the_config_test_dataset(demo, tiny_config, scenes, tmp_path):
    from detectron2.data import MetadataCatalog

    good, _ = scenes
    output_dir = str(tmp_path / "out")
    exit_code = demo.main(
        ["--config-file", tiny_config, "--input", good[0], "--output", output_dir]
    )
    assert exit_code == 0
    vocabulary = list(MetadataCatalog.get("sed_d2_synthetic_val").stuff_classes)
    _check_outputs(output_dir, "scene0", good[0], vocabulary)


def test_demo_names_an_unknown_dataset(demo, tiny_config, scenes, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        demo.main(
            ["--config-file", tiny_config, "--input", scenes[0][0], "--output", str(tmp_path),
             "--dataset", "no_such_dataset_sem_seg"]
        )  # fmt: skip
    assert exit_info.value.code == 2
    assert "no_such_dataset_sem_seg" in capsys.readouterr().err


@pytest.mark.parametrize(
    "config_file", sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, "configs", "*", "tiny.yaml")))
)
def test_every_method_runs_in_the_demo(demo, config_file, scenes, tmp_path):
    good, _ = scenes
    output_dir = str(tmp_path / "out")
    exit_code = demo.main(
        ["--config-file", os.path.join(ROOT, config_file), "--input", good[0], "--output", output_dir,
         "--vocabulary", "sky,grass,water", "--opts", "MODEL.DEVICE", "cpu"]
    )  # fmt: skip
    assert exit_code == 0
    _check_outputs(output_dir, "scene0", good[0], ["sky", "grass", "water"])
