"""SynSeg as a detectron2 meta-architecture (registered name ``SynSeg``)."""
from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY

from ..models.synseg import FeatureSynergy, SynSegDecoder, SynSegModel
from .base import OpenVocabSegmentor, build_vit_clip

__all__ = ["SynSeg", "class_embeddings", "default_extract_layers"]


def default_extract_layers(depth: int) -> tuple[int, ...]:
    """CLIPSeg rd64-uni's decoder inputs, the outputs of the 1-based blocks 4, 8 and 10 of its
    12-block ViT-B/16 (0-based 3, 7, 9), scaled to a tower of ``depth`` blocks."""
    return tuple(depth * numerator // 12 - 1 for numerator in (4, 8, 10))


def class_embeddings(text: torch.Tensor) -> torch.Tensor:
    """``(T, P, C) -> (T, C)``: the templates of each class averaged, L2-normalised again."""
    return F.normalize(text.float().mean(dim=1), dim=-1)


@META_ARCH_REGISTRY.register()
class SynSeg(OpenVocabSegmentor):
    """SynSeg: a frozen CLIP ViT, a FiLM-conditioned light decoder (one activation map per
    category), the Feature Synergy Structure and Multi-Category Contrastive Learning.

    :paper: https://arxiv.org/abs/2508.06115 (ICME 2026; no official code). The network is
    ``sed_d2.models.synseg.SynSegModel``, held as ``self.model``.

    Training takes image-caption pairs (``forward_train_captions``: each image's noun
    phrases are its categories, encoded by the frozen CLIP text tower with the prompt
    templates); a batch with label maps instead (``forward_train``) uses each image's present
    classes as its categories (image-level labels, at most ``MODEL.SYNSEG.MAX_CATEGORIES``,
    largest areas first). Inference: one sigmoid activation map per class; the paper's five
    views and the background threshold are the config's test protocol and the base class's
    unprompted background (``set_vocabulary``).
    """

    @configurable
    def __init__(self, *, model: SynSegModel, max_categories: int = 8, **kwargs):
        """
        Args:
            model: the SynSeg network.
            max_categories: categories per image at most when they come from a label map.
            kwargs: arguments of :class:`OpenVocabSegmentor`.
        """
        super().__init__(**kwargs)
        self.model = model
        self.max_categories = int(max_categories)

    @classmethod
    def from_config(cls, cfg):
        ret = super().from_config(cfg)
        ovseg, synseg = cfg.MODEL.OVSEG, cfg.MODEL.SYNSEG
        if ovseg.CLIP_FINETUNE != "frozen":
            raise ValueError(f"SynSeg keeps both CLIP towers frozen: MODEL.OVSEG.CLIP_FINETUNE must be 'frozen', got {ovseg.CLIP_FINETUNE!r}")
        clip_model = build_vit_clip(cfg, "SynSeg")
        visual = clip_model.visual
        patch_size = tuple(visual.patch_size)
        if any(r % p for r, p in zip(ovseg.CLIP_RESOLUTION, patch_size)):
            raise ValueError(f"MODEL.OVSEG.CLIP_RESOLUTION {tuple(ovseg.CLIP_RESOLUTION)} must be a multiple of the patch size {patch_size}")
        extract_layers = tuple(synseg.EXTRACT_LAYERS) or default_extract_layers(len(visual.transformer.resblocks))
        decoder = SynSegDecoder(
            vision_width=visual.transformer.width,
            text_dim=visual.output_dim,
            num_layers=len(extract_layers),
            reduce_dim=synseg.REDUCE_DIM,
            num_heads=synseg.NUM_HEADS,
            ff_dim=synseg.FF_DIM,
            dropout=synseg.DROPOUT,
            film_hidden_dim=synseg.FILM_HIDDEN_DIM,
            patch_size=patch_size,
        )
        synergy_input = synseg.REDUCE_DIM if synseg.FSS_FEATURES == "decoder" else visual.transformer.width
        synergy = FeatureSynergy(
            synergy_input, visual.output_dim, hidden_dim=synseg.PROJ_HIDDEN_DIM, patch_size=patch_size, norm=synseg.FSS_NORM
        )
        model = SynSegModel(
            clip_model,
            decoder,
            synergy,
            extract_layers=extract_layers,
            fss_features=synseg.FSS_FEATURES,
            loss_weights=tuple(synseg.LOSS_WEIGHTS),
            sep_threshold=synseg.SEP_THRESHOLD,
            sep_normalize=synseg.SEP_NORMALIZE,
            sim_eps=synseg.SIM_EPS,
            sim_map=synseg.SIM_MAP,
            test_chunk_classes=synseg.TEST_CHUNK_CLASSES,
        )
        ret.update(model=model, max_categories=synseg.MAX_CATEGORIES)
        return ret

    def forward_train_captions(self, images: torch.Tensor, phrases: list[list[str]]):
        """MCCL losses of images ``(B, 3, H, W)`` whose categories are ``phrases`` (per image,
        distinct, non-empty: the caption mapper's). Each distinct phrase of the batch is
        encoded once, uncached (they change every batch)."""
        if any(not p for p in phrases):
            raise ValueError("every training image needs at least one noun phrase (the caption mapper drops the others)")
        distinct = list(dict.fromkeys(p for image_phrases in phrases for p in image_phrases))
        row = {phrase: index for index, phrase in enumerate(distinct)}
        text = class_embeddings(self.text_encoder.encode_uncached(distinct))
        pair_text = torch.tensor([row[p] for image_phrases in phrases for p in image_phrases], device=self.device)
        pair_image = torch.tensor([i for i, image_phrases in enumerate(phrases) for _ in image_phrases], device=self.device)
        return self.model.losses(images, text[pair_text], pair_image)

    def forward_train(self, images, text_embeddings, targets):
        """MCCL losses with each image's categories read off its label map: the classes
        present (ignored pixels excluded), at most ``max_categories`` of the largest areas,
        in class order."""
        num_classes = text_embeddings.shape[0]
        pair_image, pair_class = [], []
        for index, labels in enumerate(targets):
            labels = labels[(labels >= 0) & (labels < num_classes)]
            areas = torch.bincount(labels, minlength=num_classes)
            present = int((areas > 0).sum())
            if present == 0:
                continue
            largest = areas.topk(min(present, self.max_categories)).indices.sort().values
            pair_class.append(largest)
            pair_image.append(torch.full_like(largest, index))
        if not pair_class:
            raise ValueError("no training image of the batch shows a class of the vocabulary")
        text = class_embeddings(text_embeddings)
        return self.model.losses(images, text[torch.cat(pair_class)], torch.cat(pair_image))

    def decode(self, features: Mapping[str, torch.Tensor], text_embeddings: torch.Tensor) -> torch.Tensor:
        # Capturable: per-class decoder passes of fixed count, no host synchronisation.
        grid = self.model.grid_of(self.clip_resolution)
        return self.model.logits(features, class_embeddings(text_embeddings), grid)
