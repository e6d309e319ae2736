"""CLIP-HBD: hierarchical boundary-constrained decoding for open-vocabulary semantic
segmentation (Computers 2026, 15(5), 318). Pure PyTorch: tensors in, logits / losses out.

No official code exists and the paper text lost every formula; the reconstruction and each
guess are in the README's CLIP-HBD section (every guess is a ``MODEL.CLIP_HBD`` key).

1. CLIP ViT (CAT-Seg's dense path, :func:`sed_d2.clip.vit_dense_features`): the dense
   embedding ``clip_vis_dense`` (B, C, g, g) and three intermediate layers (B, W, g, g).
2. A ConvNeXt backbone run stage by stage; after stages 1-3 a :class:`~sed_d2.layers.
   FeatureFusion` mixes in the matching CLIP layer (projected, upsampled), and the fused map
   is what the next stage reads: ``E_1 .. E_4`` at strides 4, 8, 16, 32.
3. :class:`~sed_d2.layers.BoundaryHead` on ``E_1 .. E_4``: boundary logits at the input size.
4. The cosine cost volume of ``clip_vis_dense`` with the (T, P, C) text embeddings, embedded
   per class by a 7x7 convolution over the P templates (SED's / CAT-Seg's layers).
5. Three :class:`~sed_d2.layers.BoundaryGatedStage` s (g -> 2g -> 4g -> 8g, skips ``E_3``,
   ``E_2``, ``E_1``), gated by the sigmoid of the boundary logits, and a 3x3 logit head:
   logits (B, T, H/2, W/2).

Training losses (:class:`CLIPHBDCriterion`): softmax cross-entropy + Dice over the classes
present per image (:func:`sed_d2.losses.softmax_ce_dice_loss`) and the class-balanced
boundary BCE against edges derived from the labels (:func:`sed_d2.losses.boundary_loss`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, NamedTuple, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..clip import apply_clip_finetune, vit_dense_features
from ..clip.dense.convnext import convnext_stage, convnext_stem
from ..layers import (
    ClassLogitHead,
    CostEmbedding,
    channels_last_class_maps,
    cosine_cost_volume,
    in_class_chunks,
)
from ..layers.boundary import BoundaryGatedStage, BoundaryHead
from ..layers.feature_fusion import FeatureFusion
from ..losses import TRAINING_CHUNK_CLASSES, boundary_loss, softmax_ce_dice_loss
from .parameter_groups import ParameterGroupTable, assign_parameter_groups

__all__ = ["CLIP_LAYER_PROJECTIONS", "CLIPHBDCriterion", "CLIPHBDModel", "CLIPHBDOutput", "HBDDecoder"]

# What of a CLIP layer the fusion reads: the raw residual stream (width W) or its
# projection to the joint space (ln_post + proj, C channels).
CLIP_LAYER_PROJECTIONS = ("none", "clip_proj")

# Decoder stages (each x2) between the CLIP grid (stride 16) and the logits (stride 2).
_NUM_STAGES = 3


class CLIPHBDOutput(NamedTuple):
    """``logits`` ``(B, T, H/2, W/2)``; ``boundary_logits`` ``(B, 1, H, W)``."""

    logits: Tensor
    boundary_logits: Tensor


class HBDDecoder(nn.Module):
    """Cost volume, cost embedding, the three boundary-gated stages and the logit head.

    Args:
        num_templates: ``P``, prompt templates per class (the cost embedding's input).
        skip_channels: channels of ``E_3, E_2, E_1`` (the skips of stages 1, 2, 3).
        hidden_dim: channels of the cost embedding (``X_1``).
        decoder_dims: output channels of the three stages.
        skip_dims: channels each skip is aligned to; empty = each stage's input channels.
        cost_embed_kernel, dwconv_kernel, mlp_ratio, norm, gate_mode,
        attention_per_channel, boundary_downsample: see
            :class:`~sed_d2.layers.BoundaryGatedStage` / :class:`~sed_d2.layers.CostEmbedding`.
        inference_chunk_pixels: with gradients off, the per-class part runs on one image and
            about this many logit pixels (classes x (H/2) x (W/2)) at a time (bounds memory at
            large vocabularies, as SED's); 0 = all at once.

    ``forward(clip_dense (B, C, g, g), text (T, P, C), boundary (B, 1, H, W) probabilities,
    skips [E_3 (B, ., g, g), E_2 (2g), E_1 (4g)]) -> (B, T, 8g, 8g)`` logits.
    """

    def __init__(
        self,
        *,
        num_templates: int,
        skip_channels: Sequence[int],
        hidden_dim: int = 128,
        decoder_dims: Sequence[int] = (64, 32, 16),
        skip_dims: Sequence[int] = (),
        cost_embed_kernel: int = 7,
        dwconv_kernel: int = 7,
        mlp_ratio: int = 4,
        norm: str = "layernorm",
        gate_mode: str = "input",
        attention_per_channel: bool = False,
        boundary_downsample: str = "area",
        inference_chunk_pixels: int = 2**23,
    ) -> None:
        super().__init__()
        in_dims = (hidden_dim, *decoder_dims[:-1])
        skip_dims = tuple(skip_dims) or in_dims
        if not len(skip_channels) == len(decoder_dims) == len(skip_dims) == _NUM_STAGES:
            raise ValueError(
                f"{_NUM_STAGES} decoder stages need as many skip_channels, decoder_dims and skip_dims, got "
                f"{tuple(skip_channels)}, {tuple(decoder_dims)} and {tuple(skip_dims)}"
            )
        self.inference_chunk_pixels = int(inference_chunk_pixels)
        self.cost_embed = CostEmbedding(num_templates, hidden_dim, cost_embed_kernel)
        self.stages = nn.ModuleList(
            BoundaryGatedStage(
                cin,
                cout,
                skip_channels=skip,
                skip_dim=aligned,
                kernel=dwconv_kernel,
                mlp_ratio=mlp_ratio,
                norm=norm,
                gate_mode=gate_mode,
                attention_per_channel=attention_per_channel,
                downsample=boundary_downsample,
            )
            for cin, cout, skip, aligned in zip(in_dims, decoder_dims, skip_channels, skip_dims)
        )
        self.head = ClassLogitHead(decoder_dims[-1], 3)

    def forward(self, clip_dense: Tensor, text_embeddings: Tensor, boundary: Tensor, skips: Sequence[Tensor]) -> Tensor:
        grid = tuple(clip_dense.shape[-2:])
        sizes = [(grid[0] << i, grid[1] << i) for i in range(_NUM_STAGES)]
        if [tuple(s.shape[-2:]) for s in skips] != sizes:
            raise ValueError(
                f"the skips must be at the CLIP grid and x2, x4 ({sizes}), got {[tuple(s.shape[-2:]) for s in skips]}"
            )
        attentions = [stage.boundary_attention(boundary, size) for stage, size in zip(self.stages, sizes)]
        aligned = [stage.aligned_skip(skip) for stage, skip in zip(self.stages, skips)]
        cost = cosine_cost_volume(clip_dense, text_embeddings).transpose(1, 2)  # (B, T, P, g, g)
        batch, num_classes = cost.shape[:2]
        chunk = self._chunk_classes(grid)
        if torch.is_grad_enabled() or chunk <= 0 or batch * num_classes <= chunk:
            return self._class_logits(cost, attentions, aligned)
        # one image and chunk of classes at a time (C = 1 maps for in_class_chunks)
        logits = in_class_chunks(
            lambda b, part: self._class_logits(
                part, [a[b : b + 1] for a in attentions], [s[b : b + 1] for s in aligned]
            ).unsqueeze(2),
            chunk,
            cost,
        )
        return logits.squeeze(2)

    def _class_logits(self, cost: Tensor, attentions: Sequence[Tensor], aligned: Sequence[Tensor]) -> Tensor:
        """``(b, t, P, g, g)`` costs -> ``(b, t, 8g, 8g)`` logits."""
        x = channels_last_class_maps(self.cost_embed.embed_class_maps(cost))
        for stage, attention, skip in zip(self.stages, attentions, aligned):
            x = stage.run(x, attention, skip)
        return self.head(x)

    def _chunk_classes(self, grid: Sequence[int]) -> int:
        if self.inference_chunk_pixels <= 0:
            return 0
        return max(1, self.inference_chunk_pixels // ((grid[0] << _NUM_STAGES) * (grid[1] << _NUM_STAGES)))


class CLIPHBDModel(nn.Module):
    """CLIP ViT + ConvNeXt backbone with feature fusion + boundary head + :class:`HBDDecoder`.

    Args:
        clip_model: an open_clip ``CLIP`` with a ViT image tower; registered as ``clip_model``.
        backbone: a timm ``ConvNeXt`` (4 stages, no classifier head); registered as ``backbone``.
        decoder: registered as ``decoder``.
        clip_layers: 0-based ViT blocks fused after backbone stages 1, 2, 3 (shallow to deep).
        clip_layer_projection: one of :data:`CLIP_LAYER_PROJECTIONS`.
        clip_finetune: ``"attention"`` (the q and v rows of every image-tower block train),
            ``"full"`` (the image tower's blocks) or ``"frozen"``. The text tower stays frozen
            in every mode and its embeddings are cached: with P = 80 templates, tuning it
            would encode T x 80 prompts with gradients at every step.
        vit_input_size: ``(H, W)`` the images are resized to for the ViT (ViT-L/14@336 keeps a
            24x24 grid beside a 384 backbone input); None = the input size.
        backbone_pixel_scale, backbone_pixel_shift: per-channel affine taking the
            CLIP-normalised images to the backbone's normalisation.
        fusion_weight, fusion_alpha_init: :class:`~sed_d2.layers.FeatureFusion` ``weight`` /
            ``alpha_init``.
        boundary_dim, boundary_deconv_kernel, boundary_norm: :class:`~sed_d2.layers.BoundaryHead`.
        detach_boundary: the decoder's gates read a detached boundary map (no decoder
            gradient into the boundary head).
    """

    # Rows: see sed_d2.models.parameter_groups. "attention": the image tower's fused
    # in_proj_weight (its k rows masked by sed_d2.clip.apply_clip_finetune).
    PARAMETER_GROUPS: dict[str, ParameterGroupTable] = {
        "attention": (
            (r"clip_model\.visual\.transformer\.resblocks\.\d+\.attn\.in_proj_weight$", "clip"),
            (r"clip_model\.", "frozen"),
            (r"backbone\.", "backbone"),
            (r"(fusions|boundary_head|decoder)\.", "decoder"),
        ),
        "full": (
            (r"clip_model\.visual\.transformer\.", "clip"),
            (r"clip_model\.", "frozen"),
            (r"backbone\.", "backbone"),
            (r"(fusions|boundary_head|decoder)\.", "decoder"),
        ),
        "frozen": (
            (r"clip_model\.", "frozen"),
            (r"backbone\.", "backbone"),
            (r"(fusions|boundary_head|decoder)\.", "decoder"),
        ),
    }

    def __init__(
        self,
        clip_model: nn.Module,
        backbone: nn.Module,
        decoder: HBDDecoder,
        *,
        clip_layers: Sequence[int] = (2, 5, 8),
        clip_layer_projection: str = "none",
        clip_finetune: str = "attention",
        vit_input_size: Sequence[int] | None = None,
        backbone_pixel_scale: Sequence[float] = (1.0, 1.0, 1.0),
        backbone_pixel_shift: Sequence[float] = (0.0, 0.0, 0.0),
        fusion_weight: str = "scalar",
        fusion_alpha_init: float = 0.5,
        boundary_dim: int = 64,
        boundary_deconv_kernel: int = 4,
        boundary_norm: str = "GN",
        detach_boundary: bool = False,
    ) -> None:
        super().__init__()
        if clip_finetune not in self.PARAMETER_GROUPS:
            raise ValueError(f"clip_finetune must be one of {sorted(self.PARAMETER_GROUPS)}, got {clip_finetune!r}")
        if clip_layer_projection not in CLIP_LAYER_PROJECTIONS:
            raise ValueError(
                f"clip_layer_projection must be one of {CLIP_LAYER_PROJECTIONS}, got {clip_layer_projection!r}"
            )
        if len(clip_layers) != _NUM_STAGES:
            raise ValueError(f"{_NUM_STAGES} CLIP layers are fused (after backbone stages 1-3), got {tuple(clip_layers)}")
        self.clip_model = clip_model
        self.backbone = backbone
        self.decoder = decoder
        self.clip_layers = tuple(int(i) for i in clip_layers)
        self.clip_layer_projection = clip_layer_projection
        self.vit_input_size = tuple(int(s) for s in vit_input_size) if vit_input_size else None
        self.detach_boundary = bool(detach_boundary)
        self.register_buffer("backbone_pixel_scale", torch.tensor(backbone_pixel_scale).view(1, -1, 1, 1), False)
        self.register_buffer("backbone_pixel_shift", torch.tensor(backbone_pixel_shift).view(1, -1, 1, 1), False)
        visual = clip_model.visual
        layer_channels = visual.output_dim if clip_layer_projection == "clip_proj" else visual.transformer.width
        stage_channels = [info["num_chs"] for info in backbone.feature_info]
        self.fusions = nn.ModuleList(
            FeatureFusion(layer_channels, channels, weight=fusion_weight, alpha_init=fusion_alpha_init)
            for channels in stage_channels[:_NUM_STAGES]
        )
        self.boundary_head = BoundaryHead(
            stage_channels, boundary_dim, deconv_kernel=boundary_deconv_kernel, norm=boundary_norm
        )
        self.clip_finetune = clip_finetune
        apply_clip_finetune(clip_model, clip_finetune)  # the k-row gradient masks
        # then the table: it freezes the text tower that "attention" / "full" would tune
        self.parameter_groups = assign_parameter_groups(self, self.PARAMETER_GROUPS[clip_finetune])

    def forward(self, images: Tensor, text_embeddings: Tensor) -> CLIPHBDOutput:
        """
        Args:
            images: ``(B, 3, H, W)``, CLIP-normalised; ``H, W`` multiples of 32.
            text_embeddings: ``(T, P, C)`` for the current vocabulary.
        """
        return self.decode(self.image_features(images), text_embeddings)

    def image_features(self, images: Tensor) -> dict[str, Tensor]:
        """Everything that depends on the images only: ``clip_vis_dense`` (B, C, g, g), the
        fused backbone levels ``encoder_1 .. encoder_3`` (strides 4, 8, 16; the decoder's skips)
        and ``boundary_logits`` (B, 1, H, W)."""
        vit_images = images
        if self.vit_input_size and tuple(images.shape[-2:]) != self.vit_input_size:
            vit_images = F.interpolate(images, size=self.vit_input_size, mode="bilinear", align_corners=False)
        dense = vit_dense_features(self.clip_model.visual, vit_images, guidance_layers=self.clip_layers)
        layers = [self._clip_layer(tap) for tap in dense["guidance"]]

        x = convnext_stem(self.backbone, images * self.backbone_pixel_scale + self.backbone_pixel_shift)
        levels = []
        for index in range(len(self.backbone.stages)):
            x = convnext_stage(self.backbone, index, x)
            if index < len(self.fusions):
                x = self.fusions[index](x, layers[index])
            levels.append(x)
        features = {"clip_vis_dense": dense["clip_vis_dense"], "boundary_logits": self.boundary_head(levels)}
        for index in range(_NUM_STAGES):
            features[f"encoder_{index + 1}"] = levels[index]
        return features

    def _clip_layer(self, tap: Tensor) -> Tensor:
        if self.clip_layer_projection == "none":
            return tap
        visual = self.clip_model.visual
        tokens = visual.ln_post(tap.permute(0, 2, 3, 1)) @ visual.proj  # (B, g, g, C)
        return tokens.permute(0, 3, 1, 2)

    def decode(self, features: Mapping[str, Tensor], text_embeddings: Tensor) -> CLIPHBDOutput:
        """The class-dependent part: cost volume, embedding, gated stages, head."""
        boundary_logits = features["boundary_logits"]
        boundary = torch.sigmoid(boundary_logits.detach() if self.detach_boundary else boundary_logits)
        skips = [features[f"encoder_{index}"] for index in range(_NUM_STAGES, 0, -1)]
        logits = self.decoder(features["clip_vis_dense"], text_embeddings, boundary, skips)
        return CLIPHBDOutput(logits, boundary_logits)


@dataclass(frozen=True)
class CLIPHBDCriterion:
    """CLIP-HBD's training loss: ``loss_ce`` and ``loss_dice`` (the compound segmentation
    loss) and ``loss_boundary`` (``lambda`` x the class-balanced boundary BCE), each already
    weighted; detectron2 sums them.

    The segmentation logits are upsampled to the labels inside the losses, class chunk by
    class chunk (``chunk_classes``, :func:`~sed_d2.losses.softmax_ce_dice_loss`); the
    boundary logits are at the input size already.
    """

    ce_weight: float = 1.0
    dice_weight: float = 1.0
    dice_classes: str = "present"
    dice_smooth: float = 1.0
    boundary_weight: float = 1.0
    boundary_kernel: int = 3
    boundary_ignore_edges: str = "exclude"
    boundary_weighting: str = "balanced"
    boundary_pos_weight: float = 1.0
    boundary_neg_weight: float = 1.0
    chunk_classes: int = TRAINING_CHUNK_CLASSES

    def __call__(self, output: CLIPHBDOutput, targets: Tensor, ignore_value: int) -> dict[str, Tensor]:
        ce, dice = softmax_ce_dice_loss(
            output.logits,
            targets,
            ignore_value,
            dice_classes=self.dice_classes,
            dice_smooth=self.dice_smooth,
            chunk_classes=self.chunk_classes,
        )
        boundary = boundary_loss(
            output.boundary_logits,
            targets,
            ignore_value,
            kernel=self.boundary_kernel,
            ignore_edges=self.boundary_ignore_edges,
            weighting=self.boundary_weighting,
            pos_weight=self.boundary_pos_weight,
            neg_weight=self.boundary_neg_weight,
        )
        return {
            "loss_ce": self.ce_weight * ce,
            "loss_dice": self.dice_weight * dice,
            "loss_boundary": self.boundary_weight * boundary,
        }
