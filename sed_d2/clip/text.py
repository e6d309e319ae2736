"""Class names -> CLIP text embeddings, one per prompt template, cached per vocabulary.

The vocabulary is data, not model state: the same model segments with any list of class
names, and the embeddings are computed on first use, cached in memory and never saved in
a checkpoint. With the default synonym rule this follows the official SED
``class_embeddings`` exactly:

* a class name may hold synonyms separated by ", " (e.g. ``"person, child, girl"``);
* for each template and synonym, ``template.format(synonym)`` is encoded by the CLIP text
  tower and L2-normalised;
* synonym rule ``"mean"`` (SED): synonyms of one template are averaged and the mean is
  L2-normalised again; ``"first"`` (CAT-Seg's ``get_text_embeds``, in training and at
  test): only the first synonym is encoded;
* templates are *not* averaged: each stays a separate channel, giving (T, P, C).

When the text tower trains (CAT-Seg's q/v fine-tuning), embeddings are computed with
gradients, every call, and never cached; under ``no_grad`` they are cached with the text
tower's parameter versions in the key, so an evaluation during training never reads
embeddings of older weights (the official CAT-Seg cache keeps its first evaluation's).
"""

from __future__ import annotations

import collections
import functools
import weakref
from typing import Any, Callable, NamedTuple, Sequence

import open_clip
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

__all__ = ["TextEncoder", "TextCacheInfo", "SYNONYM_RULES", "SYNONYM_SEPARATOR", "encode_text_truncated"]

# Separator of synonyms inside one class name (the official SED class lists use it).
SYNONYM_SEPARATOR = ", "
# How the synonyms of one class name make one embedding per template (see the module doc).
SYNONYM_RULES = ("mean", "first")

Tokenizer = Callable[[list[str]], torch.Tensor]


class TextCacheInfo(NamedTuple):
    """Statistics of a TextEncoder's cache, shaped like ``functools.lru_cache``'s."""

    hits: int
    misses: int
    maxsize: int
    currsize: int


