import pytest
import torch
import torch.nn.functional as F

from sed_d2.clip import build_clip_model, vit_dense_features
from sed_d2.clip.prompt_context import PromptContext, encode_text_with_context
from sed_d2.layers.category_selection import (
    category_scores,
    pad_class_subsets,
    present_classes,
    scatter_class_subsets,
    select_categories,
    top_n_selection,
)
from sed_d2.layers.tag_validation import seen_class_mask, tag_validation
from sed_d2.models.dcp_clip import (
    UNSELECTED_CLASS_LOGIT,
    DCPCLIPDecoder,
    DCPCLIPModel,
    SpatialEnhancedDecoder,
    TextGuidedAlignment,
)
from tests.helpers import (
    TINY_VIT as TINY_CLIP,
    TINY_VIT_EMBED as EMBED,
    TINY_VIT_GRID as GRID,
    TINY_VIT_SIZE as SIZE,
)



def _model(seed=0, prompt="coop", selection=True, threshold=0.5, **alignment):
    torch.manual_seed(seed)
    clip = build_clip_model(TINY_CLIP)
    decoder = DCPCLIPDecoder(
        num_templates=1,
        hidden_dim=32,
        cost_embed_kernel=7,
        skip_channels=(16, 8),
        alignment=TextGuidedAlignment(EMBED, 32, prompt=prompt, **alignment),
        spatial=SpatialEnhancedDecoder(
            hidden_dim=32,
            decoder_dims=(32, 16),
            embed_dim=EMBED,
            num_patches=GRID * GRID,
            skip_channels=(16, 8),
            skip_proj_dims=(8, 4),
            cost_guidance_dims=(8, 4),
            num_templates=1,
            window_size=2,
            num_heads=2,
        ),
    )
    if prompt == "coop":
        decoder.prompt = PromptContext(clip, "a photo of a")
    model = DCPCLIPModel(clip, decoder, guidance_layers=(1, 2), selection=selection, threshold=threshold)
    with torch.no_grad():  # norms and biases start constant: re-draw them
        for name, p in model.named_parameters():
            if p.dim() == 1 and not name.startswith("clip_model."):
                p.add_(0.2 * torch.randn_like(p))
    return model


def _tokens(num_classes, seed=1):
    generator = torch.Generator().manual_seed(seed)
    tokens = torch.zeros(num_classes, 77, dtype=torch.long)
    tokens[:, 0] = 49406  # start of text
    tokens[:, 1:9] = torch.randint(1, 49000, (num_classes, 8), generator=generator)
    tokens[:, 9] = 49407  # end of text: the highest id
    return tokens


def _text(model, num_classes, seed=1):
    """``(T, 1, C)`` normalised embeddings of the CLIP text tower (with gradients when it trains)."""
    return F.normalize(model.clip_model.encode_text(_tokens(num_classes, seed)), dim=-1).unsqueeze(1)


def _prompts(model, num_classes, seed=1):
    tokens = _tokens(num_classes, seed)
    return F.normalize(encode_text_with_context(model.clip_model, tokens, model.decoder.prompt.context), dim=-1)


# ------------------------------------------------------------------ category selection
def _scores_setup():
    """Three classes along the axes; 4 patches, the class token close to class 0."""
    text = torch.eye(3, 4)
    patches = torch.tensor([[1.0, 0.1, 0, 0], [1.0, 0.9, 0, 0], [0, 0, 1, 0], [1.0, 0, 0.2, 0]]).T.reshape(1, 4, 2, 2)
    cls = torch.tensor([[1.0, 0.0, 0.0, 0.0]])
    return patches, cls, text


def test_category_scores_follow_eq_1_and_2():
    patches, cls, text = _scores_setup()
    refined, image = category_scores(patches, cls, text, temperature=100.0)
    expected_image = (100 * F.normalize(cls) @ text.T).softmax(-1)
    torch.testing.assert_close(image, expected_image)
    cosine = F.normalize(patches.flatten(2), dim=1).transpose(1, 2) @ text.T
    torch.testing.assert_close(refined, cosine * (1 - expected_image)[:, None])


