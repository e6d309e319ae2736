"""SED: hierarchical-encoder cost map + gradual fusion decoder with category early
rejection (Xie et al., CVPR 2024). Pure PyTorch: tensors in, logits / losses out.

Follows the official implementation (``xb534/SED``); where it differs from the paper
the official behaviour is the default and the paper's variant is an argument:

* ``SEDModel.losses(..., ignore_as_negative=True)``: ignored pixels are all-negative
  targets (code); ``False`` excludes them (paper).
* ``SEDDecoder(pooling_size=(2, 2), test_pooling_size=(1, 1))``: the class-attention
  pooling of the training config and of the official ``eval.sh`` override.
* Category early rejection (a ``rejection_rule``, SED's is ``top_k_union`` with the
  config's ``k``) works per image for any batch size (the official code only supports
  batch size 1) and returns ``-inf`` logits for rejected classes (the official code returns
  probability 0 for them).
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Callable, Mapping, NamedTuple, Optional, Sequence

import torch
from torch import Tensor, nn

from ..clip import convnext_dense_features, dense_feature_channels
from ..layers import (
    ClassLogitHead,
    ClassTransformerLayer,
    Conv2dReLU,
    ConvNeXtBlock,
    ConvTranspose2dReLU,
    CostEmbedding,
    CostVolume,
    SkipFusion,
    channels_last_class_maps,
    in_class_chunks,
    scatter_classes,
)
from ..losses import TRAINING_CHUNK_CLASSES, one_hot_bce_loss
from .parameter_groups import ParameterGroupTable, assign_parameter_groups

__all__ = ["RejectionRule", "SEDDecoder", "SEDModel", "SEDOutput", "SEDStage", "build_sed_decoder_for"]

# Category early rejection: an auxiliary head's (B, T, H, W) logits -> (B, T) bool, the
# classes that go on to the next stage. SED's rule is ``partial(top_k_union, k=k)``
# (sed_d2.layers); benchmarks fix the survivors with ``partial(top_n_classes, n=n)``.
RejectionRule = Callable[[Tensor], Tensor]

# The dense features that feed the decoder stages, coarse to fine.
SKIP_FEATURE_NAMES = ("res4", "res3", "res2")


class SEDOutput(NamedTuple):
    """``logits``: ``(B, T, 8h, 8w)`` main logits (``h, w`` = the cost-map grid, 1/32 of
    the input, so 1/4 of the input). ``aux_logits``: in training, the three auxiliary
    (rejection-head) logits at ``(h, w)``, ``(2h, 2w)``, ``(4h, 4w)``; empty otherwise."""

    logits: Tensor
    aux_logits: tuple[Tensor, ...] = ()


class SEDStage(nn.Module):
    """One decoder layer: feature aggregation (ConvNeXt block per class map, then
    class-axis attention) followed by skip-layer fusion (x2 upsampling).

    Official ``Up``: ``cnext`` -> ``spatial_block``, ``attention`` -> ``class_block``,
    ``up`` -> ``fusion.upsample``, ``conv`` -> ``fusion.double_conv``.

    ``forward(x (B, T, in, H, W), skip (B, skip_channels, 2H, 2W),
    cost (B, T, cost_channels, 2H, 2W)) -> (B, T, out, 2H, 2W)``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        skip_channels: int,
        cost_channels: int,
        num_heads: int,
        kernel_size: int,
        pooling_size: Sequence[int],
        test_pooling_size: Sequence[int],
    ) -> None:
        super().__init__()
        self.spatial_block = ConvNeXtBlock(in_channels, kernel_size, layer_scale_init=1.0)
        self.class_block = ClassTransformerLayer(
            in_channels, num_heads, pooling_size=pooling_size, test_pooling_size=test_pooling_size
        )
        self.fusion = SkipFusion(in_channels, out_channels, skip_channels=skip_channels, cost_channels=cost_channels)

    def forward(self, x: Tensor, skip: Tensor, cost: Tensor, chunk_classes: int = 0) -> Tensor:
        """``chunk_classes > 0`` (honoured only with gradients off): the per-class parts
        (spatial block, fusion) run on that many classes of one image at a time, which
        bounds their intermediate memory; class attention always sees all classes. The
        result is the same."""
        batch, num_classes = x.shape[:2]
        if chunk_classes <= 0 or torch.is_grad_enabled() or (batch == 1 and chunk_classes >= num_classes):
            x = self.spatial_block(x.flatten(0, 1)).unflatten(0, (batch, num_classes))
            x = self.class_block(x)
            return self.fusion(x, skip, cost)
        x = in_class_chunks(lambda b, part: self.spatial_block(part.flatten(0, 1)).unsqueeze(0), chunk_classes, x)
        x = self.class_block(x)
        return in_class_chunks(
            lambda b, part, part_cost: self.fusion(part, skip[b : b + 1], part_cost), chunk_classes, x, cost
        )


