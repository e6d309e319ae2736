"""The CLIP-HBD meta-architecture, what tests/meta_arch/test_contract.py does not check for every
method: the paper config builds the network of the spec (parameter counts by hand), every
MODEL.CLIP_HBD key reaches the network, softmax scores, the backbone's pixel normalisation, the
backbone's weights from a local file or a timm tag, and the optimizer's backbone group."""
import pytest
import timm
import torch

from tests.conftest import requires_detectron2
from tests.d2_helpers import build_tiny_model, tiny_cfg_for

pytestmark = requires_detectron2

TINY = "configs/clip_hbd/tiny.yaml"


def _build(config_file=TINY, *extra, seed=0):
    return build_tiny_model(config_file, *extra, seed=seed)


def _count(module):
    return sum(p.numel() for p in module.parameters())


def test_the_paper_config_builds_the_network_of_the_spec():
    from detectron2.modeling import build_model

    from sed_d2.config import get_cfg
    from tests.d2_helpers import ROOT

    cfg = get_cfg(
        f"{ROOT}/configs/clip_hbd/vitb_384.yaml",
        ["MODEL.OVSEG.CLIP_PRETRAINED", "", "MODEL.OVSEG.BACKBONE_PRETRAINED", "", "MODEL.DEVICE", "cpu"],
    )
    assert cfg.MODEL.OVSEG.BACKBONE_PRETRAINED == "" and cfg.MODEL.OVSEG.CLIP_MODEL == "ViT-B-16-quickgelu"
    model = build_model(cfg).model
    assert model.clip_layers == (2, 5, 8)
    # reference/cliphbd_spec.md 1.10, counted by hand: FFM 0.69 M, boundary head 0.39 M, cost
    # embedding 0.50 M, decoder stages 0.56 / 0.14 / 0.04 M, head 145; ConvNeXt-B 87.6 M
    assert _count(model.fusions) == 768 * (128 + 256 + 512) + 128 + 256 + 512 + 3
    assert round(_count(model.boundary_head) / 1e6, 2) == 0.39
    assert _count(model.decoder.cost_embed) == 80 * 128 * 49 + 128
    assert [round(_count(stage) / 1e6, 2) for stage in model.decoder.stages] == [0.56, 0.14, 0.04]
    assert _count(model.decoder.head) == 145
    assert round(_count(model.backbone) / 1e6, 1) == 87.6
    assert [info["num_chs"] for info in model.backbone.feature_info] == [128, 256, 512, 1024]


def test_every_clip_hbd_key_reaches_the_network():
    model = _build(
        TINY,
        "MODEL.CLIP_HBD.CLIP_LAYERS", "[0, 2, 1]",
        "MODEL.CLIP_HBD.CLIP_LAYER_PROJ", "clip_proj",
        "MODEL.CLIP_HBD.FFM_WEIGHT", "residual",
        "MODEL.CLIP_HBD.FFM_ALPHA_INIT", "0.25",
        "MODEL.CLIP_HBD.BOUNDARY_DECONV_KERNEL", "2",
        "MODEL.CLIP_HBD.GATE_MODE", "branch",
        "MODEL.CLIP_HBD.BOUNDARY_ATTN_PER_CHANNEL", "True",
        "MODEL.CLIP_HBD.BOUNDARY_DOWNSAMPLE", "max",
        "MODEL.CLIP_HBD.DETACH_BOUNDARY", "True",
        "MODEL.CLIP_HBD.SKIP_ALIGN_DIMS", "[8, 8, 8]",
        "MODEL.CLIP_HBD.DICE_CLASSES", "all",
        "MODEL.CLIP_HBD.BOUNDARY_LOSS_WEIGHT", "2.5",
        "MODEL.CLIP_HBD.BOUNDARY_WEIGHTING", "fixed",
        "MODEL.CLIP_HBD.INFERENCE_CHUNK_PIXELS", "4096",
    )
    network = model.model
    assert network.clip_layers == (0, 2, 1) and network.clip_layer_projection == "clip_proj"
    assert network.fusions[0].alpha.item() == 0.25 and network.detach_boundary
    assert network.boundary_head.upsample[0].deconv.kernel_size == (2, 2)
    stage = network.decoder.stages[0]
    assert stage.gate_mode == "branch" and stage.downsample == "max" and stage.attention.out_channels == 32
    assert [s.skip_align.out_channels for s in network.decoder.stages] == [8, 8, 8]
    assert network.decoder.inference_chunk_pixels == 4096
    assert model.criterion.dice_classes == "all" and model.criterion.boundary_weight == 2.5
    assert model.criterion.boundary_weighting == "fixed"


