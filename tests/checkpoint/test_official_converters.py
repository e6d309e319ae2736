import re

import pytest

from sed_d2.checkpoint import OFFICIAL_CONVERTERS, OfficialConverter, convert_official, official_layout
from sed_d2.checkpoint.sed import convert_official_sed_state_dict
from tests.checkpoint.official_sed_layout import official_sed_shapes


def test_sed_layout_is_recognised_and_converted():
    official = official_sed_shapes()
    assert official_layout(official) == "SED"
    name, converted = convert_official(official)
    assert name == "SED" and converted == convert_official_sed_state_dict(official)


def test_own_layout_is_not_official_and_converting_it_names_the_known_layouts():
    ours = {"model.decoder.head.weight": [1, 16, 3, 3]}
    assert official_layout(ours) is None
    known = re.escape(", ".join(OFFICIAL_CONVERTERS))
    with pytest.raises(ValueError, match=rf"not an official checkpoint of a known layout \({known}\).*model\.decoder"):
        convert_official(ours)


def test_a_new_layout_is_one_table_entry(monkeypatch):
    toy = OfficialConverter(
        detect=lambda state_dict: "toy.head" in state_dict,
        convert=lambda state_dict: {"model." + key: value for key, value in state_dict.items()},
    )
    monkeypatch.setitem(OFFICIAL_CONVERTERS, "TOY", toy)
    assert convert_official({"toy.head": 1}) == ("TOY", {"model.toy.head": 1})
    assert official_layout(official_sed_shapes()) == "SED"


def test_overlapping_detectors_are_refused(monkeypatch):
    monkeypatch.setitem(OFFICIAL_CONVERTERS, "GREEDY", OfficialConverter(lambda state_dict: True, dict))
    with pytest.raises(ValueError, match=r"several official layouts \['SED', 'GREEDY'\]"):
        official_layout(official_sed_shapes())
