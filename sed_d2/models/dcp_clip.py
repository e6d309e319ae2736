"""DCP-CLIP: coarse-to-fine open-vocabulary segmentation with dual interaction (Wang et al.,
arXiv 2603.13951). Pure PyTorch: tensors in, logits / losses out. No official code exists;
the architecture is reconstructed in ``shared/reference/dcpclip_spec.md`` and every choice
the paper leaves open is an argument here and a key in ``sed_d2/config/dcp_clip.py``.

CAT-Seg's pipeline (:class:`~sed_d2.models.catseg.CATSegModel`, subclassed one level deep:
CLIP ViT, q/v fine-tuning, tap upsamplers, cost volume and embedding) plus:

1. **Dynamic category selection** (DCS, :func:`sed_d2.layers.select_categories`): each
   image keeps the classes CLIP finds in it, and everything after the cost volume runs on
   that subset only, padded to the largest subset of the batch (``class_ids``, ``valid``).
   In training the labelled classes join the subset (``train_add_gt``).
2. **Text-guided alignment** (TGA, :class:`TextGuidedAlignment`): textual guidance
   ``phi_T([cos(F_cls, E), E, prompt])`` per selected class; patch tokens cross-attend to it
   (padded classes masked); then self-attention over the patches of every class map, its
   queries/keys/values reading the cost embedding and the projected refined patches.
3. **Spatial Enhanced Decoder** (:class:`SpatialEnhancedDecoder`): per layer a guided Swin
   pair (CAT-Seg's, guidance = conv(up(F_patch)) and conv(up(A_CLIP))) then SED's skip
   fusion (x2, shallow CLIP taps shared by the classes, upsampled raw cost per class), and
   a 3x3 logit head.

Tag validation (inference only) lives in :mod:`sed_d2.layers.tag_validation` and runs on
the meta-architecture's fused scores.
"""

from __future__ import annotations

from typing import Mapping, NamedTuple, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..clip import vit_dense_features
from ..layers import (
    ClassLogitHead,
    Conv2dReLU,
    ConvTranspose2dReLU,
    CostEmbedding,
    Mlp,
    SkipFusion,
    channels_last_class_maps,
    cosine_cost_volume,
)
from ..layers.category_selection import (
    pad_class_subsets,
    scatter_class_subsets,
    select_categories,
    top_n_selection,
)
from ..layers.swin import GuidedSwinBlockPair
from ..losses import TRAINING_CHUNK_CLASSES, one_hot_bce_loss
from .catseg import CATSegModel

__all__ = [
    "CLS_TERMS",
    "PROMPT_KINDS",
    "UNSELECTED_CLASS_LOGIT",
    "DCPCLIPDecoder",
    "DCPCLIPModel",
    "DCPCLIPOutput",
    "PatchCrossAttention",
    "PixelSelfAttention",
    "SpatialEnhancedDecoder",
    "TextGuidedAlignment",
    "TextualGuidance",
    "class_embeddings",
]

# Logit of the classes an image did not select: finite, so that test protocols may resize
# logits bilinearly (0 * -inf is NaN), and low enough that its float32 sigmoid is exactly 0.
UNSELECTED_CLASS_LOGIT = -1.0e4
# The [CLS] term of the textual guidance: "logit" cos(F_cls, E) (1 channel), "hadamard"
# normalize(F_cls) * E (D channels), "none" (Table V row II).
CLS_TERMS = ("logit", "hadamard", "none")
# The learnable prompt of the textual guidance: "coop" (context words encoded with the class
# name by the text tower, given to decode as ``prompts``), "vector" (one learnable D-vector
# for every class), "none" (Table V row III).
PROMPT_KINDS = ("coop", "vector", "none")


class DCPCLIPOutput(NamedTuple):
    """``logits`` ``(B, T, H, W)``, :data:`UNSELECTED_CLASS_LOGIT` for classes an image did
    not select;
    ``subset_logits`` ``(B, C_max, H, W)`` on ``class_ids`` ``(B, C_max)`` (ascending per
    image, the selected ones first, ``valid`` False for padding)."""

    logits: Tensor
    subset_logits: Tensor
    class_ids: Tensor
    valid: Tensor


def class_embeddings(text_embeddings: Tensor) -> Tensor:
    """One embedding per class, ``E = normalize(mean_P normalize(text))``: ``(T, P, D) -> (T, D)``,
    used wherever the paper writes one embedding per class (Eq. 1, 7, 17)."""
    return F.normalize(F.normalize(text_embeddings, dim=-1).mean(dim=1), dim=-1)


