"""sed_d2.predictor: the chunked full-size argmax, image inputs, and OpenVocabPredictor on every
method's tiny config (what evaluation computes, any batch, any vocabulary, clear errors)."""
import glob
import os
import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from tests.conftest import requires_detectron2

pytestmark = requires_detectron2

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY_CONFIGS = sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, "configs", "*", "tiny.yaml")))
WORDS = ["cat, kitten", "dog", "grass"]


def _image(height=50, width=70, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


# ----------------------------------------------------------------------------- full-size argmax
def test_pointwise_bilinear_resize_is_pytorchs_bilinear_resize():
    from sed_d2.predictor import pointwise_bilinear_resize

    g = torch.Generator().manual_seed(0)
    for (h, w), size in (((5, 6), (7, 9)), ((12, 9), (50, 31)), ((20, 30), (8, 11)), ((1, 4), (3, 3))):
        maps = torch.rand(4, h, w, generator=g)
        expected = F.interpolate(maps[None], size=size, mode="bilinear", align_corners=False)[0]
        # Both place source pixels in float32 (positions up to 50 carry ~3e-6 of rounding),
        # a wrong weight or index would be off by ~0.1.
        torch.testing.assert_close(pointwise_bilinear_resize(maps, size), expected, rtol=0, atol=1e-5)


@pytest.mark.parametrize("chunk", [1, 3, 8, 100])  # a class at a time, 3 at a time (uneven), all
def test_resized_argmax_equals_the_full_resize_exactly_whatever_the_chunks(chunk):
    from sed_d2.predictor import pointwise_bilinear_resize, resized_argmax

    g = torch.Generator().manual_seed(0)
    scores = torch.rand(8, 5, 6, generator=g)
    scores[4] = scores[1]  # exact ties in different chunks (of 1 and 3): the first class wins
    scores[6, 2, 3] = float("nan")  # a NaN wins where it is, as in torch.max
    full = pointwise_bilinear_resize(scores, (7, 9)).max(0)
    labels, best = resized_argmax(scores, (7, 9), max_elements=chunk * 7 * 9)
    assert torch.equal(labels, full.indices)
    assert torch.equal(best.isnan(), full.values.isnan()) and best.isnan().any()
    decided = ~full.values.isnan()
    assert torch.equal(best[decided], full.values[decided])
    assert not (labels == 4).any()  # class 4 only ever ties class 1


# ----------------------------------------------------------------------------- inputs
def test_rgb_array_reads_every_kind_of_input_alike(tmp_path):
    from sed_d2.predictor import rgb_array

    rgb = _image(6, 8)
    path = tmp_path / "x.png"
    Image.fromarray(rgb).save(path)
    for image in (rgb, Image.fromarray(rgb), torch.from_numpy(rgb).permute(2, 0, 1), str(path), path):
        out = rgb_array(image)
        assert out.dtype == np.uint8 and np.array_equal(out, rgb), type(image)
    grey = rgb[:, :, 0]
    assert np.array_equal(rgb_array(grey), np.stack([grey] * 3, axis=2))
    palette = Image.fromarray(rgb).convert("P")
    assert np.array_equal(rgb_array(palette), np.asarray(palette.convert("RGB")))


@pytest.mark.parametrize(
    "image, error, message",
    [
        (np.zeros((4, 4, 3), np.float32), ValueError, r"\(H, W, 3\) RGB or \(H, W\) grey uint8, got \(4, 4, 3\) float32"),
        (np.zeros((4, 4, 4), np.uint8), ValueError, "got \\(4, 4, 4\\) uint8"),
        (torch.zeros(4, 4, 3, dtype=torch.uint8), ValueError, r"\(3, H, W\) uint8 RGB, got \(4, 4, 3\)"),
        (torch.zeros(3, 4, 4), ValueError, "torch.float32"),
        (Image.fromarray(np.zeros((4, 4), np.uint16)), ValueError, "mode 'I;16' .*16/32-bit"),
        (b"bytes", TypeError, "from a bytes"),
    ],
)
def test_rgb_array_refuses_what_it_would_have_to_guess(image, error, message):
    from sed_d2.predictor import rgb_array

    with pytest.raises(error, match=message):
        rgb_array(image)


def test_rgb_array_names_an_unreadable_file(tmp_path):
    from sed_d2.predictor import rgb_array

    broken = tmp_path / "broken.jpg"
    broken.write_text("not an image")
    with pytest.raises(OSError, match="broken.jpg"):
        rgb_array(broken)


# ----------------------------------------------------------------------------- the predictor
@pytest.fixture(scope="module", params=TINY_CONFIGS)
def predictor(request):
    from sed_d2 import OpenVocabPredictor
    from tests.d2_helpers import tiny_cfg_for

    torch.manual_seed(0)
    return OpenVocabPredictor(tiny_cfg_for(request.param, "TEST.IMS_PER_BATCH", "2"))


def test_labels_and_scores_are_what_evaluation_computes(predictor, tmp_path):
    from detectron2.data import MetadataCatalog

    from sed_d2.data.mappers import TestImageMapper

    image = _image(50, 70)
    result = predictor(image)
    assert result.classes == list(MetadataCatalog.get("sed_d2_synthetic_val").stuff_classes)
    assert result.labels.shape == result.scores.shape == (50, 70)
    assert result.labels.dtype == np.int64 and result.scores.dtype == np.float32
    # evaluation: the test mapper's resize, then the model's (T, H, W) probabilities
    path = str(tmp_path / "photo.png")
    Image.fromarray(image).save(path)
    inputs = TestImageMapper(predictor.cfg)({"file_name": path})
    with torch.no_grad():
        probs = predictor.model([inputs])[0]["sem_seg"]
    top2 = probs.topk(2, dim=0).values
    decided = (top2[0] - top2[1] > 1e-5).numpy()  # the two resizes differ in float rounding only
    assert decided.mean() > 0.9
    assert np.array_equal(result.labels[decided], probs.argmax(0).numpy()[decided])
    np.testing.assert_allclose(result.scores, probs.amax(0).numpy(), rtol=0, atol=1e-5)


def test_every_input_kind_gives_the_same_result(predictor, tmp_path):
    image = _image(40, 60, seed=3)
    path = tmp_path / "photo.png"
    Image.fromarray(image).save(path)
    expected = predictor(image)
    for same in (Image.fromarray(image), torch.from_numpy(image).permute(2, 0, 1), str(path), path):
        result = predictor(same)
        assert np.array_equal(result.labels, expected.labels), type(same)
        assert np.array_equal(result.scores, expected.scores), type(same)


def test_a_batch_equals_its_images_one_by_one(predictor, monkeypatch):
    batches = []
    inference_scores = predictor.model.inference_scores

    def recording(images):
        batches.append(len(images))
        return inference_scores(images)

    monkeypatch.setattr(predictor.model, "inference_scores", recording)
    images = [_image(50, 70, seed=1), _image(64, 40, seed=2), _image(30, 90, seed=3)]
    results = predictor(images)
    assert batches == [2, 1]  # TEST.IMS_PER_BATCH images per network call
    assert isinstance(results, list) and len(results) == 3
    for image, result in zip(images, results):
        one = predictor(image)
        assert np.array_equal(one.labels, result.labels)
        # The predictor is exact; SED's network itself rounds a batch of two differently from
        # one image on CPU (its convolutions pick kernels by batch size: a few float32 steps).
        np.testing.assert_allclose(one.scores, result.scores, rtol=0, atol=1e-6)
    assert predictor(tuple(images[:1]))[0].labels.shape == (50, 70)  # a tuple is a list too


def test_a_calls_vocabulary_is_that_calls_only_and_equals_a_predictor_built_with_it(predictor):
    from sed_d2 import OpenVocabPredictor
    from sed_d2.data.vocabulary import vocabulary_of

    image = _image(50, 70, seed=4)
    default = predictor.vocabulary
    result = predictor(image, vocabulary=WORDS)
    assert result.classes == WORDS and result.labels.max() < len(WORDS)
    assert predictor.vocabulary == default  # back after the call
    assert predictor(image).classes == default

    built = OpenVocabPredictor(predictor.cfg, vocabulary=WORDS)
    built.model.load_state_dict(predictor.model.state_dict())
    theirs = built(image)
    assert theirs.classes == WORDS
    assert np.array_equal(theirs.labels, result.labels) and np.array_equal(theirs.scores, result.scores)

    predictor.set_vocabulary(WORDS)  # from now on, until changed again
    try:
        again = predictor(image)
        assert again.classes == WORDS and np.array_equal(again.labels, result.labels)
    finally:
        predictor.set_vocabulary(default)
    by_name = predictor(image, vocabulary="sed_d2_synthetic_val")  # a registered dataset's classes
    assert by_name.classes == vocabulary_of("sed_d2_synthetic_val") == default


def test_a_dataset_with_unprompted_background_keeps_its_background_rule(predictor):
    from sed_d2.data.vocabulary import unprompted_background_index, vocabulary_of

    name = "voc_2012_val_bg21_sem_seg"  # VOC-21: background scored at the threshold, not prompted
    index = unprompted_background_index(name)
    assert index is not None
    image = _image(50, 70, seed=5)
    model = predictor.model
    default_threshold = model.background_threshold
    try:
        # above every probability: the background wins everywhere, with exactly that score
        model.background_threshold = 2.0
        result = predictor(image, vocabulary=name)
        assert result.classes == vocabulary_of(name)
        assert (result.labels == index).all() and np.all(result.scores == np.float32(2.0))
        # below every probability: it never wins
        model.background_threshold = -1.0
        assert not (predictor(image, vocabulary=name).labels == index).any()
    finally:
        model.background_threshold = default_threshold
    assert model.background_index is None  # the call's rule ends with the call
    predictor.set_vocabulary(name)
    try:
        assert model.background_index == index
        assert model.text_embeddings().shape[0] == len(vocabulary_of(name)) - 1  # background not prompted
    finally:
        predictor.set_vocabulary(predictor.cfg.DATASETS.TEST[0])
    assert model.background_index is None


def test_clear_errors(predictor, tmp_path):
    image = _image(20, 20)
    with pytest.raises(ValueError, match=r"vocabulary 'cat' is not a registered dataset .*list of class names \(e.g. \['cat'\]\)"):
        predictor(image, vocabulary="cat")
    with pytest.raises(ValueError, match="vocabulary is empty"):
        predictor(image, vocabulary=[])
    with pytest.raises(ValueError, match="Duplicated class names"):
        predictor.set_vocabulary(["dog", "dog"])
    missing = str(tmp_path / "missing.jpg")
    with pytest.raises(OSError, match="missing.jpg"):
        predictor([image, missing])
    assert predictor(image).classes == predictor.vocabulary  # a failed call leaves it as it was


def test_weights_from_a_file_and_opts(tmp_path):
    from sed_d2 import OpenVocabPredictor
    from sed_d2.engine import ConvertingCheckpointer
    from sed_d2.engine.checkpointer import IncompleteWeightsError
    from tests.d2_helpers import tiny_opts_for

    config = os.path.join("configs", "sed", "tiny.yaml")
    opts = tiny_opts_for(config)
    torch.manual_seed(1)
    trained = OpenVocabPredictor(os.path.join(ROOT, config), opts=opts)
    ConvertingCheckpointer(trained.model, save_dir=str(tmp_path)).save("weights")
    torch.manual_seed(2)  # another random init, replaced by the weights
    # CLIP's own weights are not fetched: the file holds every tensor (a missing file would fail)
    no_clip = opts + ["MODEL.OVSEG.CLIP_PRETRAINED", str(tmp_path / "no_such_clip.bin")]
    weights = str(tmp_path / "weights.pth")
    loaded = OpenVocabPredictor(os.path.join(ROOT, config), weights, opts=no_clip, vocabulary=WORDS)
    assert loaded.cfg.MODEL.WEIGHTS == weights and trained.cfg.MODEL.WEIGHTS == ""
    assert loaded.cfg.MODEL.OVSEG.CLIP_PRETRAINED == ""
    image = _image()
    ours, theirs = loaded(image), trained(image, vocabulary=WORDS)
    assert np.array_equal(ours.labels, theirs.labels) and np.array_equal(ours.scores, theirs.scores)

    # weights that leave tensors out are refused, as in evaluation
    state = torch.load(weights, weights_only=True)
    dropped = sorted(state["model"])[0]
    del state["model"][dropped]
    torch.save(state, tmp_path / "partial.pth")
    with pytest.raises(IncompleteWeightsError, match=f"1 model tensors missing \\({re.escape(dropped)}\\)"):
        OpenVocabPredictor(os.path.join(ROOT, config), str(tmp_path / "partial.pth"), opts=opts)
    # ... unless asked for; CLIP's own weights are then wanted for what the file leaves out
    partial_ok = no_clip + ["MODEL.OVSEG.ALLOW_PARTIAL_WEIGHTS", "True"]
    with pytest.raises(FileNotFoundError, match="no_such_clip.bin"):
        OpenVocabPredictor(os.path.join(ROOT, config), str(tmp_path / "partial.pth"), opts=partial_ok)


def test_memory_is_bounded_by_the_chunk_not_the_vocabulary(predictor, monkeypatch):
    """With a small chunk, no resize ever holds more than the chunk's maps at full size, and
    the result is the same as with every class in one chunk."""
    import sed_d2.predictor as module

    image = _image(90, 120, seed=5)
    whole = predictor(image)
    largest = []
    resize = module.pointwise_bilinear_resize

    def recording(maps, size):
        largest.append(maps.shape[0])
        return resize(maps, size)

    monkeypatch.setattr(module, "pointwise_bilinear_resize", recording)
    monkeypatch.setattr(predictor, "max_resize_elements", 2 * 90 * 120)
    chunked = predictor(image)
    assert max(largest) == 2 and len(largest) == -(-len(predictor.vocabulary) // 2)
    assert np.array_equal(chunked.labels, whole.labels) and np.array_equal(chunked.scores, whole.scores)
