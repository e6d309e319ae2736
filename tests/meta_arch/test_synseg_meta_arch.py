"""The SynSeg meta-architecture, what tests/meta_arch/test_contract.py does not check for every
method: the paper config at its real size (151 M parameters, frozen OpenAI ViT-B/16, the five
views, the six benchmarks), training from noun phrases, categories read off label maps, and the
unprompted background scored with the threshold."""
import os

import pytest
import torch

from tests.conftest import requires_detectron2
from tests.d2_helpers import ROOT, build_paper_config_on_meta, build_tiny_model

pytestmark = requires_detectron2

TINY = "configs/synseg/tiny.yaml"
SIX_BENCHMARKS = (
    "voc_2012_val_bg21_sem_seg", "context_59_test_sem_seg", "coco_object_val_sem_seg",
    "coco_2017_test_stuff_all_sem_seg", "cityscapes_19_val_sem_seg", "ade20k_150_test_sem_seg",
)


def _build(config_file=TINY, *extra, seed=0):
    return build_tiny_model(config_file, *extra, seed=seed)


def _images(n, size=(64, 64), seed=0):
    generator = torch.Generator().manual_seed(seed)
    return [torch.randint(0, 256, (3, *size), generator=generator, dtype=torch.uint8) for _ in range(n)]


def test_paper_config_builds_the_151M_network_with_the_papers_protocol(monkeypatch):
    from sed_d2.meta_arch import SlidingWindow

    model, cfg, built = build_paper_config_on_meta("configs/synseg/vitb_224.yaml", monkeypatch)
    assert built == [("ViT-B-16-quickgelu", "openai")]  # OpenAI weights with their QuickGELU
    assert sum(p.numel() for p in model.parameters()) == 150_727_170  # Table I: "151M"
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == 1_106_433
    assert all(not p.requires_grad for p in model.model.clip_model.parameters())
    assert model.clip_resolution == (224, 224) and model.model.extract_layers == (3, 7, 9)
    assert model.templates == ["a photo of a {}."]
    assert model.train_vocabulary is None  # cc12m_train: phrases, no class list
    protocol = model.inference_protocol
    assert isinstance(protocol, SlidingWindow)
    assert (protocol.grid, protocol.global_view, protocol.image_size, protocol.global_size, protocol.merge) == (
        (2, 2), True, None, None, "mean"
    )
    assert tuple(cfg.DATASETS.TEST) == SIX_BENCHMARKS
    assert model.background_index == 0 and model.background_threshold == 0.4  # VOC: background 0, unprompted
    assert cfg.INPUT.DATASET_MAPPER_NAME == "image_caption" and cfg.SOLVER.IMS_PER_BATCH == 256


def test_background_comes_from_the_metadata_of_each_benchmark():
    import sed_d2  # noqa: F401
    from sed_d2.data.vocabulary import unprompted_background_index

    assert [unprompted_background_index(name) for name in SIX_BENCHMARKS] == [0, None, 0, None, None, None]


def test_the_unprompted_background_channel_is_the_threshold():
    model = _build(TINY, "MODEL.OVSEG.BACKGROUND_THRESHOLD", "0.3").eval()
    images = _images(2)
    with torch.no_grad():
        model.set_vocabulary(["sky", "grass"])
        plain = model.inference_scores(images)
        model.set_vocabulary(["background", "sky", "grass"], background_index=0)
        with_background = model.inference_scores(images)
        assert model.text_embeddings().shape[0] == 2  # "background" is never prompted
        outputs = model([{"image": image} for image in images])
    for plain_scores, scores, output in zip(plain, with_background, outputs):
        assert scores.shape[0] == 3 and torch.equal(scores[1:], plain_scores)
        assert torch.all(scores[0] == 0.3)
        assert output["sem_seg"].shape == (3, 64, 64)
    with pytest.raises(ValueError, match="background_index 3"):
        model.set_vocabulary(["a", "b", "c"], background_index=3)


