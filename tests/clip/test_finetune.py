import pytest
import torch
from torch import nn
from torch.func import functional_call

from sed_d2.clip.finetune import apply_clip_finetune, frozen_rows, keep_frozen_rows
from tests.helpers import tiny_clip

TINY_VIT = "sed_d2_tiny_vit_quickgelu"  # vision width 64 x 4 blocks, text width 32 x 2 blocks
ATTENTION_WEIGHTS = [f"visual.transformer.resblocks.{i}.attn.in_proj_weight" for i in range(4)] + [
    f"transformer.resblocks.{i}.attn.in_proj_weight" for i in range(2)
]


@pytest.fixture
def clip():
    return tiny_clip(TINY_VIT, seed=5)


def batch(seed=0):
    generator = torch.Generator().manual_seed(seed)
    images = torch.randn(2, 3, 64, 64, generator=generator)
    tokens = torch.randint(1, 400, (3, 77), generator=generator)
    tokens[:, 0], tokens[:, 6], tokens[:, 7:] = 49406, 49407, 0  # start, end (argmax pooling), padding
    return images, tokens


def rows(width):
    return {"q": slice(0, width), "k": slice(width, 2 * width), "v": slice(2 * width, 3 * width)}


def width_of(clip, name):
    return clip.get_submodule(name.rsplit(".", 1)[0]).embed_dim


# ------------------------------------------------------------------ groups


def test_attention_mode_trains_the_fused_projections_of_both_towers(clip):
    groups = apply_clip_finetune(clip, "attention")
    assert [name for name, group in groups.items() if group == "clip"] == ATTENTION_WEIGHTS
    assert set(groups) == {name for name, _ in clip.named_parameters()}
    for name, parameter in clip.named_parameters():
        assert parameter.requires_grad == (name in ATTENTION_WEIGHTS), name
        expected_rows = rows(width_of(clip, name))["k"] if name in ATTENTION_WEIGHTS else None
        assert frozen_rows(parameter) == expected_rows, name


def test_full_and_frozen_modes_follow_the_official_name_rule(clip):
    groups = apply_clip_finetune(clip, "full")
    trainable = {name for name, group in groups.items() if group == "clip"}
    assert trainable == {name for name, _ in clip.named_parameters() if name.startswith(("visual.transformer.", "transformer."))}
    assert "visual.positional_embedding" not in trainable and "visual.proj" not in trainable
    assert all(frozen_rows(p) is None for p in clip.parameters())
    assert set(apply_clip_finetune(clip, "frozen").values()) == {"frozen"}
    assert not any(p.requires_grad for p in clip.parameters())


def test_unknown_mode_and_models_without_fused_attention(clip):
    with pytest.raises(ValueError, match="must be one of"):
        apply_clip_finetune(clip, "prompt")
    with pytest.raises(ValueError, match="needs nn.MultiheadAttention"):
        apply_clip_finetune(nn.Sequential(nn.Linear(2, 2)), "attention")


# ------------------------------------------------------------------ gradients


def attention_loss(clip, seed=0, parameters=None):
    """A loss through both towers' standard attention path (q, k and v all matter);
    ``parameters`` replace the model's own (torch.func.functional_call)."""
    images, tokens = batch(seed)
    if parameters is None:
        image_features, text_features, _ = clip(images, tokens)
    else:
        image_features, text_features, _ = functional_call(clip, parameters, (images, tokens))
    return (image_features @ text_features.T).square().sum()


def test_gradients_reach_q_and_v_rows_only(clip):
    apply_clip_finetune(clip, "attention")
    attention_loss(clip).backward()
    for name in ATTENTION_WEIGHTS:
        gradient = clip.get_parameter(name).grad
        parts = rows(width_of(clip, name))
        assert torch.count_nonzero(gradient[parts["k"]]) == 0, name
        assert torch.count_nonzero(gradient[parts["q"]]) > 0 and torch.count_nonzero(gradient[parts["v"]]) > 0, name
    assert all(p.grad is None for name, p in clip.named_parameters() if name not in ATTENTION_WEIGHTS)


def test_switching_mode_removes_the_masks(clip):
    apply_clip_finetune(clip, "attention")
    apply_clip_finetune(clip, "full")
    attention_loss(clip).backward()
    name = ATTENTION_WEIGHTS[0]
    assert torch.count_nonzero(clip.get_parameter(name).grad[rows(64)["k"]]) > 0


def test_masks_survive_module_to(clip):
    apply_clip_finetune(clip, "attention")
    clip.to(torch.float64)
    images, tokens = batch()
    image_features, text_features, _ = clip(images.double(), tokens)
    (image_features @ text_features.T).square().sum().backward()
    weight = clip.get_parameter(ATTENTION_WEIGHTS[0])
    assert weight.dtype == torch.float64 and frozen_rows(weight) == rows(64)["k"]
    assert torch.count_nonzero(weight.grad[rows(64)["k"]]) == 0


