import pytest

from sed_d2.clip import IMAGENET_SELECT_TEMPLATES, IMAGENET_TEMPLATES, SINGLE_TEMPLATE, get_templates
from sed_d2.clip.templates import FGASEG_PAPER_TEMPLATE, TCL_CUSTOM_TEMPLATES


def test_template_sets_have_the_official_sizes_and_ends():
    assert len(IMAGENET_TEMPLATES) == 80
    assert len(set(IMAGENET_TEMPLATES)) == 80
    assert IMAGENET_TEMPLATES[0] == "a bad photo of a {}."
    assert IMAGENET_TEMPLATES[-1] == "a tattoo of the {}."
    assert len(IMAGENET_SELECT_TEMPLATES) == 8
    assert IMAGENET_SELECT_TEMPLATES[-1] == "A photo of a {} in the scene"
    assert SINGLE_TEMPLATE == ("A photo of a {} in the scene",)


def test_tcl_custom_is_tcls_nine_templates_in_order():
    # TCL datasets/templates.py: custom = the 7-template ImageNet subset + 2 more
    assert TCL_CUSTOM_TEMPLATES == (
        "itap of a {}.", "a bad photo of a {}.", "a origami {}.", "a photo of the large {}.",
        "a {} in a video game.", "art of the {}.", "a photo of the small {}.", "a photo of many {}.",
        "a photo of {}s.",
    )
    # its first seven are ImageNet templates, and all but the last come from the 80
    assert set(TCL_CUSTOM_TEMPLATES[:8]) <= set(IMAGENET_TEMPLATES)
    assert FGASEG_PAPER_TEMPLATE == ("a photo of {}",)  # the paper's "a photo of <CLASS>" (a guess)


@pytest.mark.parametrize(
    "name, size",
    [("imagenet", 80), ("imagenet_select", 8), ("single", 1), ("clip_photo", 1), ("class_name", 1), ("tcl_custom", 9),
     ("fgaseg_paper", 1)],
)
def test_get_templates_returns_a_fresh_list(name, size):
    templates = get_templates(name)
    assert isinstance(templates, list) and len(templates) == size
    assert all(template.count("{}") == 1 for template in templates)
    templates.append("mutated {}")
    assert len(get_templates(name)) == size  # module data untouched


def test_get_templates_unknown_name_lists_valid_names():
    with pytest.raises(ValueError, match="imagenet_select") as error:
        get_templates("imagenet80")
    assert "'single'" in str(error.value)
