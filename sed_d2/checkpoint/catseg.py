"""The official CAT-Seg checkpoint layout (``cvlab-kaist/CAT-Seg``, ``model_base.pth`` /
``model_large.pth``) and its conversion to :class:`~sed_d2.models.catseg.CATSegModel` names.

Official keys (see ``docs/catseg_parity.md`` and the fixtures
``tests/fixtures/official_catseg_vit{b,l}_keys_shapes.json``):

* ``sem_seg_head.predictor.clip_model.*``: OpenAI CLIP names, which open_clip shares, except
  that the vendored attention splits the input projection into
  ``attn.{q,k,v}_proj_weight``: they are concatenated (rows ``[q; k; v]``) into open_clip's
  ``attn.in_proj_weight``; ``attn.in_proj_bias`` is fused on both sides; visual prompt
  tokens (the official prompt-tuning variant) have no counterpart;
* ``sem_seg_head.predictor.transformer.*``: the ``Aggregator``, renamed by
  :data:`CATSEG_DECODER_RENAMES` to ``decoder.*``; the shifted Swin block's stored
  ``attn_mask`` buffer is dropped (sed_d2 rebuilds it);
* ``upsample1.*`` / ``upsample2.*``: the tap upsamplers, ``guidance_upsamplers.{0,1}.*``.

Shapes are otherwise identical.
"""

from __future__ import annotations

import re
from typing import Mapping, TypeVar

import torch

__all__ = [
    "CATSEG_DECODER_RENAMES",
    "OFFICIAL_CATSEG_CLIP_PREFIX",
    "OFFICIAL_CATSEG_DECODER_PREFIX",
    "catseg_decoder_key",
    "convert_official_catseg_state_dict",
    "is_official_catseg_state_dict",
    "rename_by_rules",
]

V = TypeVar("V")

OFFICIAL_CATSEG_CLIP_PREFIX = "sem_seg_head.predictor.clip_model."
OFFICIAL_CATSEG_DECODER_PREFIX = "sem_seg_head.predictor.transformer."

# (official regular expression, ours as its re.Match.expand template), for the names inside
# the Aggregator. The official stages ``decoder{1,2}`` and Swin blocks ``block_{1,2}`` count
# from 1, ours from 0.
_P = r"(weight|bias)"
CATSEG_DECODER_RENAMES: tuple[tuple[str, str], ...] = (
    (rf"conv1\.{_P}", r"cost_embed.conv.\1"),
    (rf"guidance_projection\.0\.{_P}", r"appearance_guidance.\1"),
    (rf"text_guidance_projection\.0\.{_P}", r"text_guidance.\1"),
    (rf"decoder_guidance_projection\.(\d+)\.0\.{_P}", r"skip_projections.\1.\2"),
    (rf"layers\.(\d+)\.swin_block\.guidance_norm\.{_P}", r"layers.\1.spatial.guidance_norm.\2"),
    (rf"layers\.(\d+)\.swin_block\.block_1\.((?:norm[12]|attn\.(?:q|k|v|proj)|mlp\.fc[12])\.{_P})", r"layers.\1.spatial.block0.\2"),
    (rf"layers\.(\d+)\.swin_block\.block_2\.((?:norm[12]|attn\.(?:q|k|v|proj)|mlp\.fc[12])\.{_P})", r"layers.\1.spatial.block1.\2"),
    (rf"layers\.(\d+)\.attention\.norm1\.{_P}", r"layers.\1.class_block.attention_norm.\2"),
    (rf"layers\.(\d+)\.attention\.norm2\.{_P}", r"layers.\1.class_block.mlp_norm.\2"),
    (rf"layers\.(\d+)\.attention\.attention\.q\.{_P}", r"layers.\1.class_block.attention.query.\2"),
    (rf"layers\.(\d+)\.attention\.attention\.k\.{_P}", r"layers.\1.class_block.attention.key.\2"),
    (rf"layers\.(\d+)\.attention\.attention\.v\.{_P}", r"layers.\1.class_block.attention.value.\2"),
    (rf"layers\.(\d+)\.attention\.MLP\.0\.{_P}", r"layers.\1.class_block.mlp.fc1.\2"),
    (rf"layers\.(\d+)\.attention\.MLP\.2\.{_P}", r"layers.\1.class_block.mlp.fc2.\2"),
    (r"layers\.(\d+)\.attention\.(padding_tokens|padding_guidance)", r"layers.\1.class_block.\2"),
    (rf"decoder1\.up\.{_P}", r"stages.0.upsample.\1"),
    (rf"decoder2\.up\.{_P}", r"stages.1.upsample.\1"),
    (rf"decoder1\.conv\.double_conv\.0\.{_P}", r"stages.0.double_conv.conv1.\1"),
    (rf"decoder1\.conv\.double_conv\.1\.{_P}", r"stages.0.double_conv.norm1.\1"),
    (rf"decoder1\.conv\.double_conv\.3\.{_P}", r"stages.0.double_conv.conv2.\1"),
    (rf"decoder1\.conv\.double_conv\.4\.{_P}", r"stages.0.double_conv.norm2.\1"),
    (rf"decoder2\.conv\.double_conv\.0\.{_P}", r"stages.1.double_conv.conv1.\1"),
    (rf"decoder2\.conv\.double_conv\.1\.{_P}", r"stages.1.double_conv.norm1.\1"),
    (rf"decoder2\.conv\.double_conv\.3\.{_P}", r"stages.1.double_conv.conv2.\1"),
    (rf"decoder2\.conv\.double_conv\.4\.{_P}", r"stages.1.double_conv.norm2.\1"),
    (rf"head\.{_P}", r"head.\1"),
)
_DECODER_RULES = tuple((re.compile(official), ours) for official, ours in CATSEG_DECODER_RENAMES)


