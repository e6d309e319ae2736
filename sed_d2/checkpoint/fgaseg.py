"""The official FGAseg checkpoint layout (``LiBingyu01/FGA-seg``: detectron2 files written by
its ``train_net.py``; no weights were released) and its conversion to
:class:`~sed_d2.models.fgaseg.FGASegModel` names.

The official model is CAT-Seg's with the same names (:mod:`sed_d2.checkpoint.catseg` converts
those: CLIP with split q/k/v, the aggregator, the tap upsamplers) plus (see the fixture
``tests/fixtures/official_fgaseg_vitb_keys_shapes.json`` and ``docs/fgaseg_parity.md``):

* ``sem_seg_head.predictor.DCDT.*``: the P2Tformer -> ``p2t.*``;
* ``sem_seg_head.predictor.proj.*``: the T2P projector -> ``t2p.*``;
* inside ``sem_seg_head.predictor.transformer.``: the LCS kernel generator
  (``Local_align.txt``), its cost embedding (``conv2``), the fusion layers (``conv_cat*``),
  the LCS upsampler (``corr_local_decoder_projection``) and the fast mode's auxiliary heads
  (``head_auxi_*``) -> ``decoder.*`` (:data:`FGASEG_RENAMES`).

Shapes are identical. Recognised by the P2Tformer's ``DCDT.gamma_text``.
"""

from __future__ import annotations

import re
from typing import Mapping, TypeVar

from .catseg import OFFICIAL_CATSEG_DECODER_PREFIX, convert_official_catseg_state_dict, rename_by_rules

__all__ = ["FGASEG_RENAMES", "convert_official_fgaseg_state_dict", "fgaseg_key", "is_official_fgaseg_state_dict"]

V = TypeVar("V")

_PREDICTOR = "sem_seg_head.predictor."
_D = re.escape(OFFICIAL_CATSEG_DECODER_PREFIX)
_P = r"(weight|bias)"
_BN = r"(weight|bias|running_mean|running_var|num_batches_tracked)"
# (official full-key regular expression, ours without the model prefix as a Match.expand template)
FGASEG_RENAMES: tuple[tuple[str, str], ...] = (
    (rf"{_PREDICTOR}DCDT\.cross_atten_text\.(\d+)\.multihead_attn\.(in_proj_weight|in_proj_bias|out_proj\.weight|out_proj\.bias)",
     r"p2t.layers.\1.attn.\2"),
    (rf"{_PREDICTOR}DCDT\.cross_atten_text\.(\d+)\.MLP\.{_P}", r"p2t.layers.\1.proj.\2"),
    (rf"{_PREDICTOR}DCDT\.cross_atten_text\.(\d+)\.norm\.{_P}", r"p2t.layers.\1.norm.\2"),
    (rf"{_PREDICTOR}DCDT\.gamma_text", r"p2t.gamma"),
    (rf"{_PREDICTOR}proj\.vis\.1\.0\.weight", r"t2p.conv1.weight"),
    (rf"{_PREDICTOR}proj\.vis\.1\.1\.{_BN}", r"t2p.bn1.\1"),
    (rf"{_PREDICTOR}proj\.vis\.3\.0\.weight", r"t2p.conv2.weight"),
    (rf"{_PREDICTOR}proj\.vis\.3\.1\.{_BN}", r"t2p.bn2.\1"),
    (rf"{_PREDICTOR}proj\.vis\.4\.{_P}", r"t2p.conv3.\1"),
    (rf"{_PREDICTOR}proj\.txt\.{_P}", r"t2p.kernel_generator.\1"),
    (rf"{_D}Local_align\.txt\.{_P}", r"decoder.lcs.kernel_generator.\1"),
    (rf"{_D}conv2\.{_P}", r"decoder.local_embed.conv.\1"),
    (rf"{_D}conv_cat\.{_P}", r"decoder.fuse.0.\1"),
    (rf"{_D}conv_cat_decoder_([12])\.{_P}", r"decoder.fuse.\1.\2"),
    (rf"{_D}corr_local_decoder_projection\.0\.{_P}", r"decoder.local_upsample.upsample.\1"),
    (rf"{_D}corr_local_decoder_projection\.1\.double_conv\.0\.weight", r"decoder.local_upsample.double_conv.conv1.weight"),
    (rf"{_D}corr_local_decoder_projection\.1\.double_conv\.1\.{_P}", r"decoder.local_upsample.double_conv.norm1.\1"),
    (rf"{_D}corr_local_decoder_projection\.1\.double_conv\.3\.weight", r"decoder.local_upsample.double_conv.conv2.weight"),
    (rf"{_D}corr_local_decoder_projection\.1\.double_conv\.4\.{_P}", r"decoder.local_upsample.double_conv.norm2.\1"),
    (rf"{_D}head_auxi_([012])\.{_P}", r"decoder.aux_heads.\1.\2"),
)
_RULES = tuple((re.compile(official), ours) for official, ours in FGASEG_RENAMES)
_MARKER = _PREDICTOR + "DCDT.gamma_text"


def fgaseg_key(official_key: str) -> str | None:
    """Our name (no prefix) of an official key of FGAseg's own modules, or ``None`` (a
    CAT-Seg key, or unknown)."""
    return rename_by_rules(_RULES, official_key)


def is_official_fgaseg_state_dict(state_dict: Mapping[str, object]) -> bool:
    """True for a state_dict laid out like the official FGAseg model: its P2Tformer
    (``DCDT``) and CAT-Seg's tap upsamplers."""
    return _MARKER in state_dict and "upsample1.weight" in state_dict


def convert_official_fgaseg_state_dict(state_dict: Mapping[str, V], prefix: str = "model.") -> dict[str, V]:
    """Rename an official FGAseg state_dict to sed_d2 names under ``prefix`` (the default
    ``model.`` is where :class:`~sed_d2.meta_arch.fgaseg.FGASeg` holds its network).

    FGAseg's own modules by :data:`FGASEG_RENAMES`, the rest by
    :func:`~sed_d2.checkpoint.catseg.convert_official_catseg_state_dict` (q/k/v joined, Swin
    masks dropped).

    Raises:
        KeyError: listing every key with no sed_d2 counterpart (e.g. the ``P2Tformer_dual``
            variant's ``DCDT.cross_atten_vision``, an incomplete q/k/v triple).
    """
    own: dict[str, V] = {}
    rest: dict[str, V] = {}
    for key, value in state_dict.items():
        ours = fgaseg_key(key)
        if ours is None:
            rest[key] = value
        else:
            own[prefix + ours] = value
    try:
        converted = convert_official_catseg_state_dict(rest, prefix=prefix)
    except KeyError as error:
        message = str(error.args[0]).replace("official CAT-Seg key(s)", "official FGAseg key(s)")
        raise KeyError(message) from None
    converted.update(own)
    return converted
