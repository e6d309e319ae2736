"""CAT-Seg: cost aggregation for open-vocabulary semantic segmentation (Cho et al., CVPR
2024). Pure PyTorch: tensors in, logits / losses out.

Follows the official implementation (``cvlab-kaist/CAT-Seg``):

1. CLIP ViT dense features (:func:`sed_d2.clip.vit_dense_features`): the per-pixel
   embedding ``clip_vis_dense`` (B, C, h, w) and two intermediate-layer taps (B, W, h, w);
2. the taps are upsampled by ``ConvTranspose2d`` x2 and x4 (decoder guidance);
3. the cosine cost volume (B, P, T, h, w); with more than ``pad_len`` classes every image
   keeps its ``pad_len`` classes of highest maximum cost (the others get logit -100);
4. a 7x7 cost embedding to ``hidden_dim`` channels per class map;
5. aggregation layers: guided Swin pair (spatial, appearance guidance from
   ``clip_vis_dense``) + class attention (text guidance, class axis padded to
   ``pad_len``);
6. the upsampling decoder (two x2 :class:`~sed_d2.layers.SkipFusion` stages with the
   projected tap guidance) and a 3x3 head: logits (B, T, 4h, 4w).

Where this differs from the official code (none of it changes the function):
``image_features`` runs any batch (the official inference takes one image); the class
padding is computed as key/value sums (never materialised); the guidance of the Swin
blocks and of the decoder is computed once per image and broadcast over classes.

:class:`CATSegModel` is the base of CAT-Seg-family methods (FGAseg, DCP-CLIP): subclasses
override :meth:`~CATSegModel.image_features`, :meth:`~CATSegModel.guidance`,
:meth:`~CATSegModel.aggregate`, :meth:`~CATSegModel.decode` or
:meth:`~CATSegModel.losses` and add modules.
"""

from __future__ import annotations

from typing import Mapping, NamedTuple, Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from ..clip import apply_clip_finetune, vit_dense_features
from ..layers import (
    ClassTransformerLayer,
    Conv2dReLU,
    CostEmbedding,
    SkipFusion,
    channels_last_class_maps,
    cosine_cost_volume,
    scatter_classes,
)
from ..layers.swin import GuidedSwinBlockPair
from ..losses import TRAINING_CHUNK_CLASSES, one_hot_bce_loss
from .parameter_groups import ParameterGroupTable, assign_parameter_groups

__all__ = [
    "CATSegAggregationLayer",
    "CATSegDecoder",
    "CATSegModel",
    "CATSegOutput",
    "PRUNED_CLASS_LOGIT",
    "build_catseg_decoder_for",
]

# Logit of the classes dropped by class pruning (more classes than ``pad_len``): official.
PRUNED_CLASS_LOGIT = -100.0


class CATSegOutput(NamedTuple):
    """``logits``: ``(B, T, 4h, 4w)`` (``h, w`` = the CLIP patch grid), with
    :data:`PRUNED_CLASS_LOGIT` for classes dropped by class pruning."""

    logits: Tensor


class CATSegAggregationLayer(nn.Module):
    """One aggregation layer (official ``AggregatorLayer``): spatial aggregation
    (:class:`~sed_d2.layers.swin.GuidedSwinBlockPair`, appearance guidance) then class
    aggregation (:class:`~sed_d2.layers.ClassTransformerLayer`, text guidance, class
    padding).

    ``forward(x (B, T, C, h, w), appearance (B, G_a, h, w), text (B, T, G_t))``.
    Parameters (official -> ours): ``swin_block`` -> ``spatial``, ``attention`` ->
    ``class_block``.
    """

    def __init__(
        self,
        dim: int,
        *,
        appearance_guidance_dim: int,
        text_guidance_dim: int,
        num_heads: int,
        window_size: int,
        pooling_size: Sequence[int],
        test_pooling_size: Sequence[int],
        pad_len: int,
    ) -> None:
        super().__init__()
        self.spatial = GuidedSwinBlockPair(dim, appearance_guidance_dim, num_heads, window_size=window_size)
        self.class_block = ClassTransformerLayer(
            dim,
            num_heads,
            pooling_size=pooling_size,
            test_pooling_size=test_pooling_size,
            guidance_dim=text_guidance_dim,
            pad_len=pad_len,
        )

    def forward(self, x: Tensor, appearance_guidance: Tensor | None, text_guidance: Tensor | None) -> Tensor:
        return self.class_block(self.spatial(x, appearance_guidance), text_guidance)


