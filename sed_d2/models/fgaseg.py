"""FGAseg: fine-grained pixel-text alignment for open-vocabulary semantic segmentation (Li et
al., arXiv 2501.00877). Pure PyTorch: tensors in, logits / losses out.

CAT-Seg (:mod:`sed_d2.models.catseg`) plus, following the official implementation
(``LiBingyu01/FGA-seg`` c1e60a4):

1. **P2Tformer** (official ``DCDT``): every class embedding attends to the image's dense CLIP
   embedding (:class:`~sed_d2.layers.cross_attention.TextImageCrossAttention`, sine position
   embedding on the keys); the refined text is ``text + gamma * attended`` and differs per
   image: ``(B, T, C)``;
2. **T2P projector** (official ``proj``, training only): a CRIS-style neck upsamples the dense
   embedding x4 and every refined class embedding generates a 3x3 kernel over it: alignment
   logits ``(B, T, 4h, 4w)``, trained against the downsampled one-hot labels (``loss_align``);
3. **GCS**: CAT-Seg's cosine cost volume, with the refined per-image text;
4. **LCS** (official ``Local_align``): every refined class embedding generates a ``k x k``
   kernel over all channels of the L2-normalised dense embedding (softmax over the taps of
   each channel), a second cost map per class;
5. both costs embedded (7x7 convolutions), fused ("cat": a linear layer over the concatenated
   channels, or "add"), aggregated (CAT-Seg layers), and the LCS embedding fused in again
   before each upsampling stage (the second time upsampled by a transposed convolution and a
   double convolution);
6. decoder mode ``"no_fast"`` (the paper's headline model) or ``"fast"``: three auxiliary
   heads (before aggregation, before each upsampling stage) trained with BCE, and at
   inference only the classes in the top ``top_k`` of some pixel of an auxiliary map go on
   to the next step.

Where this differs from the official code, all of it switchable where it changes numbers:
the official debugging dumps and prints (which crash training and evaluation) are not
reproduced; ``"fast"`` with ``"add"`` fusion evaluates (the official inference always calls
the "cat" layers and raises); any batch at inference (``top_k_union``: union of the kept
classes over the network call, official, or per image); the T2P projector is skipped at
inference; its BatchNorm statistics are per image by default (``t2p_bn_per_image``, the
paper's one image per GPU).
"""

from __future__ import annotations

from typing import Mapping, NamedTuple, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..layers import ClassLogitHead, CostEmbedding, DoubleConv, channels_last_class_maps, top_k_union
from ..layers.cross_attention import TextImageCrossAttention
from ..layers.dynamic_conv import KERNEL_NORMS, class_conditional_conv2d, normalize_kernels
from ..layers.position_encoding import sine_position_embedding
from ..losses import TRAINING_CHUNK_CLASSES, alignment_loss, one_hot_bce_loss
from ..ops import bilinear_resize
from .catseg import PRUNED_CLASS_LOGIT, CATSegDecoder, CATSegModel
from .parameter_groups import assign_parameter_groups

__all__ = [
    "DECODER_MODES",
    "FAST_SCORES",
    "FGASegDecoder",
    "FGASegModel",
    "FGASegOutput",
    "FUSIONS",
    "LOSS_TYPES",
    "LocalCategorySupplementation",
    "P2Tformer",
    "T2PProjector",
    "TOP_K_UNIONS",
    "build_fgaseg_decoder_for",
]

DECODER_MODES = ("no_fast", "fast")
FUSIONS = ("cat", "add")
# "official": the official fast inference returns sigmoid(logit) for the kept classes and 0
# for the rejected ones, and the model applies a sigmoid again (kept classes score in
# (0.5, 0.73), rejected ones 0.5); "probability": logits, rejected classes at -100 (score 0).
FAST_SCORES = ("official", "probability")
# "batch": one class set for the whole network call (official: in the sliding-window protocol
# the 5 views of the image); "image": each image (view) keeps its own classes.
TOP_K_UNIONS = ("batch", "image")
# "bce": sigmoid BCE on one-hot targets (official); "ce": softmax cross-entropy (the paper's
# Eq. 11-13), ignored pixels excluded.
LOSS_TYPES = ("bce", "ce")


