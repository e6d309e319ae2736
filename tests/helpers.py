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


# The tiny random-init CLIP ViT of the model tests: 64x64 images, patch 16 (a 4x4 grid), width
# 64, 4 blocks, embedding 48.
TINY_VIT = "sed_d2_tiny_vit_quickgelu"
TINY_VIT_SIZE, TINY_VIT_GRID, TINY_VIT_EMBED = 64, 4, 48

# The tiny CAT-Seg decoder geometry of the model tests (CAT-Seg and the methods built on it),
# for the tiny ViT (tiny_clip("sed_d2_tiny_vit_quickgelu")) with guidance layers (1, 2).
TINY_CATSEG_DECODER = dict(
    hidden_dim=32,
    num_layers=2,
    num_heads=2,
    window_size=2,
    appearance_guidance_dim=16,
    text_guidance_dim=16,
    decoder_dims=(32, 16),
    skip_channels=(16, 8),
    skip_proj_dims=(8, 4),
)


def redraw_constant_parameters(model, scale: float = 0.2) -> None:
    """Random init leaves norms, biases, padding tokens and gammas constant, so a check could
    not see them: add noise to every 1-D or padding parameter (in place, no autograd)."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 1 or "padding" in name:
                p.add_(scale * torch.randn_like(p))


def clip_text_embeddings(clip_model, num_classes: int, seed: int = 1):
    """Text embeddings as the meta-architecture makes them, ``(T, 1, C)`` L2-normalised: random
    8-token class names encoded by the CLIP text tower (with gradients when it trains)."""
    generator = torch.Generator().manual_seed(seed)
    tokens = torch.zeros(num_classes, 77, dtype=torch.long)
    tokens[:, :8] = torch.randint(1, 49000, (num_classes, 8), generator=generator)
    tokens[:, 8] = 49407  # the end-of-text token: the highest id
    return torch.nn.functional.normalize(clip_model.encode_text(tokens), dim=-1).unsqueeze(1)