class CATSegDecoder(nn.Module):
    """The official ``Aggregator``: every module of CAT-Seg that is not CLIP or the tap
    upsamplers, and its steps as methods (:meth:`CATSegModel.decode` runs them).

    Args:
        text_channels: ``C``, channels of the text embeddings and of ``clip_vis_dense``.
        num_templates: ``P``, prompt templates per class (the cost embedding's input).
        skip_channels: channels of the upsampled tap guidance, coarse to fine.
        hidden_dim: channels of the cost embedding and the aggregation layers.
        num_layers: aggregation layers.
        num_heads: heads of the Swin and class attentions.
        window_size: Swin window (official 12 on the 24x24 grid).
        pooling_size / test_pooling_size: class-attention pooling in training / eval mode
            (official: 2x2 in training, 1x1 in the evaluation script).
        pad_len: classes the class attention is padded to; more classes are pruned to
            this many per image (0 = neither).
        appearance_guidance_dim / text_guidance_dim: projected guidance channels.
        decoder_dims: output channels of the two upsampling stages.
        skip_proj_dims: channels the tap guidance is projected to (conv3x3 + ReLU).
        cost_embed_kernel: kernel of the cost embedding.

    Parameters map 1:1 (same shapes) to the official ones (:mod:`sed_d2.checkpoint.catseg`).
    """

    def __init__(
        self,
        *,
        text_channels: int,
        num_templates: int = 1,
        skip_channels: Sequence[int] = (256, 128),
        hidden_dim: int = 128,
        num_layers: int = 2,
        num_heads: int = 4,
        window_size: int = 12,
        pooling_size: Sequence[int] = (2, 2),
        test_pooling_size: Sequence[int] = (1, 1),
        pad_len: int = 256,
        appearance_guidance_dim: int = 128,
        text_guidance_dim: int = 128,
        decoder_dims: Sequence[int] = (64, 32),
        skip_proj_dims: Sequence[int] = (32, 16),
        cost_embed_kernel: int = 7,
    ) -> None:
        super().__init__()
        if not len(skip_channels) == len(skip_proj_dims) == len(decoder_dims):
            raise ValueError(
                f"skip_channels {tuple(skip_channels)}, skip_proj_dims {tuple(skip_proj_dims)} and decoder_dims "
                f"{tuple(decoder_dims)} need one value per upsampling stage"
            )
        self.pad_len = int(pad_len)
        self.skip_channels = tuple(skip_channels)
        self.cost_embed = CostEmbedding(num_templates, hidden_dim, cost_embed_kernel)
        self.appearance_guidance = Conv2dReLU(text_channels, appearance_guidance_dim, kernel_size=3, padding=1)
        self.text_guidance = nn.Linear(text_channels, text_guidance_dim)
        self.layers = nn.ModuleList(
            CATSegAggregationLayer(
                hidden_dim,
                appearance_guidance_dim=appearance_guidance_dim,
                text_guidance_dim=text_guidance_dim,
                num_heads=num_heads,
                window_size=window_size,
                pooling_size=pooling_size,
                test_pooling_size=test_pooling_size,
                pad_len=pad_len,
            )
            for _ in range(num_layers)
        )
        self.skip_projections = nn.ModuleList(
            Conv2dReLU(channels, proj, kernel_size=3, padding=1) for channels, proj in zip(skip_channels, skip_proj_dims)
        )
        in_dims = (hidden_dim, *decoder_dims[:-1])
        self.stages = nn.ModuleList(
            SkipFusion(cin, cout, skip_channels=proj) for cin, cout, proj in zip(in_dims, decoder_dims, skip_proj_dims)
        )
        self.head = nn.Conv2d(decoder_dims[-1], 1, kernel_size=3, padding=1)

    def cost_volume(self, image_embedding: Tensor, text_embeddings: Tensor) -> tuple[Tensor, Tensor | None]:
        """``(B, P, T', h, w)`` cosine costs and the kept classes: ``None`` when all ``T``
        classes are kept (``T <= pad_len``), else ``(B, pad_len)`` indices into ``T``,
        each image's classes of highest maximum cost over templates and pixels (unsorted,
        as the official ``topk(sorted=False)``)."""
        cost = cosine_cost_volume(image_embedding, text_embeddings)
        num_classes = cost.shape[2]
        if self.pad_len <= 0 or num_classes <= self.pad_len:
            return cost, None
        scores = cost.transpose(1, 2).flatten(2).amax(dim=-1)  # (B, T)
        classes = scores.topk(self.pad_len, dim=-1, sorted=False).indices
        index = classes[:, None, :, None, None].expand(-1, cost.shape[1], -1, *cost.shape[-2:])
        return cost.gather(2, index), classes

    def embed(self, cost: Tensor) -> Tensor:
        """``(B, P, T, h, w) -> (B, T, hidden_dim, h, w)``, channels-last class maps."""
        return channels_last_class_maps(self.cost_embed(cost))

    def text_guidance_of(self, text_embeddings: Tensor, classes: Tensor | None, batch: int) -> Tensor:
        """``ReLU(Linear(normalize(mean_P(normalize(text)))))``: ``(B, T', text_guidance_dim)``
        for the kept classes."""
        text = F.normalize(F.normalize(text_embeddings, dim=-1).mean(dim=1), dim=-1)
        guidance = F.relu(self.text_guidance(text))  # (T, G)
        if classes is None:
            return guidance.unsqueeze(0).expand(batch, -1, -1)
        return guidance[classes]

    def aggregate(self, x: Tensor, appearance_guidance: Tensor, text_guidance: Tensor) -> Tensor:
        """The aggregation layers: ``(B, T, hidden_dim, h, w) -> same``."""
        for layer in self.layers:
            x = layer(x, appearance_guidance, text_guidance)
        return x

    def upsample(self, x: Tensor, decoder_guidance: Sequence[Tensor]) -> Tensor:
        """Upsampling stages with the projected tap guidance, then the head:
        ``(B, T, hidden_dim, h, w) -> (B, T, 4h, 4w)`` logits."""
        for stage, projection, guidance in zip(self.stages, self.skip_projections, decoder_guidance):
            x = stage(x, projection(guidance))
        batch, num_classes = x.shape[:2]
        return self.head(x.flatten(0, 1)).view(batch, num_classes, *x.shape[-2:])

    @staticmethod
    def scatter_classes(logits: Tensor, classes: Tensor | None, num_classes: int) -> Tensor:
        """Kept-class logits ``(B, T', H, W)`` back into ``(B, T, H, W)``, the pruned
        classes at :data:`PRUNED_CLASS_LOGIT`."""
        if classes is None:
            return logits
        return scatter_classes(list(logits), list(classes), num_classes, fill=PRUNED_CLASS_LOGIT)


