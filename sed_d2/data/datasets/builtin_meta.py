"""Class names of every benchmark, read from the JSON lists shipped in ``class_names/``.

One list per benchmark; index ``i`` is label value ``i`` of the prepared annotations.
Synonyms of one class are joined by ", " inside a name (ADE-847), and the text encoder
averages them. The files equal the official SED/CAT-Seg ``datasets/*.json`` (renamed):

=================================== ======= =================================================
file                                 count   official / origin
=================================== ======= =================================================
coco_stuff_171.json                  171     coco.json (80 things, then 91 stuff)
coco_object_80.json                  80      the first 80 names of coco.json
ade20k_150.json                      150     ade150.json (entry 7 is ``"bed "``, kept as is)
ade20k_847.json                      847     ade847.json (frequency order, 217 with synonyms)
ade20k_847_ade_ids.json              847     ADE class id of each name (the conversion table)
pascal_context_59.json               59      pc59.json
pascal_context_459.json              459     pc459.json (labels.txt id i + 1)
voc_20.json                          20      voc20.json
voc_20_background_proxies_59.json    59      voc20b.json: voc_20 + the other 39 PC-59 names
cityscapes_19.json                   19      cityscapes trainId order
=================================== ======= =================================================

Needs no detectron2.
"""

import functools
import json
import os
from typing import List, Tuple

__all__ = ["CLASS_NAMES_DIR", "BACKGROUND_CLASS", "class_names", "with_background"]

CLASS_NAMES_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "class_names")
BACKGROUND_CLASS = "background"


@functools.lru_cache(maxsize=None)
def _load(filename: str) -> Tuple:
    path = os.path.join(CLASS_NAMES_DIR, filename)
    with open(path, encoding="utf-8") as f:
        names = json.load(f)
    if not isinstance(names, list) or not names:
        raise ValueError(f"{path}: expected a non-empty JSON array")
    return tuple(names)


def class_names(filename: str) -> List:
    """A fresh copy of the list in ``class_names/<filename>``."""
    return list(_load(filename))


def with_background(filename: str) -> List[str]:
    """``["background"] + class_names(filename)``: the GroupViT/TCL lists (background = 0)."""
    return [BACKGROUND_CLASS] + class_names(filename)