def rename_by_rules(rules, official_key: str) -> str | None:
    """The first rule's rename of ``official_key``: ``rules`` are ``(compiled pattern,
    replacement)`` pairs tried in order (a full match, groups expanded); ``None`` if none
    matches. Shared with FGAseg's table (:mod:`.fgaseg`)."""
    for pattern, ours in rules:
        match = pattern.fullmatch(official_key)
        if match is not None:
            return match.expand(ours)
    return None


# Official buffers that sed_d2 rebuilds instead of storing.
_DROPPED = re.compile(r"layers\.\d+\.swin_block\.block_2\.attn_mask")
_UPSAMPLER = re.compile(rf"upsample([12])\.{_P}")
_SPLIT_PROJECTION = re.compile(r"(?P<block>.+\.attn\.)(?P<part>[qkv])_proj_weight")
# Visual prompt tokens of the official CLIP_FINETUNE "prompt" variant (PROMPT_DEPTH > 0):
# no sed_d2 counterpart (the released models have none).
_PROMPT_TOKENS = re.compile(r"(visual\.)?transformer\.prompt_tokens")
# Keys of FGA-Seg (a CAT-Seg fork with the same names plus its own modules): not CAT-Seg.
_FGASEG_MARKERS = ("sem_seg_head.predictor.DCDT.gamma_text", OFFICIAL_CATSEG_DECODER_PREFIX + "conv2.weight")


def catseg_decoder_key(official_key: str) -> str | None:
    """Our ``decoder.`` parameter name for an official ``Aggregator`` name (without
    prefixes), or ``None`` if it has none."""
    return rename_by_rules(_DECODER_RULES, official_key)


def is_official_catseg_state_dict(state_dict: Mapping[str, object]) -> bool:
    """True for a state_dict laid out like the official CAT-Seg model: its Swin
    aggregator, its tap upsamplers, and none of FGA-Seg's additions."""
    marker = OFFICIAL_CATSEG_DECODER_PREFIX + "layers.0.swin_block.guidance_norm.weight"
    return (
        marker in state_dict
        and "upsample1.weight" in state_dict
        and not any(key in state_dict for key in _FGASEG_MARKERS)
    )


def convert_official_catseg_state_dict(state_dict: Mapping[str, V], prefix: str = "model.") -> dict[str, V]:
    """Rename an official CAT-Seg state_dict to sed_d2 names under ``prefix`` (the default
    ``model.`` is where a meta-architecture holds its :class:`CATSegModel`).

    Values pass through, except the split ``q/k/v_proj_weight`` tensors of every attention
    block, which become one ``in_proj_weight`` (``torch.cat``, so tensors, meta tensors
    included); the Swin ``attn_mask`` buffers are dropped.

    Raises:
        KeyError: listing every key that has no sed_d2 counterpart (an incomplete q/k/v
            triple included).
    """
    converted: dict[str, V] = {}
    unknown = []
    projections: dict[str, dict[str, V]] = {}
    for key, value in state_dict.items():
        if key.startswith(OFFICIAL_CATSEG_CLIP_PREFIX):
            name = key[len(OFFICIAL_CATSEG_CLIP_PREFIX):]
            split = _SPLIT_PROJECTION.fullmatch(name)
            if split is not None:
                projections.setdefault(split["block"], {})[split["part"]] = value
            elif _PROMPT_TOKENS.fullmatch(name):
                unknown.append(key)
            else:
                converted[prefix + "clip_model." + name] = value
            continue
        if key.startswith(OFFICIAL_CATSEG_DECODER_PREFIX):
            name = key[len(OFFICIAL_CATSEG_DECODER_PREFIX):]
            if _DROPPED.fullmatch(name):
                continue
            ours = catseg_decoder_key(name)
            if ours is not None:
                converted[prefix + "decoder." + ours] = value
                continue
        upsampler = _UPSAMPLER.fullmatch(key)
        if upsampler is not None:
            converted[f"{prefix}guidance_upsamplers.{int(upsampler[1]) - 1}.{upsampler[2]}"] = value
            continue
        unknown.append(key)
    for block, parts in projections.items():
        if sorted(parts) != ["k", "q", "v"]:
            unknown.extend(f"{OFFICIAL_CATSEG_CLIP_PREFIX}{block}{part}_proj_weight" for part in parts)
            continue
        converted[prefix + "clip_model." + block + "in_proj_weight"] = torch.cat([parts["q"], parts["k"], parts["v"]])
    if unknown:
        raise KeyError(f"{len(unknown)} official CAT-Seg key(s) have no sed_d2 counterpart: {sorted(unknown)}")
    return converted
