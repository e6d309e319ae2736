"""Image-text cost volume and its convolutional embedding.

Layout conventions used across ``sed_d2.layers``:

* a *cost volume* is ``(B, P, T, h, w)``: batch, prompt templates, classes, space;
* a *class-batched* feature map is ``(B, T, C, h, w)``; it flattens for free to
  ``(B*T, C, h, w)`` (batch outer, class inner, the order the official SED/CAT-Seg code
  uses) so per-class 2-D convolutions run on it directly.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["cosine_cost_volume", "CostVolume", "CostEmbedding"]


def cosine_cost_volume(image_features: Tensor, text_embeddings: Tensor) -> Tensor:
    """Cosine similarity of every pixel with every (class, template) text embedding.

    Args:
        image_features: ``(B, C, h, w)`` dense image embeddings.
        text_embeddings: ``(T, P, C)`` text embeddings shared by the whole batch, or
            ``(B, T, P, C)``, each image's own (FGAseg's per-image refined text).

    Returns:
        ``(B, P, T, h, w)`` raw cosine similarities in ``[-1, 1]``. Both sides are
        L2-normalised over ``C``; no temperature / logit scale is applied (SED and
        CAT-Seg leave it out). The tensor is a permuted view of a contiguous
        ``(B, T, P, h, w)`` buffer, so ``x.transpose(1, 2).flatten(0, 1)`` (the
        ``(B*T, P, h, w)`` layout the per-class convolutions need) costs no copy.
    """
    per_image = text_embeddings.dim() == 4
    if (
        image_features.dim() != 4
        or text_embeddings.dim() not in (3, 4)
        or (per_image and text_embeddings.shape[0] != image_features.shape[0])
    ):
        raise ValueError(
            "expected image features (B, C, h, w) and text embeddings (T, P, C) or (B, T, P, C), got "
            f"{tuple(image_features.shape)} and {tuple(text_embeddings.shape)}"
        )
    batch, channels, height, width = image_features.shape
    num_classes, num_templates, text_channels = text_embeddings.shape[-3:]
    if channels != text_channels:
        raise ValueError(f"image channels {channels} != text channels {text_channels}")
    image = F.normalize(image_features, dim=1).flatten(2)  # (B, C, hw)
    text = F.normalize(text_embeddings, dim=-1).reshape(
        *text_embeddings.shape[:-3], num_classes * num_templates, channels
    )  # (T*P, C) or (B, T*P, C)
    cost = torch.matmul(text, image)  # (B, T*P, hw)
    cost = cost.view(batch, num_classes, num_templates, height, width)
    return cost.transpose(1, 2)


class CostVolume(nn.Module):
    """Module form of :func:`cosine_cost_volume` (no parameters)."""

    def forward(self, image_features: Tensor, text_embeddings: Tensor) -> Tensor:
        return cosine_cost_volume(image_features, text_embeddings)


class CostEmbedding(nn.Module):
    """Embed a cost volume per class: the ``P`` template similarities are the input
    channels of a ``k x k`` convolution to ``out_channels``.

    ``forward((B, P, T, h, w)) -> (B, T, out_channels, h, w)`` (class-batched layout).
    SED: ``P=80 -> 128``, ``k=7``; CAT-Seg-style methods use the same block.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 7) -> None:
        super().__init__()
        if kernel_size % 2 != 1:
            raise ValueError(f"kernel_size must be odd to keep the resolution, got {kernel_size}")
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2)

    def forward(self, cost: Tensor) -> Tensor:
        return self.embed_class_maps(cost.transpose(1, 2))

    def embed_class_maps(self, cost: Tensor) -> Tensor:
        """The same on the class-batched layout: ``(B, T, P, h, w) -> (B, T, out, h, w)``.
        The maps' memory layout carries over (channels-last in, channels-last out)."""
        return self.conv(cost.flatten(0, 1)).unflatten(0, cost.shape[:2])
