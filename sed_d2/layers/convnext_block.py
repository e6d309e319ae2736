"""ConvNeXt (V1) block, as used for spatial aggregation in SED's decoder."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .. import ops

__all__ = ["ConvNeXtBlock", "convnext_block_forward"]


class ConvNeXtBlock(nn.Module):
    """ConvNeXt V1 block on ``(N, C, H, W)``.

    ``x + layer_scale * fc2(gelu(fc1(norm(depthwise_conv(x)))))`` with the norm and the
    two linear layers applied channels-last. One residual around the whole block, no
    drop-path. Any memory layout works; a channels-last input (what the SED decoder
    passes) needs no layout copy and gives a channels-last output.

    Args:
        dim: channels ``C``.
        kernel_size: depthwise kernel (odd; padding ``k // 2``). SED uses 9.
        layer_scale_init: initial value of the per-channel layer scale. The official
            SED decoder builds its blocks with 1.0 (not ConvNeXt's 1e-6).
        mlp_ratio: hidden width of the point-wise MLP as a multiple of ``dim``.
        eps: LayerNorm epsilon (1e-6, the ConvNeXt value).

    Parameters (official SED name -> ours): ``dwconv`` -> ``depthwise_conv``,
    ``norm`` -> ``norm``, ``pwconv1`` -> ``fc1``, ``pwconv2`` -> ``fc2``,
    ``gamma`` -> ``layer_scale``. Shapes are identical. Note: the official norm is a custom
    module (not an ``nn.LayerNorm``) so it received weight decay there; ours is an
    ``nn.LayerNorm`` (numerically the same operation).
    """

    def __init__(
        self,
        dim: int,
        kernel_size: int = 7,
        *,
        layer_scale_init: float = 1.0,
        mlp_ratio: int = 4,
        eps: float = 1e-6,
    ) -> None:
        super().__init__()
        if kernel_size % 2 != 1:
            raise ValueError(f"kernel_size must be odd, got {kernel_size}")
        self.depthwise_conv = nn.Conv2d(dim, dim, kernel_size, padding=kernel_size // 2, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=eps)
        self.fc1 = nn.Linear(dim, mlp_ratio * dim)
        self.fc2 = nn.Linear(mlp_ratio * dim, dim)
        self.layer_scale = nn.Parameter(torch.full((dim,), float(layer_scale_init)))

    def forward(self, x: Tensor) -> Tensor:
        return convnext_block_forward(x, self.depthwise_conv, self.norm, self.fc1, self.fc2, self.layer_scale)


def convnext_block_forward(
    x: Tensor,
    depthwise_conv: nn.Conv2d,
    norm: nn.LayerNorm,
    fc1: nn.Linear,
    fc2: nn.Linear,
    layer_scale: Tensor | None,
    gelu_approximate: str = "none",
) -> Tensor:
    """``x + layer_scale * fc2(gelu(fc1(norm(depthwise_conv(x)))))`` for ``x`` ``(N, C, H, W)``.

    The ConvNeXt V1 block computation, shared by :class:`ConvNeXtBlock` and the timm
    ConvNeXt trunk (:mod:`sed_d2.clip.dense.convnext`). Only the parameters of the modules are
    used: ``depthwise_conv`` must be a "same" stride-1 depthwise convolution (odd ``k``,
    padding ``k // 2``), ``norm`` a LayerNorm over ``C``. ``layer_scale`` ``None`` means
    no layer scale; ``gelu_approximate`` is ``F.gelu``'s ``approximate`` (timm's
    ``gelu_tanh`` blocks use ``"tanh"``).

    Any memory layout works; a channels-last ``x`` needs no layout copy, gives a
    channels-last output and takes the Triton depthwise kernel on CUDA. Under bf16
    autocast the result stays bf16 (the LayerNorm does not promote to float32).
    """
    # For a channels-last x every permute below is free and the rows handed to the MLP
    # are contiguous, which lets inference take the fused Triton kernel (LayerNorm, fc1,
    # GELU, fc2, layer scale and residual in one pass, :mod:`sed_d2.ops.layer_norm_mlp`);
    # with autograd or other layouts the same function runs as plain PyTorch ops.
    y = ops.depthwise_conv2d(x, depthwise_conv.weight, depthwise_conv.bias).permute(0, 2, 3, 1)  # (N, H, W, C)
    out = ops.fused_layer_norm_mlp(
        y, x.permute(0, 2, 3, 1), norm, fc1, fc2, layer_scale=layer_scale, gelu_approximate=gelu_approximate
    )
    return out.permute(0, 3, 1, 2)
