import copy
import pickle

import open_clip
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sed_d2.clip import TextEncoder, apply_clip_finetune, get_templates
from tests.helpers import tiny_clip

TEMPLATES = get_templates("imagenet_select")  # P = 8
VOCABULARY = ["cat", "dog, puppy, hound", "tree"]
TINY_VIT = "sed_d2_tiny_vit_quickgelu"


def frozen_clip(name="sed_d2_tiny_convnext", seed=0):
    """A tiny CLIP whose text tower is frozen, as in SED."""
    return tiny_clip(name, seed=seed).requires_grad_(False)


@pytest.fixture
def clip():
    return frozen_clip()


@pytest.fixture
def encoder(clip):
    return TextEncoder(clip, TEMPLATES)


def encode_directly(clip, texts):
    """Reference: the texts straight through open_clip's tokenizer and the text tower."""
    with torch.no_grad():
        return F.normalize(clip.encode_text(open_clip.tokenize(texts)), dim=-1)


def test_shape_dtype_device_and_normalisation(encoder, clip):
    embeddings = encoder(VOCABULARY)
    assert embeddings.shape == (3, len(TEMPLATES), clip.text_projection.shape[1])
    assert embeddings.dtype == torch.float32
    assert embeddings.device == clip.token_embedding.weight.device
    torch.testing.assert_close(embeddings.norm(dim=-1), torch.ones(3, len(TEMPLATES)))
    assert not embeddings.requires_grad
    assert encoder.num_templates == len(TEMPLATES)


def test_single_name_is_the_per_template_embedding(encoder, clip):
    expected = encode_directly(clip, [template.format("tree") for template in TEMPLATES])
    torch.testing.assert_close(encoder(VOCABULARY)[2], expected, rtol=0, atol=1e-6)
    # Templates stay separate channels: they are not averaged together.
    assert not torch.allclose(expected[0], expected[1])


def test_synonyms_are_averaged_per_template_then_renormalised(encoder, clip):
    synonyms = ["dog", "puppy", "hound"]
    per_text = encode_directly(clip, [t.format(s) for t in TEMPLATES for s in synonyms])
    expected = F.normalize(per_text.view(len(TEMPLATES), len(synonyms), -1).mean(dim=1), dim=-1)
    torch.testing.assert_close(encoder(VOCABULARY)[1], expected, rtol=0, atol=1e-6)


def test_result_does_not_depend_on_the_batch_size(clip):
    small_batches = TextEncoder(clip, TEMPLATES, batch_size=5)(VOCABULARY)
    torch.testing.assert_close(small_batches, TextEncoder(clip, TEMPLATES)(VOCABULARY), rtol=0, atol=1e-6)


def test_model_name_selects_the_same_tokenizer(clip):
    by_name = TextEncoder(clip, TEMPLATES, model_name="sed_d2_tiny_convnext")(VOCABULARY)
    assert torch.equal(by_name, TextEncoder(clip, TEMPLATES)(VOCABULARY))
    with pytest.raises(ValueError, match="not both"):
        TextEncoder(clip, TEMPLATES, tokenizer=open_clip.get_tokenizer(), model_name="sed_d2_tiny_convnext")


# ------------------------------------------------------------------ cache


def test_cached_result_equals_fresh_result(encoder):
    first = encoder(VOCABULARY)
    assert encoder(VOCABULARY) is first
    assert encoder.cache_info() == (1, 1, encoder.max_cache_entries, 1)
    encoder.clear_cache()
    assert encoder.cache_info().currsize == 0
    assert torch.equal(encoder(VOCABULARY), first)
    assert encoder.cache_info().misses == 2


def test_cache_is_keyed_by_vocabulary_dtype_and_bounded(clip):
    encoder = TextEncoder(clip, TEMPLATES, max_cache_entries=2)
    encoder(["a"]), encoder(["b"]), encoder(["a"]), encoder(["c"])  # "b" is least recent
    assert encoder.cache_info().currsize == 2
    assert encoder(["a"]) is encoder(["a"])
    misses = encoder.cache_info().misses
    encoder(["b"])
    assert encoder.cache_info().misses == misses + 1
    clip.to(torch.bfloat16)  # a different text-tower dtype must not reuse float32 results
    embeddings = encoder(["a"])
    assert encoder.cache_info().misses == misses + 2
    assert embeddings.dtype == torch.float32


