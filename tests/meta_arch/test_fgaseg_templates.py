"""FGAseg's prompt templates: its P2Tformer refines one text embedding per class (P = 1), so any
one-template set works ("single", the official code's; "fgaseg_paper", the paper's wording) and a
multi-template set is refused with the key named."""
import pytest
import torch

from tests.conftest import requires_detectron2
from tests.d2_helpers import build_tiny_model, detectron2_inputs

pytestmark = requires_detectron2

TINY = "configs/fgaseg/tiny.yaml"


def test_the_papers_one_template_set_runs_end_to_end():
    model = build_tiny_model(TINY, "MODEL.OVSEG.PROMPT_TEMPLATES", "fgaseg_paper").eval()
    assert model.templates == ["a photo of {}"]
    with torch.no_grad():
        outputs = model(detectron2_inputs([(64, 64)]))
        assert model.text_embeddings().shape[1] == 1
    assert outputs[0]["sem_seg"].shape[1:] == (64, 64)
    assert build_tiny_model(TINY).templates == ["A photo of a {} in the scene"]  # the default: the code's


@pytest.mark.parametrize("name, count", [("tcl_custom", 9), ("imagenet_select", 8)])
def test_a_multi_template_set_is_refused_naming_the_key(name, count):
    with pytest.raises(ValueError) as error:
        build_tiny_model(TINY, "MODEL.OVSEG.PROMPT_TEMPLATES", name)
    message = str(error.value)
    assert "MODEL.OVSEG.PROMPT_TEMPLATES must be 'single'" in message
    assert f"got {name!r} ({count} templates)" in message and "'fgaseg_paper'" in message
