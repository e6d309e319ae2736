"""Image-caption training sets: the synthetic caption set, serialised records, the mapper choice."""
import numpy as np
from PIL import Image

from tests.conftest import requires_detectron2

pytestmark = requires_detectron2


def test_synthetic_captions_name_the_classes_of_each_image():
    from detectron2.data import DatasetCatalog, MetadataCatalog

    import sed_d2  # noqa: F401  (registers the datasets)
    from sed_d2.data.synthetic import SYNTHETIC_CAPTION_DATASET_NAME, SYNTHETIC_CLASSES
    from sed_d2.data.vocabulary import IMAGE_CAPTION_TASK, training_vocabulary_of

    captions = DatasetCatalog.get(SYNTHETIC_CAPTION_DATASET_NAME)
    segmentation = DatasetCatalog.get("sed_d2_synthetic_train")
    assert len(captions) == len(segmentation)
    for caption, labelled in zip(captions[:20], segmentation[:20]):
        assert "sem_seg_file_name" not in caption and caption["file_name"] == labelled["file_name"]
        labels = np.unique(np.asarray(Image.open(labelled["sem_seg_file_name"])))
        assert caption["nouns"] == [SYNTHETIC_CLASSES[c] for c in labels if c != 255]
        assert 2 <= len(caption["nouns"]) <= 5
    meta = MetadataCatalog.get(SYNTHETIC_CAPTION_DATASET_NAME)
    assert meta.task == IMAGE_CAPTION_TASK and meta.stuff_classes == SYNTHETIC_CLASSES
    assert MetadataCatalog.get("cc12m_train").task == IMAGE_CAPTION_TASK
    assert training_vocabulary_of("cc12m_train") is None  # captions only: no class list


def test_records_are_held_serialised_and_read_back_equal():
    from sed_d2.data.loader import PositionSeededDataset

    records = [{"file_name": f"{i}.jpg", "nouns": [f"thing {i}"] * (i % 3 + 1)} for i in range(1000)]
    dataset = PositionSeededDataset(records, lambda record: record, seed=0)
    assert not isinstance(dataset._dicts, list)  # one byte buffer, not 1000 Python dicts
    assert [dataset[(0, i)] for i in (0, 999, 5)] == [records[0], records[999], records[5]]


def test_the_train_mapper_is_the_configs():
    import pytest

    import sed_d2  # noqa: F401
    from sed_d2.data.caption_mapper import ImageCaptionMapper
    from sed_d2.data.mappers import SemanticSegmentationMapper, build_train_mapper
    from tests.d2_helpers import tiny_cfg_for

    assert isinstance(build_train_mapper(tiny_cfg_for("configs/sed/tiny.yaml")), SemanticSegmentationMapper)
    mapper = build_train_mapper(tiny_cfg_for("configs/synseg/tiny.yaml"))
    assert isinstance(mapper, ImageCaptionMapper) and mapper.image_size == (64, 64) and mapper.max_phrases == 8
    with pytest.raises(ValueError, match="INPUT.DATASET_MAPPER_NAME must be one of"):
        build_train_mapper(tiny_cfg_for("configs/sed/tiny.yaml", "INPUT.DATASET_MAPPER_NAME", "captions"))