class TextualGuidance(nn.Module):
    """Eq. 7: ``T_g = phi_T(concat[cls term, E_SC, P_SC])``, one ``dim`` vector per class.

    ``forward(text (B, C, D) normalised, image_embedding (B, D), prompts (B, C, D) | None)``.
    """

    def __init__(self, dim: int, *, cls_term: str = "logit", prompt: str = "coop") -> None:
        super().__init__()
        if cls_term not in CLS_TERMS or prompt not in PROMPT_KINDS:
            raise ValueError(f"cls_term must be one of {CLS_TERMS} and prompt one of {PROMPT_KINDS}")
        self.cls_term = cls_term
        self.prompt = prompt
        cls_channels = {"logit": 1, "hadamard": dim, "none": 0}[cls_term]
        self.project = nn.Linear(cls_channels + dim + (dim if prompt != "none" else 0), dim)
        self.prompt_vector = nn.Parameter(torch.randn(dim) * 0.02) if prompt == "vector" else None

    def forward(self, text: Tensor, image_embedding: Tensor, prompts: Tensor | None = None) -> Tensor:
        if (prompts is not None) != (self.prompt == "coop"):
            raise ValueError("prompts must be given exactly when the prompt kind is 'coop'")
        image = F.normalize(image_embedding, dim=-1).unsqueeze(1)  # (B, 1, D)
        parts = []
        if self.cls_term == "logit":
            parts.append((text * image).sum(dim=-1, keepdim=True))
        elif self.cls_term == "hadamard":
            parts.append(text * image)
        parts.append(text)
        if self.prompt == "coop":
            parts.append(prompts)
        elif self.prompt == "vector":
            parts.append(self.prompt_vector.to(text.dtype).expand_as(text))
        return self.project(torch.cat(parts, dim=-1))


class PatchCrossAttention(nn.Module):
    """Eq. 8-10, one post-norm layer: patch tokens attend to the class guidance tokens.

    ``Z = softmax(Q K^T / sqrt(d)) V`` with ``Q = W_q x``, ``K = W_k g``, ``V = W_v g``
    (no output projection, as written), padded classes masked out; ``x = LN(Z + x)``;
    ``LN(MLP(x) + x)``. ``forward(x (B, N, D), guidance (B, C, D), valid (B, C))``."""

    def __init__(self, dim: int, num_heads: int = 1, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.q, self.k, self.v = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.norm1 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=nn.GELU)
        self.norm2 = nn.LayerNorm(dim)

    def forward(self, x: Tensor, guidance: Tensor, valid: Tensor) -> Tensor:
        q, k, v = (_split_heads(t, self.num_heads) for t in (self.q(x), self.k(guidance), self.v(guidance)))
        z = F.scaled_dot_product_attention(q, k, v, attn_mask=valid[:, None, None, :])
        x = self.norm1(_merge_heads(z) + x)
        return self.norm2(self.mlp(x) + x)


class PixelSelfAttention(nn.Module):
    """Eq. 11-12, one post-norm layer: self-attention over the patches of every class map.

    ``Q, K, V = W [x, g]`` with ``x`` the class map's tokens (``dim``) and ``g`` per-image
    guidance tokens (``guidance_dim``, shared by the classes: their share of Q/K/V is computed
    once per image and broadcast); ``x = LN(Z + x)``; ``LN(MLP(x) + x)``.
    ``forward(x (B, C, N, dim), guidance (B, N, guidance_dim)) -> (B, C, N, dim)``."""

    def __init__(self, dim: int, guidance_dim: int, num_heads: int = 1, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.dim = dim
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim + guidance_dim, 3 * dim)
        self.norm1 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=nn.GELU)
        self.norm2 = nn.LayerNorm(dim)

    def forward(self, x: Tensor, guidance: Tensor) -> Tensor:
        dim = x.shape[-1]
        weight = self.qkv.weight
        qkv = F.linear(x, weight[:, :dim], self.qkv.bias) + F.linear(guidance, weight[:, dim:]).unsqueeze(1)
        q, k, v = (_split_heads(t.flatten(0, 1), self.num_heads) for t in qkv.chunk(3, dim=-1))
        z = _merge_heads(F.scaled_dot_product_attention(q, k, v)).view_as(x)
        x = self.norm1(z + x)
        return self.norm2(self.mlp(x) + x)


