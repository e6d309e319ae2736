"""Optimizer: CLIP learning-rate multiplier, weight-decay rules, full-model clipping."""
import hashlib

import pytest
import torch

from tests.conftest import requires_detectron2
from tests.d2_helpers import tiny_cfg_for

pytestmark = requires_detectron2


@pytest.fixture(scope="module")
def cfg_and_model():
    from detectron2.modeling import build_model

    import sed_d2  # noqa: F401

    cfg = tiny_cfg_for("configs/sed/convnextB_768.yaml")
    return cfg, build_model(cfg)


def test_param_groups(cfg_and_model):
    from sed_d2.engine import build_param_groups

    cfg, model = cfg_and_model
    groups = build_param_groups(cfg, model)
    by_param = {id(p): g for g in groups for p in g["params"]}
    names = dict(model.named_parameters())
    trainable = [n for n, p in names.items() if p.requires_grad]
    assert len(by_param) == len(trainable)  # every trainable parameter once, frozen ones never
    stem = by_param[id(names["model.clip_model.visual.trunk.stem.0.weight"])]
    assert stem["lr"] == pytest.approx(cfg.SOLVER.BASE_LR * 0.01)
    assert stem["weight_decay"] == cfg.SOLVER.WEIGHT_DECAY
    conv = by_param[id(names["model.decoder.cost_embed.conv.weight"])]
    assert conv["lr"] == cfg.SOLVER.BASE_LR and conv["weight_decay"] == cfg.SOLVER.WEIGHT_DECAY
    norm = by_param[id(names["model.decoder.stages.0.class_block.attention_norm.weight"])]
    assert norm["weight_decay"] == cfg.SOLVER.WEIGHT_DECAY_NORM == 0.0
    assert id(names["model.clip_model.token_embedding.weight"]) not in by_param


def test_full_model_gradient_clipping(cfg_and_model):
    from sed_d2.engine import build_optimizer

    cfg, model = cfg_and_model
    assert cfg.SOLVER.CLIP_GRADIENTS.CLIP_TYPE == "full_model"
    cfg = cfg.clone()
    cfg.SOLVER.CLIP_GRADIENTS.CLIP_VALUE = 0.01
    opt = build_optimizer(cfg, model)
    assert isinstance(opt, torch.optim.AdamW)
    params = [p for g in opt.param_groups for p in g["params"]]
    for p in params:
        p.grad = torch.full_like(p, 3.0)
    before = [p.detach().clone() for p in params]
    opt.step()
    total = torch.norm(torch.stack([p.grad.norm() for p in params]))
    assert total.item() == pytest.approx(0.01, rel=1e-4)
    assert any(not torch.equal(a, p) for a, p in zip(before, params))
    opt.zero_grad(set_to_none=True)
    for p, b in zip(params, before):
        p.data.copy_(b)


def test_unknown_optimizer_is_refused(cfg_and_model):
    from sed_d2.engine import build_optimizer

    cfg, model = cfg_and_model
    cfg = cfg.clone()
    cfg.SOLVER.OPTIMIZER = "LAMB"
    with pytest.raises(ValueError, match="SOLVER.OPTIMIZER"):
        build_optimizer(cfg, model)


def _group_summary(model, groups):
    """(name, lr, weight decay, count, sha1 of the parameter names in order) per group."""
    names = {id(p): n for n, p in model.named_parameters()}
    summary = []
    for group in groups:
        params = "\n".join(names[id(p)] for p in group["params"])
        digest = hashlib.sha1(params.encode()).hexdigest()[:12]
        summary.append((group["name"], group["lr"], group["weight_decay"], len(group["params"]), digest))
    return summary


def test_sed_param_groups_are_those_of_8e651e6(cfg_and_model):
    """Order, learning rates, weight decays and members of SED's groups as commit 8e651e6 built
    them (before the group -> multiplier table), on the convnextB_768 recipe."""
    from sed_d2.engine import build_param_groups

    cfg, model = cfg_and_model
    assert _group_summary(model, build_param_groups(cfg, model)) == [
        ("clip/wd=0.0001", 2.0000000000000003e-06, 0.0001, 72, "3a3ee92b3083"),
        ("clip/wd=0", 2.0000000000000003e-06, 0.0, 28, "8b090ebea619"),
        ("decoder/wd=0.0001", 0.0002, 0.0001, 85, "42879817d7e5"),
        ("decoder/wd=0", 0.0002, 0.0, 30, "6eb3ce22e765"),
    ]


def test_a_new_group_is_one_table_entry_and_one_config_key(monkeypatch):
    from torch import nn

    from sed_d2.engine import build_param_groups
    from sed_d2.models import LR_MULTIPLIER_KEYS, assign_parameter_groups

    monkeypatch.setitem(LR_MULTIPLIER_KEYS, "backbone", "SOLVER.BACKBONE_MULTIPLIER")
    cfg = tiny_cfg_for("configs/sed/convnextB_768.yaml")
    cfg.SOLVER.BACKBONE_MULTIPLIER = 0.1
    model = nn.Module()
    model.backbone = nn.Linear(2, 2)
    model.clip = nn.Linear(2, 2)
    model.head = nn.Linear(2, 1)
    model.parameter_groups = assign_parameter_groups(
        model, ((r"backbone\.", "backbone"), (r"clip\.", "clip"), (r"head\.", "decoder"))
    )
    lrs = {group["name"]: group["lr"] for group in build_param_groups(cfg, model)}
    assert lrs == {
        "backbone/wd=0.0001": 0.0002 * 0.1,
        "clip/wd=0.0001": 0.0002 * 0.01,
        "decoder/wd=0.0001": 0.0002,
    }


def test_a_trainable_parameter_of_a_group_without_a_rate_is_refused():
    from torch import nn

    from sed_d2.engine import build_param_groups

    model = nn.Linear(2, 2)
    model.parameter_groups = {"weight": "frozen", "bias": "decoder"}  # "frozen" yet trainable
    with pytest.raises(KeyError, match="'weight' is in group 'frozen', which has no learning rate"):
        build_param_groups(tiny_cfg_for("configs/sed/convnextB_768.yaml"), model)
