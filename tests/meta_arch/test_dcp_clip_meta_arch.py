"""The DCP-CLIP meta-architecture, what tests/meta_arch/test_contract.py does not check for every
method: the paper configs at real size (Table II's parameter counts), one ablation leaf per row of
Tables III-VII, tag validation after the test protocol, the benchmark variant, prompted text."""
import glob
import os

import pytest
import torch
import torch.nn.functional as F

from tests.conftest import requires_detectron2
from tests.d2_helpers import ROOT, build_paper_config_on_meta, build_tiny_model, tiny_opts_for

pytestmark = requires_detectron2

TINY = "configs/dcp_clip/tiny.yaml"
BASE = "configs/dcp_clip/vitb_384.yaml"

# Each ablation leaf and the keys (under MODEL) its table row flips (OUTPUT_DIR aside): DCP-CLIP's
# own in MODEL.DCP_CLIP, its decoder layers in MODEL.CATSEG.
D = "DCP_CLIP."
LAYERS = "CATSEG.DECODER_DIMS"
ABLATIONS = {
    "table3_row1_baseline": {
        D + "DCS_ENABLED", D + "TGA_CROSS_ATTENTION", D + "TGA_SELF_ATTENTION", LAYERS, D + "TV_ENABLED"
    },
    "table3_row2_dcs": {D + "TGA_CROSS_ATTENTION", D + "TGA_SELF_ATTENTION", LAYERS, D + "TV_ENABLED"},
    "table3_row3_dcs_tga": {LAYERS, D + "TV_ENABLED"},
    "table3_row4_dcs_decoder": {D + "TGA_CROSS_ATTENTION", D + "TGA_SELF_ATTENTION", D + "TV_ENABLED"},
    "table3_row5_no_tv": {D + "TV_ENABLED"},
    "table4_no_branches": {D + "TGA_CROSS_ATTENTION", D + "TGA_SELF_ATTENTION"},
    "table4_cross_attention_only": {D + "TGA_SELF_ATTENTION"},
    "table4_self_attention_only": {D + "TGA_CROSS_ATTENTION"},
    "table5_no_cls_term": {D + "TGA_CLS_TERM"},
    "table5_no_cls_term_no_prompt": {D + "TGA_CLS_TERM", D + "TGA_PROMPT"},
    "table6a_no_spatial_enhance": {D + "SPATIAL_ENHANCE"},
    "table6b_decoder_layers_0": {LAYERS},
    "table6b_decoder_layers_1": {LAYERS},
    "table6c_fusion_none": {D + "FUSE_PATCH", D + "FUSE_SIM", D + "FUSE_ATTN"},
    "table6c_fusion_patch": {D + "FUSE_SIM", D + "FUSE_ATTN"},
    "table6c_fusion_patch_sim": {D + "FUSE_ATTN"},
    "table7_theta_0.9": {D + "DCS_THRESHOLD"},
    "table7_theta_0.8": {D + "DCS_THRESHOLD"},
    "table7_theta_0.2": {D + "DCS_THRESHOLD"},
    "table7_theta_0": {D + "DCS_THRESHOLD"},
}


def _build(*extra, config_file=TINY, seed=0):
    return build_tiny_model(config_file, *extra, seed=seed)