def test_damping_lets_a_dominated_patch_pick_its_second_class():
    patches, cls, text = _scores_setup()
    # every patch but one is closest to class 0, but class 0 dominates the image (S_img ~ 1):
    # damped, no patch picks it (patches 0, 1 pick class 1, patches 2, 3 class 2); class 0
    # returns through theta
    keep = select_categories(patches, cls, text, temperature=100.0, threshold=0.5)
    assert keep.tolist() == [[True, True, True]]
    no_image_level = select_categories(patches, cls, text, temperature=100.0, threshold=1.0)
    assert no_image_level.tolist() == [[False, True, True]]


def test_threshold_zero_keeps_every_class_and_a_high_threshold_adds_at_most_one():
    torch.manual_seed(0)
    patches, cls, text = torch.randn(3, 8, 4, 4), torch.randn(3, 8), torch.randn(20, 8)
    assert select_categories(patches, cls, text, temperature=100.0, threshold=0.0).all()
    refined, _ = category_scores(patches, cls, text, 100.0)
    patch_level = torch.zeros(3, 20, dtype=torch.bool).scatter_(1, refined.argmax(-1), True)
    for threshold in (0.5, 0.8, 0.9):
        keep = select_categories(patches, cls, text, temperature=100.0, threshold=threshold)
        assert (keep & ~patch_level).sum(1).le(1).all()  # a softmax has at most one entry > 0.5
        assert (keep >= patch_level).all()


def test_the_cap_keeps_the_image_level_class_then_the_strongest_patches():
    torch.manual_seed(0)
    patches, cls, text = torch.randn(2, 8, 4, 4), torch.randn(2, 8), torch.randn(20, 8)
    full = select_categories(patches, cls, text, temperature=100.0, threshold=0.5)
    capped = select_categories(patches, cls, text, temperature=100.0, threshold=0.5, max_classes=3)
    assert capped.sum(1).tolist() == [min(3, n) for n in full.sum(1).tolist()]
    assert (capped <= full).all()
    fixed = top_n_selection(patches, cls, text, temperature=100.0, n=5)
    assert fixed.sum(1).tolist() == [5, 5]


def test_padding_and_scatter_round_trip():
    keep = torch.tensor([[False, True, False, True], [True, True, True, False]])
    ids, valid = pad_class_subsets(keep)
    assert ids.tolist() == [[1, 3, 0], [0, 1, 2]] and valid.tolist() == [[True, True, False], [True, True, True]]
    values = torch.arange(6.0).view(2, 3, 1)
    full = scatter_class_subsets(values, ids, valid, 4)
    assert full[..., 0].tolist() == [[-float("inf"), 0.0, -float("inf"), 1.0], [3.0, 4.0, 5.0, -float("inf")]]


def test_present_classes_ignore_the_ignore_label():
    targets = torch.tensor([[[0, 2], [255, 2]], [[255, 255], [255, 255]]])
    assert present_classes(targets, 4, 255).tolist() == [[True, False, True, False], [False] * 4]


# ------------------------------------------------------------------ the network
def test_shapes_of_features_and_logits():
    model = _model().eval()
    images = torch.randn(2, 3, SIZE, SIZE)
    with torch.no_grad():
        features = model.image_features(images)
        assert {k: tuple(v.shape) for k, v in features.items()} == {
            "clip_vis_dense": (2, EMBED, GRID, GRID),
            "cls": (2, EMBED),
            "attention": (2, GRID * GRID, GRID, GRID),
            "guidance_0": (2, 16, 2 * GRID, 2 * GRID),
            "guidance_1": (2, 8, 4 * GRID, 4 * GRID),
        }
        output = model.decode(features, _text(model, 9), _prompts(model, 9))
        assert torch.equal(model(images, _text(model, 9), _prompts(model, 9)).logits, output.logits)
    assert output.logits.shape == (2, 9, 4 * GRID, 4 * GRID)
    width = output.class_ids.shape[1]
    assert output.subset_logits.shape == (2, width, 4 * GRID, 4 * GRID)
    for image in range(2):
        selected = output.class_ids[image][output.valid[image]]
        others = torch.ones(9, dtype=torch.bool)
        others[selected] = False
        assert (output.logits[image, others] == UNSELECTED_CLASS_LOGIT).all()
        assert torch.equal(output.logits[image, selected], output.subset_logits[image, : len(selected)])


