"""The official SED checkpoint layout and its conversion to sed_d2 names (key maps only).

Official SED (``xb534/SED``) keys live under ``sem_seg_head.predictor.``:

* ``clip_model.*``: the open_clip model, whose names match upstream ``open_clip_torch``
  exactly, so it maps to ``model.clip_model.*`` unchanged;
* ``transformer.*``: the decoder (official ``Aggregator``), renamed to our
  :class:`~sed_d2.models.SEDDecoder` names under ``model.decoder.`` by
  :data:`SED_DECODER_RENAMES`. Shapes are identical (ConvTranspose weights stay
  ``[in, out, k, k]``).

The open_clip text tower is also called ``transformer``; keys are therefore split on the
``clip_model.`` prefix first.
"""

from __future__ import annotations

import functools
import re
from typing import Mapping, TypeVar

__all__ = [
    "OFFICIAL_SED_CLIP_PREFIX",
    "OFFICIAL_SED_DECODER_PREFIX",
    "SED_DECODER_RENAMES",
    "convert_official_sed_state_dict",
    "is_official_sed_state_dict",
    "sed_decoder_key",
]

V = TypeVar("V")

OFFICIAL_SED_CLIP_PREFIX = "sem_seg_head.predictor.clip_model."
OFFICIAL_SED_DECODER_PREFIX = "sem_seg_head.predictor.transformer."

# (official, ours) decoder name rules. ``{i}`` is a 0-based index on both sides; the
# official ``decoder{n}`` is 1-based (n = i + 1). A rule ending in "." is a module prefix
# followed by ``weight`` or ``bias``; any other rule is a full parameter name.
SED_DECODER_RENAMES: tuple[tuple[str, str], ...] = (
    ("conv1.", "cost_embed.conv."),
    ("decoder_guidance_projection.{i}.0.", "skip_projections.{i}."),
    ("decoder_corr_guidance_projection.{i}.0.", "cost_upsamplers.{i}."),
    ("decoder{n}.cnext.dwconv.", "stages.{i}.spatial_block.depthwise_conv."),
    ("decoder{n}.cnext.norm.", "stages.{i}.spatial_block.norm."),
    ("decoder{n}.cnext.pwconv1.", "stages.{i}.spatial_block.fc1."),
    ("decoder{n}.cnext.pwconv2.", "stages.{i}.spatial_block.fc2."),
    ("decoder{n}.cnext.gamma", "stages.{i}.spatial_block.layer_scale"),
    ("decoder{n}.attention.norm1.", "stages.{i}.class_block.attention_norm."),
    ("decoder{n}.attention.attention.q.", "stages.{i}.class_block.attention.query."),
    ("decoder{n}.attention.attention.k.", "stages.{i}.class_block.attention.key."),
    ("decoder{n}.attention.attention.v.", "stages.{i}.class_block.attention.value."),
    ("decoder{n}.attention.norm2.", "stages.{i}.class_block.mlp_norm."),
    ("decoder{n}.attention.MLP.0.", "stages.{i}.class_block.mlp.fc1."),
    ("decoder{n}.attention.MLP.2.", "stages.{i}.class_block.mlp.fc2."),
    ("decoder{n}.up.", "stages.{i}.fusion.upsample."),
    ("decoder{n}.conv.double_conv.0.", "stages.{i}.fusion.double_conv.conv1."),
    ("decoder{n}.conv.double_conv.1.", "stages.{i}.fusion.double_conv.norm1."),
    ("decoder{n}.conv.double_conv.3.", "stages.{i}.fusion.double_conv.conv2."),
    ("decoder{n}.conv.double_conv.4.", "stages.{i}.fusion.double_conv.norm2."),
    ("head{i}.", "aux_heads.{i}."),
    ("head.", "head."),
)


@functools.lru_cache(maxsize=None)
def _compile(official: str) -> re.Pattern[str]:
    pattern = re.escape(official).replace(r"\{i\}", r"(?P<i>\d+)").replace(r"\{n\}", r"(?P<n>\d+)")
    if official.endswith("."):
        pattern += r"(?P<leaf>weight|bias)"
    return re.compile(pattern + "$")


def sed_decoder_key(official_key: str) -> str | None:
    """Our decoder parameter name for an official ``Aggregator`` name (without prefixes),
    or ``None`` if it has none."""
    for official, ours in SED_DECODER_RENAMES:
        match = _compile(official).match(official_key)
        if match is None:
            continue
        groups = match.groupdict()
        if groups.get("n") is not None:
            index = int(groups["n"]) - 1
        elif groups.get("i") is not None:
            index = int(groups["i"])
        else:
            index = None
        if index is not None:
            if index < 0:
                return None
            ours = ours.replace("{i}", str(index))
        return ours + (groups.get("leaf") or "")
    return None


def is_official_sed_state_dict(state_dict: Mapping[str, object]) -> bool:
    """True for a state_dict laid out like the official SED model (it has the SED-only
    decoder keys, so CAT-Seg / FGAseg checkpoints do not qualify)."""
    marker = OFFICIAL_SED_DECODER_PREFIX + "decoder_corr_guidance_projection.0.0.weight"
    return marker in state_dict and any(key.startswith(OFFICIAL_SED_CLIP_PREFIX) for key in state_dict)


def convert_official_sed_state_dict(state_dict: Mapping[str, V], prefix: str = "model.") -> dict[str, V]:
    """Rename an official SED state_dict to sed_d2 names (values are passed through).

    ``sem_seg_head.predictor.clip_model.X`` -> ``{prefix}clip_model.X`` and
    ``sem_seg_head.predictor.transformer.Y`` -> ``{prefix}decoder.<ours(Y)>``. The default
    prefix ``model.`` is where the SED meta-architecture holds its ``SEDModel``.

    Raises:
        KeyError: listing every key that has no sed_d2 counterpart.
    """
    converted: dict[str, V] = {}
    unknown = []
    for key, value in state_dict.items():
        if key.startswith(OFFICIAL_SED_CLIP_PREFIX):
            converted[prefix + "clip_model." + key[len(OFFICIAL_SED_CLIP_PREFIX):]] = value
            continue
        if key.startswith(OFFICIAL_SED_DECODER_PREFIX):
            ours = sed_decoder_key(key[len(OFFICIAL_SED_DECODER_PREFIX):])
            if ours is not None:
                converted[prefix + "decoder." + ours] = value
                continue
        unknown.append(key)
    if unknown:
        raise KeyError(f"{len(unknown)} official SED key(s) have no sed_d2 counterpart: {sorted(unknown)}")
    return converted
