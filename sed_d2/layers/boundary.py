"""Boundary prediction from multi-scale features and a decoder stage gated by it (CLIP-HBD).

* :class:`BoundaryHead`: 1x1 projections of four feature levels to one width, top-down fusion
  from the coarsest, two x2 transposed convolutions and a 1x1 convolution: boundary logits at
  4x the finest level's resolution.
* :class:`BoundaryGatedStage`: one stage of a class-batched decoder: depthwise separable
  convolution, MLP, a spatial attention map from the boundary map gating the features in a
  residual, x2 upsampling and fusion with a per-image encoder feature.
* :class:`ConvGNReLU`: ``ReLU(GroupNorm(conv3x3(x)))`` whose input may hold per-image channels
  shared by groups of samples (the class maps of one image), never repeated in memory.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import ops
from .norms import group_norm
from .upsampling import shared_input_conv3x3

__all__ = [
    "BOUNDARY_DOWNSAMPLES",
    "BOUNDARY_GATE_MODES",
    "BoundaryGatedStage",
    "BoundaryHead",
    "ConvGNReLU",
    "downsample_boundary",
    "norm_groups",
]

# How the full-resolution boundary map is brought to a decoder stage's resolution.
BOUNDARY_DOWNSAMPLES = ("area", "bilinear", "max")
# Which tensor the boundary attention A gates (X: stage input, M: its MLP branch).
BOUNDARY_GATE_MODES = ("input", "branch", "input_residual")


def norm_groups(channels: int, groups: int = 8) -> int:
    """GroupNorm groups for ``channels``: ``groups`` where it divides them, else the largest
    common divisor (so test-sized widths work)."""
    return math.gcd(channels, groups)


class ConvGNReLU(nn.Module):
    """``ReLU(GroupNorm(conv3x3(x)))``, the convolution without bias.

    ``forward(x (N, C_own, H, W), shared (B, S, H, W) | None, shared_at=0)``: ``shared`` holds
    input channels common to groups of ``N / B`` consecutive samples, at channels
    ``shared_at ..`` of the convolution's input (:func:`~sed_d2.layers.upsampling.
    shared_input_conv3x3`); its share of the convolution runs once per image.
    """

    def __init__(self, in_channels: int, out_channels: int, *, num_groups: int | None = None) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False)
        self.norm = nn.GroupNorm(num_groups or norm_groups(out_channels), out_channels)

    def forward(self, x: Tensor, shared: Tensor | None = None, shared_at: int = 0) -> Tensor:
        y, addend = shared_input_conv3x3(self.conv, x, shared, shared_at)
        return group_norm(y, self.norm, relu=True, addend=addend)


class _DeconvNormReLU(nn.Module):
    """x2 transposed convolution (kernel ``k``, stride 2, padding ``(k - 2) / 2``), then
    GroupNorm (or none) and ReLU."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int, norm: bool) -> None:
        super().__init__()
        if kernel < 2 or kernel % 2:
            raise ValueError(f"the x2 transposed convolution needs an even kernel >= 2, got {kernel}")
        self.deconv = nn.ConvTranspose2d(in_channels, out_channels, kernel, stride=2, padding=(kernel - 2) // 2, bias=not norm)
        self.norm = nn.GroupNorm(norm_groups(out_channels), out_channels) if norm else None

    def forward(self, x: Tensor) -> Tensor:
        x = self.deconv(x)
        return F.relu(x) if self.norm is None else group_norm(x, self.norm, relu=True)


class BoundaryHead(nn.Module):
    """Boundary logits from four feature levels, fine to coarse (CLIP-HBD's boundary head).

    ``P_4 = proj_4(E_4)``; ``P_l = ConvGNReLU([Up(P_{l+1}), proj_l(E_l)])`` for ``l = 3, 2, 1``
    (bilinear to ``E_l``'s size); two x2 transposed convolutions; a 1x1 convolution to one
    channel. ``forward([E_1, .., E_4]) -> (B, 1, 4 H_1, 4 W_1)`` logits.

    Args:
        in_channels: channels of ``E_1 .. E_4``.
        dim: the common width ``C_b`` (the transposed convolutions give ``C_b/2``, ``C_b/4``).
        deconv_kernel: kernel of the transposed convolutions (4: overlapping, against
            checkerboard artifacts; 2: no overlap).
        norm: ``"GN"`` (GroupNorm + ReLU after each 3x3 and transposed convolution) or
            ``"none"`` (ReLU only; the convolutions then have biases).
    """

    def __init__(self, in_channels: Sequence[int], dim: int = 64, *, deconv_kernel: int = 4, norm: str = "GN") -> None:
        super().__init__()
        if norm not in ("GN", "none"):
            raise ValueError(f"norm must be 'GN' or 'none', got {norm!r}")
        if dim % 4:
            raise ValueError(f"dim must be a multiple of 4 (two halvings), got {dim}")
        self.projections = nn.ModuleList(nn.Conv2d(channels, dim, 1) for channels in in_channels)
        if norm == "GN":
            self.fusions = nn.ModuleList(ConvGNReLU(2 * dim, dim) for _ in in_channels[:-1])
        else:
            self.fusions = nn.ModuleList(
                nn.Sequential(nn.Conv2d(2 * dim, dim, 3, padding=1), nn.ReLU()) for _ in in_channels[:-1]
            )
        self.upsample = nn.Sequential(
            _DeconvNormReLU(dim, dim // 2, deconv_kernel, norm == "GN"),
            _DeconvNormReLU(dim // 2, dim // 4, deconv_kernel, norm == "GN"),
        )
        self.classifier = nn.Conv2d(dim // 4, 1, 1)

    def forward(self, features: Sequence[Tensor]) -> Tensor:
        if len(features) != len(self.projections):
            raise ValueError(f"expected {len(self.projections)} feature levels, got {len(features)}")
        x = self.projections[-1](features[-1])
        for level in range(len(features) - 2, -1, -1):
            lateral = self.projections[level](features[level])
            x = F.interpolate(x, size=lateral.shape[-2:], mode="bilinear", align_corners=False).to(lateral.dtype)
            x = self.fusions[level](torch.cat([x, lateral], dim=1))
        return self.classifier(self.upsample(x))


def downsample_boundary(boundary: Tensor, size: Sequence[int], mode: str = "area") -> Tensor:
    """``(B, 1, H, W)`` boundary probabilities at ``size``: ``"area"`` (average of each
    cell: a thin edge survives a x16 reduction as a soft value), ``"bilinear"`` (samples a
    few pixels per cell) or ``"max"`` (any edge in the cell)."""
    size = tuple(int(s) for s in size)
    if tuple(boundary.shape[-2:]) == size:
        return boundary
    if mode == "area":
        return F.adaptive_avg_pool2d(boundary, size)
    if mode == "max":
        return F.adaptive_max_pool2d(boundary, size)
    if mode == "bilinear":
        return F.interpolate(boundary, size=size, mode="bilinear", align_corners=False)
    raise ValueError(f"mode must be one of {BOUNDARY_DOWNSAMPLES}, got {mode!r}")


class BoundaryGatedStage(nn.Module):
    """One boundary-constrained decoder stage on class-batched maps ``(B, T, C, h, w)``.

    1. ``D = pw(dw_k(X))``: depthwise ``k x k`` then pointwise convolution (per class map);
    2. ``M = fc2(GELU(fc1(LN(D))))`` channels-last (``norm="none"``: no LayerNorm);
    3. ``A = sigmoid(Conv1x1(Down(boundary)))``: ``(B, 1 | C, h, w)``, shared by the classes;
    4. gate: ``"input"`` ``G = M + A X``; ``"branch"`` ``G = X + A M``; ``"input_residual"``
       ``G = M + (1 + A) X``;
    5. ``S = ConvTranspose2x2(skip)``: the per-image encoder feature at the stage's input
       resolution, upsampled x2 and aligned to ``skip_dim`` channels (no activation);
    6. ``X' = ConvGNReLU([Up_x2(G), S])`` to ``out_channels`` (bilinear ``Up``), ``S`` entering
       as a shared input (never repeated over classes).

    Args:
        channels, out_channels: ``C`` in, ``C'`` out.
        skip_channels, skip_dim: channels of the encoder feature and of its aligned form.
        kernel: depthwise kernel (odd).
        mlp_ratio: hidden width of the MLP over ``C``.
        norm: ``"layernorm"`` or ``"none"`` before the MLP.
        gate_mode: one of :data:`BOUNDARY_GATE_MODES`.
        attention_per_channel: ``A`` with ``C`` channels instead of one.
        downsample: one of :data:`BOUNDARY_DOWNSAMPLES`.

    ``forward(x (B, T, C, h, w), boundary (B, 1, H, W) probabilities, skip (B, skip_channels,
    h, w)) -> (B, T, C', 2h, 2w)`` channels-last class maps.
    """

    def __init__(
        self,
        channels: int,
        out_channels: int,
        *,
        skip_channels: int,
        skip_dim: int,
        kernel: int = 7,
        mlp_ratio: int = 4,
        norm: str = "layernorm",
        gate_mode: str = "input",
        attention_per_channel: bool = False,
        downsample: str = "area",
    ) -> None:
        super().__init__()
        if kernel % 2 != 1:
            raise ValueError(f"kernel must be odd, got {kernel}")
        if norm not in ("layernorm", "none"):
            raise ValueError(f"norm must be 'layernorm' or 'none', got {norm!r}")
        if gate_mode not in BOUNDARY_GATE_MODES:
            raise ValueError(f"gate_mode must be one of {BOUNDARY_GATE_MODES}, got {gate_mode!r}")
        if downsample not in BOUNDARY_DOWNSAMPLES:
            raise ValueError(f"downsample must be one of {BOUNDARY_DOWNSAMPLES}, got {downsample!r}")
        self.gate_mode = gate_mode
        self.downsample = downsample
        self.depthwise = nn.Conv2d(channels, channels, kernel, padding=kernel // 2, groups=channels)
        self.pointwise = nn.Linear(channels, channels)
        self.norm = nn.LayerNorm(channels, eps=1e-6) if norm == "layernorm" else None
        self.fc1 = nn.Linear(channels, mlp_ratio * channels)
        self.fc2 = nn.Linear(mlp_ratio * channels, channels)
        self.attention = nn.Conv2d(1, channels if attention_per_channel else 1, 1)
        self.skip_align = nn.ConvTranspose2d(skip_channels, skip_dim, kernel_size=2, stride=2)
        self.fusion = ConvGNReLU(channels + skip_dim, out_channels)

    def boundary_attention(self, boundary: Tensor, size: Sequence[int]) -> Tensor:
        """``A``: ``(B, 1 | C, h, w)`` from ``(B, 1, H, W)`` boundary probabilities."""
        return torch.sigmoid(self.attention(downsample_boundary(boundary, size, self.downsample)))

    def aligned_skip(self, skip: Tensor) -> Tensor:
        """``S``: ``(B, skip_dim, 2h, 2w)``."""
        align = self.skip_align
        return ops.conv_transpose_2x2(skip, align.weight, align.bias)

    def forward(self, x: Tensor, boundary: Tensor, skip: Tensor) -> Tensor:
        return self.run(x, self.boundary_attention(boundary, x.shape[-2:]), self.aligned_skip(skip))

    def run(self, x: Tensor, attention: Tensor, aligned_skip: Tensor) -> Tensor:
        """:meth:`forward` from ``A`` and ``S`` (computed once per image, then reused for
        every chunk of classes)."""
        batch, num_classes, channels, height, width = x.shape
        maps = x.flatten(0, 1).contiguous(memory_format=torch.channels_last)
        rows = maps.permute(0, 2, 3, 1)  # (N, h, w, C), free for channels-last maps
        depthwise = ops.depthwise_conv2d(maps, self.depthwise.weight, self.depthwise.bias)
        mixed = F.linear(depthwise.permute(0, 2, 3, 1), self.pointwise.weight, self.pointwise.bias).contiguous()
        gate = attention.to(rows.dtype).permute(0, 2, 3, 1).unsqueeze(1)  # (B, 1, h, w, 1 | C)
        inputs = rows.unflatten(0, (batch, num_classes))
        if self.gate_mode == "branch":
            gated = inputs + gate * self._mlp(mixed, torch.zeros_like(mixed)).unflatten(0, (batch, num_classes))
        else:
            scale = gate if self.gate_mode == "input" else 1 + gate
            gated = self._mlp(mixed, (scale * inputs).flatten(0, 1).contiguous()).unflatten(0, (batch, num_classes))
        gated = gated.flatten(0, 1).permute(0, 3, 1, 2)  # (N, C, h, w) channels-last
        if torch.is_grad_enabled():
            # matrix products: PyTorch's bilinear backward scatters with atomics (slow on GPUs)
            up = ops.bilinear_resize(gated, (2 * height, 2 * width))
        else:
            up = F.interpolate(gated, scale_factor=2, mode="bilinear", align_corners=False)
        out = self.fusion(up.contiguous(memory_format=torch.channels_last), aligned_skip, shared_at=channels)
        return out.unflatten(0, (batch, num_classes))

    def _mlp(self, rows: Tensor, residual: Tensor) -> Tensor:
        """``residual + fc2(GELU(fc1(LN(rows))))`` on ``(..., C)`` rows."""
        if self.norm is not None:
            return ops.fused_layer_norm_mlp(rows, residual.to(rows.dtype), self.norm, self.fc1, self.fc2)
        return residual + self.fc2(F.gelu(self.fc1(rows)))
