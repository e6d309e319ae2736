"""prepare_cityscapes.py: labelIds -> labelTrainIds next to the raw files."""

import numpy as np


def test_cityscapes_label_ids_to_train_ids(raw, datasets_root, capsys):
    raw.write_cityscapes_raw(datasets_root)
    raw.assert_prepares("prepare_cityscapes", datasets_root, raw.expected_cityscapes())
    summary = capsys.readouterr().out
    assert "[val] 2 files in" in summary
    assert "label values in the 2 files converted this run: 0-18, 255" in summary


def test_cityscapes_rejects_non_grayscale_label_ids(raw, datasets_root, capsys):
    raw.write_cityscapes_raw(datasets_root)
    broken = (
        datasets_root
        / "cityscapes"
        / "gtFine"
        / "val"
        / "lindau"
        / "lindau_000000_000019_gtFine_labelIds.png"
    )
    from PIL import Image

    Image.fromarray(np.zeros((2, 2, 3), np.uint8)).save(broken)  # a colour image by mistake
    assert raw.run_prepare("prepare_cityscapes", datasets_root) == 1
    assert "lindau_000000_000019_gtFine_labelIds.png: PIL mode 'RGB'" in capsys.readouterr().out
