"""A sed_d2 SED state_dict renamed to the official SED layout, for the converter tests.

The official decoder names depend only on the number of decoder stages (3 in every SED
config), so the official ConvNeXt-B key list in the fixture names any SED decoder's
parameters; the inverse map is read off the converter itself.
"""
from __future__ import annotations

import json
from pathlib import Path

from sed_d2.checkpoint.sed import OFFICIAL_SED_CLIP_PREFIX, OFFICIAL_SED_DECODER_PREFIX, sed_decoder_key

OFFICIAL_SED_KEYS_SHAPES = Path(__file__).parents[1] / "fixtures" / "official_sed_convnextB_keys_shapes.json"


def official_sed_shapes() -> dict[str, list[int]]:
    """Every key of the official SED ConvNeXt-B checkpoint with its shape."""
    return json.loads(OFFICIAL_SED_KEYS_SHAPES.read_text())


def to_official_sed(state_dict: dict, prefix: str = "model.") -> dict:
    """``state_dict`` (a SED model's, its keys under ``prefix``) in the official layout."""
    official_decoder_name = {
        sed_decoder_key(key[len(OFFICIAL_SED_DECODER_PREFIX):]): key
        for key in official_sed_shapes()
        if key.startswith(OFFICIAL_SED_DECODER_PREFIX)
    }
    official = {}
    for key, value in state_dict.items():
        assert key.startswith(prefix), key
        key = key[len(prefix):]
        if key.startswith("clip_model."):
            official[OFFICIAL_SED_CLIP_PREFIX + key[len("clip_model."):]] = value
        else:
            official[official_decoder_name[key[len("decoder."):]]] = value
    return official
