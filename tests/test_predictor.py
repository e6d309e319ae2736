"""sed_d2.predictor: image inputs, the chunked full-size argmax, and OpenVocabPredictor on every
method's tiny config (labels and scores equal the meta-architecture's own output)."""
import glob
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from tests.conftest import requires_detectron2

pytestmark = requires_detectron2

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY_CONFIGS = sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, "configs", "*", "tiny.yaml")))


def _image(height=50, width=70, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


# ----------------------------------------------------------------------------- full-size argmax
@pytest.mark.parametrize("max_elements", [1, 7 * 9 * 3, 10**9])  # a class at a time, 3 at a time, all
def test_resized_argmax_equals_the_full_resize_whatever_the_chunks(max_elements):
    from sed_d2.predictor import resized_argmax

    g = torch.Generator().manual_seed(0)
    scores = torch.rand(8, 5, 6, generator=g)
    scores[3] = scores[0]  # exact ties at the same place in equal chunks: the first class wins
    full = F.interpolate(scores[None], size=(7, 9), mode="bilinear", align_corners=False)[0]
    labels, best = resized_argmax(scores, (7, 9), max_elements)
    if max_elements > scores.numel() * 7 * 9:  # one chunk: the very same resize
        assert torch.equal(labels, full.argmax(0)) and torch.equal(best, full.amax(0))
    # On CPU the resize's last bit can depend on how many maps are resized together.
    torch.testing.assert_close(best, full.amax(0), rtol=0, atol=1e-6)
    top2 = full.topk(2, dim=0).values
    decided = top2[0] - top2[1] > 1e-6
    assert torch.equal(labels[decided], full.argmax(0)[decided])
    assert not (labels == 3).any()


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

    torch.manual_seed(0)
    return OpenVocabPredictor(os.path.join(ROOT, request.param), opts=["MODEL.DEVICE", "cpu"])


def test_labels_and_scores_equal_the_meta_architecture_output(predictor):
    from detectron2.data import MetadataCatalog

    image = _image(50, 70)
    result = predictor(image)
    assert result.classes == list(MetadataCatalog.get("sed_d2_synthetic_val").stuff_classes)
    assert result.labels.shape == result.scores.shape == (50, 70)
    assert result.labels.dtype == np.int64 and result.scores.dtype == np.float32
    # what evaluation gets: the test resize, then the model's (T, H, W) probabilities
    resized = predictor.resize.get_transform(image).apply_image(image)
    tensor = torch.as_tensor(np.ascontiguousarray(resized.transpose(2, 0, 1)))
    with torch.no_grad():
        probs = predictor.model([{"image": tensor, "height": 50, "width": 70}])[0]["sem_seg"]
    assert np.array_equal(result.labels, probs.argmax(0).numpy())
    assert np.array_equal(result.scores, probs.amax(0).numpy())


def test_lists_vocabularies_per_call_and_input_kinds(predictor):
    images = [_image(50, 70, seed=1), _image(64, 40, seed=2)]
    results = predictor(images)
    assert isinstance(results, list) and len(results) == 2
    for image, result in zip(images, results):
        one = predictor(torch.from_numpy(image).permute(2, 0, 1))  # a tensor, alone
        assert np.array_equal(one.labels, result.labels) and np.array_equal(one.scores, result.scores)
    default = predictor.vocabulary
    words = ["cat, kitten", "dog", "grass"]
    result = predictor(images[0], vocabulary=words)
    assert result.classes == words and result.labels.max() < 3
    assert predictor.vocabulary == default  # a call's vocabulary is that call's only
    predictor.set_vocabulary(words)
    try:
        again = predictor(images[0])
        assert again.classes == words and np.array_equal(again.labels, result.labels)
    finally:
        predictor.set_vocabulary(default)


def test_weights_and_a_ready_config(tmp_path):
    from sed_d2 import OpenVocabPredictor
    from sed_d2.config import get_cfg
    from sed_d2.engine import ConvertingCheckpointer

    config_file = os.path.join(ROOT, "configs", "sed", "tiny.yaml")
    torch.manual_seed(1)
    trained = OpenVocabPredictor(config_file, opts=["MODEL.DEVICE", "cpu"])
    ConvertingCheckpointer(trained.model, save_dir=str(tmp_path)).save("weights")
    torch.manual_seed(2)  # another random init, replaced by the weights
    cfg = get_cfg(config_file, ["MODEL.DEVICE", "cpu"])
    loaded = OpenVocabPredictor(cfg, str(tmp_path / "weights.pth"), vocabulary=["sky", "grass"])
    assert loaded.cfg.MODEL.WEIGHTS == str(tmp_path / "weights.pth") and cfg.MODEL.WEIGHTS == ""
    image = _image()
    ours, theirs = loaded(image), trained(image, vocabulary=["sky", "grass"])
    assert np.array_equal(ours.labels, theirs.labels) and np.array_equal(ours.scores, theirs.scores)
