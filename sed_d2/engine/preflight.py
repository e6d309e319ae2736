"""Checks run at start-up, before any work: a wrong output folder, dataset name, dataset folder
or device is reported in seconds, not after an hour of training."""
from __future__ import annotations

import os

import torch

__all__ = ["check_device", "check_output_dir", "check_test_datasets", "preflight"]


def check_output_dir(output_dir: str, *, resume: bool, overwrite: bool) -> None:
    """A new run never silently overwrites a previous run's checkpoints, and ``--resume``
    never silently starts from scratch."""
    tagged = os.path.isfile(os.path.join(output_dir, "last_checkpoint"))
    if resume and not tagged:
        raise FileNotFoundError(
            f"--resume: OUTPUT_DIR {output_dir} holds no checkpoint (no 'last_checkpoint' file); "
            "drop --resume to start a new run there"
        )
    if not resume and tagged and not overwrite:
        raise FileExistsError(
            f"OUTPUT_DIR {output_dir} holds a previous run's checkpoints ('last_checkpoint'); "
            "continue it with --resume, or start over and overwrite them with --overwrite"
        )


def check_device(cfg) -> None:
    """``MODEL.DEVICE`` names a device this machine has."""
    device = torch.device(cfg.MODEL.DEVICE)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError(
                f"MODEL.DEVICE is {cfg.MODEL.DEVICE!r} but this machine has no usable CUDA GPU "
                f"(torch {torch.__version__}, CUDA build: {torch.version.cuda}); set MODEL.DEVICE cpu"
            )
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise RuntimeError(
                f"MODEL.DEVICE is {cfg.MODEL.DEVICE!r} but only {torch.cuda.device_count()} GPUs are visible"
            )


def check_test_datasets(cfg) -> None:
    """Every ``DATASETS.TEST`` entry is registered, its files are where the registration
    expects them (its loader raises the dataset's own error naming the folder and the
    prepare script) and its vocabulary is readable."""
    from detectron2.data import DatasetCatalog

    from ..data.vocabulary import vocabulary_of

    for name in cfg.DATASETS.TEST:
        if name not in DatasetCatalog.list():
            raise KeyError(
                f"DATASETS.TEST entry {name!r} is not a registered dataset; sed_d2 registers e.g. "
                "ade20k_150_test_sem_seg, context_59_test_sem_seg (see README, Datasets)"
            )
        if not DatasetCatalog.get(name):
            raise ValueError(f"DATASETS.TEST entry {name!r} has no images")
        vocabulary_of(name)


def preflight(cfg, *, eval_only: bool, resume: bool, overwrite: bool) -> None:
    """All start-up checks of ``tools/train_net.py``."""
    check_device(cfg)
    check_test_datasets(cfg)
    if eval_only:
        tagged = os.path.isfile(os.path.join(cfg.OUTPUT_DIR, "last_checkpoint"))
        if not cfg.MODEL.WEIGHTS and not (resume and tagged):
            raise ValueError(
                "--eval-only needs weights: set MODEL.WEIGHTS to a checkpoint (or pass --resume to "
                f"evaluate the last checkpoint of OUTPUT_DIR {cfg.OUTPUT_DIR}, which has none)"
            )
    else:
        check_output_dir(cfg.OUTPUT_DIR, resume=resume, overwrite=overwrite)
