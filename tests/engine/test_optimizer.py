"""Optimizer: CLIP learning-rate multiplier, weight-decay rules, full-model clipping."""
import pytest
import torch

from tests.conftest import requires_detectron2
from tests.d2_helpers import tiny_cfg

pytestmark = requires_detectron2


@pytest.fixture(scope="module")
def cfg_and_model():
    from detectron2.modeling import build_model

    import sed_d2  # noqa: F401

    cfg = tiny_cfg("configs/sed/convnextB_768.yaml")
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
