"""Inference protocols (sed_d2.meta_arch.inference) on toy networks: window geometry, an
identity network reproduces its input, the official CAT-Seg sliding-window arithmetic, any
batch with mixed sizes, the per-view score refinement (PAMR, TCL's placement)."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sed_d2.layers.pamr import PAMR, pamr
from sed_d2.meta_arch.inference import SlidingWindow, WholeImage, window_boxes
from tests.conftest import requires_detectron2


def test_window_boxes_geometry():
    # CAT-Seg: 384 windows, stride int(384 * (1 - 0.333)) = 256, over 640x640: 2x2 windows
    assert window_boxes((640, 640), (384, 384), (256, 256)) == [
        (0, 0, 384, 384), (0, 256, 384, 384), (256, 0, 384, 384), (256, 256, 384, 384)
    ]
    # a stride that does not reach the edge gets one more window ending there
    assert window_boxes((10, 4), (4, 4), (4, 4)) == [(0, 0, 4, 4), (4, 0, 4, 4), (6, 0, 4, 4)]
    # SynSeg: 2x2 quadrants of the native image
    assert window_boxes((5, 7), grid=(2, 2)) == [(0, 0, 2, 4), (0, 4, 2, 3), (2, 0, 3, 4), (2, 4, 3, 3)]
    with pytest.raises(ValueError, match="larger than the image side"):
        window_boxes((100, 100), (384, 384), (256, 256))


class _Toy:
    """The contract a protocol uses; the 'logits' are a fixed function of the pixels."""

    def __init__(self, resolution=None, mix=False):
        self.resolution = resolution
        self.mix = mix

    def prepare_images(self, images):
        if self.resolution:
            images = [F.interpolate(i[None], size=self.resolution, mode="bilinear", align_corners=False)[0] for i in images]
        return torch.stack(images)

    def network_logits(self, images, text):
        # T = 3 "classes": the channels, optionally mixed so classes interact
        return images.flip(1) * 0.5 + images.mean(1, keepdim=True) if self.mix else images

    def logits_to_scores(self, logits):
        return logits.sigmoid() if self.mix else logits

    def forward_test(self, images, text):
        return self.logits_to_scores(self.network_logits(images, text))


def test_identity_network_reproduces_the_image():
    image = torch.rand(3, 12, 16) * 255
    for protocol in (
        SlidingWindow(window=(6, 8), stride=(3, 4), global_view=False),
        SlidingWindow(grid=(2, 2), global_view=False),
    ):
        torch.testing.assert_close(protocol(_Toy(), [image], None)[0], image, rtol=0, atol=1e-4)
    # a constant image survives every resize: the global view merges exactly
    constant = torch.full((3, 12, 16), 7.0)
    out = SlidingWindow(image_size=(8, 8), window=(4, 4), stride=(4, 4), global_size=(4, 4))(_Toy(), [constant], None)[0]
    assert out.shape == (3, 8, 8)
    torch.testing.assert_close(out, torch.full((3, 8, 8), 7.0), rtol=0, atol=1e-5)


def _official_sliding_window(toy, image, kernel=384, overlap=0.333, out_res=(640, 640)):
    """The arithmetic of CAT-Seg's ``inference_sliding_window`` (unfold, fold, global view),
    written out with the toy network in place of the model."""
    stride = int(kernel * (1 - overlap))
    unfold = nn.Unfold(kernel_size=kernel, stride=stride)
    fold = nn.Fold(out_res, kernel_size=kernel, stride=stride)
    resized = F.interpolate(image[None], size=out_res, mode="bilinear", align_corners=False)[0]
    crops = unfold(resized[None])[0].T.reshape(-1, 3, kernel, kernel)
    global_image = F.interpolate(image[None], size=(kernel, kernel), mode="bilinear", align_corners=False)
    views = torch.cat((crops, global_image), dim=0)
    outputs = toy.network_logits(toy.prepare_images(list(views)), None)
    outputs = F.interpolate(outputs, size=kernel, mode="bilinear", align_corners=False).sigmoid()
    global_output = F.interpolate(outputs[-1:], size=out_res, mode="bilinear", align_corners=False)
    outputs = fold(outputs[:-1].flatten(1).T) / fold(unfold(torch.ones([1] + list(out_res))))
    return ((outputs + global_output) / 2)[0]


def test_equals_the_official_catseg_arithmetic():
    torch.manual_seed(0)
    toy = _Toy(resolution=(48, 48), mix=True)
    # scaled-down geometry (window 96 / stride 64 over 160) and the real one's rule
    image = torch.rand(3, 120, 150) * 4 - 2
    ours = SlidingWindow(image_size=(160, 160), window=(96, 96), stride=(64, 64), global_size=(96, 96))
    expected = _official_sliding_window(toy, image, kernel=96, overlap=0.333, out_res=(160, 160))
    torch.testing.assert_close(ours(toy, [image], None)[0], expected, rtol=0, atol=1e-6)


def test_any_batch_and_mixed_sizes_equal_one_by_one():
    torch.manual_seed(1)
    toy = _Toy(resolution=(16, 16), mix=True)
    images = [torch.rand(3, 30, 40), torch.rand(3, 24, 24), torch.rand(3, 50, 20)]
    for protocol in (
        WholeImage(),
        SlidingWindow(image_size=(32, 32), window=(16, 16), stride=(12, 12), global_size=(16, 16)),
        SlidingWindow(grid=(2, 2), merge="max"),
    ):
        batched = protocol(toy, images, None)
        for image, result in zip(images, batched):
            torch.testing.assert_close(result, protocol(toy, [image], None)[0], rtol=0, atol=0)


def test_refine_gets_each_views_network_input_and_scores_before_the_merge():
    toy = _Toy(resolution=(8, 8), mix=True)
    image = torch.rand(3, 12, 16) * 4 - 2
    seen = []

    def refine(views, scores):
        seen.append((tuple(views.shape), tuple(scores.shape)))
        torch.testing.assert_close(views, toy.prepare_images(list(views)))  # the prepared views
        return torch.full_like(scores, 0.3)

    for protocol in (
        WholeImage(refine=refine),
        SlidingWindow(grid=(2, 2), refine=refine),
        SlidingWindow(window=(6, 8), stride=(3, 4), global_size=(6, 8), refine=refine),
    ):
        out = protocol(toy, [image, image[:, :10]], None)
        for o in out:
            torch.testing.assert_close(o, torch.full_like(o, 0.3), rtol=0, atol=1e-6)
    # one call per batch: 2 images; 2 x 5 views; 2 x (9 + 1) views, all at the network size
    assert seen == [((2, 3, 8, 8), (2, 3, 8, 8)), ((10, 3, 8, 8), (10, 3, 8, 8)), ((20, 3, 8, 8), (20, 3, 8, 8))]


def test_pamr_refines_the_views_scores_then_they_are_resized_and_merged():
    # TCL: PAMR on each window's soft masks at the mask resolution, then resize and merge
    torch.manual_seed(2)
    toy = _Toy(resolution=(8, 8), mix=True)
    image = torch.rand(3, 12, 16) * 4 - 2
    refined = SlidingWindow(grid=(2, 2), refine=PAMR(3, (1, 2)))(toy, [image], None)[0]
    boxes = window_boxes((12, 16), grid=(2, 2))
    views = toy.prepare_images([image[:, y : y + h, x : x + w] for y, x, h, w in boxes] + [image])
    scores = pamr(views, toy.network_logits(views, None).sigmoid(), 3, (1, 2))
    windows = torch.zeros(3, 12, 16)
    for index, (y, x, h, w) in enumerate(boxes):
        windows[:, y : y + h, x : x + w] = F.interpolate(scores[index : index + 1], size=(h, w), mode="bilinear")[0]
    whole = F.interpolate(scores[-1:], size=(12, 16), mode="bilinear")[0]
    torch.testing.assert_close(refined, (windows + whole) / 2, rtol=0, atol=1e-6)
    plain = SlidingWindow(grid=(2, 2))(toy, [image], None)[0]
    assert (refined - plain).abs().max() > 1e-3
    # the whole-image protocol: PAMR on the network-size scores
    torch.testing.assert_close(
        WholeImage(refine=PAMR(3, (1, 2)))(toy, [image], None)[0],
        pamr(toy.prepare_images([image]), toy.forward_test(toy.prepare_images([image]), None), 3, (1, 2))[0],
        rtol=0,
        atol=0,
    )


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="window and stride, or grid"):
        SlidingWindow(window=(4, 4))
    with pytest.raises(ValueError, match="'mean' or 'max'"):
        SlidingWindow(grid=(2, 2), merge="median")


@requires_detectron2
def test_config_chooses_the_protocol_and_a_model_runs_it_for_any_batch():
    from detectron2.modeling import build_model

    from tests.d2_helpers import tiny_cfg_for

    sliding = (
        "TEST.PROTOCOL", "sliding_window", "TEST.SLIDING_WINDOW.IMAGE_SIZE", "(96, 96)",
        "TEST.SLIDING_WINDOW.WINDOW", "(64, 64)", "TEST.SLIDING_WINDOW.STRIDE", "(32, 32)",
        "TEST.SLIDING_WINDOW.GLOBAL_SIZE", "(64, 64)",
    )
    torch.manual_seed(0)
    model = build_model(tiny_cfg_for("configs/sed/tiny.yaml", *sliding)).eval()
    assert isinstance(model.inference_protocol, SlidingWindow) and model.inference_protocol.window == (64, 64)
    g = torch.Generator().manual_seed(0)
    inputs = [
        {"image": torch.randint(0, 256, (3, h, w), generator=g, dtype=torch.uint8), "height": h, "width": w}
        for h, w in ((70, 90), (64, 64))
    ]
    with torch.no_grad():
        batched = model(inputs)
        for x, result in zip(inputs, batched):
            assert result["sem_seg"].shape == (len(model.test_vocabulary), x["height"], x["width"])
            torch.testing.assert_close(result["sem_seg"], model([x])[0]["sem_seg"], rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="TEST.PROTOCOL must be 'whole' or 'sliding_window', got 'tiles'"):
        build_model(tiny_cfg_for("configs/sed/tiny.yaml", "TEST.PROTOCOL", "tiles"))