def _per_stage(value: int | Sequence[int], num_stages: int, name: str) -> tuple[int, ...]:
    values = (value,) * num_stages if isinstance(value, int) else tuple(value)
    if len(values) != num_stages:
        raise ValueError(f"{name} needs {num_stages} values, got {values}")
    return values


class SEDDecoder(nn.Module):
    """The gradual fusion decoder (official ``Aggregator``, text guidance disabled as in
    both official configs).

    Args:
        text_channels: ``P``, text embeddings per class (prompt templates; 80 in SED).
        skip_channels: channels of the skip features, coarse to fine (res4, res3, res2).
        hidden_dim: channels of the cost embedding.
        decoder_dims: output channels of the decoder stages.
        skip_proj_dims: channels the skip features are projected to (conv3x3 + ReLU).
        cost_guidance_dims: channels of the upsampled raw-cost guidance chain
            ``P -> d0 -> d1 -> d2`` (ConvTranspose k2 s2 + ReLU each).
        num_heads: class-attention heads.
        kernel_size: depthwise kernel of the ConvNeXt blocks (int or one per stage).
        cost_embed_kernel: kernel of the ``P -> hidden_dim`` cost embedding conv.
        pooling_size: class-attention pooling in training mode (official configs: 2x2).
        test_pooling_size: class-attention pooling in eval mode (official ``eval.sh``: 1x1).
        skip_feature_names: keys of ``skip_features`` read by the stages, coarse to fine.
        inference_chunk_pixels: with gradients off, the per-class parts of a stage run on
            chunks of classes of about this many output pixels (classes x stage output
            area) to bound peak memory at large vocabularies; 0 = all classes at once.
            Never changes the result.

    Speed (none of it changes the function or the parameters): class maps are kept
    channels-last throughout, so the ConvNeXt and class-attention layers (which work on
    the channel axis) need no layout copies and the convolutions run as NHWC; norms keep
    the activation dtype under bf16 autocast (:mod:`sed_d2.layers.norms`); the skip
    guidance's share of each fusion convolution runs once per image, not per class.

    ``forward`` returns :class:`SEDOutput`. Parameter names map 1:1 (same shapes) to the
    official ones, see :mod:`sed_d2.checkpoint`.
    """

    def __init__(
        self,
        *,
        text_channels: int,
        skip_channels: Sequence[int],
        hidden_dim: int = 128,
        decoder_dims: Sequence[int] = (64, 32, 16),
        skip_proj_dims: Sequence[int] = (32, 16, 8),
        cost_guidance_dims: Sequence[int] = (32, 16, 8),
        num_heads: int = 4,
        kernel_size: int | Sequence[int] = 9,
        cost_embed_kernel: int = 7,
        pooling_size: Sequence[int] = (2, 2),
        test_pooling_size: Sequence[int] = (1, 1),
        skip_feature_names: Sequence[str] = SKIP_FEATURE_NAMES,
        inference_chunk_pixels: int = 2**23,
    ) -> None:
        super().__init__()
        num_stages = len(decoder_dims)
        self.inference_chunk_pixels = int(inference_chunk_pixels)
        skip_channels = _per_stage(skip_channels, num_stages, "skip_channels")
        skip_proj_dims = _per_stage(skip_proj_dims, num_stages, "skip_proj_dims")
        cost_guidance_dims = _per_stage(cost_guidance_dims, num_stages, "cost_guidance_dims")
        kernel_sizes = _per_stage(kernel_size, num_stages, "kernel_size")
        self.skip_feature_names = tuple(skip_feature_names)
        if len(self.skip_feature_names) != num_stages:
            raise ValueError(f"skip_feature_names needs {num_stages} names, got {self.skip_feature_names}")
        in_dims = (hidden_dim, *decoder_dims[:-1])

        self.cost_volume = CostVolume()
        self.cost_embed = CostEmbedding(text_channels, hidden_dim, cost_embed_kernel)
        self.skip_projections = nn.ModuleList(
            Conv2dReLU(channels, proj, kernel_size=3, padding=1) for channels, proj in zip(skip_channels, skip_proj_dims)
        )
        self.cost_upsamplers = nn.ModuleList(
            ConvTranspose2dReLU(cin, cout, kernel_size=2, stride=2)
            for cin, cout in zip((text_channels, *cost_guidance_dims[:-1]), cost_guidance_dims)
        )
        self.stages = nn.ModuleList(
            SEDStage(
                cin,
                cout,
                skip_channels=proj,
                cost_channels=cost,
                num_heads=num_heads,
                kernel_size=kernel,
                pooling_size=pooling_size,
                test_pooling_size=test_pooling_size,
            )
            for cin, cout, proj, cost, kernel in zip(in_dims, decoder_dims, skip_proj_dims, cost_guidance_dims, kernel_sizes)
        )
        self.aux_heads = nn.ModuleList(ClassLogitHead(channels, kernel_size=3) for channels in in_dims)
        self.head = ClassLogitHead(decoder_dims[-1], kernel_size=3)

    def forward(
        self,
        image_embedding: Tensor,
        text_embeddings: Tensor,
        skip_features: Mapping[str, Tensor],
        rejection_rule: Optional[RejectionRule] = None,
    ) -> SEDOutput:
        """
        Args:
            image_embedding: ``(B, C, h, w)`` dense CLIP embedding (``clip_vis_dense``).
            text_embeddings: ``(T, P, C)``, shared by the batch.
            skip_features: ``res4`` / ``res3`` / ``res2`` at ``2x``, ``4x``, ``8x`` the
                ``(h, w)`` grid. Used as given (the caller detaches them).
            rejection_rule: category early rejection (:data:`RejectionRule`), in eval mode
                only (the official code also ignores it in training); None = off.

        Returns:
            :class:`SEDOutput` with ``(B, T, 8h, 8w)`` logits (``-inf`` for classes
            rejected by CER) and, in training, the three auxiliary logits.
        """
        cost = self.cost_volume(image_embedding, text_embeddings).transpose(1, 2)  # (B, T, P, h, w)
        cost = channels_last_class_maps(cost)
        x = self.cost_embed.embed_class_maps(cost)  # (B, T, hidden, h, w), channels-last maps
        height, width = cost.shape[-2:]
        skips = []
        for index, (projection, name) in enumerate(zip(self.skip_projections, self.skip_feature_names)):
            feature = skip_features[name]
            expected = (height * 2 ** (index + 1), width * 2 ** (index + 1))
            if tuple(feature.shape[-2:]) != expected:
                raise ValueError(f"skip feature {name!r} is {tuple(feature.shape[-2:])}, expected {expected}")
            skips.append(projection(feature.contiguous(memory_format=torch.channels_last)))
        if rejection_rule is not None and not self.training:
            return SEDOutput(self._forward_with_rejection(x, cost, skips, rejection_rule))
        aux_logits = []
        for index, stage in enumerate(self.stages):
            if self.training:
                # stop-gradient #2: the rejection heads never train the decoder
                aux_logits.append(self.aux_heads[index](x.detach()))
            cost = self._upsample_cost(index, cost)
            x = stage(x, skips[index], cost, chunk_classes=self._chunk_classes(cost))
        return SEDOutput(self.head(x), tuple(aux_logits))

    def _chunk_classes(self, stage_output: Tensor) -> int:
        if self.inference_chunk_pixels <= 0:
            return 0
        return max(1, self.inference_chunk_pixels // (stage_output.shape[-2] * stage_output.shape[-1]))

    def _upsample_cost(self, index: int, cost: Tensor) -> Tensor:
        batch, num_classes = cost.shape[:2]
        return self.cost_upsamplers[index](cost.flatten(0, 1)).unflatten(0, (batch, num_classes))

    def _forward_with_rejection(
        self, x: Tensor, cost: Tensor, skips: list[Tensor], rejection_rule: RejectionRule
    ) -> Tensor:
        """Category early rejection (paper 3.3, official ``fast_conv_decoder``).

        Before every stage, the auxiliary head of that stage scores the classes still
        alive and ``rejection_rule`` picks the survivors (SED: a class survives if it is
        among the top-``k`` classes of at least one pixel of the image). Following stages
        (class attention included) see the survivors only.

        The batch runs jointly while no image has rejected anything (so ``k >= T`` runs
        exactly the plain path); from the first rejection on, each image runs on its own,
        so an image's result never depends on the rest of the batch.
        """
        batch, num_classes = x.shape[:2]
        xs: list[Tensor] = []
        costs: list[Tensor] = []
        classes: list[Tensor] = []  # per image: surviving class indices (into 0..T-1)
        for index, stage in enumerate(self.stages):
            if not classes:
                keep = rejection_rule(self.aux_heads[index](x))
                if bool(keep.all()):
                    cost = self._upsample_cost(index, cost)
                    x = stage(x, skips[index], cost, chunk_classes=self._chunk_classes(cost))
                    continue
                for image in range(batch):
                    survivors = keep[image].nonzero().squeeze(1)
                    xs.append(channels_last_class_maps(x[image : image + 1, survivors]))
                    costs.append(channels_last_class_maps(cost[image : image + 1, survivors]))
                    classes.append(survivors)
            else:
                for image in range(batch):
                    keep = rejection_rule(self.aux_heads[index](xs[image]))
                    survivors = keep[0].nonzero().squeeze(1)
                    xs[image] = channels_last_class_maps(xs[image][:, survivors])
                    costs[image] = channels_last_class_maps(costs[image][:, survivors])
                    classes[image] = classes[image][survivors]
            for image in range(batch):
                costs[image] = self._upsample_cost(index, costs[image])
                xs[image] = stage(
                    xs[image],
                    skips[index][image : image + 1],
                    costs[image],
                    chunk_classes=self._chunk_classes(costs[image]),
                )
        if not classes:
            return self.head(x)
        return scatter_classes([self.head(x_image)[0] for x_image in xs], classes, num_classes)


def build_sed_decoder_for(
    clip_model: nn.Module, num_templates: int, *, skip_feature_names: Sequence[str] = SKIP_FEATURE_NAMES, **kwargs
) -> SEDDecoder:
    """Build a :class:`SEDDecoder` whose skip channels are read off ``clip_model.visual``
    (``dense_feature_channels``); ``kwargs`` go to the constructor."""
    channels = dense_feature_channels(clip_model.visual)
    return SEDDecoder(
        text_channels=num_templates,
        skip_channels=tuple(channels[name] for name in skip_feature_names),
        skip_feature_names=skip_feature_names,
        **kwargs,
    )


class SEDModel(nn.Module):
    """CLIP (open_clip, ConvNeXt image tower) + :class:`SEDDecoder`.

    Args:
        clip_model: an open_clip ``CLIP`` with a timm ConvNeXt image tower; registered as
            ``clip_model``.
        decoder: the decoder; registered as ``decoder``.
        clip_finetune: ``"full"`` trains all of ``clip_model.visual`` (trunk and the
            projection head that makes ``clip_vis_dense``) with the CLIP lr multiplier;
            ``"frozen"`` freezes it. The text tower, token / positional embeddings,
            ``ln_final``, ``text_projection`` and ``logit_scale`` are always frozen.

    Gradient flow (official): the trunk is fine-tuned only through ``clip_vis_dense``
    (the cost volume); the res2..res4 skip features are detached here (stop-gradient #1),
    and the auxiliary heads read detached decoder features (stop-gradient #2).
    """

    PARAMETER_GROUPS: dict[str, ParameterGroupTable] = {
        "full": (
            (r"clip_model\.visual\.", "clip"),
            (r"clip_model\.", "frozen"),
            (r"decoder\.", "decoder"),
        ),
        "frozen": (
            (r"clip_model\.", "frozen"),
            (r"decoder\.", "decoder"),
        ),
    }

    def __init__(self, clip_model: nn.Module, decoder: SEDDecoder, *, clip_finetune: str = "full") -> None:
        super().__init__()
        if clip_finetune not in self.PARAMETER_GROUPS:
            raise ValueError(f"clip_finetune must be one of {sorted(self.PARAMETER_GROUPS)}, got {clip_finetune!r}")
        self.clip_model = clip_model
        self.decoder = decoder
        self.clip_finetune = clip_finetune
        self.parameter_groups = assign_parameter_groups(self, self.PARAMETER_GROUPS[clip_finetune])

    def forward(
        self, images: Tensor, text_embeddings: Tensor, rejection_rule: Optional[RejectionRule] = None
    ) -> SEDOutput:
        """
        Args:
            images: ``(B, 3, H, W)``, CLIP-normalised (H, W multiples of 32).
            text_embeddings: ``(T, P, C)`` for the current vocabulary.
            rejection_rule: category early rejection (eval only; None = off), see
                :meth:`SEDDecoder.forward`.
        """
        return self.decode(self.image_features(images), text_embeddings, rejection_rule)

    def image_features(self, images: Tensor) -> dict[str, Tensor]:
        """The image tower's part of :meth:`forward`: ``clip_vis_dense`` and the decoder's
        skip features (detached: stop-gradient #1). Its shapes depend only on the images',
        so it can be replayed from a CUDA graph also when the decoder cannot (CER)."""
        device_type = images.device.type
        # The fast trunk path (shared ConvNeXt block, Triton kernels), in the autocast dtype:
        # in training it saves ~26% of the trunk's step (H200, batch 4, bf16); at bf16
        # inference, replayed from a CUDA graph, 3.3 ms against 5.0 ms for timm's modules in
        # float32 (H200, 768x768, batch 1; eagerly it is launch bound at batch 1). Float32
        # inference keeps timm's modules.
        fast = self.training or torch.is_autocast_enabled(device_type)
        precision = nullcontext() if fast else torch.autocast(device_type, enabled=False)
        with precision:
            features = convnext_dense_features(self.clip_model.visual, images, fast=fast)
        dense = {name: features[name].detach() for name in self.decoder.skip_feature_names}
        dense["clip_vis_dense"] = features["clip_vis_dense"]
        return dense

    def decode(
        self, features: Mapping[str, Tensor], text_embeddings: Tensor, rejection_rule: Optional[RejectionRule] = None
    ) -> SEDOutput:
        """The decoder's part of :meth:`forward` on :meth:`image_features`' output."""
        skips = {name: features[name] for name in self.decoder.skip_feature_names}
        return self.decoder(features["clip_vis_dense"], text_embeddings, skips, rejection_rule)

    @staticmethod
    def losses(
        output: SEDOutput,
        targets: Tensor,
        ignore_value: int,
        ignore_as_negative: bool = True,
        chunk_classes: int = TRAINING_CHUNK_CLASSES,
    ) -> dict[str, Tensor]:
        """Official SED losses: ``loss_sem_seg_0`` (main) and ``loss_sem_seg_{1,2,3}``
        (auxiliary heads at 1/32, 1/16, 1/8), each :func:`one_hot_bce_loss` with weight 1.

        ``chunk_classes``: see :func:`one_hot_bce_loss` (the same values; > 0 saves the
        full-resolution upsampled logits of all classes from being kept for backward;
        the loss is then computed in float32 also under bf16 autocast). 0 = plain."""
        return {
            f"loss_sem_seg_{index}": one_hot_bce_loss(
                logits, targets, ignore_value, ignore_as_negative, chunk_classes=chunk_classes
            )
            for index, logits in enumerate((output.logits, *output.aux_logits))
        }
