"""Prompt template sets used to turn class names into CLIP text queries.

The strings are data: they are taken verbatim (including their inconsistent
punctuation and capitalisation) from the official SED code
(``sed/third_party/imagenet_templates.py``), which took the 80 ImageNet templates
from OpenAI's CLIP prompt-engineering notebook, and from TCL's
``datasets/templates.py`` (``tcl_custom``). Changing a single character
changes the text embeddings and therefore the numbers of released checkpoints.

Every set is a tuple so that no caller can alter the shared module-level data;
``get_templates`` hands out a fresh list.
"""

from __future__ import annotations

__all__ = [
    "IMAGENET_TEMPLATES",
    "IMAGENET_SELECT_TEMPLATES",
    "SINGLE_TEMPLATE",
    "TCL_CUSTOM_TEMPLATES",
    "FGASEG_PAPER_TEMPLATE",
    "TEMPLATE_SETS",
    "get_templates",
]

# The 80 OpenAI ImageNet templates, in the official SED order. With
# PROMPT_ENSEMBLE_TYPE "imagenet" each template becomes one of SED's P = 80 prompt
# channels, so the order is part of a trained model.
IMAGENET_TEMPLATES = (
    'a bad photo of a {}.',
    'a photo of many {}.',
    'a sculpture of a {}.',
    'a photo of the hard to see {}.',
    'a low resolution photo of the {}.',
    'a rendering of a {}.',
    'graffiti of a {}.',
    'a bad photo of the {}.',
    'a cropped photo of the {}.',
    'a tattoo of a {}.',
    'the embroidered {}.',
    'a photo of a hard to see {}.',
    'a bright photo of a {}.',
    'a photo of a clean {}.',
    'a photo of a dirty {}.',
    'a dark photo of the {}.',
    'a drawing of a {}.',
    'a photo of my {}.',
    'the plastic {}.',
    'a photo of the cool {}.',
    'a close-up photo of a {}.',
    'a black and white photo of the {}.',
    'a painting of the {}.',
    'a painting of a {}.',
    'a pixelated photo of the {}.',
    'a sculpture of the {}.',
    'a bright photo of the {}.',
    'a cropped photo of a {}.',
    'a plastic {}.',
    'a photo of the dirty {}.',
    'a jpeg corrupted photo of a {}.',
    'a blurry photo of the {}.',
    'a photo of the {}.',
    'a good photo of the {}.',
    'a rendering of the {}.',
    'a {} in a video game.',
    'a photo of one {}.',
    'a doodle of a {}.',
    'a close-up photo of the {}.',
    'a photo of a {}.',
    'the origami {}.',
    'the {} in a video game.',
    'a sketch of a {}.',
    'a doodle of the {}.',
    'a origami {}.',
    'a low resolution photo of a {}.',
    'the toy {}.',
    'a rendition of the {}.',
    'a photo of the clean {}.',
    'a photo of a large {}.',
    'a rendition of a {}.',
    'a photo of a nice {}.',
    'a photo of a weird {}.',
    'a blurry photo of a {}.',
    'a cartoon {}.',
    'art of a {}.',
    'a sketch of the {}.',
    'a embroidered {}.',
    'a pixelated photo of a {}.',
    'itap of the {}.',
    'a jpeg corrupted photo of the {}.',
    'a good photo of a {}.',
    'a plushie {}.',
    'a photo of the nice {}.',
    'a photo of the small {}.',
    'a photo of the weird {}.',
    'the cartoon {}.',
    'art of the {}.',
    'a drawing of the {}.',
    'a photo of the large {}.',
    'a black and white photo of a {}.',
    'the plushie {}.',
    'a dark photo of a {}.',
    'itap of a {}.',
    'graffiti of the {}.',
    'a toy {}.',
    'itap of my {}.',
    'a photo of a cool {}.',
    'a photo of a small {}.',
    'a tattoo of the {}.',
)
# SED's 8-template subset (PROMPT_ENSEMBLE_TYPE "imagenet_select"; the "v1" set,
# the only one not commented out in the official file).
IMAGENET_SELECT_TEMPLATES = (
    'itap of a {}.',
    'a bad photo of the {}.',
    'a origami {}.',
    'a photo of the large {}.',
    'a {} in a video game.',
    'art of the {}.',
    'a photo of the small {}.',
    'A photo of a {} in the scene',
)

# SED's PROMPT_ENSEMBLE_TYPE "single". No trailing period: that is how the official
# code spells it.
SINGLE_TEMPLATE = ("A photo of a {} in the scene",)

# CLIP's own zero-shot prompt; SynSeg's (the paper names none) for caption phrases and class names.
CLIP_PHOTO_TEMPLATE = ("a photo of a {}.",)

# The bare class name (no prompt): for tiny random-init text towers, which map prompts sharing
# all but one token to nearly the same vector (SynSeg's tiny config).
CLASS_NAME_TEMPLATE = ("{}",)

# TCL's "custom" set (kakaobrain/tcl, datasets/templates.py: its 7-template ImageNet subset
# followed by "a photo of many {}." and "a photo of {}s.", "custom template boosts performance a
# little"), in TCL's order. TCL averages a class's 9 raw text embeddings, then normalises; sed_d2's
# SynSeg averages the 9 normalised ones (the TextEncoder's), then normalises again.
TCL_CUSTOM_TEMPLATES = (
    'itap of a {}.',
    'a bad photo of a {}.',
    'a origami {}.',
    'a photo of the large {}.',
    'a {} in a video game.',
    'art of the {}.',
    'a photo of the small {}.',
    'a photo of many {}.',
    'a photo of {}s.',
)

# The FGAseg paper's prompt, "a photo of <CLASS>" (Sec. IV, implementation details): a GUESS at
# the exact string (the paper prints no article and no full stop); the official FGA-seg code
# uses "single", FGAseg's default.
FGASEG_PAPER_TEMPLATE = ("a photo of {}",)

# Name -> template set; the first three names are the values of SED's PROMPT_ENSEMBLE_TYPE.
TEMPLATE_SETS: dict[str, tuple[str, ...]] = {
    "imagenet": IMAGENET_TEMPLATES,
    "imagenet_select": IMAGENET_SELECT_TEMPLATES,
    "single": SINGLE_TEMPLATE,
    "clip_photo": CLIP_PHOTO_TEMPLATE,
    "class_name": CLASS_NAME_TEMPLATE,
    "tcl_custom": TCL_CUSTOM_TEMPLATES,
    "fgaseg_paper": FGASEG_PAPER_TEMPLATE,
}


def get_templates(name: str) -> list[str]:
    """Return a fresh list with the template set called ``name``.

    Args:
        name: one of ``"imagenet"`` (80), ``"imagenet_select"`` (8), ``"single"`` (1),
            ``"clip_photo"`` (1), ``"class_name"`` (1), ``"tcl_custom"`` (9),
            ``"fgaseg_paper"`` (1).

    Raises:
        ValueError: for an unknown name; the message lists the valid ones.
    """
    try:
        return list(TEMPLATE_SETS[name])
    except KeyError:
        raise ValueError(
            f"Unknown prompt template set {name!r}; valid names: {sorted(TEMPLATE_SETS)}"
        ) from None