def build_catseg_decoder_for(clip_model: nn.Module, num_templates: int = 1, **kwargs) -> CATSegDecoder:
    """A :class:`CATSegDecoder` whose text channels are read off ``clip_model.visual``;
    ``kwargs`` go to the constructor."""
    return CATSegDecoder(text_channels=clip_model.visual.output_dim, num_templates=num_templates, **kwargs)


class CATSegModel(nn.Module):
    """CLIP (open_clip ViT) + tap upsamplers + :class:`CATSegDecoder`.

    Args:
        clip_model: an open_clip ``CLIP`` with a ViT image tower; registered as
            ``clip_model``.
        decoder: registered as ``decoder``.
        guidance_layers: 0-based visual blocks whose outputs are the decoder guidance,
            coarse to fine (official: ViT-B/16 (3, 7), ViT-L/14 (7, 15)); one per decoder
            stage.
        clip_finetune: ``"attention"`` (official): the q and v projection weights of every
            block of both CLIP towers train, everything else of CLIP is frozen; ``"full"``:
            every transformer block of both towers trains; ``"frozen"``.

    Nothing is detached (official): the taps, ``clip_vis_dense`` and the text embeddings
    carry gradients into CLIP.
    """

    # Rows: see sed_d2.models.parameter_groups. The CLIP rows are the official name rule
    # of sed_d2.clip.apply_clip_finetune, which also masks the k rows of the fused
    # in_proj_weight trained in "attention" mode (tests check that both agree).
    PARAMETER_GROUPS: dict[str, ParameterGroupTable] = {
        "attention": (
            (r"clip_model\.(visual\.)?transformer\.resblocks\.\d+\.attn\.in_proj_weight$", "clip"),
            (r"clip_model\.", "frozen"),
            (r"(guidance_upsamplers|decoder)\.", "decoder"),
        ),
        "full": (
            (r"clip_model\.(visual\.)?transformer\.", "clip"),
            (r"clip_model\.", "frozen"),
            (r"(guidance_upsamplers|decoder)\.", "decoder"),
        ),
        "frozen": (
            (r"clip_model\.", "frozen"),
            (r"(guidance_upsamplers|decoder)\.", "decoder"),
        ),
    }

    def __init__(
        self,
        clip_model: nn.Module,
        decoder: CATSegDecoder,
        *,
        guidance_layers: Sequence[int] = (3, 7),
        clip_finetune: str = "attention",
    ) -> None:
        super().__init__()
        if clip_finetune not in self.PARAMETER_GROUPS:
            raise ValueError(f"clip_finetune must be one of {sorted(self.PARAMETER_GROUPS)}, got {clip_finetune!r}")
        if len(guidance_layers) != len(decoder.skip_channels):
            raise ValueError(
                f"{len(decoder.skip_channels)} decoder stages need as many guidance layers, got {tuple(guidance_layers)}"
            )
        self.clip_model = clip_model
        self.guidance_layers = tuple(int(i) for i in guidance_layers)
        width = clip_model.visual.transformer.width
        # official upsample1 / upsample2: ConvTranspose2d(W, 256, 2, 2), (W, 128, 4, 4)
        self.guidance_upsamplers = nn.ModuleList(
            nn.ConvTranspose2d(width, channels, kernel_size=2 ** (i + 1), stride=2 ** (i + 1))
            for i, channels in enumerate(decoder.skip_channels)
        )
        self.decoder = decoder
        self.clip_finetune = clip_finetune
        self.parameter_groups = assign_parameter_groups(self, self.PARAMETER_GROUPS[clip_finetune])
        apply_clip_finetune(self.clip_model, clip_finetune)  # the k-row gradient masks

    def forward(self, images: Tensor, text_embeddings: Tensor) -> CATSegOutput:
        """
        Args:
            images: ``(B, 3, H, W)``, CLIP-normalised, at the CLIP resolution (384 for
                ViT-B/16, 336 for ViT-L/14-336).
            text_embeddings: ``(T, P, C)`` for the current vocabulary.
        """
        return self.decode(self.image_features(images), text_embeddings)

    def image_features(self, images: Tensor) -> dict[str, Tensor]:
        """The image tower's part of :meth:`forward`: ``clip_vis_dense`` (B, C, h, w) and
        the decoder guidance ``guidance_{i}`` (:meth:`guidance`). Shapes depend only on
        the images', so it can be replayed from a CUDA graph."""
        dense = vit_dense_features(self.clip_model.visual, images, guidance_layers=self.guidance_layers)
        features = {"clip_vis_dense": dense["clip_vis_dense"]}
        for index, guidance in enumerate(self.guidance(dense["guidance"])):
            features[f"guidance_{index}"] = guidance
        return features

    def guidance(self, taps: Sequence[Tensor]) -> list[Tensor]:
        """Decoder guidance from the visual taps ``(B, W, h, w)``: the ``i``-th upsampled by
        ``2**(i+1)`` (official ``res4``, ``res5``)."""
        return [upsampler(tap) for upsampler, tap in zip(self.guidance_upsamplers, taps)]

    def aggregate(self, x: Tensor, appearance_guidance: Tensor, text_guidance: Tensor) -> Tensor:
        """Cost aggregation on the embedded costs ``(B, T, hidden, h, w)``."""
        return self.decoder.aggregate(x, appearance_guidance, text_guidance)

    def decode(self, features: Mapping[str, Tensor], text_embeddings: Tensor) -> CATSegOutput:
        """Everything after :meth:`image_features`: cost volume (with class pruning), cost
        embedding, :meth:`aggregate`, the upsampling decoder and the head."""
        decoder = self.decoder
        image_embedding = features["clip_vis_dense"]
        cost, classes = decoder.cost_volume(image_embedding, text_embeddings)
        x = decoder.embed(cost)
        appearance = decoder.appearance_guidance(image_embedding)
        text_guidance = decoder.text_guidance_of(text_embeddings, classes, image_embedding.shape[0])
        x = self.aggregate(x, appearance, text_guidance)
        decoder_guidance = [features[f"guidance_{i}"] for i in range(len(self.guidance_upsamplers))]
        logits = decoder.upsample(x, decoder_guidance)
        return CATSegOutput(decoder.scatter_classes(logits, classes, text_embeddings.shape[0]))

    @staticmethod
    def losses(
        output: CATSegOutput,
        targets: Tensor,
        ignore_value: int,
        ignore_as_negative: bool = True,
        chunk_classes: int = TRAINING_CHUNK_CLASSES,
    ) -> dict[str, Tensor]:
        """Official CAT-Seg loss ``loss_sem_seg``: the logits upsampled bilinearly to the
        targets, sigmoid BCE against one-hot targets, mean over all elements; ignored
        pixels are all-negative targets (``ignore_as_negative=False``: excluded instead).
        ``chunk_classes``: see :func:`~sed_d2.losses.one_hot_bce_loss` (same value)."""
        return {
            "loss_sem_seg": one_hot_bce_loss(
                output.logits, targets, ignore_value, ignore_as_negative, chunk_classes=chunk_classes
            )
        }