def _split_heads(t: Tensor, heads: int) -> Tensor:
    """``(B, L, D) -> (B, heads, L, D / heads)``."""
    return t.unflatten(-1, (heads, -1)).transpose(1, 2)


def _merge_heads(t: Tensor) -> Tensor:
    return t.transpose(1, 2).flatten(2)


class TextGuidedAlignment(nn.Module):
    """TGA (paper III-B): the cross-attention branch refines the patch embeddings with the
    textual guidance of the selected classes; the self-attention branch refines every class's
    cost embedding over the patches, reading the refined patches projected to its width.

    Args:
        embed_dim: ``D``, CLIP's joint embedding size.
        hidden_dim: ``D_c``, channels of the cost embedding.
        cross_attention / self_attention: the two branches (Table IV).
        cross_layers, cross_heads, self_layers, self_heads, mlp_ratio: their shapes.
        cls_term, prompt: the textual guidance (:class:`TextualGuidance`).

    ``forward(cost (B, C, D_c, h, w), patches (B, D, h, w), image_embedding (B, D),
    text (B, C, D), prompts (B, C, D) | None, valid (B, C))`` returns the refined cost
    embedding ``(B, C, D_c, h, w)`` and patches ``(B, D, h, w)`` (the decoder's F_patch
    guidance reads the latter: with the self-attention branch off, that is where the
    cross-attention branch acts, Table IV's "CA only" row).
    """

    def __init__(
        self,
        embed_dim: int,
        hidden_dim: int,
        *,
        cross_attention: bool = True,
        self_attention: bool = True,
        cross_layers: int = 1,
        cross_heads: int = 1,
        self_layers: int = 1,
        self_heads: int = 1,
        mlp_ratio: float = 4.0,
        cls_term: str = "logit",
        prompt: str = "coop",
    ) -> None:
        super().__init__()
        self.cross_attention = cross_attention
        self.self_attention = self_attention
        if cross_attention:
            self.textual_guidance = TextualGuidance(embed_dim, cls_term=cls_term, prompt=prompt)
            self.cross_layers = nn.ModuleList(
                PatchCrossAttention(embed_dim, cross_heads, mlp_ratio) for _ in range(cross_layers)
            )
        if self_attention:
            self.patch_projection = nn.Linear(embed_dim, hidden_dim)
            self.self_layers = nn.ModuleList(
                PixelSelfAttention(hidden_dim, hidden_dim, self_heads, mlp_ratio) for _ in range(self_layers)
            )

    @property
    def uses_prompts(self) -> bool:
        return self.cross_attention and self.textual_guidance.prompt == "coop"

    def forward(
        self,
        cost: Tensor,
        patches: Tensor,
        image_embedding: Tensor,
        text: Tensor,
        prompts: Tensor | None,
        valid: Tensor,
    ) -> tuple[Tensor, Tensor]:
        batch, num_classes, channels, height, width = cost.shape
        tokens = patches.flatten(2).transpose(1, 2)  # (B, N, D)
        if self.cross_attention:
            guidance = self.textual_guidance(text, image_embedding, prompts if self.uses_prompts else None)
            for layer in self.cross_layers:
                tokens = layer(tokens, guidance, valid)
            patches = tokens.transpose(1, 2).reshape(patches.shape)
        if self.self_attention:
            x = cost.flatten(3).transpose(2, 3)  # (B, C, N, D_c)
            guidance = self.patch_projection(tokens)
            for layer in self.self_layers:
                x = layer(x, guidance)
            cost = channels_last_class_maps(x.transpose(2, 3).reshape(batch, num_classes, channels, height, width))
        return cost, patches