def test_encoder_and_cache_stay_out_of_state_dicts(clip):
    keys_before = set(clip.state_dict())
    owner = nn.Module()
    owner.clip_model = clip
    owner.text_encoder = TextEncoder(clip, TEMPLATES)
    owner.text_encoder(VOCABULARY)
    assert not isinstance(owner.text_encoder, nn.Module)
    assert set(clip.state_dict()) == keys_before
    assert set(owner.state_dict()) == {f"clip_model.{key}" for key in keys_before}


def test_loading_weights_clears_the_cache(clip):
    owner = nn.Module()
    owner.clip_model = clip
    encoder = TextEncoder(clip, TEMPLATES)
    handle = encoder.invalidate_on_load(owner)
    stale = encoder(VOCABULARY)
    new_weights = {f"clip_model.{k}": v for k, v in frozen_clip(seed=7).state_dict().items()}
    owner.load_state_dict(new_weights)
    assert encoder.cache_info().currsize == 0
    fresh = encoder(VOCABULARY)
    assert not torch.allclose(fresh, stale)
    assert torch.equal(fresh, TextEncoder(frozen_clip(seed=7), TEMPLATES)(VOCABULARY))
    handle.remove()


def test_loading_the_clip_model_itself_clears_the_cache(encoder, clip):
    encoder(VOCABULARY)
    clip.load_state_dict(frozen_clip(seed=7).state_dict())
    assert encoder.cache_info().currsize == 0


def test_models_with_an_encoder_still_copy_and_pickle(encoder, clip):
    encoder(VOCABULARY)
    copy.deepcopy(clip).load_state_dict(clip.state_dict())
    restored = pickle.loads(pickle.dumps(clip))
    restored.load_state_dict(clip.state_dict())  # the unpickled hook is inert
    assert encoder.cache_info().currsize in (0, 1)


def test_progress_bar_only_when_asked_or_large(clip, capsys):
    TextEncoder(clip, TEMPLATES)(["cat"])
    assert "Encoding class names" not in capsys.readouterr().err
    TextEncoder(clip, TEMPLATES, progress=True)(["cat"])
    assert "Encoding class names" in capsys.readouterr().err


# ------------------------------------------------------------------ validation


def test_empty_vocabulary(encoder):
    with pytest.raises(ValueError, match="empty"):
        encoder([])


def test_duplicated_names_are_listed(encoder):
    with pytest.raises(ValueError, match=r"'cat' at indices \[0, 2\]"):
        encoder(["cat", "dog", " cat"])


@pytest.mark.parametrize("names, index", [(["cat", "  "], 1), (["", "cat"], 0), (["cat", "dog, , puppy"], 1)])
def test_blank_names_and_synonyms_give_their_index(encoder, names, index):
    with pytest.raises(ValueError, match=f"index {index}"):
        encoder(names)


def test_a_single_string_is_not_a_vocabulary(encoder):
    with pytest.raises(TypeError, match="single string"):
        encoder("cat")


@pytest.mark.parametrize("templates", [[], ["no placeholder"], ["a {article} {}"]])
def test_bad_templates(clip, templates):
    with pytest.raises(ValueError):
        TextEncoder(clip, templates)


def test_embeddings_do_not_depend_on_the_calling_context(clip):
    reference = TextEncoder(clip, TEMPLATES)(VOCABULARY)
    encoder = TextEncoder(clip, TEMPLATES)
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        cached = encoder(VOCABULARY)
    assert torch.equal(cached, reference)  # computed in float32 despite autocast
    assert not cached.is_inference()  # usable in a later training step's graph
    image_features = torch.randn(2, reference.shape[-1], requires_grad=True)
    torch.einsum("bc,tpc->btp", image_features, encoder(VOCABULARY)).sum().backward()


# ------------------------------------------------------------------ synonym rule