def test_caption_training_encodes_each_distinct_phrase_once_and_reaches_only_the_decoder():
    model = _build().train()
    encoded = []
    encode = model.text_encoder.encode_uncached
    model.text_encoder.encode_uncached = lambda names: (encoded.append(list(names)), encode(names))[1]
    images = _images(3)
    batch = [
        {"image": images[0], "nouns": ["red brick", "a dog"]},
        {"image": images[1], "nouns": ["a dog"]},
        {"image": images[2], "nouns": ["sky", "red brick", "tree"]},
    ]
    losses = model(batch)
    assert encoded == [["red brick", "a dog", "sky", "tree"]]
    assert all(v.dtype == torch.float32 and torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    for name, parameter in model.named_parameters():
        assert (parameter.grad is not None) == name.startswith(("model.decoder.", "model.synergy.")), name


def test_categories_from_a_label_map_are_its_largest_present_classes(monkeypatch):
    model = _build(TINY, "MODEL.SYNSEG.MAX_CATEGORIES", "2").train()
    seen = {}
    monkeypatch.setattr(model.model, "losses", lambda images, text, pair_image: seen.update(text=text, pair=pair_image) or {})
    labels = torch.full((2, 64, 64), 255)
    labels[0, :30], labels[0, 30:40], labels[0, 40:] = 3, 1, 6  # areas 30, 10, 24 rows: keep 3 and 6
    labels[1, :] = 5
    text = torch.nn.functional.normalize(torch.randn(8, 1, 48), dim=-1)
    model.forward_train(torch.zeros(2, 3, 64, 64), text, labels)
    torch.testing.assert_close(seen["text"], text[[3, 6, 5], 0])
    assert seen["pair"].tolist() == [0, 0, 1]


def test_a_method_trained_on_label_maps_refuses_caption_batches_and_synseg_keeps_clip_frozen():
    sed = _build("configs/sed/tiny.yaml").train()
    with pytest.raises(NotImplementedError, match="trains from label maps"):
        sed([{"image": _images(1)[0], "nouns": ["sky"]}])
    with pytest.raises(ValueError, match="CLIP_FINETUNE must be 'frozen'"):
        _build(TINY, "MODEL.OVSEG.CLIP_FINETUNE", "attention")


def test_default_extract_layers_are_clipsegs_scaled_to_the_depth():
    from sed_d2.meta_arch.synseg import default_extract_layers

    assert default_extract_layers(12) == (3, 7, 9)  # CLIPSeg rd64-uni, ViT-B/16
    assert default_extract_layers(4) == (0, 1, 2)  # the tiny test ViT
    assert default_extract_layers(24) == (7, 15, 19)


def test_benchmark_trains_a_caption_config_on_phrases():
    """tools/benchmark.py --mode train gives an image-caption config what its mapper yields."""
    from tests.d2_helpers import load_tool

    results = load_tool("benchmark").main([
        "--config-file", os.path.join(ROOT, TINY), "--device", "cpu", "--mode", "train", "--iters", "1",
        "--warmup", "0", "--train-batch-size", "2", "--train-phrases", "3",
        "--opts", "MODEL.OVSEG.CLIP_RESOLUTION", "(64, 64)",
    ])
    (case,) = results["cases"]
    assert results["settings"]["method"] == "SynSeg"
    assert case["mode"] == "train" and case["num_classes"] == 3 and case["input"] == [64, 64]
    assert case["loss"] > 0


def _chance_miou(dataset_name):
    """Expected mIoU (%) of labelling every pixel uniformly at random: per class, with n_c of
    its pixels among N scored ones and K classes, IoU = (n_c / K) / (n_c + N / K - n_c / K)."""
    import numpy as np
    from detectron2.data import DatasetCatalog, MetadataCatalog
    from PIL import Image

    meta = MetadataCatalog.get(dataset_name)
    num_classes = len(meta.stuff_classes)
    counts = np.zeros(num_classes)
    for record in DatasetCatalog.get(dataset_name):
        labels = np.asarray(Image.open(record["sem_seg_file_name"]))
        counts += np.bincount(labels[labels != meta.ignore_label].ravel(), minlength=num_classes)[:num_classes]
    total = counts.sum()
    iou = (counts / num_classes) / (counts + total / num_classes - counts / num_classes)
    return 100 * iou[counts > 0].mean()


def test_tiny_training_from_captions_beats_chance_on_the_synthetic_val_set(tmp_path):
    """tools/train_net.py on configs/synseg/tiny.yaml, its schedule halved (150 of 300
    iterations, ~10 s on an idle 2-core CPU): trained from the synthetic captions only (no label
    map), evaluated with the five views, the mIoU beats labelling every pixel at random (here
    17.6 against 6.4; the full run: README)."""
    from tests.d2_helpers import load_tool

    train_net = load_tool("train_net")
    argv = ["--config-file", os.path.join(ROOT, TINY), "SOLVER.MAX_ITER", "150", "DATALOADER.NUM_WORKERS", "0",
            "OUTPUT_DIR", str(tmp_path)]
    train_net.main(train_net.argument_parser().parse_args(argv))
    argv = ["--eval-only"] + argv + ["MODEL.WEIGHTS", str(tmp_path / "model_final.pth")]
    metrics = train_net.main(train_net.argument_parser().parse_args(argv))["sem_seg"]
    chance = _chance_miou("sed_d2_synthetic_val")
    assert 5.0 < chance < 8.0
    print(f"mIoU {metrics['mIoU']:.2f} mACC {metrics['mACC']:.2f}, chance mIoU {chance:.2f}")
    assert metrics["mIoU"] > chance + 3.0 and metrics["mACC"] > 100 / 8 + 4.0


def test_resume_from_captions_continues_exactly(tmp_path):
    """The caption stream (images and sampled phrases) is a function of the position: a run
    resumed from its iteration-2 checkpoint ends with the uninterrupted run's weights. Dropout
    is off here: its RNG state is not in detectron2's checkpoints (for any method)."""
    import shutil

    from tests.d2_helpers import load_tool, tiny_opts_for

    train_net = load_tool("train_net")

    def run(output_dir, *extra):
        argv = ["--config-file", os.path.join(ROOT, TINY), *extra, *tiny_opts_for(TINY), "OUTPUT_DIR", str(output_dir),
                "SOLVER.MAX_ITER", "4", "SOLVER.CHECKPOINT_PERIOD", "2", "MODEL.SYNSEG.DROPOUT", "0.0",
                "MODEL.SYNSEG.MAX_CATEGORIES", "2"]
        train_net.main(train_net.argument_parser().parse_args(argv))
        return torch.load(output_dir / "model_final.pth", map_location="cpu", weights_only=True)["model"]

    straight = run(tmp_path / "straight")
    resumed_dir = tmp_path / "resumed"
    resumed_dir.mkdir()
    shutil.copy(tmp_path / "straight" / "model_0000001.pth", resumed_dir / "model_0000001.pth")
    (resumed_dir / "last_checkpoint").write_text("model_0000001.pth")
    resumed = run(resumed_dir, "--resume")
    assert all(torch.equal(straight[k], resumed[k]) for k in straight)
    middle = torch.load(tmp_path / "straight" / "model_0000001.pth", map_location="cpu", weights_only=True)["model"]
    assert any(not torch.equal(middle[k], straight[k]) for k in straight)  # iterations 3-4 did train


def test_phrases_are_encoded_over_the_shortened_context_exactly():
    """encode_uncached runs the text tower only up to the longest phrase's end token: the
    embeddings of the full 77-token context up to rounding."""
    from sed_d2.clip.text import encode_text_truncated

    model = _build()
    phrases = ["a dog", "red brick wall with a small window", "sky"]
    with torch.no_grad():
        shortened = model.text_encoder.encode_uncached(phrases)
        full = model.text_encoder(phrases)
        tokens = model.text_encoder.tokenizer(phrases)
        torch.testing.assert_close(encode_text_truncated(model.clip_model, tokens), model.clip_model.encode_text(tokens))
    torch.testing.assert_close(shortened, full, rtol=1e-5, atol=1e-6)
    assert int(tokens.argmax(-1).max()) + 1 < 20  # what the tower ran over, instead of 77


def test_pamr_is_off_by_default_changes_the_scores_when_on_and_off_is_bit_identical():
    from sed_d2.layers import PAMR
    from sed_d2.layers.pamr import pamr

    model = _build().eval()
    assert model.inference_protocol.refine is None  # TEST.PAMR.ENABLED False: SynSeg's own protocol
    images = _images(2, size=(64, 80))
    with torch.no_grad():
        model.set_vocabulary(["sky", "grass", "road"])
        off = model.inference_scores(images)
        model.inference_protocol.refine = PAMR(3, (1, 2, 4))
        on = model.inference_scores(images)
        model.inference_protocol.refine = None
        off_again = model.inference_scores(images)
    for a, b, c in zip(off, on, off_again):
        assert torch.equal(a, c) and a.shape == b.shape
        assert (a - b).abs().max() > 1e-4
    # the keys build it; one whole-image view: PAMR of its scores with the view the network saw
    whole = ("TEST.PROTOCOL", "whole", "TEST.PAMR.ITERS", "3", "TEST.PAMR.DILATIONS", "[1, 2, 4]")
    refined = _build(TINY, *whole, "TEST.PAMR.ENABLED", "True").eval()
    plain = _build(TINY, *whole).eval()
    refine = refined.inference_protocol.refine
    assert isinstance(refine, PAMR) and (refine.iterations, refine.dilations) == (3, (1, 2, 4))
    with torch.no_grad():
        for m in (refined, plain):
            m.set_vocabulary(["background", "sky", "grass"], background_index=0)
        views = plain.prepare_images(images)
        expected = pamr(views, plain.forward_test(views, plain.text_embeddings()), 3, (1, 2, 4))
        scores = refined.inference_scores(images)
    for score, expect in zip(scores, expected):
        assert torch.all(score[0] == 0.4)  # the background constant is added after PAMR, as TCL does
        torch.testing.assert_close(score[1:], expect, rtol=0, atol=0)
    with pytest.raises(ValueError, match="TEST.PAMR.ITERS / TEST.PAMR.DILATIONS"):
        _build(TINY, "TEST.PAMR.ENABLED", "True", "TEST.PAMR.DILATIONS", "[]")


def test_tcl_custom_templates_are_averaged_end_to_end():
    from sed_d2.clip.templates import TCL_CUSTOM_TEMPLATES
    from sed_d2.meta_arch.synseg import class_embeddings
    from tests.d2_helpers import detectron2_inputs

    model = _build(TINY, "MODEL.OVSEG.PROMPT_TEMPLATES", "tcl_custom")
    assert model.templates == list(TCL_CUSTOM_TEMPLATES) and len(model.templates) == 9
    names = ["sky", "grass"]
    model.eval()
    with torch.no_grad():
        model.set_vocabulary(names)
        text = model.text_embeddings()
        assert text.shape[:2] == (2, 9)  # (T, P, C): the templates kept apart, averaged by SynSeg
        tokens = model.text_encoder.tokenizer([t.format("grass") for t in TCL_CUSTOM_TEMPLATES])
        one_by_one = torch.nn.functional.normalize(model.clip_model.encode_text(tokens).float(), dim=-1)
        torch.testing.assert_close(class_embeddings(text)[1], torch.nn.functional.normalize(one_by_one.mean(0), dim=0))
        outputs = model(detectron2_inputs([(64, 80), (48, 64)]))
    assert [tuple(o["sem_seg"].shape) for o in outputs] == [(2, 64, 80), (2, 48, 64)]
    # training from phrases and from label maps with the 9 templates
    model.train()
    losses = model([{"image": _images(1)[0], "nouns": ["a dog", "sky"]}, {"image": _images(1, seed=1)[0], "nouns": ["tree"]}])
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