class TextEncoder:
    """Turns a vocabulary (class names) into per-template CLIP text embeddings.

    A plain Python object on purpose, not an ``nn.Module``: it only *refers* to a CLIP
    model that its owner registers as a submodule already. Were it a module, the CLIP
    weights would appear twice in the owner's state_dict; and the cache, which is a
    function of the vocabulary, must never be saved with the weights.

    Two paths, chosen on every call:

    * gradients enabled and a text-tower parameter requiring grad (the text tower
      trains): the embeddings are computed afresh, with gradients, and not cached;
    * otherwise (frozen tower, or ``no_grad`` / ``inference_mode``): the text tower runs
      without gradients and the result is cached per (vocabulary, device, text-tower
      dtype) in a small LRU cache. An entry is used only while the text tower's
      parameters are the ones it was computed from (their versions, which every
      optimizer step bumps), and the cache is cleared whenever ``load_state_dict`` runs
      on the CLIP model or on any module containing it (torch calls the load post-hooks
      of every submodule it loads). Weights trained or loaded after an encoding never
      leave stale embeddings behind.

    Freezing the text tower is the caller's business (e.g.
    :func:`sed_d2.clip.apply_clip_finetune`).

    Args:
        clip_model: an open_clip ``CLIP`` / ``CustomTextCLIP`` (anything with
            ``encode_text``); embeddings are produced on its text tower's device.
        templates: P prompt templates, each with one ``{}`` for the class name.
        tokenizer: callable ``list[str] -> LongTensor (N, context_length)``. Default:
            ``open_clip.get_tokenizer(model_name)`` when ``model_name`` is given, else
            open_clip's generic CLIP BPE tokenizer with the model's context length.
        model_name: open_clip architecture name, used only to pick the tokenizer.
        synonym_rule: ``"mean"`` (SED, default) or ``"first"`` (CAT-Seg), see the module
            docstring.
        batch_size: number of texts encoded per forward pass of the text tower.
        max_cache_entries: vocabularies kept in the cache (least recently used evicted).
        progress: show a progress bar when filling the cache; ``None`` shows one only
            for more than ``PROGRESS_MIN_TEXTS`` texts (e.g. 847 classes x 80 templates).
    """

    PROGRESS_MIN_TEXTS = 2000

    def __init__(
        self,
        clip_model: nn.Module,
        templates: Sequence[str],
        tokenizer: Tokenizer | None = None,
        model_name: str | None = None,
        *,
        synonym_rule: str = "mean",
        batch_size: int = 256,
        max_cache_entries: int = 8,
        progress: bool | None = None,
    ) -> None:
        if tokenizer is not None and model_name is not None:
            raise ValueError("Pass either tokenizer or model_name (which selects open_clip's tokenizer), not both")
        if batch_size < 1 or max_cache_entries < 1:
            raise ValueError(f"batch_size and max_cache_entries must be >= 1, got {batch_size}, {max_cache_entries}")
        if synonym_rule not in SYNONYM_RULES:
            raise ValueError(f"synonym_rule must be one of {SYNONYM_RULES}, got {synonym_rule!r}")
        self.clip_model = clip_model
        self.synonym_rule = synonym_rule
        self.templates: tuple[str, ...] = _checked_templates(templates)
        if tokenizer is None:
            tokenizer = _open_clip_tokenizer(model_name, getattr(clip_model, "context_length", None))
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.max_cache_entries = max_cache_entries
        self.progress = progress
        # (vocabulary, device, dtype) -> (text-tower parameter state, embeddings)
        self._cache: collections.OrderedDict[tuple, tuple[tuple, torch.Tensor]] = collections.OrderedDict()
        # Listed once (walking the modules costs more than the rest of a cache hit);
        # relisted after every load_state_dict, which may replace the parameters.
        self._text_parameters: list[torch.Tensor] | None = None
        self._truncate_context = False  # encode_uncached's shortened context, see there
        self._hits = 0
        self._misses = 0
        self.invalidate_on_load(clip_model)

    @property
    def num_templates(self) -> int:
        """P, the number of prompt templates (SED's ``prompt_channel``)."""
        return len(self.templates)

    def __call__(self, class_names: Sequence[str]) -> torch.Tensor:
        """Embed a vocabulary.

        Args:
            class_names: T class names; synonyms inside one name separated by ", ".

        Returns:
            (T, P, C) float32 tensor on the text tower's device, L2-normalised along C.
            With a trainable text tower and gradients enabled it carries gradients;
            otherwise it may be the cached tensor itself: treat it as read-only.
        """
        names = validate_vocabulary(class_names)
        parameters = self._tower_parameters()
        device = parameters[0].device
        if torch.is_grad_enabled() and any(parameter.requires_grad for parameter in parameters):
            # A training step's own computation: no progress bar on every step; autocast
            # off as in the cached path, so training and evaluation embed alike.
            with torch.autocast(device.type, enabled=False):
                return self._encode_vocabulary_impl(names, device, progress=False)

        key = (names, device, parameters[0].dtype)
        # Pointer and version of every parameter: an optimizer step or any in-place
        # change bumps a version, a replaced tensor has another pointer.
        parameter_state = tuple((parameter.data_ptr(), parameter._version) for parameter in parameters)
        entry = self._cache.get(key)
        if entry is not None and entry[0] == parameter_state:
            self._hits += 1
            self._cache.move_to_end(key)
            return entry[1]
        self._misses += 1
        embeddings = self._encode_vocabulary(names, device)
        self._cache[key] = (parameter_state, embeddings)
        self._cache.move_to_end(key)
        while len(self._cache) > self.max_cache_entries:
            self._cache.popitem(last=False)
        return embeddings

    def encode_uncached(self, class_names: Sequence[str]) -> torch.Tensor:
        """(T, P, C) like calling the encoder, computed afresh and never cached: for word lists
        that change every batch (image-caption training's noun phrases), which would only
        evict the vocabularies from the cache. Autocast off; gradients where the tower trains.

        The text tower runs only over the positions up to the longest text's end token
        (:func:`encode_text_truncated`): the same embeddings up to float rounding, several
        times cheaper for short phrases than the full 77-token context."""
        names = validate_vocabulary(class_names)
        device = self._tower_parameters()[0].device
        self._truncate_context = True
        try:
            with torch.autocast(device.type, enabled=False):
                return self._encode_vocabulary_impl(names, device, progress=False)
        finally:
            self._truncate_context = False

    def cache_info(self) -> TextCacheInfo:
        return TextCacheInfo(self._hits, self._misses, self.max_cache_entries, len(self._cache))

    def clear_cache(self) -> None:
        """Forget every cached vocabulary (the hit/miss counters are kept)."""
        self._cache.clear()
        self._text_parameters = None

    def invalidate_on_load(self, module: nn.Module) -> torch.utils.hooks.RemovableHandle:
        """Clear this encoder's cache after every ``module.load_state_dict``.

        The constructor already does this for the CLIP model itself, which also covers
        loading any module that contains it. Returns the hook handle (``.remove()``).
        """
        return module.register_load_state_dict_post_hook(_ClearCacheOnLoad(self))

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(templates={self.num_templates}, synonym_rule={self.synonym_rule!r}, "
            f"batch_size={self.batch_size}, cache={self.cache_info()})"
        )

    # -----------------------------------------------------------------------------------

    def _tower_parameters(self) -> list[torch.Tensor]:
        if self._text_parameters is None:
            self._text_parameters = _text_tower_parameters(self.clip_model)
        return self._text_parameters

    def _encode_vocabulary(self, names: tuple[str, ...], device: torch.device) -> torch.Tensor:
        # The result is cached and reused in every mode, so it must not depend on the
        # caller's context: autocast off (embeddings in the tower's own precision, as the
        # official fp32 ones), and no inference-mode tensors (they could not be used in a
        # later training step's autograd graph; eval may run under inference_mode).
        with torch.inference_mode(False), torch.no_grad(), torch.autocast(device.type, enabled=False):
            return self._encode_vocabulary_impl(names, device, self.progress)

    def _synonyms(self, name: str) -> list[str]:
        synonyms = name.split(SYNONYM_SEPARATOR)
        return synonyms[:1] if self.synonym_rule == "first" else synonyms

    def _encode_vocabulary_impl(self, names: tuple[str, ...], device: torch.device, progress: bool | None) -> torch.Tensor:
        num_texts = sum(len(self._synonyms(name)) for name in names) * self.num_templates
        show_progress = progress if progress is not None else num_texts > self.PROGRESS_MIN_TEXTS
        per_class: list[torch.Tensor] = []
        # Classes are encoded in groups of about batch_size texts and reduced to (P, C)
        # right away, so memory holds one group's raw embeddings, not the vocabulary's.
        group_texts: list[str] = []
        group_synonym_counts: list[int] = []
        with tqdm(total=num_texts, desc="Encoding class names", unit="text", disable=not show_progress) as bar:
            for index, name in enumerate(names):
                synonyms = self._synonyms(name)
                # Template-major, synonym-minor: the layout the official code reshapes.
                group_texts += [template.format(synonym) for template in self.templates for synonym in synonyms]
                group_synonym_counts.append(len(synonyms))
                if len(group_texts) >= self.batch_size or index == len(names) - 1:
                    per_class += self._encode_group(group_texts, group_synonym_counts, device)
                    bar.update(len(group_texts))
                    group_texts, group_synonym_counts = [], []
        return torch.stack(per_class)

    def _encode_group(self, texts: list[str], synonym_counts: list[int], device: torch.device) -> list[torch.Tensor]:
        """Encode the texts of a few whole classes; return one (P, C) tensor per class."""
        embeddings = torch.cat(
            [self._encode_texts(texts[start : start + self.batch_size], device) for start in range(0, len(texts), self.batch_size)]
        )
        per_class = []
        for class_embeddings in embeddings.split([count * self.num_templates for count in synonym_counts]):
            num_synonyms = class_embeddings.shape[0] // self.num_templates
            class_embeddings = class_embeddings.view(self.num_templates, num_synonyms, -1)
            if num_synonyms == 1:
                # The official code re-normalises only when there are synonyms; skipping
                # the (near no-op) second normalisation likewise avoids last-ulp changes.
                per_class.append(class_embeddings[:, 0])
            else:
                per_class.append(F.normalize(class_embeddings.mean(dim=1), dim=-1))
        return per_class

    def _encode_texts(self, texts: list[str], device: torch.device) -> torch.Tensor:
        """(N,) texts -> (N, C) float32, L2-normalised."""
        tokens = self.tokenizer(texts).to(device)
        if self._truncate_context:
            embeddings = encode_text_truncated(self.clip_model, tokens)
        else:
            embeddings = self.clip_model.encode_text(tokens)
        # float() before normalising: a half-precision text tower would lose accuracy in
        # the norm, and the result is float32 anyway.
        return F.normalize(embeddings.float(), dim=-1)