def test_scores_are_a_softmax_over_the_vocabulary():
    model = _build().eval()
    image = torch.randint(0, 256, (3, 70, 90), dtype=torch.uint8)
    with torch.no_grad():
        scores = model([{"image": image, "height": 70, "width": 90}])[0]["sem_seg"]
    assert scores.shape == (len(model.vocabulary), 70, 90)
    torch.testing.assert_close(scores.sum(0), torch.ones(70, 90))


def test_the_backbone_sees_imagenet_normalised_pixels():
    model = _build()
    pixels = torch.randint(0, 256, (3, *model.clip_resolution), dtype=torch.uint8)  # no resize
    clip_normalised = model.prepare_images([pixels])
    network = model.model
    seen = clip_normalised * network.backbone_pixel_scale + network.backbone_pixel_shift
    mean = torch.tensor([123.675, 116.28, 103.53]).view(3, 1, 1)
    std = torch.tensor([58.395, 57.12, 57.375]).view(3, 1, 1)
    torch.testing.assert_close(seen[0], (pixels.float() - mean) / std, rtol=1e-5, atol=1e-5)


def test_backbone_weights_from_a_local_file_or_a_timm_tag(tmp_path, monkeypatch):
    from sed_d2.meta_arch import clip_hbd

    torch.manual_seed(3)
    source = timm.create_model("test_convnext", pretrained=False)  # with its classifier head
    path = tmp_path / "convnext.pth"
    torch.save({"state_dict": source.state_dict()}, path)
    backbone = clip_hbd.build_convnext_backbone("test_convnext", str(path))
    assert isinstance(backbone.head, torch.nn.Identity)
    loaded = backbone.state_dict()
    assert loaded and all(torch.equal(value, source.state_dict()[key]) for key, value in loaded.items())

    calls = []

    def offline(name, pretrained=False, **kwargs):
        calls.append((name, pretrained))
        raise OSError("no network")

    monkeypatch.setattr(clip_hbd.timm, "create_model", offline)
    with pytest.raises(RuntimeError, match=r"'test_convnext.fb_in1k' \(MODEL.OVSEG.BACKBONE_PRETRAINED\).*local"):
        clip_hbd.build_convnext_backbone("test_convnext", "fb_in1k")
    assert calls == [("test_convnext.fb_in1k", True)]


def test_optimizer_puts_the_backbone_at_its_multiplier():
    from sed_d2.engine import build_param_groups

    cfg = tiny_cfg_for(TINY, "SOLVER.BACKBONE_MULTIPLIER", "0.1", "SOLVER.CLIP_MULTIPLIER", "0.01")
    model = _build(TINY, "SOLVER.BACKBONE_MULTIPLIER", "0.1")
    lrs = {group["name"].split("/")[0]: group["lr"] for group in build_param_groups(cfg, model)}
    base = cfg.SOLVER.BASE_LR
    assert lrs == pytest.approx({"backbone": 0.1 * base, "clip": 0.01 * base, "decoder": base})


def test_vit_drop_path_keys_are_refused():
    with pytest.raises(ValueError, match="MODEL.OVSEG.CLIP_DROP_PATH_RATE applies to timm"):
        _build(TINY, "MODEL.OVSEG.CLIP_DROP_PATH_RATE", "0.1")
