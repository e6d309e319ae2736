"""Official checkpoints of the hosted methods, converted to sed_d2 state_dicts.

:data:`OFFICIAL_CONVERTERS` is the one table of known official layouts: a method adds its
converter there (one entry, in ``checkpoint/<method>.py``), and both
:class:`~sed_d2.engine.ConvertingCheckpointer` (``MODEL.WEIGHTS``) and
``tools/convert_checkpoint.py`` recognise its files. Detection must be specific: a
state_dict may match at most one layout.
"""
from __future__ import annotations

from typing import Callable, Mapping, NamedTuple, TypeVar

from .catseg import convert_official_catseg_state_dict, is_official_catseg_state_dict
from .fgaseg import convert_official_fgaseg_state_dict, is_official_fgaseg_state_dict
from .sed import convert_official_sed_state_dict, is_official_sed_state_dict

__all__ = ["OFFICIAL_CONVERTERS", "OfficialConverter", "convert_official", "official_layout"]

V = TypeVar("V")


class OfficialConverter(NamedTuple):
    # True for a state_dict in this official layout.
    detect: Callable[[Mapping[str, object]], bool]
    # The state_dict renamed to the sed_d2 meta-architecture's keys (values passed through).
    convert: Callable[[Mapping[str, V]], dict[str, V]]


OFFICIAL_CONVERTERS: dict[str, OfficialConverter] = {
    "SED": OfficialConverter(is_official_sed_state_dict, convert_official_sed_state_dict),
    "CAT-Seg": OfficialConverter(is_official_catseg_state_dict, convert_official_catseg_state_dict),
    "FGAseg": OfficialConverter(is_official_fgaseg_state_dict, convert_official_fgaseg_state_dict),
}


def official_layout(state_dict: Mapping[str, object]) -> str | None:
    """The name of the official layout ``state_dict`` is in, or ``None`` (e.g. sed_d2's own).

    Raises:
        ValueError: if more than one converter claims it (their detectors are not specific).
    """
    names = [name for name, converter in OFFICIAL_CONVERTERS.items() if converter.detect(state_dict)]
    if len(names) > 1:
        raise ValueError(f"state_dict matches several official layouts {names}: their detectors overlap")
    return names[0] if names else None


def convert_official(state_dict: Mapping[str, V]) -> tuple[str, dict[str, V]]:
    """``(layout name, state_dict renamed to sed_d2 keys)`` for an official checkpoint.

    Raises:
        ValueError: if ``state_dict`` is in none of the known official layouts.
    """
    name = official_layout(state_dict)
    if name is None:
        sample = sorted(state_dict)[:5]
        raise ValueError(
            f"not an official checkpoint of a known layout ({', '.join(OFFICIAL_CONVERTERS)}); "
            f"its first keys are {sample}"
        )
    return name, OFFICIAL_CONVERTERS[name].convert(state_dict)