def encode_text_truncated(clip_model: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """``clip_model.encode_text(tokens)`` computed over the first ``L`` positions only, ``L``
    = the last end-of-text position of the batch + 1. Exact up to float rounding for open_clip's
    ``CLIP`` text tower (causal mask, pooled at the end token, the highest id): no kept position
    attends to a dropped one. Any other tower runs ``encode_text`` as is."""
    causal = getattr(clip_model, "attn_mask", None) is not None
    if not (causal and getattr(clip_model, "text_pool_type", None) == "argmax" and hasattr(clip_model, "token_embedding")):
        return clip_model.encode_text(tokens)
    end = tokens.argmax(dim=-1)
    length = int(end.max()) + 1
    cast_dtype = clip_model.transformer.get_cast_dtype()
    x = clip_model.token_embedding(tokens[:, :length]).to(cast_dtype)
    x = x + clip_model.positional_embedding[:length].to(cast_dtype)
    x = clip_model.transformer(x, attn_mask=clip_model.attn_mask[:length, :length])
    x = clip_model.ln_final(x)[torch.arange(x.shape[0], device=x.device), end]
    projection = clip_model.text_projection
    if projection is None:
        return x
    return projection(x) if isinstance(projection, nn.Linear) else x @ projection


class _ClearCacheOnLoad:
    """load_state_dict post-hook that clears a TextEncoder's cache.

    Holds the encoder weakly so that a hook left on a long-lived module never keeps a
    dropped encoder (and its possibly large GPU cache) alive. A module-level class rather
    than a closure so that modules carrying the hook stay picklable.
    """

    def __init__(self, encoder: TextEncoder) -> None:
        self._encoder_ref: Callable[[], TextEncoder | None] | None = weakref.ref(encoder)

    def __call__(self, module: nn.Module, incompatible_keys: Any) -> None:
        encoder = self._encoder_ref() if self._encoder_ref is not None else None
        if encoder is not None:
            encoder.clear_cache()

    def __getstate__(self) -> dict:
        return {"_encoder_ref": None}  # weak references cannot be pickled; a copy is inert


# ---------------------------------------------------------------------------------------
# validation and helpers


def _checked_templates(templates: Sequence[str]) -> tuple[str, ...]:
    if isinstance(templates, str):
        raise TypeError("templates must be a sequence of strings, not a single string")
    templates = tuple(templates)
    if not templates:
        raise ValueError("templates is empty")
    for index, template in enumerate(templates):
        try:
            has_placeholder = isinstance(template, str) and template.format("\0") != template
        except (IndexError, KeyError, ValueError):  # named fields, stray braces, ...
            has_placeholder = False
        if not has_placeholder:
            raise ValueError(f"Template {index} ({template!r}) needs exactly the '{{}}' placeholder for the class name")
    return templates


def validate_vocabulary(class_names: Sequence[str]) -> tuple[str, ...]:
    """Return the class names as a tuple, or raise naming what is wrong (empty, duplicated...)."""
    if isinstance(class_names, str):
        raise TypeError(f"class_names must be a sequence of strings, not the single string {class_names!r}")
    names = tuple(class_names)
    if not names:
        raise ValueError("The vocabulary is empty: give at least one class name")
    first_index: dict[str, int] = {}
    duplicates: dict[str, list[int]] = {}
    for index, name in enumerate(names):
        if not isinstance(name, str):
            raise TypeError(f"Class name at index {index} is a {type(name).__name__}, not a string: {name!r}")
        if not name.strip():
            raise ValueError(f"Class name at index {index} is empty or whitespace only: {name!r}")
        if any(not synonym.strip() for synonym in name.split(SYNONYM_SEPARATOR)):
            raise ValueError(f"Class name at index {index} has an empty synonym: {name!r}")
        key = name.strip()
        if key in first_index:
            duplicates.setdefault(key, [first_index[key]]).append(index)
        else:
            first_index[key] = index
    if duplicates:
        described = ", ".join(f"{name!r} at indices {indices}" for name, indices in duplicates.items())
        raise ValueError(f"Duplicated class names (each class needs its own name): {described}")
    return names


@functools.lru_cache(maxsize=None)
def _open_clip_tokenizer(model_name: str | None, context_length: int | None) -> Tokenizer:
    """open_clip's tokenizer for ``model_name`` (or its generic CLIP BPE tokenizer).

    Shared between encoders: building one parses the BPE vocabulary (~0.1 s), and the
    tokenizers are stateless apart from a memo of already split words.
    """
    if model_name is not None:
        return open_clip.get_tokenizer(model_name)
    return open_clip.get_tokenizer(context_length=context_length)


def _text_tower_parameters(clip_model: nn.Module) -> list[torch.Tensor]:
    """The parameters ``encode_text`` reads; the first one's device and dtype are the
    encoding's."""
    text_tower = getattr(clip_model, "text", None)  # CustomTextCLIP keeps the tower here
    if isinstance(text_tower, nn.Module):
        return list(text_tower.parameters())
    # CLIP keeps the text tower at the top level, beside `visual` and the logit scale/bias.
    first = clip_model.token_embedding.weight
    return [first] + [
        parameter
        for name, parameter in clip_model.named_parameters()
        if parameter is not first and not name.startswith(("visual.", "logit_"))
    ]
