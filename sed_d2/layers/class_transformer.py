"""Class-axis transformer layer (SED / CAT-Seg "class aggregation")."""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import ops
from .linear_attention import MultiHeadLinearAttention
from .norms import layer_norm_linear

__all__ = ["ClassTransformerLayer", "Mlp"]


def _pair(value: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(value, int):
        return (value, value)
    height, width = value
    return (int(height), int(width))


class Mlp(nn.Module):
    """``fc2(act(fc1(x)))``; ReLU by default (SED/CAT-Seg class aggregation)."""

    def __init__(self, dim: int, hidden_dim: int, act_layer: type[nn.Module] = nn.ReLU) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.act = act_layer()
        self.fc2 = nn.Linear(hidden_dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class ClassTransformerLayer(nn.Module):
    """Pre-norm transformer layer whose sequence axis is the **class** axis.

    Every spatial position of an (optionally average-pooled) map is a sequence of ``T``
    class tokens of width ``dim``:

    1. ``p = avg_pool(x, pooling_size)`` per class map (``(1, 1)`` skips it);
    2. ``p = p + attention(attention_norm(p), guidance)`` (linear attention over classes,
       no output projection);
    3. ``p = p + mlp(mlp_norm(p))`` (``dim -> mlp_ratio*dim -> dim``, ReLU);
    4. ``p`` is upsampled back to ``(H, W)`` bilinearly with ``align_corners=True`` and the
       layer returns ``x + p``.

    Step 4 adds the input once more on top of the residuals already inside ``p``; that is
    what the official SED and CAT-Seg code do, so with pooling ``(1, 1)`` the output is
    ``2x + attn + mlp`` and with ``(2, 2)`` it is ``x + up(pool(x) + attn + mlp)``.

    Args:
        dim: channels ``C`` of the class-batched map.
        num_heads: attention heads.
        pooling_size: pooling window in training mode.
        test_pooling_size: pooling window in eval mode (``None`` = same as training). The
            official SED/CAT-Seg configs train with ``(2, 2)`` and their ``eval.sh``
            evaluates with ``(1, 1)``.
        guidance_dim: optional per-class guidance channels concatenated into q/k (CAT-Seg
            text guidance); 0 = none (SED).
        mlp_ratio: MLP expansion.
        pad_len: CAT-Seg's class padding (0 = none, SED): with ``T < pad_len`` classes,
            the attention also attends to ``pad_len - T`` copies of a learnable token
            ``padding_tokens`` (1, 1, dim) with guidance ``padding_guidance``
            (1, 1, guidance_dim), as if the class axis were padded to ``pad_len`` and cropped
            back after the layer (the official ``ClassTransformerLayer``). The copies enter
            only the attention's key/value sums
            (:meth:`MultiHeadLinearAttention.constant_token_sums`): their own outputs are
            cropped officially, so they are never computed. ``T >= pad_len``: no padding.

    ``forward(x (B, T, C, H, W), guidance (B, T, guidance_dim) | None) -> (B, T, C, H, W)``.
    Parameters (official -> ours): ``norm1`` -> ``attention_norm``, ``attention.{q,k,v}``
    -> ``attention.{query,key,value}``, ``norm2`` -> ``mlp_norm``, ``MLP.0`` -> ``mlp.fc1``,
    ``MLP.2`` -> ``mlp.fc2``. The norms are ``nn.LayerNorm`` with eps 1e-5.

    Inference fast path: in eval mode with pooling ``(1, 1)``, no guidance, no autograd
    (gradients off or nothing requires grad), channels-last class maps and the fast ops
    available (:func:`sed_d2.ops.available`), the layer runs as the folded q/k/v
    ``F.linear``, two Triton passes for attention + residual
    (:mod:`sed_d2.ops.class_linear_attention`) and one fused LayerNorm-MLP pass that also adds
    both residuals (:mod:`sed_d2.ops.layer_norm_mlp`; ReLU or GELU MLPs). Same function and
    output layout as the general path, up to float rounding; training always takes the
    general path.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        *,
        pooling_size: int | Sequence[int] = (2, 2),
        test_pooling_size: int | Sequence[int] | None = None,
        guidance_dim: int = 0,
        mlp_ratio: int = 4,
        pad_len: int = 0,
    ) -> None:
        super().__init__()
        self.pooling_size = _pair(pooling_size)
        self.test_pooling_size = self.pooling_size if test_pooling_size is None else _pair(test_pooling_size)
        self.attention_norm = nn.LayerNorm(dim)
        self.attention = MultiHeadLinearAttention(dim, num_heads, guidance_dim=guidance_dim)
        self.mlp_norm = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, mlp_ratio * dim)
        self.pad_len = int(pad_len)
        self.padding_tokens = nn.Parameter(torch.zeros(1, 1, dim)) if pad_len > 0 else None
        self.padding_guidance = nn.Parameter(torch.zeros(1, 1, guidance_dim)) if pad_len > 0 and guidance_dim > 0 else None

    @property
    def active_pooling_size(self) -> tuple[int, int]:
        """The pooling window of the current mode (training or eval)."""
        return self.pooling_size if self.training else self.test_pooling_size

    def forward(self, x: Tensor, guidance: Tensor | None = None) -> Tensor:
        if guidance is None and self._fused_inference_applies(x):
            return self._fused_inference_forward(x)
        batch, num_classes, channels, height, width = x.shape
        pooling = self.active_pooling_size
        pooled = x.flatten(0, 1)
        if pooling != (1, 1):
            pooled = F.avg_pool2d(pooled, pooling)
        pooled_h, pooled_w = pooled.shape[-2:]
        # (B*T, C, h, w) -> (B, T, h*w, C): the class axis is the sequence (dim 1) and every
        # position attends on its own. For channels-last maps this is a view, no copy.
        tokens = pooled.permute(0, 2, 3, 1).reshape(batch, num_classes, pooled_h * pooled_w, channels)
        if guidance is not None:
            guidance = guidance[:, :, None].expand(batch, num_classes, pooled_h * pooled_w, guidance.shape[-1])
        padding = None
        if self.padding_tokens is not None and num_classes < self.pad_len:
            padding = self.attention.constant_token_sums(
                self.padding_tokens, self.padding_guidance, self.pad_len - num_classes, norm=self.attention_norm
            )
        # pre-norms folded into the projections that follow them (exact algebra)
        tokens = tokens + self.attention(tokens, guidance, norm=self.attention_norm, extra_sums=padding)
        hidden = self.mlp.act(layer_norm_linear(tokens, self.mlp_norm, self.mlp.fc1))
        tokens = tokens + self.mlp.fc2(hidden)
        pooled = tokens.view(batch * num_classes, pooled_h, pooled_w, channels).permute(0, 3, 1, 2)
        if (pooled_h, pooled_w) != (height, width):
            pooled = F.interpolate(pooled, size=(height, width), mode="bilinear", align_corners=True)
        return x + pooled.unflatten(0, (batch, num_classes))

    def _mlp_activation(self) -> tuple[str, str] | None:
        """``(activation, gelu_approximate)`` of the MLP for
        :func:`sed_d2.ops.fused_layer_norm_mlp`, or ``None`` for an activation it does not
        implement."""
        act = self.mlp.act
        if type(act) is nn.ReLU:
            return ("relu", "none")
        if type(act) is nn.GELU and act.approximate in ("none", "tanh"):
            return ("gelu", act.approximate)
        return None

    def _fused_inference_applies(self, x: Tensor) -> bool:
        """Whether :meth:`forward` (without guidance) takes the fused inference path.
        The kernels' own predicates are checked inside the fused functions, which fall
        back to the same math in PyTorch (e.g. a head dim the attention kernels do not
        tile); this decides only what the path needs around them."""
        return bool(
            not self.training
            and self.active_pooling_size == (1, 1)
            and self.attention.guidance_dim == 0
            and self.padding_tokens is None
            and x.dim() == 5
            and ops.available(x)
            # channels-last class maps: the (B, T, H*W, C) tokens are a view and the
            # (B, T, H*W, C) result is already the channels-last output
            and x.permute(0, 1, 3, 4, 2).is_contiguous()
            and self._mlp_activation() is not None
            and not (torch.is_grad_enabled() and (x.requires_grad or any(p.requires_grad for p in self.parameters())))
        )

    def _fused_inference_forward(self, x: Tensor) -> Tensor:
        """``forward(x)`` at pooling ``(1, 1)`` without autograd: ``t1 = tokens + attn``,
        ``out = t1 + tokens + mlp(mlp_norm(t1))`` (``+ tokens``: the layer's extra ``+ x``)."""
        batch, num_classes, channels, height, width = x.shape
        tokens = x.permute(0, 1, 3, 4, 2).view(batch, num_classes, height * width, channels)
        attention = self.attention
        qkv = attention.qkv_projection(tokens, norm=self.attention_norm)  # (B, T, P, 3C), one cuBLAS linear
        t1 = ops.fused_class_linear_attention(qkv, tokens, attention.num_heads, attention.attention.eps)
        activation, approximate = self._mlp_activation()
        out = ops.fused_layer_norm_mlp(
            t1, t1, self.mlp_norm, self.mlp.fc1, self.mlp.fc2,
            gelu_approximate=approximate, activation=activation, extra_residual=tokens.to(t1.dtype),
        )  # fmt: skip
        return out.view(batch, num_classes, height, width, channels).permute(0, 1, 4, 2, 3)

    def extra_repr(self) -> str:
        return f"pooling_size={self.pooling_size}, test_pooling_size={self.test_pooling_size}, pad_len={self.pad_len}"