def test_last_block_attention_is_the_head_mean_of_its_softmax():
    """``vit_dense_features(attention=True)`` against nn.MultiheadAttention's own weights."""
    torch.manual_seed(0)
    visual = build_clip_model(TINY_CLIP).visual.eval()
    images = torch.randn(2, 3, SIZE, SIZE)
    captured = {}
    last = visual.transformer.resblocks[-1]
    handle = last.register_forward_pre_hook(lambda module, args: captured.setdefault("x", args[0]))
    with torch.no_grad():
        visual(images)
        handle.remove()
        normed = last.ln_1(captured["x"])
        weights = last.attn(normed, normed, normed, need_weights=True, average_attn_weights=True)[1]
        got = vit_dense_features(visual, images, (0,), attention=True)["attention"]
    expected = weights[:, 1:, 1:].transpose(1, 2).reshape(2, GRID * GRID, GRID, GRID)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


def test_the_context_splice_of_the_initial_phrase_is_plain_encode_text():
    model = _model()
    tokenizer = __import__("open_clip").get_tokenizer(TINY_CLIP)
    tokens = tokenizer(["a photo of a cat.", "a photo of a traffic light."])
    with torch.no_grad():
        spliced = encode_text_with_context(model.clip_model, tokens, model.decoder.prompt.context)
        torch.testing.assert_close(spliced, model.clip_model.encode_text(tokens))