class FGASegOutput(NamedTuple):
    """``logits`` ``(B, T, 4h, 4w)`` (pruned classes at :data:`PRUNED_CLASS_LOGIT`; fast mode
    at inference: see :data:`FAST_SCORES`); ``aux_logits``: the fast mode's three auxiliary
    maps in training (``(B, T, h, w)`` x2, ``(B, T, 2h, 2w)``), else empty; ``align_logits``:
    the T2P projector's ``(B, T, 4h, 4w)`` in training, else None."""

    logits: Tensor
    aux_logits: tuple[Tensor, ...] = ()
    align_logits: Tensor | None = None


class P2Tformer(nn.Module):
    """Pixel-to-text alignment transformer (official ``P2Tformer``, attribute ``DCDT``).

    ``forward(image (B, C, h, w), text (T, 1, C)) -> (B, T, C)``: ``t_0`` = the text for every
    image, ``t_i = layer_i(t_{i-1}, image tokens, sine position embedding)``, output
    ``t_0 + gamma * t_N``. Nothing is normalised: the image is the raw dense CLIP embedding.

    Args:
        dim: ``C``.
        num_heads: attention heads (official 8).
        num_layers: cross-attention layers (official ``P2T_LAYER`` 1).
        gamma_init: initial value of every channel of ``gamma`` (official 0.1).
        gamma_trainable: ``gamma`` is a parameter (official) or a fixed buffer (the paper's
            ablation with a constant gamma).
        pos_on_values: see :class:`~sed_d2.layers.cross_attention.TextImageCrossAttention`.
    """

    def __init__(
        self,
        dim: int,
        *,
        num_heads: int = 8,
        num_layers: int = 1,
        gamma_init: float = 0.1,
        gamma_trainable: bool = True,
        pos_on_values: bool = False,
    ) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            TextImageCrossAttention(dim, num_heads, pos_on_values=pos_on_values) for _ in range(num_layers)
        )
        gamma = torch.full((dim,), float(gamma_init))
        if gamma_trainable:
            self.gamma = nn.Parameter(gamma)
        else:
            self.register_buffer("gamma", gamma)

    def forward(self, image: Tensor, text: Tensor) -> Tensor:
        if text.dim() != 3 or text.shape[1] != 1:
            raise ValueError(
                f"FGAseg refines one text embedding per class (T, 1, C): use one prompt template, got {tuple(text.shape)}"
            )
        batch, channels, height, width = image.shape
        initial = text[:, 0].unsqueeze(0).expand(batch, -1, -1)  # (B, T, C)
        tokens = image.flatten(2).transpose(1, 2)  # (B, hw, C)
        pos = sine_position_embedding(height, width, channels, device=image.device, dtype=tokens.dtype)
        pos = pos.flatten(1).t()  # (hw, C)
        refined = initial
        for layer in self.layers:
            refined = layer(refined, tokens, pos)
        return initial + self.gamma * refined


