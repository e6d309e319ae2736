"""SynSeg: feature synergy for multi-category contrastive learning (Zhang et al., ICME 2026,
arXiv 2508.06115). Pure PyTorch: tensors in, logits / losses out.

No official code exists; the reconstruction (``reference/synseg_spec.md`` §1) is:

1. a frozen CLIP ViT (ViT-B/16, OpenAI weights): the token activations (class token
   included) after the blocks ``extract_layers`` (CLIPSeg: 3, 7, 9), computed without
   gradients (:func:`vit_intermediate_tokens`);
2. :class:`SynSegDecoder` (CLIPSeg rd64), one pass per (image, category) pair: each
   activation reduced to ``reduce_dim`` by a Linear, deepest first; the deepest one is
   modulated by FiLM of the category's text embedding ("prior fusion"); a post-LN
   transformer layer after each addition; the patch tokens through
   ``ConvTranspose2d(k = s = patch)`` give one activation logit map per pair;
3. :class:`FeatureSynergy` (training only): the post-decoder token features projected to
   the CLIP embedding, pooled with the sigmoid map (foreground) and its complement
   (background), CCAM-style; the MCCL losses (:func:`sed_d2.losses.mccl_losses`) act on
   those vectors and the text anchors.

The trans-conv has kernel = stride = patch, so a pixel-level fusion of the map with the
nearest-upsampled token features equals the token-level fusion weighted by each patch's
mean activation: :class:`FeatureSynergy` pools per token, exactly.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..clip import resized_positional_embedding
from ..layers import FiLM
from ..losses import mccl_losses
from .parameter_groups import ParameterGroupTable, assign_parameter_groups

__all__ = ["FSS_FEATURES", "FSS_NORMS", "FeatureSynergy", "SynSegDecoder", "SynSegModel", "vit_intermediate_tokens"]

# How the synergy vectors are normalised: "hw" (CCAM: by the number of tokens) or "mass" (by
# the map's own sum, a weighted mean).
FSS_NORMS = ("hw", "mass")
# Which token features the synergy vectors pool: "decoder" (the paper: the post-decoder,
# category-conditioned features) or "image" (the frozen ViT's deepest extracted tokens, the
# same for every category of an image).
FSS_FEATURES = ("decoder", "image")


def vit_intermediate_tokens(visual: nn.Module, images: Tensor, indices: Sequence[int]) -> list[Tensor]:
    """Residual-stream tokens ``(B, 1 + h*w, W)`` (class token first) after each 0-based block
    of ``indices`` of an open_clip ``VisionTransformer``, in that order; the blocks after the
    last index do not run. Images of another size than the tower's own get its positional
    embedding resized (:func:`sed_d2.clip.resized_positional_embedding`)."""
    blocks = visual.transformer.resblocks
    wanted = sorted({int(i) for i in indices})
    if not wanted or wanted[0] < 0 or wanted[-1] >= len(blocks):
        raise ValueError(f"extract layers {tuple(indices)} must be blocks of the {len(blocks)}-block ViT")
    patches = visual.conv1(images)  # (B, W, h, w)
    batch, width, grid_h, grid_w = patches.shape
    x = patches.flatten(2).transpose(1, 2)
    class_token = visual.class_embedding.to(x.dtype).view(1, 1, width).expand(batch, -1, -1)
    x = torch.cat([class_token, x], dim=1) + resized_positional_embedding(visual, (grid_h, grid_w)).to(x.dtype)
    x = visual.ln_pre(x)
    taps: dict[int, Tensor] = {}
    for index, block in enumerate(blocks[: wanted[-1] + 1]):
        x = block(x)
        if index in wanted:
            taps[index] = x
    return [taps[int(i)] for i in indices]


def _sum_over_processes(x: Tensor) -> Tensor:
    x = x.clone()
    torch.distributed.all_reduce(x)
    return x


def _process_sum():
    """The sum over data-parallel processes when there are several (MCCL normalises by the
    global count of images with a term, so DDP equals one process on the whole batch)."""
    distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
    return _sum_over_processes if distributed and torch.distributed.get_world_size() > 1 else None


class SynSegDecoder(nn.Module):
    """CLIPSeg's light decoder with FiLM text conditioning.

    Args:
        vision_width: width ``W`` of the ViT activations.
        text_dim: ``C``, the text embedding size (FiLM condition).
        num_layers: activations read (one reduce Linear and one transformer layer each).
        reduce_dim: decoder width (CLIPSeg rd64: 64).
        num_heads, ff_dim, dropout: of every ``nn.TransformerEncoderLayer`` (post-LN, ReLU).
        film_hidden_dim: 0 = two Linear (CLIPSeg), > 0 = an MLP (:class:`~sed_d2.layers.FiLM`).
        patch_size: ``(ph, pw)`` of the ViT: the trans-conv's kernel and stride.

    ``forward(activations, text, pair_image) -> (features (M, h*w, D), logits (M, 1, H, W))``
    with ``activations`` the per-image ``(B, 1 + h*w, W)`` tensors, shallowest first (as
    extracted), ``text`` ``(M, C)`` and ``pair_image`` ``(M,)`` the image of each pair.
    """

    def __init__(
        self,
        *,
        vision_width: int,
        text_dim: int,
        num_layers: int = 3,
        reduce_dim: int = 64,
        num_heads: int = 4,
        ff_dim: int = 2048,
        dropout: float = 0.1,
        film_hidden_dim: int = 0,
        patch_size: Sequence[int] = (16, 16),
    ) -> None:
        super().__init__()
        # index 0 reads the deepest activation (CLIPSeg's reversed order)
        self.reduces = nn.ModuleList(nn.Linear(vision_width, reduce_dim) for _ in range(num_layers))
        self.film = FiLM(text_dim, reduce_dim, film_hidden_dim)
        self.blocks = nn.ModuleList(
            nn.TransformerEncoderLayer(reduce_dim, num_heads, ff_dim, dropout, batch_first=True)
            for _ in range(num_layers)
        )
        self.head = nn.ConvTranspose2d(reduce_dim, 1, kernel_size=tuple(patch_size), stride=tuple(patch_size))

    def reduce(self, activations: Sequence[Tensor]) -> list[Tensor]:
        """Per image, deepest first: ``(B, 1 + h*w, reduce_dim)`` each (a Linear per token,
        so reducing before gathering the pairs is exact and B/M times cheaper)."""
        return [reduce(x) for reduce, x in zip(self.reduces, reversed(list(activations)))]

    def forward(self, activations: Sequence[Tensor], text: Tensor, pair_image: Tensor, grid: Sequence[int]):
        reduced = self.reduce(activations)
        a = None
        for block, x in zip(self.blocks, reduced):
            x = x.index_select(0, pair_image)
            a = self.film(x, text) if a is None else x + a
            a = block(a)
        features = a[:, 1:]  # the class token is dropped (CLIPSeg)
        grid_h, grid_w = grid
        maps = features.transpose(1, 2).reshape(features.shape[0], features.shape[2], grid_h, grid_w)
        return features, self.head(maps)


class FeatureSynergy(nn.Module):
    """Foreground and background synergy vectors of each pair (CCAM-style pooling).

    ``P = proj(features)`` ``(M, L, C)``; ``a`` = each token's mean activation over its patch
    of the sigmoid map; ``fg = a @ P / L`` and ``bg = (1 - a) @ P / L`` (``norm="hw"``), or
    divided by ``sum(a)`` / ``sum(1 - a)`` (``"mass"``).

    Args:
        feat_dim: decoder width ``D``; embed_dim: ``C``, the text anchors' size.
        hidden_dim: 0 = ``Linear(D, C)``; > 0 = ``Linear``-ReLU-``Linear``.
        patch_size: the map's pixels per token.
        norm: see :data:`FSS_NORMS`.
    """

    def __init__(
        self, feat_dim: int, embed_dim: int, *, hidden_dim: int = 0, patch_size: Sequence[int] = (16, 16), norm: str = "hw"
    ) -> None:
        super().__init__()
        if norm not in FSS_NORMS:
            raise ValueError(f"FSS norm must be one of {FSS_NORMS}, got {norm!r}")
        if hidden_dim > 0:
            self.proj = nn.Sequential(nn.Linear(feat_dim, hidden_dim), nn.ReLU(inplace=True), nn.Linear(hidden_dim, embed_dim))
        else:
            self.proj = nn.Linear(feat_dim, embed_dim)
        self.patch_size = tuple(int(p) for p in patch_size)
        self.norm = norm

    def forward(self, features: Tensor, maps: Tensor) -> tuple[Tensor, Tensor]:
        """``features`` ``(M, L, D)``, ``maps`` ``(M, 1, H, W)`` in [0, 1] -> ``(fg, bg)`` ``(M, C)``."""
        return self.pool(self.proj(features), maps)

    def pool(self, projected: Tensor, maps: Tensor) -> tuple[Tensor, Tensor]:
        """:meth:`forward` after the projector: ``projected`` ``(M, L, C)``."""
        token_activation = F.avg_pool2d(maps, self.patch_size).flatten(1).to(projected.dtype)  # (M, L)
        stacked = torch.stack([token_activation, 1.0 - token_activation], dim=1)  # (M, 2, L)
        pooled = stacked @ projected  # (M, 2, C)
        if self.norm == "hw":
            pooled = pooled / token_activation.shape[1]
        else:
            pooled = pooled / stacked.sum(-1, keepdim=True).clamp(min=1e-6)
        return pooled[:, 0], pooled[:, 1]


class SynSegModel(nn.Module):
    """Frozen CLIP ViT + :class:`SynSegDecoder` + :class:`FeatureSynergy`.

    Args:
        clip_model: an open_clip ``CLIP`` with a ViT image tower; frozen, registered as
            ``clip_model``.
        decoder, synergy: registered as ``decoder`` and ``synergy``.
        extract_layers: 0-based ViT blocks read by the decoder, shallowest first.
        fss_features: see :data:`FSS_FEATURES` (the synergy's projector takes ``D`` =
            the decoder width for "decoder", the ViT width for "image").
        loss_weights, sep_threshold, sep_normalize, sim_eps, sim_map: of
            :func:`sed_d2.losses.mccl_losses`.
        test_chunk_classes: inference decodes this many classes at a time (0 = all).
    """

    PARAMETER_GROUPS: dict[str, ParameterGroupTable] = {
        "frozen": (
            (r"clip_model\.", "frozen"),
            (r"(decoder|synergy)\.", "decoder"),
        ),
    }

    def __init__(
        self,
        clip_model: nn.Module,
        decoder: SynSegDecoder,
        synergy: FeatureSynergy,
        *,
        extract_layers: Sequence[int] = (3, 7, 9),
        fss_features: str = "decoder",
        loss_weights: Sequence[float] = (1.0, 1.0, 1.0, 1.0),
        sep_threshold: float = 0.1,
        sep_normalize: str = "all",
        sim_eps: float = 5e-4,
        sim_map: str = "affine",
        test_chunk_classes: int = 0,
    ) -> None:
        super().__init__()
        if len(extract_layers) != len(decoder.blocks):
            raise ValueError(f"{len(decoder.blocks)} decoder layers need as many extract layers, got {tuple(extract_layers)}")
        num_blocks = len(clip_model.visual.transformer.resblocks)
        if min(extract_layers) < 0 or max(extract_layers) >= num_blocks:
            raise ValueError(f"extract layers {tuple(extract_layers)} must be blocks of the {num_blocks}-block ViT")
        if fss_features not in FSS_FEATURES:
            raise ValueError(f"FSS features must be one of {FSS_FEATURES}, got {fss_features!r}")
        self.fss_features = fss_features
        self.clip_model = clip_model
        self.decoder = decoder
        self.synergy = synergy
        self.extract_layers = tuple(int(i) for i in extract_layers)
        self.loss_options = {
            "weights": tuple(loss_weights),
            "sep_threshold": sep_threshold,
            "sep_normalize": sep_normalize,
            "eps": sim_eps,
            "sim_map": sim_map,
        }
        self.test_chunk_classes = int(test_chunk_classes)
        self.parameter_groups = assign_parameter_groups(self, self.PARAMETER_GROUPS["frozen"])

    def image_features(self, images: Tensor) -> dict[str, Tensor]:
        """``tokens_{i}``: ``(B, 1 + h*w, W)`` activations of the frozen ViT (no gradient),
        one per extract layer, shallowest first."""
        with torch.no_grad():
            tokens = vit_intermediate_tokens(self.clip_model.visual, images, self.extract_layers)
        return {f"tokens_{i}": t for i, t in enumerate(tokens)}

    def grid_of(self, image_size: Sequence[int]) -> tuple[int, int]:
        """The patch grid ``(h, w)`` of images of ``image_size`` ``(H, W)``."""
        ph, pw = self.decoder.head.stride
        return int(image_size[0]) // ph, int(image_size[1]) // pw

    def decode_pairs(self, features: Mapping[str, Tensor], text: Tensor, pair_image: Tensor, grid: Sequence[int]):
        """``(features (M, L, D), logits (M, 1, H, W))`` of the (image, category) pairs."""
        activations = [features[f"tokens_{i}"] for i in range(len(self.extract_layers))]
        return self.decoder(activations, text, pair_image, grid)

    def logits(self, features: Mapping[str, Tensor], text: Tensor, grid: Sequence[int]) -> Tensor:
        """``(B, T, H, W)`` activation logits of every image (patch ``grid``) for every class
        of ``text`` ``(T, C)``, decoded ``test_chunk_classes`` classes at a time."""
        batch = features["tokens_0"].shape[0]
        num_classes = text.shape[0]
        chunk = self.test_chunk_classes or num_classes
        images = torch.arange(batch, device=text.device)
        out = []
        for start in range(0, num_classes, chunk):
            part = text[start : start + chunk]
            pair_image = images.repeat_interleave(part.shape[0])
            _, logits = self.decode_pairs(features, part.repeat(batch, 1), pair_image, grid)
            out.append(logits.view(batch, part.shape[0], *logits.shape[-2:]))
        return torch.cat(out, dim=1) if len(out) > 1 else out[0]

    def losses(self, images: Tensor, text: Tensor, pair_image: Tensor) -> dict[str, Tensor]:
        """The MCCL losses of a batch: ``images`` ``(B, 3, H, W)``, ``text`` ``(M, C)`` the
        anchors of the pairs (L2-normalised), ``pair_image`` ``(M,)`` their images."""
        features = self.image_features(images)
        grid = self.grid_of(images.shape[-2:])
        pair_features, logits = self.decode_pairs(features, text, pair_image, grid)
        maps = logits.float().sigmoid()
        if self.fss_features == "decoder":
            projected = self.synergy.proj(pair_features)
        else:  # projected once per image, then gathered per pair
            deepest = features[f"tokens_{len(self.extract_layers) - 1}"][:, 1:]
            projected = self.synergy.proj(deepest).index_select(0, pair_image)
        fg, bg = self.synergy.pool(projected, maps)
        return mccl_losses(
            fg, bg, text, pair_image, images.shape[0], count_reduce=_process_sum(), **self.loss_options
        )