def test_a_padded_batch_equals_its_images_one_by_one():
    model = _model().eval()
    images = torch.randn(3, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        text, prompts = _text(model, 12), _prompts(model, 12)
        batched = model.decode(model.image_features(images), text, prompts)
        counts = batched.valid.sum(1)
        assert counts.min() < counts.max()  # the images keep different numbers of classes
        for image in range(3):
            single = model.decode(model.image_features(images[image : image + 1]), text, prompts)
            torch.testing.assert_close(batched.logits[image : image + 1], single.logits, rtol=1e-4, atol=1e-5)
            assert int(counts[image]) == single.class_ids.shape[1]


def test_dcs_with_threshold_zero_equals_the_dcs_off_path():
    images = torch.randn(2, 3, SIZE, SIZE)
    with torch.no_grad():
        selected = _model(threshold=0.0).eval()
        off = _model(selection=False).eval()
        text, prompts = _text(off, 7), _prompts(off, 7)
        a = selected.decode(selected.image_features(images), text, prompts)
        b = off.decode(off.image_features(images), text, prompts)
    assert a.valid.all() and a.class_ids.tolist() == [list(range(7))] * 2
    assert torch.equal(a.logits, b.logits)


def test_labelled_classes_join_the_selection_and_the_loss_is_golden():
    model = _model().train()
    images = torch.randn(2, 3, SIZE, SIZE)
    targets = torch.randint(0, 10, (2, SIZE, SIZE))
    targets[:, :4] = 255
    present = present_classes(targets, 10, 255)
    output = model.decode(model.image_features(images), _text(model, 10), _prompts(model, 10), present)
    for image in range(2):
        selected = set(output.class_ids[image][output.valid[image]].tolist())
        assert set(present[image].nonzero().flatten().tolist()) <= selected
    loss = model.losses(output, targets, 255)["loss_sem_seg"]
    # by hand: BCE over every image's selected classes, padding excluded
    total, count = 0.0, 0
    for image in range(2):
        ids = output.class_ids[image][output.valid[image]]
        up = F.interpolate(output.subset_logits[image : image + 1, : len(ids)], size=(SIZE, SIZE), mode="bilinear")
        one_hot = (targets[image][None] == ids.view(-1, 1, 1)).float()[None]
        total = total + F.binary_cross_entropy_with_logits(up, one_hot, reduction="sum")
        count += one_hot.numel()
    torch.testing.assert_close(loss, total / count, rtol=1e-5, atol=1e-6)
    assert loss.item() == pytest.approx(0.9009343981742859, abs=1e-6)
    # ignored pixels excluded instead: the mean over labelled pixels of the selected classes
    total, count = 0.0, 0
    for image in range(2):
        ids = output.class_ids[image][output.valid[image]]
        up = F.interpolate(output.subset_logits[image : image + 1, : len(ids)], size=(SIZE, SIZE), mode="bilinear")
        one_hot = (targets[image][None] == ids.view(-1, 1, 1)).float()[None]
        labelled = (targets[image] != 255).expand_as(one_hot)
        total = total + F.binary_cross_entropy_with_logits(up[labelled], one_hot[labelled], reduction="sum")
        count += int(labelled.sum())
    excluded = model.losses(output, targets, 255, ignore_as_negative=False)["loss_sem_seg"]
    torch.testing.assert_close(excluded, total / count, rtol=1e-5, atol=1e-6)


def test_gradients_reach_exactly_the_qv_rows_the_prompt_and_the_new_modules():
    model = _model().train()
    targets = torch.randint(0, 6, (2, SIZE, SIZE))
    output = model.decode(model.image_features(torch.randn(2, 3, SIZE, SIZE)), _text(model, 6), _prompts(model, 6),
                          present_classes(targets, 6, 255))
    model.losses(output, targets, 255)["loss_sem_seg"].backward()
    groups = model.parameter_groups
    assert groups["decoder.prompt.context"] == "decoder"
    for name, parameter in model.named_parameters():
        if groups[name] == "frozen":
            assert parameter.grad is None, name
            continue
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name
        if name.endswith("in_proj_weight"):
            width = parameter.shape[1]
            assert parameter.grad[width : 2 * width].abs().sum() == 0, name  # k rows frozen
            assert parameter.grad[:width].abs().sum() > 0 and parameter.grad[2 * width :].abs().sum() > 0, name
    trained = {name.split(".")[0] for name, group in groups.items() if group != "frozen"}
    assert trained == {"clip_model", "guidance_upsamplers", "decoder"}


@pytest.mark.parametrize(
    "alignment",
    [
        {"prompt": "vector"},
        {"prompt": "none", "cls_term": "none"},
        {"cls_term": "hadamard"},
        {"cross_attention": False},
        {"self_attention": False},
    ],
)
def test_every_textual_guidance_and_branch_variant_trains(alignment):
    model = _model(**alignment).train()
    uses_prompts = model.decoder.alignment.uses_prompts
    prompts = _prompts(model, 5) if uses_prompts else None
    output = model.decode(model.image_features(torch.randn(1, 3, SIZE, SIZE)), _text(model, 5), prompts)
    model.losses(output, torch.randint(0, 5, (1, SIZE, SIZE)), 255)["loss_sem_seg"].backward()
    for name, parameter in model.decoder.alignment.named_parameters():
        assert parameter.grad is not None, name


# ------------------------------------------------------------------ tag validation
def _tv_case():
    """Scores over 4 classes on an 8x8 image: class 2 predicted on the left half, class 0 on
    the right; the CLIP features of the left half read as class 3 (the right as class 0)."""
    text = torch.eye(4, 6)
    scores = torch.full((4, 8, 8), 0.1)
    scores[2, :, :4] = 0.9
    scores[0, :, 4:] = 0.8
    scores[3, :, :4] = 0.5
    dense = torch.zeros(6, 4, 4)
    dense[:, :, :2] = (0.9 * text[3] + 0.3 * text[1] + 0.1 * text[2]).view(6, 1, 1)
    dense[:, :, 2:] = text[0].view(6, 1, 1)
    return scores, dense, text


def test_tag_validation_keeps_a_seen_class():
    scores, dense, text = _tv_case()
    seen = torch.tensor([False, False, True, False])
    assert torch.equal(tag_validation(scores, dense, text, seen, k=1), scores)


def test_tag_validation_keeps_an_unseen_class_within_k():
    scores, dense, text = _tv_case()
    seen = torch.zeros(4, dtype=torch.bool)
    # class 2 ranks third for the left half's feature (3 > 1 > 2 > 0): kept for k >= 3
    assert torch.equal(tag_validation(scores, dense, text, seen, k=3), scores)


def test_tag_validation_relabels_an_unseen_class_beyond_k():
    scores, dense, text = _tv_case()
    seen = torch.zeros(4, dtype=torch.bool)
    result = tag_validation(scores, dense, text, seen, k=2)
    assert (result.argmax(0)[:, :4] == 3).all() and (result.argmax(0)[:, 4:] == 0).all()
    # the scores of classes 2 and 3 swapped in the region, nothing else changed
    assert torch.equal(result[3, :, :4], scores[2, :, :4]) and torch.equal(result[2, :, :4], scores[3, :, :4])
    assert torch.equal(result[:, :, 4:], scores[:, :, 4:]) and torch.equal(result[[0, 1]], scores[[0, 1]])


def test_seen_classes_are_exact_synonym_matches():
    train = ["person", "water-other", "pavement", "grass"]
    test = ["person, individual", "water", "sidewalk, pavement", "grass", "river"]
    assert seen_class_mask(test, train) == [True, False, True, True, False]