class T2PProjector(nn.Module):
    """Text-to-pixel projector of the alignment loss (official ``Projector``), training only.

    Vision neck on the raw dense embedding ``(B, C, h, w)``: x2 bilinear, conv3x3 (C -> C) +
    BN + ReLU, x2 bilinear, conv3x3 (C -> C/2) + BN + ReLU, conv1x1: ``(B, C/2, 4h, 4w)``.
    Every refined class embedding ``(B, T, C)`` generates (``kernel_generator``, no
    normalisation) a ``k x k`` kernel over the ``C/2`` channels and a bias: alignment logits
    ``(B, T, 4h, 4w)``.

    Args:
        dim: ``C`` (even).
        kernel_size: official 3 (fixed there, independent of the LCS kernel).
        bn_per_image: in training, the BatchNorm statistics of each image on its own (the
            paper trains with one image per GPU, plain BatchNorm); False: over the batch
            (the official code with several images on one GPU).
    """

    def __init__(self, dim: int, *, kernel_size: int = 3, bn_per_image: bool = True) -> None:
        super().__init__()
        if dim % 2:
            raise ValueError(f"T2P projector needs an even embedding width, got {dim}")
        vision = dim // 2
        self.kernel_size = kernel_size
        self.bn_per_image = bn_per_image
        self.conv1 = nn.Conv2d(dim, dim, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(dim)
        self.conv2 = nn.Conv2d(dim, vision, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(vision)
        self.conv3 = nn.Conv2d(vision, vision, 1)
        self.kernel_generator = nn.Linear(dim, vision * kernel_size * kernel_size + 1)

    def _norm(self, bn: nn.BatchNorm2d, x: Tensor) -> Tensor:
        if self.bn_per_image and self.training:
            # per-image statistics (instance norm), running statistics updated with their mean
            return F.instance_norm(
                x, bn.running_mean, bn.running_var, bn.weight, bn.bias, True, bn.momentum, bn.eps
            )
        return bn(x)

    def vision(self, image: Tensor) -> Tensor:
        x = F.interpolate(image, scale_factor=2, mode="bilinear", align_corners=False)
        x = F.relu(self._norm(self.bn1, self.conv1(x)))
        x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
        x = F.relu(self._norm(self.bn2, self.conv2(x)))
        return self.conv3(x)

    def forward(self, image: Tensor, text: Tensor) -> Tensor:
        features = self.vision(image)
        batch, channels = features.shape[:2]
        params = self.kernel_generator(text)  # (B, T, C/2 * k * k + 1)
        k = self.kernel_size
        weight = params[..., :-1].unflatten(-1, (channels, k, k))
        return class_conditional_conv2d(features, weight, params[..., -1])


class LocalCategorySupplementation(nn.Module):
    """LCS (official ``Local_align``): ``(B, T, h, w)`` local cost maps.

    Each L2-normalised class embedding generates (``kernel_generator``) a ``k x k`` kernel
    over all ``C`` channels and a bias; the kernel is normalised (``kernel_norm``, official
    "taps": softmax over the ``k*k`` taps of each channel) and convolved (zero padding) with
    the L2-normalised dense embedding.

    With "taps" every channel's taps are positive and sum to one, so the text sets only the
    spatial weighting per channel and the bias (with ``k = 1`` the map is the same for every
    class up to its bias): official behaviour, kept.
    """

    def __init__(self, dim: int, *, kernel_size: int = 3, kernel_norm: str = "taps") -> None:
        super().__init__()
        if kernel_norm not in KERNEL_NORMS:
            raise ValueError(f"kernel_norm must be one of {KERNEL_NORMS}, got {kernel_norm!r}")
        if kernel_size % 2 != 1:
            raise ValueError(f"LCS kernel size must be odd, got {kernel_size}")
        self.kernel_size = kernel_size
        self.kernel_norm = kernel_norm
        self.kernel_generator = nn.Linear(dim, dim * kernel_size * kernel_size + 1)

    def forward(self, image: Tensor, text: Tensor) -> Tensor:
        """``image`` ``(B, C, h, w)``, ``text`` ``(B, T, C)`` -> ``(B, T, h, w)``."""
        params = self.kernel_generator(F.normalize(text, dim=-1))
        k = self.kernel_size
        weight = normalize_kernels(params[..., :-1].unflatten(-1, (image.shape[1], k, k)), self.kernel_norm)
        return class_conditional_conv2d(F.normalize(image, dim=1), weight, params[..., -1])


class LocalUpsampler(nn.Module):
    """The LCS embedding for the second decoder stage (official
    ``corr_local_decoder_projection``): ``ConvTranspose2d(k2, s2)`` then :class:`DoubleConv`
    (which ends in the official trailing ReLU), per class map."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.upsample = nn.ConvTranspose2d(in_channels, out_channels, kernel_size=2, stride=2)
        self.double_conv = DoubleConv(out_channels, out_channels)

    def forward(self, x: Tensor) -> Tensor:
        """``(B, T, in, h, w) -> (B, T, out, 2h, 2w)``."""
        return self.double_conv(self.upsample(x.flatten(0, 1))).unflatten(0, x.shape[:2])


class FGASegDecoder(CATSegDecoder):
    """The official ``Decoder`` / ``Decoder_fast``: CAT-Seg's aggregator (inherited: cost
    embedding ``cost_embed`` of GCS, guidance projections, aggregation layers, upsampling
    stages, head) plus the LCS, its embedding, the fusions and (fast mode) the auxiliary heads.

    Args:
        decoder_mode: :data:`DECODER_MODES`.
        fusion: :data:`FUSIONS`: "cat", ``Linear(2c, c)`` over the concatenated channels at
            the three fusion points; "add", their sum.
        lcs_kernel_size, lcs_kernel_norm: see :class:`LocalCategorySupplementation`.
        top_k, top_k_union, fast_scores: fast-mode inference (:data:`TOP_K_UNIONS`,
            :data:`FAST_SCORES`).
        kwargs: :class:`~sed_d2.models.catseg.CATSegDecoder`'s (two upsampling stages; one
            prompt template).
    """

    def __init__(
        self,
        *,
        decoder_mode: str = "no_fast",
        fusion: str = "cat",
        lcs_kernel_size: int = 3,
        lcs_kernel_norm: str = "taps",
        top_k: int = 16,
        top_k_union: str = "batch",
        fast_scores: str = "official",
        **kwargs,
    ) -> None:
        for name, value, allowed in (
            ("decoder_mode", decoder_mode, DECODER_MODES),
            ("fusion", fusion, FUSIONS),
            ("top_k_union", top_k_union, TOP_K_UNIONS),
            ("fast_scores", fast_scores, FAST_SCORES),
        ):
            if value not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {value!r}")
        if kwargs.get("num_templates", 1) != 1:
            raise ValueError("FGAseg uses one prompt template (num_templates=1)")
        super().__init__(**kwargs)
        if len(self.stages) != 2:
            raise ValueError(f"FGAseg fuses the LCS into exactly two upsampling stages, got {len(self.stages)}")
        hidden = self.cost_embed.conv.out_channels
        first = self.stages[0].double_conv.conv2.out_channels
        self.decoder_mode = decoder_mode
        self.fusion = fusion
        self.top_k = int(top_k)
        self.top_k_union = top_k_union
        self.fast_scores = fast_scores
        self.lcs = LocalCategorySupplementation(
            kwargs["text_channels"], kernel_size=lcs_kernel_size, kernel_norm=lcs_kernel_norm
        )
        self.local_embed = CostEmbedding(1, hidden, self.cost_embed.conv.kernel_size[0])
        # official conv_cat, conv_cat_decoder_1, conv_cat_decoder_2
        self.fuse = (
            nn.ModuleList([nn.Linear(2 * hidden, hidden), nn.Linear(2 * hidden, hidden), nn.Linear(2 * first, first)])
            if fusion == "cat"
            else None
        )
        self.local_upsample = LocalUpsampler(hidden, first)
        # official head_auxi_{0,1,2}
        self.aux_heads = (
            nn.ModuleList([ClassLogitHead(hidden), ClassLogitHead(hidden), ClassLogitHead(first)])
            if decoder_mode == "fast"
            else None
        )

    @property
    def fast(self) -> bool:
        return self.decoder_mode == "fast"

    def local_cost(self, image_embedding: Tensor, text: Tensor) -> Tensor:
        """LCS of the kept classes: ``(B, T', h, w)``."""
        return self.lcs(image_embedding, text)

    def embed_local(self, local_cost: Tensor) -> Tensor:
        """``(B, T, h, w) -> (B, T, hidden, h, w)``, channels-last class maps."""
        return channels_last_class_maps(self.local_embed.embed_class_maps(local_cost.unsqueeze(2)))

    def fuse_at(self, index: int, x: Tensor, local: Tensor) -> Tensor:
        """Fusion point ``index`` (0: before aggregation, 1, 2: before the upsampling
        stages) of class maps ``(B, T, c, h, w)`` with the LCS embedding of the same shape."""
        if self.fuse is None:
            return x + local
        fused = self.fuse[index](torch.cat([x, local], dim=2).movedim(2, -1)).movedim(-1, 2)
        return channels_last_class_maps(fused)

    def text_guidance_of(self, text: Tensor) -> Tensor:
        """``ReLU(Linear(normalize(text)))`` of the per-image refined text ``(B, T', C)`` (the
        kept classes already gathered): ``(B, T', text_guidance_dim)``."""
        return F.relu(self.text_guidance(F.normalize(text, dim=-1)))

    def stage(self, index: int, x: Tensor, guidance: Tensor) -> Tensor:
        """Upsampling stage ``index`` with its projected tap guidance."""
        return self.stages[index](x, self.skip_projections[index](guidance))

    def kept_classes(self, aux_logits: Tensor) -> Tensor:
        """Fast inference on images that share their classes, auxiliary logits ``(B, T, h, w)``:
        the indices of the classes among the top ``top_k`` of some pixel of any image (the
        official rule)."""
        return top_k_union(aux_logits, self.top_k).any(dim=0).nonzero().squeeze(1)


def build_fgaseg_decoder_for(clip_model: nn.Module, **kwargs) -> FGASegDecoder:
    """A :class:`FGASegDecoder` whose text channels are read off ``clip_model.visual``."""
    return FGASegDecoder(text_channels=clip_model.visual.output_dim, **kwargs)


class FGASegModel(CATSegModel):
    """CLIP + tap upsamplers (CAT-Seg) + :class:`P2Tformer` (``p2t``) + :class:`T2PProjector`
    (``t2p``) + :class:`FGASegDecoder`.

    Args:
        clip_model, decoder, guidance_layers, clip_finetune: see
            :class:`~sed_d2.models.catseg.CATSegModel`.
        p2t: keyword arguments of :class:`P2Tformer` (not ``dim``).
        t2p_kernel_size, t2p_bn_per_image: see :class:`T2PProjector`.
        align_weight: weight of ``loss_align`` (official ``LAMBDA_ALIGN`` 0.02; 0 skips the
            projector).
        align_loss: "bce" (official) or "mse" (the paper's Eq. 8,
            :func:`~sed_d2.losses.alignment_loss`).
        aux_weights: weights of the three fast-mode auxiliary losses (official 0.2, 1, 1).
        loss_type: :data:`LOSS_TYPES`, for the main and auxiliary losses.

    Nothing is detached (official): the refined text and the dense embedding carry the
    alignment and auxiliary gradients into CLIP.
    """

    PARAMETER_GROUPS = {
        mode: tuple(rows[:-1]) + ((r"(guidance_upsamplers|decoder|p2t|t2p)\.", "decoder"),)
        for mode, rows in CATSegModel.PARAMETER_GROUPS.items()
    }

    def __init__(
        self,
        clip_model: nn.Module,
        decoder: FGASegDecoder,
        *,
        guidance_layers: Sequence[int] = (3, 7),
        clip_finetune: str = "attention",
        p2t: Mapping[str, object] | None = None,
        t2p_kernel_size: int = 3,
        t2p_bn_per_image: bool = True,
        align_weight: float = 0.02,
        align_loss: str = "bce",
        aux_weights: Sequence[float] = (0.2, 1.0, 1.0),
        loss_type: str = "bce",
    ) -> None:
        super().__init__(clip_model, decoder, guidance_layers=guidance_layers, clip_finetune=clip_finetune)
        if loss_type not in LOSS_TYPES:
            raise ValueError(f"loss_type must be one of {LOSS_TYPES}, got {loss_type!r}")
        if len(aux_weights) != 3:
            raise ValueError(f"aux_weights needs one weight per auxiliary head (3), got {tuple(aux_weights)}")
        dim = clip_model.visual.output_dim
        self.p2t = P2Tformer(dim, **dict(p2t or {}))
        self.t2p = T2PProjector(dim, kernel_size=t2p_kernel_size, bn_per_image=t2p_bn_per_image)
        self.align_weight = float(align_weight)
        self.align_loss = align_loss
        self.aux_weights = tuple(float(w) for w in aux_weights)
        self.loss_type = loss_type
        # the base assigned the groups before p2t / t2p existed
        self.parameter_groups = assign_parameter_groups(self, self.PARAMETER_GROUPS[clip_finetune])

    def refine_text(self, image_embedding: Tensor, text_embeddings: Tensor) -> Tensor:
        """The P2Tformer: ``(T, 1, C)`` -> per-image ``(B, T, C)``."""
        return self.p2t(image_embedding, text_embeddings)

    def decode(self, features: Mapping[str, Tensor], text_embeddings: Tensor) -> FGASegOutput:
        """Everything after :meth:`image_features`: P2Tformer, (training) T2P projector, GCS
        with class pruning, LCS, fusions, aggregation, upsampling with the LCS, head."""
        decoder = self.decoder
        dense = features["clip_vis_dense"]
        text = self.refine_text(dense, text_embeddings)  # (B, T, C)
        align = self.t2p(dense, text) if self.training and self.align_weight else None
        num_classes = text.shape[1]
        cost, classes = decoder.cost_volume(dense, text.unsqueeze(2))
        if classes is not None:
            text = text.gather(1, classes[..., None].expand(-1, -1, text.shape[-1]))
        local = decoder.embed_local(decoder.local_cost(dense, text))
        x = decoder.embed(cost)
        appearance = decoder.appearance_guidance(dense)
        text_guidance = decoder.text_guidance_of(text)
        guidance = [features[f"guidance_{i}"] for i in range(len(self.guidance_upsamplers))]
        if decoder.fast and not self.training:
            logits = self._fast_inference(x, local, appearance, text_guidance, guidance, classes)
            return FGASegOutput(decoder.scatter_classes(logits, classes, num_classes))
        x = decoder.fuse_at(0, x, local)
        aux = [decoder.aux_heads[0](x)] if decoder.fast else []
        x = decoder.fuse_at(1, self.aggregate(x, appearance, text_guidance), local)
        if decoder.fast:
            aux.append(decoder.aux_heads[1](x))
        x = decoder.fuse_at(2, decoder.stage(0, x, guidance[0]), decoder.local_upsample(local))
        if decoder.fast:
            aux.append(decoder.aux_heads[2](x))
        logits = decoder.head(decoder.stage(1, x, guidance[1]).flatten(0, 1)).view(*x.shape[:2], *guidance[1].shape[-2:])
        aux = [decoder.scatter_classes(a, classes, num_classes) for a in aux]
        return FGASegOutput(decoder.scatter_classes(logits, classes, num_classes), tuple(aux), align)

    def _fast_inference(self, x, local, appearance, text_guidance, guidance, classes) -> Tensor:
        """The official ``conv_decoder_inference``: after each auxiliary head only the classes
        among the top ``top_k`` of some pixel go on (:meth:`FGASegDecoder.kept_classes`).
        ``(B, T', H, W)`` "logits" as :data:`FAST_SCORES` says.

        When every image holds the same classes (no class pruning) and the union is over the
        batch, the kept classes are the same for all and the batch runs as one (the official
        computation). Otherwise each image runs on its own classes (:meth:`_fast_per_image`)."""
        decoder = self.decoder
        if classes is not None or decoder.top_k_union == "image":
            return self._fast_per_image(x, local, appearance, text_guidance, guidance, classes)
        batch, num_classes = x.shape[:2]
        x = decoder.fuse_at(0, x, local)
        keep = decoder.kept_classes(decoder.aux_heads[0](x))
        x = self.aggregate(channels_last_class_maps(x[:, keep]), appearance, text_guidance[:, keep])
        local = local[:, keep]
        x = decoder.fuse_at(1, x, local)
        kept1 = decoder.kept_classes(decoder.aux_heads[1](x))
        x = decoder.stage(0, x[:, kept1], guidance[0])
        x = decoder.fuse_at(2, x, decoder.local_upsample(local[:, kept1]))
        kept2 = decoder.kept_classes(decoder.aux_heads[2](x))
        x = decoder.stage(1, x[:, kept2], guidance[1])
        logits = decoder.head(x.flatten(0, 1)).view(*x.shape[:2], *guidance[1].shape[-2:])
        return self._fast_scores(list(logits), [keep[kept1[kept2]]] * batch, num_classes)

    def _fast_per_image(self, x, local, appearance, text_guidance, guidance, classes) -> Tensor:
        """Fast inference with each image's own maps: with class pruning the images hold
        different classes (``classes`` ``(B, T')``, class ids), so the "batch" union is taken
        over class ids (the official code unites the positions in each image's unsorted
        top-``pad_len`` list, which name different classes in different images, and depend on
        the unspecified order of ``topk(sorted=False)``); with the "image" union each image
        keeps its own."""
        decoder = self.decoder
        batch, num_classes = x.shape[:2]
        ids = classes if classes is not None else torch.arange(num_classes, device=x.device).expand(batch, -1)
        x = decoder.fuse_at(0, x, local)
        aux = decoder.aux_heads[0](x)
        kept = self._kept_positions(list(aux), list(ids))  # positions into T', per image
        maps = [
            self.aggregate(channels_last_class_maps(x[b : b + 1, kept[b]]), appearance[b : b + 1],
                           text_guidance[b : b + 1, kept[b]])
            for b in range(batch)
        ]
        locals_ = [local[b : b + 1, kept[b]] for b in range(batch)]
        maps = [decoder.fuse_at(1, m, l) for m, l in zip(maps, locals_)]
        step = self._kept_positions([decoder.aux_heads[1](m)[0] for m in maps], [ids[b, kept[b]] for b in range(batch)])
        maps = [decoder.stage(0, m[:, p], guidance[0][b : b + 1]) for b, (m, p) in enumerate(zip(maps, step))]
        maps = [decoder.fuse_at(2, m, decoder.local_upsample(l[:, p])) for m, l, p in zip(maps, locals_, step)]
        kept = [k[p] for k, p in zip(kept, step)]
        step = self._kept_positions([decoder.aux_heads[2](m)[0] for m in maps], [ids[b, kept[b]] for b in range(batch)])
        logits = []
        for b, (m, p) in enumerate(zip(maps, step)):
            m = decoder.stage(1, m[:, p], guidance[1][b : b + 1])
            logits.append(decoder.head(m.flatten(0, 1)).view(m.shape[1], *guidance[1].shape[-2:]))
        return self._fast_scores(logits, [k[p] for k, p in zip(kept, step)], num_classes)

    def _kept_positions(self, aux_logits: Sequence[Tensor], ids: Sequence[Tensor]) -> list[Tensor]:
        """Per image ``(t_b, h, w)`` auxiliary logits of its classes ``ids[b]`` -> the sorted
        positions (into its ``t_b``) of the classes kept: among the top ``top_k`` of some pixel
        of this image ("image" union) or of any image, matched by class id ("batch")."""
        decoder = self.decoder
        own = [a.topk(min(decoder.top_k, a.shape[0]), dim=0).indices.unique() for a in aux_logits]
        if decoder.top_k_union == "image":
            return own
        union = torch.cat([i[o] for i, o in zip(ids, own)]).unique()
        return [torch.isin(i, union).nonzero().squeeze(1) for i in ids]

    def _fast_scores(self, logits: Sequence[Tensor], survivors: Sequence[Tensor], num_classes: int) -> Tensor:
        """``(B, num_classes, H, W)`` from each image's ``(t_b, H, W)`` logits of its surviving
        positions, as :data:`FAST_SCORES` says."""
        first = logits[0]
        if self.decoder.fast_scores == "official":
            # float32: under bf16 the compressed scores (0.5 to 0.73) would be 2^-8 apart
            out = first.new_zeros((len(logits), num_classes, *first.shape[-2:]), dtype=torch.float32)
            logits = [l.float().sigmoid() for l in logits]
        else:
            out = first.new_full((len(logits), num_classes, *first.shape[-2:]), PRUNED_CLASS_LOGIT)
        for b, (l, s) in enumerate(zip(logits, survivors)):
            out[b, s] = l.to(out.dtype)
        return out

    def losses(
        self,
        output: FGASegOutput,
        targets: Tensor,
        ignore_value: int,
        ignore_as_negative: bool = True,
        chunk_classes: int = TRAINING_CHUNK_CLASSES,
    ) -> dict[str, Tensor]:
        """Official FGAseg losses, logged apart (the official code logs their sum):
        ``loss_sem_seg`` (CAT-Seg's BCE, or CE), ``loss_aux_{0,1,2}`` (fast mode, the same
        loss on the auxiliary maps upsampled to the targets, times ``aux_weights``) and
        ``loss_align`` (``align_weight`` times :func:`~sed_d2.losses.alignment_loss`)."""

        def segmentation(logits: Tensor) -> Tensor:
            if self.loss_type == "ce":
                size = tuple(targets.shape[-2:])
                return F.cross_entropy(bilinear_resize(logits, size).float(), targets, ignore_index=ignore_value)
            return one_hot_bce_loss(logits, targets, ignore_value, ignore_as_negative, chunk_classes=chunk_classes)

        losses = {"loss_sem_seg": segmentation(output.logits)}
        for index, (weight, aux) in enumerate(zip(self.aux_weights, output.aux_logits)):
            losses[f"loss_aux_{index}"] = weight * segmentation(aux)
        if output.align_logits is not None:
            losses["loss_align"] = self.align_weight * alignment_loss(
                output.align_logits, targets, ignore_value, kind=self.align_loss
            )
        return losses
