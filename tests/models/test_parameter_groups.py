import pytest
from torch import nn

from sed_d2.models import (
    LR_MULTIPLIER_KEYS,
    SEDModel,
    assign_parameter_groups,
    build_sed_decoder_for,
    match_parameter_groups,
)
from tests.helpers import tiny_clip


def _toy():
    module = nn.Module()
    module.backbone = nn.Sequential(nn.Linear(2, 2), nn.LayerNorm(2))
    module.head = nn.Linear(2, 1)
    return module


def test_first_match_wins_and_requires_grad_follows_groups():
    module = _toy()
    table = (
        (r"backbone\.1\.", "frozen"),  # the norm, before the broader backbone rule
        (r"backbone\.", "clip"),
        (r"head\.", "decoder"),
    )
    groups = assign_parameter_groups(module, table)
    assert groups == {
        "backbone.0.weight": "clip", "backbone.0.bias": "clip",
        "backbone.1.weight": "frozen", "backbone.1.bias": "frozen",
        "head.weight": "decoder", "head.bias": "decoder",
    }
    for name, parameter in module.named_parameters():
        assert parameter.requires_grad == (groups[name] != "frozen")
    # re-assigning un-freezes what is no longer frozen
    assign_parameter_groups(module, ((r"", "decoder"),))
    assert all(p.requires_grad for p in module.parameters())


def test_patterns_are_anchored_at_the_start():
    with pytest.raises(ValueError, match="head.weight"):
        match_parameter_groups(_toy(), ((r"backbone", "clip"), (r"weight", "decoder"), (r"bias", "decoder")))


def test_unmatched_parameter_is_an_error_naming_it():
    module = _toy()
    with pytest.raises(ValueError, match=r"head\.weight, head\.bias"):
        assign_parameter_groups(module, ((r"backbone\.", "clip"),))
    assert all(p.requires_grad for p in module.parameters())  # nothing changed on error


def test_unknown_group_is_an_error():
    with pytest.raises(ValueError, match=r"unknown parameter group 'encoder'.*\('frozen', 'clip', 'decoder', 'backbone'\)"):
        assign_parameter_groups(_toy(), ((r"", "encoder"),))


def test_a_group_with_a_multiplier_entry_is_known(monkeypatch):
    monkeypatch.setitem(LR_MULTIPLIER_KEYS, "backbone", "SOLVER.BACKBONE_MULTIPLIER")
    groups = assign_parameter_groups(_toy(), ((r"backbone\.", "backbone"), (r"head\.", "decoder")))
    assert groups["backbone.1.weight"] == "backbone" and groups["head.bias"] == "decoder"


@pytest.mark.parametrize("clip_finetune", ["full", "frozen"])
def test_sed_tables(clip_finetune):
    clip = tiny_clip()
    model = SEDModel(clip, build_sed_decoder_for(clip, 4), clip_finetune=clip_finetune)
    groups = model.parameter_groups
    assert set(groups) == {name for name, _ in model.named_parameters()}
    visual_group = "clip" if clip_finetune == "full" else "frozen"
    for name, group in groups.items():
        if name.startswith("decoder."):
            assert group == "decoder"
        elif name.startswith("clip_model.visual."):
            assert group == visual_group
        else:  # text tower, embeddings, ln_final, text_projection, logit_scale
            assert group == "frozen", name
    for frozen in ("clip_model.token_embedding.weight", "clip_model.positional_embedding",
                   "clip_model.ln_final.weight", "clip_model.text_projection", "clip_model.logit_scale"):
        assert groups[frozen] == "frozen"
    assert groups["clip_model.visual.head.proj.weight"] == visual_group  # projection head -> clip_vis_dense
    assert groups["clip_model.visual.trunk.stem.0.weight"] == visual_group
    assert {n for n, p in model.named_parameters() if p.requires_grad} == {
        n for n, g in groups.items() if g != "frozen"
    }
    with pytest.raises(ValueError, match="clip_finetune"):
        SEDModel(clip, model.decoder, clip_finetune="attention")
