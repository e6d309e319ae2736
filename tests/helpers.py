"""Small helpers shared by the test suite (keep this file tiny)."""

import copy
import functools

import torch

from sed_d2.clip import build_clip_model


def tiny_clip(name: str = "sed_d2_tiny_convnext", seed: int = 0):
    """A fresh random-init open_clip model (fp32, CPU, eval mode), the same for the same seed.

    ``name`` is one of the tiny configs in ``sed_d2/clip/model_configs``
    (``sed_d2_tiny_convnext``: linear head, ``sed_d2_tiny_convnext_mlp``: MLP head).
    Every call returns an independent copy, so tests may train or modify it freely;
    the global RNG state is left untouched.
    """
    return copy.deepcopy(_tiny_clip_prototype(name, seed))


@functools.lru_cache(maxsize=None)
def _tiny_clip_prototype(name: str, seed: int):
    # Built once per (name, seed): copying is much cheaper than initialising the
    # 49408-token embedding table again.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build_clip_model(name)
