"""A training loader whose data stream is a pure function of (seed, position): resumable.

detectron2's ``TrainingSampler`` restarts its stream on ``--resume`` and augmentations draw
from each worker's RNG, so a resumed run sees different images than an uninterrupted one.
Here the stream is ``shuffle(range(N)) + shuffle(range(N)) + ...`` from ``SEED`` and sample
``p`` of the stream is augmented with RNGs seeded from ``(SEED, p)``. Hence:

* ``--resume`` continues with exactly the batches the uninterrupted run would have seen;
* ``k`` processes x ``b`` images see the same samples, augmented the same way, as one process
  x ``k*b`` images (rank ``r`` takes stream positions ``r, r+k, ...``).

The records are held serialised (detectron2's ``DatasetFromList(serialize=True)``: one byte
buffer, not millions of Python objects), so data-loader workers share them copy-on-write
instead of each touching (hence copying) every page of a list (CC12M: ~10 M records).
"""
import itertools
import random
from typing import Callable, List, Optional

import numpy as np
import torch
from detectron2.data import DatasetFromList, build_batch_data_loader, get_detection_dataset_dicts
from detectron2.utils import comm
from torch.utils.data import Dataset, Sampler

__all__ = ["ResumableTrainingSampler", "PositionSeededDataset", "build_resumable_train_loader"]


class ResumableTrainingSampler(Sampler):
    """Infinite stream of ``(position, index)``; this rank's share starts at ``start_iter``."""

    def __init__(self, size: int, seed: int, *, shuffle: bool = True, batch_size_per_rank: int):
        if size <= 0:
            raise ValueError(f"the training dataset is empty (size {size})")
        self._size = size
        self._seed = int(seed)
        self._shuffle = shuffle
        self._rank = comm.get_rank()
        self._world_size = comm.get_world_size()
        self._batch_size_per_rank = batch_size_per_rank
        self._start_iter = 0

    def set_start_iter(self, start_iter: int) -> None:
        """Skip the samples of iterations before ``start_iter`` (call before iterating)."""
        self._start_iter = int(start_iter)

    def _stream(self):
        g = torch.Generator()
        g.manual_seed(self._seed)
        for epoch in itertools.count():
            order = torch.randperm(self._size, generator=g) if self._shuffle else torch.arange(self._size)
            yield from order.tolist()

    def __iter__(self):
        first = self._start_iter * self._batch_size_per_rank * self._world_size + self._rank
        positions = itertools.count(first, self._world_size)
        stream = itertools.islice(self._stream(), first, None, self._world_size)
        yield from zip(positions, stream)


class PositionSeededDataset(Dataset):
    """Map ``(position, index)`` to ``mapper(dicts[index])`` with RNGs seeded by position.

    Augmentations in detectron2 draw from ``np.random`` and ``random``; both are seeded per
    sample and restored afterwards, so the caller's RNG state is untouched.
    """

    def __init__(self, dataset_dicts: List[dict], mapper: Callable, seed: int):
        self._dicts = DatasetFromList(dataset_dicts, copy=False, serialize=True)
        self._mapper = mapper
        self._seed = int(seed)

    def __len__(self):
        return len(self._dicts)

    def __getitem__(self, key):
        position, index = key
        sample_seed = (self._seed * 1_000_003 + position) % (2**32)
        np_state, py_state = np.random.get_state(), random.getstate()
        np.random.seed(sample_seed)
        random.seed(sample_seed)
        try:
            return self._mapper(self._dicts[index])
        finally:
            np.random.set_state(np_state)
            random.setstate(py_state)


def build_resumable_train_loader(cfg, mapper: Callable, seed: Optional[int] = None):
    """Return ``(loader, sampler)``; call ``sampler.set_start_iter(i)`` when resuming at ``i``.

    Seed: ``seed`` or SEED (if >= 0), else a random seed shared by all ranks. A mapper with a
    ``select_records(dicts) -> dicts`` method keeps only the records it can map (the
    image-caption mapper drops images without noun phrases).
    """
    dicts = get_detection_dataset_dicts(
        cfg.DATASETS.TRAIN,
        filter_empty=cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS,
        proposal_files=None,
    )
    select_records = getattr(mapper, "select_records", None)
    if select_records is not None:
        dicts = select_records(dicts)
    if seed is None:
        seed = cfg.SEED if cfg.SEED >= 0 else comm.shared_random_seed()
    world_size = comm.get_world_size()
    if cfg.SOLVER.IMS_PER_BATCH % world_size:
        raise ValueError(
            f"SOLVER.IMS_PER_BATCH={cfg.SOLVER.IMS_PER_BATCH} is not divisible by the "
            f"{world_size} processes"
        )
    batch_per_rank = cfg.SOLVER.IMS_PER_BATCH // world_size
    sampler = ResumableTrainingSampler(len(dicts), seed, batch_size_per_rank=batch_per_rank)
    loader = build_batch_data_loader(
        PositionSeededDataset(dicts, mapper, seed),
        sampler,
        cfg.SOLVER.IMS_PER_BATCH,
        aspect_ratio_grouping=False,
        num_workers=cfg.DATALOADER.NUM_WORKERS,
    )
    return loader, sampler