def _images(sizes, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return [torch.randint(0, 256, (3, h, w), generator=generator, dtype=torch.uint8) for h, w in sizes]


def _flat(node, prefix=""):
    out = {}
    for key, value in node.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[prefix + key] = value
    return out


@pytest.mark.parametrize(
    "config_file, clip_model, resolution, guidance_layers, learnable, total",
    [
        # Table II (its caption says base scale, its counts are ViT-L/14@336's): 80.3 M / 443.6 M
        ("configs/dcp_clip/vitl_336.yaml", "ViT-L-14-336-quickgelu", (336, 336), (7, 15), 80.3e6, 443.6e6),
        # ours for ViT-B/16 (README): 29.39 M learnable (8.94 M new + q/v rows), 158.56 M total
        ("configs/dcp_clip/vitb_384.yaml", "ViT-B-16-quickgelu", (384, 384), (3, 7), 29.39e6, 158.56e6),
    ],
)
def test_paper_configs_have_table_ii_parameter_counts(
    config_file, clip_model, resolution, guidance_layers, learnable, total, monkeypatch
):
    """Built at real size on the meta device; learnable = the new modules + the q and v rows of
    every fused attention projection of both CLIP towers (the k rows never train)."""
    from sed_d2.meta_arch import SlidingWindow

    model, cfg, built = build_paper_config_on_meta(config_file, monkeypatch)
    assert built == [(clip_model, "openai")]
    groups = model.parameter_groups
    trained = 0
    for name, parameter in model.named_parameters():
        if groups[name] == "clip":
            assert name.endswith("attn.in_proj_weight")
            trained += parameter.numel() * 2 // 3  # q and v rows
        elif groups[name] != "frozen":
            trained += parameter.numel()
    assert trained == pytest.approx(learnable, rel=0.02)
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(total, rel=0.02)
    assert model.model.guidance_layers == guidance_layers and model.clip_resolution == resolution
    assert model.templates == ["A photo of a {} in the scene"] and model.synonym_rule == "first"
    assert model.prompt_template == "a photo of a {}." and model.tag_validation_k == 5
    assert model.model.selection and model.model.threshold == 0.5
    assert isinstance(model.inference_protocol, SlidingWindow)


def test_there_is_one_ablation_leaf_per_table_row():
    leaves = glob.glob(os.path.join(ROOT, "configs", "dcp_clip", "ablations", "*.yaml"))
    assert sorted(os.path.basename(p)[:-5] for p in leaves) == sorted(ABLATIONS)


@pytest.mark.parametrize("leaf", sorted(ABLATIONS))
def test_each_ablation_leaf_flips_exactly_its_rows_keys_and_trains(leaf):
    from detectron2.modeling import build_model

    from sed_d2.config import get_cfg

    path = f"configs/dcp_clip/ablations/{leaf}.yaml"
    base, resolved = _flat(get_cfg(os.path.join(ROOT, BASE))), _flat(get_cfg(os.path.join(ROOT, path)))
    changed = {key for key in base if base[key] != resolved[key]} - {"OUTPUT_DIR"}
    assert changed == {f"MODEL.{key}" for key in ABLATIONS[leaf]}
    # the leaf, CPU-sized: one training step reaches every trainable parameter
    torch.manual_seed(0)
    model = build_model(get_cfg(os.path.join(ROOT, path), tiny_opts_for(BASE))).train()
    generator = torch.Generator().manual_seed(0)
    inputs = [
        {"image": image, "sem_seg": torch.randint(0, 8, (64, 64), generator=generator)} for image in _images([(64, 64)] * 2)
    ]
    sum(model(inputs).values()).backward()
    for name, parameter in model.named_parameters():
        assert (parameter.grad is not None) == (model.parameter_groups[name] != "frozen"), name


def test_is_catseg_one_level_deep_and_its_catseg_keys_reach_the_network():
    from sed_d2.meta_arch import DCPCLIP, CATSeg

    assert DCPCLIP.__bases__ == (CATSeg,)
    model = _build(
        "MODEL.CATSEG.GUIDANCE_LAYERS", "[2, 0, 1]",
        "MODEL.CATSEG.SKIP_CHANNELS", "[12, 6, 4]",
        "MODEL.CATSEG.SKIP_PROJ_DIMS", "[6, 3, 2]",
        "MODEL.CATSEG.DECODER_DIMS", "[24]",
        "MODEL.CATSEG.HIDDEN_DIM", "16",
        "MODEL.CATSEG.COST_EMBED_KERNEL", "3",
        "MODEL.CATSEG.NUM_HEADS", "4",
        "MODEL.CATSEG.WINDOW_SIZE", "2",
        "MODEL.CATSEG.IGNORE_AS_NEGATIVE", "False",
    )
    network, spatial = model.model, model.model.decoder.spatial
    # one decoder layer: the first skip tap, channels and projection of each list
    assert network.guidance_layers == (2,) and [m.out_channels for m in network.guidance_upsamplers] == [12]
    assert [m.out_channels for m in spatial.skip_projections] == [6]
    assert [f.double_conv.conv1.out_channels for f in spatial.fusions] == [24] and spatial.head.in_channels == 24
    assert network.decoder.cost_embed.conv.out_channels == 16 and network.decoder.cost_embed.conv.kernel_size == (3, 3)
    block = spatial.spatial[0].block0
    assert (block.window_size, block.attn.num_heads) == (2, 4)
    assert not model.ignore_as_negative


@pytest.mark.parametrize(
    "key, value",
    [
        ("NUM_LAYERS", "3"),
        ("POOLING_SIZE", "(1, 1)"),
        ("TEST_POOLING_SIZE", "(2, 2)"),
        ("PAD_LEN", "16"),
        ("APPEARANCE_GUIDANCE_DIM", "16"),
        ("TEXT_GUIDANCE_DIM", "16"),
    ],
)
def test_catseg_aggregation_keys_are_refused_not_ignored(key, value):
    from sed_d2.config import get_cfg

    default = get_cfg().MODEL.CATSEG[key]
    _build(f"MODEL.CATSEG.{key}", repr(default))  # its default, spelled out: accepted
    with pytest.raises(ValueError, match=rf"DCP-CLIP has no CAT-Seg cost aggregation.*leave MODEL.CATSEG.{key} \(default"):
        _build(f"MODEL.CATSEG.{key}", value)


def test_tag_validation_runs_on_the_protocols_fused_scores():
    from sed_d2.layers.tag_validation import tag_validation

    model = _build("MODEL.DCP_CLIP.TV_TOPK", "1").eval()
    model.train_vocabulary = None  # every class unseen: every predicted region is checked
    images = _images([(64, 80), (70, 70)])
    with torch.no_grad():
        validated = model.inference_scores(images)
        model.tag_validation_k = 0
        plain = model.inference_scores(images)
        text = model.text_embeddings()
        text_mean = F.normalize(F.normalize(text, dim=-1).mean(dim=1), dim=-1)
        dense = model.image_features(model.prepare_images(images))["clip_vis_dense"]
    seen = torch.zeros(len(model.vocabulary), dtype=torch.bool)
    changed = 0
    for got, scores, features in zip(validated, plain, dense):
        expected = tag_validation(scores, features, text_mean, seen, 1)
        torch.testing.assert_close(got, expected)
        changed += int(not torch.equal(got, scores))
        assert torch.equal(got.sort(dim=0).values, scores.sort(dim=0).values)  # swaps only
    assert changed > 0


def test_seen_classes_follow_the_training_vocabulary():
    model = _build()
    model.set_vocabulary([model.train_vocabulary[0], "zebra", f"okapi, {model.train_vocabulary[1]}"])
    model.eval()
    assert model._seen_classes().tolist() == [True, False, True]


def test_dcs_keep_variant_fixes_the_subset_and_capturability_follows_dcs():
    from sed_d2.models.dcp_clip import UNSELECTED_CLASS_LOGIT

    model = _build().eval()
    assert not model.decode_capturable
    assert _build("MODEL.DCP_CLIP.DCS_ENABLED", "False").decode_capturable
    with torch.no_grad():
        images = model.prepare_images(_images([(64, 64), (64, 64)]))
        text = model.text_embeddings()
        with model.benchmark_variants()["dcs_keep"](2):
            assert not model.decode_capturable
            logits = model.network_logits(images, text)
        assert model.model.fixed_selection == 0
    assert (logits > UNSELECTED_CLASS_LOGIT).flatten(2).any(-1).sum(1).tolist() == [2, 2]


def test_prompted_text_is_cached_at_eval_and_differentiable_in_training():
    model = _build()
    model.train()
    prompts = model.prompt_embeddings()
    assert prompts.shape == (len(model.vocabulary), model.clip_model.text_projection.shape[1]) and prompts.requires_grad
    prompts.sum().backward()
    assert model.model.decoder.prompt.context.grad is not None
    model.eval()
    with torch.no_grad():
        first = model.prompt_embeddings()
        hits = model._prompt_encoder.cache_info().hits
        assert torch.equal(model.prompt_embeddings(), first)
        assert model._prompt_encoder.cache_info().hits == hits + 1  # cached per vocabulary and weights
        with torch.no_grad():
            model.model.decoder.prompt.context.add_(0.1)
        assert not torch.equal(model.prompt_embeddings(), first)  # a changed context re-encodes
    assert not any("prompt_encoder" in key for key in model.state_dict())
