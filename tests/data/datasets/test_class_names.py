"""The class-name lists shipped as package data: counts, order and the official quirks."""

import json
import os

import pytest

from sed_d2.data.datasets import builtin_meta
from sed_d2.data.prepare_utils import read_class_names


@pytest.mark.parametrize(
    "filename, count",
    [
        ("coco_stuff_171.json", 171),
        ("ade20k_150.json", 150),
        ("ade20k_847.json", 847),
        ("pascal_context_59.json", 59),
        ("pascal_context_459.json", 459),
        ("voc_20.json", 20),
        ("cityscapes_19.json", 19),
        ("coco_object_80.json", 80),
        ("voc_20_background_proxies_59.json", 59),
        ("ade20k_847_ade_ids.json", 847),
    ],
)
def test_counts_and_no_duplicates(filename, count):
    names = builtin_meta.class_names(filename)
    assert len(names) == count
    assert len(set(names)) == count
    assert names == read_class_names(filename)  # the prepare scripts read the same files


def test_every_shipped_list_is_covered():
    shipped = {p for p in os.listdir(builtin_meta.CLASS_NAMES_DIR) if p.endswith(".json")}
    assert len(shipped) == 10
    for filename in shipped:
        with open(os.path.join(builtin_meta.CLASS_NAMES_DIR, filename)) as f:
            assert isinstance(json.load(f), list)


def test_official_order_and_quirks_kept():
    coco = builtin_meta.class_names("coco_stuff_171.json")
    assert coco[:3] == ["person", "bicycle", "car"] and coco[79] == "toothbrush"
    assert coco[80] == "banner" and coco[-1] == "wood"
    assert builtin_meta.class_names("coco_object_80.json") == coco[:80]
    ade150 = builtin_meta.class_names("ade20k_150.json")
    assert ade150[7] == "bed "  # trailing space of the official list, kept for parity
    ade847 = builtin_meta.class_names("ade20k_847.json")
    assert ade847[0] == "wall" and ade847[1] == "building, edifice"
    assert ade847[846] == "adding machine, totalizer, totaliser"
    assert sum(", " in name for name in ade847) == 217
    ids = builtin_meta.class_names("ade20k_847_ade_ids.json")
    assert (ids[0], ids[1], ids[14], ids[846]) == (2978, 312, 401, 3148)
    assert min(ids) == 6 and max(ids) == 3156
    pc59 = builtin_meta.class_names("pascal_context_59.json")
    assert pc59[0] == "aeroplane" and pc59[49] == "diningtable" and pc59[58] == "wood"
    pc459 = builtin_meta.class_names("pascal_context_459.json")
    # index i = labels.txt id i + 1; 255 is a real class (never an ignore value here)
    assert pc459[0] == "accordion" and pc459[1] == "aeroplane" and pc459[255] == "monkey"
    assert pc459[396] == "table" and pc459[430] == "unknown"
    assert builtin_meta.class_names("cityscapes_19.json")[18] == "bicycle"


def test_voc20b_is_voc20_then_the_other_39_pc59_names():
    voc20 = builtin_meta.class_names("voc_20.json")
    proxies = builtin_meta.class_names("voc_20_background_proxies_59.json")
    pc59 = builtin_meta.class_names("pascal_context_59.json")
    assert proxies[:20] == voc20
    assert sorted(proxies) == sorted(pc59)
    assert proxies[20:23] == ["bag", "bed", "bench"] and proxies[-1] == "wood"


def test_with_background_prepends_background():
    assert builtin_meta.with_background("voc_20.json")[:2] == ["background", "aeroplane"]
    assert len(builtin_meta.with_background("pascal_context_59.json")) == 60
    # a fresh list every call: callers may mutate it
    names = builtin_meta.class_names("voc_20.json")
    names.append("x")
    assert len(builtin_meta.class_names("voc_20.json")) == 20