class SpatialEnhancedDecoder(nn.Module):
    """The paper's Spatial Enhanced Decoder ("SED" in its Tables III and VI): per layer ``s``
    a guided Swin pair on every class map (guidance ``[conv(up_s(F_patch)), conv(up_s(A_CLIP))]``,
    Eq. 13-14), then :class:`~sed_d2.layers.SkipFusion` (x2; the projected shallow CLIP tap of
    the image, shared by its classes, and the upsampled raw cost of each class, Eq. 15-16);
    then a 3x3 logit head.

    Args:
        hidden_dim: channels in (``D_c``).
        decoder_dims: output channels per layer; ``()`` = the head reads the input.
        embed_dim: ``D`` of ``F_patch``; num_patches: ``N`` channels of ``A_CLIP``.
        skip_channels / skip_proj_dims: channels of the upsampled taps and their projection.
        cost_guidance_dims: channels of the raw-cost chain (ConvTranspose x2 + ReLU each).
        num_templates: ``P`` channels of the raw cost.
        spatial_enhance: the Swin pairs (Table VI a).
        fuse_patch / fuse_sim / fuse_attn: F_patch and A_CLIP guidance of the Swin pairs and
            the raw-cost guidance of the fusions (Table VI c).
        window_size, num_heads: of the Swin pairs; guidance_kernel: of the guidance convs.
    """

    def __init__(
        self,
        *,
        hidden_dim: int,
        decoder_dims: Sequence[int],
        embed_dim: int,
        num_patches: int,
        skip_channels: Sequence[int],
        skip_proj_dims: Sequence[int],
        cost_guidance_dims: Sequence[int],
        num_templates: int,
        spatial_enhance: bool = True,
        fuse_patch: bool = True,
        fuse_sim: bool = True,
        fuse_attn: bool = True,
        window_size: int = 12,
        num_heads: int = 4,
        guidance_kernel: int = 3,
    ) -> None:
        super().__init__()
        stages = len(decoder_dims)
        if not len(skip_channels) == len(skip_proj_dims) == len(cost_guidance_dims) == stages:
            raise ValueError(
                f"decoder_dims {tuple(decoder_dims)} need as many skip_channels {tuple(skip_channels)}, "
                f"skip_proj_dims {tuple(skip_proj_dims)} and cost_guidance_dims {tuple(cost_guidance_dims)}"
            )
        in_dims = (hidden_dim, *decoder_dims[:-1])
        self.spatial_enhance = spatial_enhance
        self.fuse_sim = fuse_sim
        padding = guidance_kernel // 2
        self.patch_guidance = nn.ModuleList(
            Conv2dReLU(embed_dim, dim, guidance_kernel, padding=padding)
            for dim in (in_dims[:stages] if spatial_enhance and fuse_patch else ())
        )
        self.attention_guidance = nn.ModuleList(
            Conv2dReLU(num_patches, dim, guidance_kernel, padding=padding)
            for dim in (in_dims[:stages] if spatial_enhance and fuse_attn else ())
        )
        guides = int(fuse_patch) + int(fuse_attn)
        self.spatial = nn.ModuleList(
            GuidedSwinBlockPair(dim, guides * dim, num_heads, window_size=window_size)
            for dim in (in_dims[:stages] if spatial_enhance else ())
        )
        self.skip_projections = nn.ModuleList(
            Conv2dReLU(channels, proj, kernel_size=3, padding=1) for channels, proj in zip(skip_channels, skip_proj_dims)
        )
        self.cost_upsamplers = nn.ModuleList(
            ConvTranspose2dReLU(cin, cout, kernel_size=2, stride=2)
            for cin, cout in zip((num_templates, *cost_guidance_dims[:-1]), cost_guidance_dims if fuse_sim else ())
        )
        self.fusions = nn.ModuleList(
            SkipFusion(cin, cout, skip_channels=proj, cost_channels=cost if fuse_sim else 0)
            for cin, cout, proj, cost in zip(in_dims, decoder_dims, skip_proj_dims, cost_guidance_dims)
        )
        self.head = ClassLogitHead(decoder_dims[-1] if stages else hidden_dim, kernel_size=3)

    def forward(
        self,
        x: Tensor,
        patches: Tensor,
        attention: Tensor | None,
        skips: Sequence[Tensor],
        cost: Tensor,
    ) -> Tensor:
        """
        Args:
            x: ``(B, C, D_c, h, w)`` class maps.
            patches: ``(B, D, h, w)`` F_patch; attention: ``(B, N, h, w)`` A_CLIP (or None
                without its guidance).
            skips: per layer, the upsampled tap ``(B, skip_channels, 2^(s+1) h, ...)``.
            cost: ``(B, C, P, h, w)`` raw cosine costs of the classes.

        Returns:
            ``(B, C, 2^S h, 2^S w)`` logits.
        """
        for index, fusion in enumerate(self.fusions):
            if self.spatial_enhance:
                x = self.spatial[index](x, self._guidance(index, patches, attention, x.shape[-2:]))
            cost_guidance = None
            if self.fuse_sim:
                cost = self.cost_upsamplers[index](cost.flatten(0, 1)).unflatten(0, cost.shape[:2])
                cost_guidance = cost
            x = fusion(x, self.skip_projections[index](skips[index]), cost_guidance)
        return self.head(x)

    def _guidance(self, index: int, patches: Tensor, attention: Tensor | None, size) -> Tensor | None:
        parts = []
        for convs, source in ((self.patch_guidance, patches), (self.attention_guidance, attention)):
            if len(convs):
                if tuple(source.shape[-2:]) != tuple(size):
                    source = F.interpolate(source, size=tuple(size), mode="bilinear", align_corners=False)
                parts.append(convs[index](source))
        return torch.cat(parts, dim=1) if parts else None


