"""The resumable training stream (data/loader.py): a pure function of (seed, position)."""
import itertools
import random

import numpy as np
import pytest

from tests.conftest import requires_detectron2

pytestmark = requires_detectron2


def _sampler(size=5, seed=3, batch=2, rank=0, world_size=1, monkeypatch=None):
    from sed_d2.data import loader

    if monkeypatch is not None:
        monkeypatch.setattr(loader.comm, "get_rank", lambda: rank)
        monkeypatch.setattr(loader.comm, "get_world_size", lambda: world_size)
    return loader.ResumableTrainingSampler(size, seed, batch_size_per_rank=batch)


def _take(sampler, n):
    return list(itertools.islice(iter(sampler), n))


def test_stream_is_seeded_permutations_golden():
    stream = _take(_sampler(), 15)
    assert [position for position, _ in stream] == list(range(15))
    indices = [index for _, index in stream]
    # torch.randperm(5) three times from torch.Generator().manual_seed(3)
    assert indices == [1, 0, 3, 4, 2, 0, 1, 2, 4, 3, 1, 4, 3, 0, 2]
    for epoch in range(3):
        assert sorted(indices[5 * epoch : 5 * epoch + 5]) == list(range(5))
    assert _take(_sampler(seed=3), 15) == stream
    assert _take(_sampler(seed=4), 15) != stream


def test_resuming_continues_the_uninterrupted_stream():
    straight = _take(_sampler(batch=2), 20)
    resumed = _sampler(batch=2)
    resumed.set_start_iter(3)  # 3 iterations x 2 images were consumed before the crash
    assert _take(resumed, 14) == straight[6:]


def test_ranks_share_the_single_process_stream(monkeypatch):
    single = _take(_sampler(batch=4), 16)  # 1 process x 4 images
    per_rank = []
    for rank in range(2):  # 2 processes x 2 images
        sampler = _sampler(batch=2, rank=rank, world_size=2, monkeypatch=monkeypatch)
        sampler.set_start_iter(1)
        per_rank.append(_take(sampler, 6))
    assert per_rank[0] == single[4::2] and per_rank[1] == single[5::2]


def test_empty_dataset_is_refused():
    with pytest.raises(ValueError, match=r"the training dataset is empty \(size 0\)"):
        _sampler(size=0)


def _draw(record):
    """A mapper whose output is the RNG draws detectron2's augmentations would make."""
    return (record["name"], np.random.randint(1 << 30), random.random())


def test_samples_depend_on_position_only_and_leave_the_callers_rng_alone():
    from sed_d2.data.loader import PositionSeededDataset

    dataset = PositionSeededDataset([{"name": "a"}, {"name": "b"}], _draw, seed=7)
    np.random.seed(0)
    random.seed(0)
    first = [dataset[(position, index)] for position, index in [(0, 1), (1, 0), (2, 1)]]
    assert np.random.randint(1 << 30) == np.random.RandomState(0).randint(1 << 30)
    assert random.random() == random.Random(0).random()
    again = [dataset[key] for key in [(2, 1), (0, 1), (1, 0)]]  # any order, any caller state
    assert again == [first[2], first[0], first[1]]
    assert first[0][0] == "b" and first[0][1:] != first[2][1:]  # same image, other position
    other_seed = PositionSeededDataset([{"name": "a"}, {"name": "b"}], _draw, seed=8)
    assert other_seed[(0, 1)] != first[0]


def test_batch_not_divisible_by_processes_is_refused(monkeypatch):
    import sed_d2  # noqa: F401  (registers the synthetic dataset)
    from sed_d2.data import loader
    from tests.d2_helpers import tiny_cfg_for

    monkeypatch.setattr(loader.comm, "get_world_size", lambda: 2)
    cfg = tiny_cfg_for("configs/sed/tiny.yaml", "SOLVER.IMS_PER_BATCH", "3")
    with pytest.raises(ValueError, match=r"SOLVER.IMS_PER_BATCH=3 is not divisible by the 2 processes"):
        loader.build_resumable_train_loader(cfg, _draw)


def test_loader_batches_follow_the_stream():
    from detectron2.data import get_detection_dataset_dicts

    import sed_d2  # noqa: F401  (registers the synthetic dataset)
    from sed_d2.data.loader import ResumableTrainingSampler, build_resumable_train_loader
    from tests.d2_helpers import tiny_cfg_for

    cfg = tiny_cfg_for("configs/sed/tiny.yaml", "SOLVER.IMS_PER_BATCH", "2")
    loader, _ = build_resumable_train_loader(cfg, lambda record: record["file_name"])
    batches = list(itertools.islice(iter(loader), 3))
    dicts = get_detection_dataset_dicts(cfg.DATASETS.TRAIN)
    stream = _take(ResumableTrainingSampler(len(dicts), cfg.SEED, batch_size_per_rank=2), 6)
    expected = [dicts[index]["file_name"] for _, index in stream]
    assert [name for batch in batches for name in batch] == expected
    assert len(set(expected)) > 1