def test_first_synonym_rule_encodes_the_first_synonym_only(clip):
    first = TextEncoder(clip, TEMPLATES, synonym_rule="first")(VOCABULARY)
    expected = encode_directly(clip, [template.format("dog") for template in TEMPLATES])
    torch.testing.assert_close(first[1], expected, rtol=0, atol=1e-6)
    mean = TextEncoder(clip, TEMPLATES)(VOCABULARY)  # the default is SED's rule
    assert torch.equal(first[[0, 2]], mean[[0, 2]])
    assert not torch.allclose(first[1], mean[1], atol=1e-3)


def test_unknown_synonym_rule(clip):
    with pytest.raises(ValueError, match=r"synonym_rule must be one of \('mean', 'first'\)"):
        TextEncoder(clip, TEMPLATES, synonym_rule="average")


# ------------------------------------------------------------------ trainable text tower


@pytest.fixture
def trainable_clip():
    """The tiny ViT CLIP with CAT-Seg's q/v fine-tuning: the text tower trains."""
    clip = tiny_clip(TINY_VIT, seed=3)
    apply_clip_finetune(clip, "attention")
    return clip


def text_q_v_weights(clip):
    return [block.attn.in_proj_weight for block in clip.transformer.resblocks]


def test_trainable_text_tower_gets_gradients_and_nothing_is_cached(trainable_clip):
    encoder = TextEncoder(trainable_clip, TEMPLATES[:2], synonym_rule="first")
    embeddings = encoder(VOCABULARY)
    assert embeddings.requires_grad and encoder.cache_info() == (0, 0, encoder.max_cache_entries, 0)
    embeddings.square().sum().backward()
    assert all(torch.count_nonzero(weight.grad) > 0 for weight in text_q_v_weights(trainable_clip))
    again = encoder(VOCABULARY)
    assert again is not embeddings and encoder.cache_info().currsize == 0
    with torch.no_grad():
        assert torch.equal(encoder(VOCABULARY), embeddings.detach())  # same values as the cached path


def test_gradient_path_ignores_autocast(trainable_clip):
    encoder = TextEncoder(trainable_clip, TEMPLATES[:2])
    reference = encoder(VOCABULARY).detach()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        embeddings = encoder(VOCABULARY)
    assert embeddings.dtype == torch.float32 and torch.equal(embeddings.detach(), reference)


def test_evaluation_during_training_never_reads_older_weights(trainable_clip):
    encoder = TextEncoder(trainable_clip, TEMPLATES[:2])
    optimizer = torch.optim.SGD([p for p in trainable_clip.parameters() if p.requires_grad], lr=10.0)
    evaluations = []
    for step in range(3):
        with torch.no_grad():
            evaluations.append(encoder(VOCABULARY))  # periodic evaluation
            assert encoder(VOCABULARY) is evaluations[-1]  # cached while the weights stay
        optimizer.zero_grad()
        encoder(VOCABULARY).sum().backward()  # a training step
        optimizer.step()
    with torch.no_grad():
        latest = encoder(VOCABULARY)
        fresh = TextEncoder(copy.deepcopy(trainable_clip), TEMPLATES[:2])(VOCABULARY)
    assert torch.equal(latest, fresh)
    assert not torch.allclose(latest, evaluations[0], atol=1e-4)
    assert encoder.cache_info().currsize == 1  # entries of older weights are replaced, not kept


def test_in_place_change_of_a_frozen_text_tower_is_seen(clip):
    encoder = TextEncoder(clip, TEMPLATES)
    before = encoder(VOCABULARY)
    with torch.no_grad():
        clip.transformer.resblocks[0].mlp.c_fc.weight.mul_(3)
    after = encoder(VOCABULARY)
    assert encoder.cache_info().misses == 2
    assert torch.equal(after, TextEncoder(copy.deepcopy(clip), TEMPLATES)(VOCABULARY))
    assert not torch.allclose(after, before, atol=1e-4)


def test_image_tower_changes_keep_the_cache(clip):
    encoder = TextEncoder(clip, TEMPLATES)
    cached = encoder(VOCABULARY)
    with torch.no_grad():
        clip.visual.head.proj.weight.mul_(2)
        clip.logit_scale.add_(1)
    assert encoder(VOCABULARY) is cached