class DCPCLIPDecoder(nn.Module):
    """Every module of DCP-CLIP after CLIP and the tap upsamplers: the cost embedding
    (``P -> D_c``, 7x7), :class:`TextGuidedAlignment` (``alignment``) and
    :class:`SpatialEnhancedDecoder` (``spatial``); ``skip_channels`` tells
    :class:`~sed_d2.models.catseg.CATSegModel` which tap upsamplers to build."""

    def __init__(
        self,
        *,
        num_templates: int,
        hidden_dim: int,
        cost_embed_kernel: int,
        skip_channels: Sequence[int],
        alignment: TextGuidedAlignment,
        spatial: SpatialEnhancedDecoder,
    ) -> None:
        super().__init__()
        self.skip_channels = tuple(skip_channels)
        self.cost_embed = CostEmbedding(num_templates, hidden_dim, cost_embed_kernel)
        self.alignment = alignment
        self.spatial = spatial


class DCPCLIPModel(CATSegModel):
    """CLIP ViT + tap upsamplers + :class:`DCPCLIPDecoder`, with dynamic category selection.

    Args:
        clip_model, decoder, guidance_layers, clip_finetune: as
            :class:`~sed_d2.models.catseg.CATSegModel` (its parameter-group table holds:
            every DCP-CLIP module lives under ``decoder.``).
        selection: DCS on (True) or every class for every image (False).
        threshold: DCS's theta; ``<= 0`` keeps every class.
        temperature: tau of the image-level softmax; 0 = ``exp(clip_model.logit_scale)``.
        max_classes: at most this many classes per image (0 = no cap).
        cls_source: the class token of DCS and of the textual guidance, ``"attention"``
            (CLIP's own image embedding) or ``"dense"`` (CAT-Seg's value-path token).

    ``fixed_selection > 0`` (an attribute, for benchmarks) keeps exactly that many classes
    per image (:func:`~sed_d2.layers.category_selection.top_n_selection`).
    """

    def __init__(
        self,
        clip_model: nn.Module,
        decoder: DCPCLIPDecoder,
        *,
        guidance_layers: Sequence[int] = (3, 7),
        clip_finetune: str = "attention",
        selection: bool = True,
        threshold: float = 0.5,
        temperature: float = 0.0,
        max_classes: int = 0,
        cls_source: str = "attention",
    ) -> None:
        super().__init__(clip_model, decoder, guidance_layers=guidance_layers, clip_finetune=clip_finetune)
        self.selection = selection
        self.threshold = float(threshold)
        self.temperature = float(temperature)
        self.max_classes = int(max_classes)
        self.cls_source = cls_source
        self.fixed_selection = 0

    def forward(
        self, images: Tensor, text_embeddings: Tensor, prompts: Tensor | None = None, present: Tensor | None = None
    ) -> DCPCLIPOutput:
        """:meth:`image_features` then :meth:`decode` (see there for the arguments)."""
        return self.decode(self.image_features(images), text_embeddings, prompts, present)

    def image_features(self, images: Tensor) -> dict[str, Tensor]:
        """``clip_vis_dense`` (B, D, h, w), ``cls`` (B, D), ``attention`` (B, N, h, w)
        (A_CLIP) and the tap guidance ``guidance_{i}``. Shapes depend on the images' only."""
        dense = vit_dense_features(
            self.clip_model.visual,
            images,
            guidance_layers=self.guidance_layers,
            cls=self.cls_source,
            attention=len(self.decoder.spatial.attention_guidance) > 0,
        )
        features = {"clip_vis_dense": dense["clip_vis_dense"], "cls": dense["cls"]}
        if "attention" in dense:
            features["attention"] = dense["attention"]
        for index, guidance in enumerate(self.guidance(dense["guidance"])):
            features[f"guidance_{index}"] = guidance
        return features

    def select(self, features: Mapping[str, Tensor], text: Tensor, present: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """``(class_ids, valid)`` ``(B, C_max)`` of each image's classes: DCS on the
        template-mean ``text`` ``(T, D)``, united with ``present`` ``(B, T)`` (the labelled
        classes in training); without DCS every class, in order (no host synchronisation)."""
        patches, image_embedding = features["clip_vis_dense"], features["cls"]
        batch, num_classes = patches.shape[0], text.shape[0]
        if not self.selection and not self.fixed_selection:
            class_ids = torch.arange(num_classes, device=patches.device).expand(batch, -1)
            return class_ids, torch.ones_like(class_ids, dtype=torch.bool)
        temperature = self.temperature or float(self.clip_model.logit_scale.detach().exp())
        if self.fixed_selection:
            keep = top_n_selection(patches, image_embedding, text, temperature=temperature, n=self.fixed_selection)
        else:
            keep = select_categories(
                patches,
                image_embedding,
                text,
                temperature=temperature,
                threshold=self.threshold,
                max_classes=self.max_classes,
            )
        if present is not None:
            keep = keep | present
        return pad_class_subsets(keep)

    def decode(
        self,
        features: Mapping[str, Tensor],
        text_embeddings: Tensor,
        prompts: Tensor | None = None,
        present: Tensor | None = None,
    ) -> DCPCLIPOutput:
        """Everything after :meth:`image_features`.

        Args:
            text_embeddings: ``(T, P, D)`` of the vocabulary.
            prompts: ``(T, D)`` prompted text embeddings (``coop`` textual guidance only).
            present: ``(B, T)`` bool classes that join every image's selection (training).
        """
        decoder = self.decoder
        patches, image_embedding = features["clip_vis_dense"], features["cls"]
        num_classes = text_embeddings.shape[0]
        text_mean = class_embeddings(text_embeddings)
        class_ids, valid = self.select(features, text_mean.detach(), present)
        cost = cosine_cost_volume(patches, text_embeddings[class_ids])  # (B, P, C, h, w)
        x = channels_last_class_maps(decoder.cost_embed(cost))
        subset_prompts = prompts[class_ids] if prompts is not None and decoder.alignment.uses_prompts else None
        x, patches = decoder.alignment(x, patches, image_embedding, text_mean[class_ids], subset_prompts, valid)
        skips = [features[f"guidance_{i}"] for i in range(len(self.guidance_upsamplers))]
        logits = decoder.spatial(x, patches, features.get("attention"), skips, cost.transpose(1, 2))
        if logits.shape[1] == num_classes and not self.selection and not self.fixed_selection:
            full = logits  # every class in order: nothing to scatter
        else:
            full = scatter_class_subsets(logits, class_ids, valid, num_classes, fill=UNSELECTED_CLASS_LOGIT)
        return DCPCLIPOutput(full, logits, class_ids, valid)

    @staticmethod
    def losses(
        output: DCPCLIPOutput,
        targets: Tensor,
        ignore_value: int,
        ignore_as_negative: bool = True,
        chunk_classes: int = TRAINING_CHUNK_CLASSES,
    ) -> dict[str, Tensor]:
        """``loss_sem_seg``: the one-hot BCE of :func:`~sed_d2.losses.one_hot_bce_loss` on
        each image's selected classes (padding excluded), summed over images and divided by
        the total element count ``sum_b H W C_b`` (valid pixels instead of ``H W`` with
        ``ignore_as_negative=False``). A labelled pixel whose class was not selected has no
        positive channel: it counts as ignored."""
        logits, class_ids, valid = output.subset_logits, output.class_ids, output.valid
        batch, width = class_ids.shape
        # label -> position in the image's subset (-1: not selected)
        positions = torch.where(valid, torch.arange(width, device=valid.device), -1)
        lookup = torch.full((batch, output.logits.shape[1] + 1), -1, dtype=torch.long, device=targets.device)
        lookup.scatter_(1, class_ids, positions)
        labels = torch.where(targets == ignore_value, output.logits.shape[1], targets)
        remapped = lookup.gather(1, labels.flatten(1)).view_as(targets)
        remapped = torch.where(remapped < 0, ignore_value, remapped)
        total, count = logits.new_zeros((), dtype=torch.float32), 0
        for image, selected in enumerate(valid.sum(dim=1).tolist()):
            target = remapped[image : image + 1]
            pixels = target.numel() if ignore_as_negative else int((target != ignore_value).sum())
            if pixels == 0:
                continue
            loss = one_hot_bce_loss(
                logits[image : image + 1, :selected], target, ignore_value, ignore_as_negative, chunk_classes=chunk_classes
            )
            total = total + loss.float() * (pixels * selected)
            count += pixels * selected
        return {"loss_sem_seg": total / max(count, 1)}
