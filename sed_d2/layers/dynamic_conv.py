"""Convolutions whose kernels are generated per image and class (from text embeddings).

:func:`class_conditional_conv2d` applies, for every image ``b`` and class ``t``, its own
``(C, k, k)`` kernel to the image's feature map, giving one map per class: one grouped
convolution over the batch instead of a loop over images and classes (FGAseg's local
category supplementation and its text-to-pixel projector, CRIS-style dynamic heads).
:func:`normalize_kernels` holds the kernel normalisations those methods use.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

__all__ = ["KERNEL_NORMS", "class_conditional_conv2d", "normalize_kernels"]

# "taps": softmax over the k*k spatial taps of every (class, channel); "channels": softmax
# over the channels of every (class, tap); "none": the kernels as generated.
KERNEL_NORMS = ("taps", "channels", "none")


def class_conditional_conv2d(features: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """``out[b, t] = conv2d(features[b], weight[b, t], padding=k // 2) + bias[b, t]``.

    Args:
        features: ``(B, C, H, W)``.
        weight: ``(B, T, C, k, k)``, ``k`` odd (same padding, zeros at the borders).
        bias: ``(B, T)`` or None.

    Returns:
        ``(B, T, H, W)``. One convolution with ``groups=B`` on the batch stacked along
        channels: the same sums as a convolution per image and class.
    """
    batch, channels, height, width = features.shape
    if weight.dim() != 5 or weight.shape[0] != batch or weight.shape[2] != channels:
        raise ValueError(
            f"expected kernels (B={batch}, T, C={channels}, k, k), got {tuple(weight.shape)}"
        )
    num_classes, kernel = weight.shape[1], weight.shape[-1]
    if kernel % 2 != 1 or weight.shape[-2] != kernel:
        raise ValueError(f"kernels must be square with an odd size, got {tuple(weight.shape[-2:])}")
    out = F.conv2d(
        features.reshape(1, batch * channels, height, width),
        weight.reshape(batch * num_classes, channels, kernel, kernel),
        None if bias is None else bias.reshape(batch * num_classes),
        padding=kernel // 2,
        groups=batch,
    )
    return out.view(batch, num_classes, height, width)


def normalize_kernels(weight: Tensor, norm: str) -> Tensor:
    """``weight`` ``(..., C, k, k)`` normalised by ``norm`` (:data:`KERNEL_NORMS`)."""
    if norm == "none":
        return weight
    flat = weight.flatten(-2)  # (..., C, k*k)
    if norm == "taps":
        return flat.softmax(dim=-1).view_as(weight)
    if norm == "channels":
        return flat.softmax(dim=-2).view_as(weight)
    raise ValueError(f"kernel norm must be one of {KERNEL_NORMS}, got {norm!r}")
