"""ConvNeXt (V1) block, as used for spatial aggregation in SED's decoder."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .kernels import depthwise_conv2d
from .norms import layer_norm_linear

__all__ = ["ConvNeXtBlock"]


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
        # For a channels-last x every permute below is free and the residual add runs on
        # matching layouts. The LayerNorm affine is folded into fc1 and the layer scale
        # into fc2 (exact algebra; the parameters keep their names and values).
        conv = self.depthwise_conv  # its parameters; channels-last CUDA maps take a Triton kernel
        y = depthwise_conv2d(x, conv.weight, conv.bias).permute(0, 2, 3, 1)  # (N, H, W, C)
        y = F.gelu(layer_norm_linear(y, self.norm, self.fc1))
        y = F.linear(y, self.fc2.weight * self.layer_scale[:, None], self.fc2.bias * self.layer_scale)
        return x + y.permute(0, 3, 1, 2)