# ------------------------------------------------------------------ optimizer steps


def train(clip, optimizer, steps=3):
    for step in range(steps):
        optimizer.zero_grad()
        attention_loss(clip, seed=step).backward()
        optimizer.step()


def adamw(clip, optimizer_class=torch.optim.AdamW):
    trainable = [p for p in clip.parameters() if p.requires_grad]
    return optimizer_class([{"params": trainable, "lr": 1e-2, "weight_decay": 0.5}])


def test_k_rows_biases_and_frozen_parameters_stay_bit_identical_under_adamw(clip):
    apply_clip_finetune(clip, "attention")
    before = {name: p.detach().clone() for name, p in clip.named_parameters()}
    optimizer = adamw(clip)
    keep_frozen_rows(optimizer)
    train(clip, optimizer)
    for name, parameter in clip.named_parameters():
        if name in ATTENTION_WEIGHTS:
            parts = rows(width_of(clip, name))
            assert torch.equal(parameter[parts["k"]], before[name][parts["k"]]), name
            assert not torch.equal(parameter[parts["q"]], before[name][parts["q"]]), name
            assert not torch.equal(parameter[parts["v"]], before[name][parts["v"]]), name
        else:
            assert torch.equal(parameter, before[name]), name  # in_proj_bias, out_proj, norms, embeddings...


def test_q_and_v_follow_adamw_on_separate_tensors_as_the_official_split_layout(clip):
    # The official vendored CLIP has q_proj_weight / k_proj_weight / v_proj_weight; with k
    # frozen, AdamW (weight decay included) updates q and v as two separate tensors.
    reference = tiny_clip(TINY_VIT, seed=5)
    reference.requires_grad_(False)
    split = {}
    for name in ATTENTION_WEIGHTS:
        q, k, v = reference.get_parameter(name).detach().chunk(3)
        split[name] = (nn.Parameter(q.clone()), k.clone(), nn.Parameter(v.clone()))
    reference_optimizer = torch.optim.AdamW(
        [p for q, _, v in split.values() for p in (q, v)], lr=1e-2, weight_decay=0.5
    )

    apply_clip_finetune(clip, "attention")
    optimizer = adamw(clip)
    keep_frozen_rows(optimizer)
    for step in range(3):
        optimizer.zero_grad()
        attention_loss(clip, seed=step).backward()
        optimizer.step()

        reference_optimizer.zero_grad()
        fused = {name: torch.cat([q, k, v]) for name, (q, k, v) in split.items()}
        attention_loss(reference, seed=step, parameters=fused).backward()
        reference_optimizer.step()

    for name, (q, k, v) in split.items():
        weight = clip.get_parameter(name).detach()
        parts = rows(width_of(clip, name))
        assert torch.equal(weight[parts["q"]], q.detach()), name
        assert torch.equal(weight[parts["v"]], v.detach()), name
        assert torch.equal(weight[parts["k"]], k)


def test_without_the_optimizer_hooks_weight_decay_moves_k(clip):
    apply_clip_finetune(clip, "attention")
    name = ATTENTION_WEIGHTS[0]
    k_before = clip.get_parameter(name)[rows(64)["k"]].detach().clone()
    optimizer = adamw(clip)
    keep_frozen_rows(optimizer).remove()
    train(clip, optimizer, steps=1)
    # Zero gradients alone do not keep a row still under decoupled weight decay.
    torch.testing.assert_close(clip.get_parameter(name)[rows(64)["k"]].detach(), k_before * (1 - 1e-2 * 0.5))


def test_a_step_wrapped_by_a_subclass_keeps_k_rows(clip):
    # detectron2's gradient clipping subclasses the optimizer and calls super().step():
    # torch then runs the step hooks twice around one update.
    class ClippedAdamW(torch.optim.AdamW):
        def step(self, closure=None):
            torch.nn.utils.clip_grad_norm_([p for g in self.param_groups for p in g["params"]], 0.01)
            return super().step(closure)

    apply_clip_finetune(clip, "attention")
    name = ATTENTION_WEIGHTS[-1]
    before = clip.get_parameter(name).detach().clone()
    optimizer = adamw(clip, ClippedAdamW)
    keep_frozen_rows(optimizer)
    train(clip, optimizer)
    after = clip.get_parameter(name).detach()
    assert torch.equal(after[rows(32)["k"]], before[rows(32)["k"]])
    assert not torch.equal(after[rows(32)["q"]], before[rows(32)["q"]])
