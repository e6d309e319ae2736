"""``OpenVocabSegmentor``: the detectron2 side every method shares, and the method contract.

The base class turns detectron2's ``batched_inputs`` into tensors (CLIP normalisation, resize
to the CLIP resolution), owns the vocabulary and its cached text embeddings, runs the method
under the configured precision, applies the test protocol (:mod:`.inference`: whole image or
sliding window, ``TEST.PROTOCOL``) and post-processes per image back to each image's original
size. Tools (trainer, benchmark, demo, predictor) use only the contract below, never a
method's internals.

**The method contract** -- what a subclass (``meta_arch/<method>.py``) provides:

* ``clip_model`` (property): the open_clip model whose text tower encodes the vocabulary.
* ``parameter_groups`` (property): ``{parameter name: group}`` for every parameter, groups
  from the method's table (``models/parameter_groups.py``: "frozen" is untrained, every other
  group is trained at the learning-rate multiplier of ``LR_MULTIPLIER_KEYS``).
* ``from_config(cls, cfg)`` (classmethod): ``ret = super().from_config(cfg)`` (the base
  arguments below), plus the method's own arguments.
* ``forward_train(images, text, targets) -> {name: scalar loss}``: ``images`` (B, 3, H, W)
  CLIP-normalised at the CLIP resolution, ``text`` (T, P, C), ``targets`` (B, H', W') labels.
* ``forward_train_captions(images, phrases) -> {name: scalar loss}`` (only a method trained
  from image-caption pairs, e.g. SynSeg): ``phrases`` holds each image's noun phrases. A
  batch whose inputs carry ``"nouns"`` (the ``image_caption`` mapper) comes here instead of
  ``forward_train``; such a training set may have no class list (``train_vocabulary`` None).
* ``image_features(images) -> {name: tensor}`` and ``decode(features, text) -> (B, T, h, w)
  logits``: the network split in two. Its image half depends on the images only, so CUDA
  graphs replay it even where the decoder cannot be captured (category early rejection,
  data-dependent class subsets); ``decode_capturable`` says which case holds.
* ``network_logits(images, text) -> (B, T, h, w)``: provided here from the split (replayed
  from CUDA graphs, :meth:`OpenVocabSegmentor.run_network`); override only for a network that
  cannot be split.
* ``logits_to_scores(logits)``: per-class scores in [0, 1]; the default is a float32
  sigmoid. ``forward_test(images, text)`` is ``logits_to_scores(network_logits(...))``.
* A method that holds its pure-PyTorch network (``models/<method>.py``) as ``self.model``
  gets ``clip_model``, ``parameter_groups`` (its network's, prefixed ``model.``) and
  ``image_features`` from it by default: only ``from_config``, ``forward_train`` and
  ``decode`` are left to write.
* ``benchmark_variants()`` (optional): ``{name: value -> context manager}``, method-specific
  ways to run inference that ``tools/benchmark.py`` measures as extra cases (SED:
  ``cer_keep``, a fixed number of classes surviving early rejection). Default: none.

**What tools call** (provided here): ``set_vocabulary(names)`` / ``vocabulary`` /
``text_embeddings()``; ``prepare_images(images)``; ``network_logits`` and its split;
``inference_scores(images)`` (per-image scores at the protocol's working size, what the
predictor resizes in chunks); ``autocast(dtype)`` with the configured ``train_dtype`` /
``test_dtype``; ``parameter_groups`` (the optimizer); ``forward(batched_inputs)`` (detectron2:
losses in training, ``{"sem_seg": (T, H, W)}`` per image at inference).
"""
import logging
from contextlib import nullcontext
from typing import Callable, ContextManager, Dict, List, Mapping, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from ..clip import TextEncoder, build_clip_model, get_templates, validate_vocabulary
from ..data.vocabulary import training_vocabulary_of, unprompted_background_index, vocabulary_of
from .. import ops
from ..ops.cuda_graphs import CUDAGraphCache, graph_key
from .inference import InferenceProtocol, WholeImage, build_inference_protocol

logger = logging.getLogger(__name__)

__all__ = ["OpenVocabSegmentor", "build_vit_clip"]

_PRECISIONS = {"fp32": None, "bf16": torch.bfloat16}


def build_vit_clip(cfg, method: str) -> nn.Module:
    """The open_clip model of ``MODEL.OVSEG`` for a method built on a CLIP ViT (CAT-Seg and the
    methods on its ViT path): refuses the keys that only timm (ConvNeXt) towers have and a
    non-ViT image tower, naming ``method``."""
    ovseg = cfg.MODEL.OVSEG
    for key in ("CLIP_DROP_PATH_RATE", "CLIP_HEAD_DROPOUT"):
        if ovseg[key]:
            raise ValueError(
                f"MODEL.OVSEG.{key} applies to timm (ConvNeXt) image towers; {method}'s CLIP ViT has no "
                f"such setting: leave it at 0, got {ovseg[key]}"
            )
    clip_model = build_clip_model(ovseg.CLIP_MODEL, ovseg.CLIP_PRETRAINED, pretrained_key="MODEL.OVSEG.CLIP_PRETRAINED")
    if not hasattr(clip_model.visual, "transformer"):
        raise ValueError(f"{method} needs a CLIP ViT image tower; MODEL.OVSEG.CLIP_MODEL {ovseg.CLIP_MODEL!r} is not one")
    return clip_model


def _parse_precision(value: str, key: str):
    if value not in _PRECISIONS:
        raise ValueError(f"{key} must be one of {sorted(_PRECISIONS)}, got {value!r}")
    return _PRECISIONS[value]


class OpenVocabSegmentor(nn.Module):
    """Base meta-architecture: images + vocabulary in, per-class scores out. Subclasses
    implement the method contract of the module docstring."""

    def __init__(
        self,
        *,
        clip_pixel_mean: Sequence[float],
        clip_pixel_std: Sequence[float],
        clip_resolution: Tuple[int, int],
        prompt_templates: str,
        clip_model_name: Optional[str] = None,
        train_vocabulary: Optional[Sequence[str]],
        test_vocabulary: Optional[Sequence[str]],
        ignore_value: int,
        train_precision: str = "fp32",
        test_precision: str = "fp32",
        cuda_graphs: bool = False,
        synonym_rule: str = "mean",
        inference_protocol: Optional[InferenceProtocol] = None,
        background_threshold: float = 0.4,
        test_background_index: Optional[int] = None,
    ):
        """
        Args:
            clip_pixel_mean, clip_pixel_std: CLIP normalisation of 0-255 RGB pixels.
            clip_resolution: (H, W) every image is resized to before CLIP.
            prompt_templates: name of a template set (``sed_d2.clip.get_templates``).
            clip_model_name: open_clip architecture name of ``clip_model``; picks its
                tokenizer (None = open_clip's generic CLIP tokenizer).
            train_vocabulary: class names of the training dataset (index = label id).
            test_vocabulary: class names used at inference until ``set_vocabulary`` changes them.
            ignore_value: label value of ignored pixels in training targets.
            train_precision, test_precision: "fp32" or "bf16" autocast.
            cuda_graphs: at inference on CUDA, replay the network from CUDA graphs
                (:meth:`run_network`).
            synonym_rule: how synonyms in one class name are embedded, ``"mean"`` or
                ``"first"`` (:class:`sed_d2.clip.TextEncoder`).
            inference_protocol: how test images become scores (:mod:`.inference`);
                None = :class:`~.inference.WholeImage`.
            background_threshold: score of the unprompted background class
                (:meth:`set_vocabulary`'s ``background_index``).
            test_background_index: ``background_index`` of ``test_vocabulary``.
        """
        super().__init__()
        self.register_buffer("pixel_mean", torch.tensor(clip_pixel_mean).view(-1, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(clip_pixel_std).view(-1, 1, 1), False)
        self.clip_resolution = tuple(int(s) for s in clip_resolution)
        self.templates = get_templates(prompt_templates)
        self.clip_model_name = clip_model_name
        self.synonym_rule = synonym_rule
        self.train_vocabulary = (
            list(validate_vocabulary(train_vocabulary)) if train_vocabulary is not None else None
        )
        self.test_vocabulary = (
            list(validate_vocabulary(test_vocabulary)) if test_vocabulary is not None else None
        )
        self.ignore_value = ignore_value
        self.train_dtype = _parse_precision(train_precision, "MODEL.OVSEG.TRAIN_PRECISION")
        self.test_dtype = _parse_precision(test_precision, "MODEL.OVSEG.TEST_PRECISION")
        self._text_encoder: Optional[TextEncoder] = None
        self.cuda_graphs = bool(cuda_graphs)
        self._graphs = CUDAGraphCache(max_graphs=2)
        self._graph_failures: set = set()  # graph keys whose capture failed: run eagerly
        self._graph_parameters: Optional[List[torch.Tensor]] = None  # listed once, see run_network
        self.inference_protocol = inference_protocol or WholeImage()
        self.background_threshold = float(background_threshold)
        self.background_index: Optional[int] = None
        if self.test_vocabulary is not None:
            self.set_vocabulary(self.test_vocabulary, background_index=test_background_index)

    @classmethod
    def from_config(cls, cfg) -> dict:
        """The base arguments, read from the config; a method's ``from_config`` starts with
        ``ret = super().from_config(cfg)``."""
        ovseg = cfg.MODEL.OVSEG
        train_vocab = training_vocabulary_of(cfg.DATASETS.TRAIN[0]) if cfg.DATASETS.TRAIN else None
        test_vocab = vocabulary_of(cfg.DATASETS.TEST[0]) if cfg.DATASETS.TEST else train_vocab
        test_background = unprompted_background_index(cfg.DATASETS.TEST[0]) if cfg.DATASETS.TEST else None
        return {
            "clip_pixel_mean": ovseg.CLIP_PIXEL_MEAN,
            "clip_pixel_std": ovseg.CLIP_PIXEL_STD,
            "clip_resolution": tuple(ovseg.CLIP_RESOLUTION),
            "prompt_templates": ovseg.PROMPT_TEMPLATES,
            "clip_model_name": ovseg.CLIP_MODEL,
            "train_vocabulary": train_vocab,
            "test_vocabulary": test_vocab,
            "ignore_value": cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE,
            "train_precision": ovseg.TRAIN_PRECISION,
            "test_precision": ovseg.TEST_PRECISION,
            "cuda_graphs": ovseg.CUDA_GRAPHS,
            "synonym_rule": ovseg.SYNONYM_RULE,
            "inference_protocol": build_inference_protocol(cfg),
            "background_threshold": ovseg.BACKGROUND_THRESHOLD,
            "test_background_index": test_background,
        }

    # ------------------------------------------------------------------ vocabulary
    @property
    def clip_model(self) -> nn.Module:
        return self._network("clip_model").clip_model

    @property
    def parameter_groups(self) -> Dict[str, str]:
        """Parameter name (as in ``self.named_parameters()``) -> group of the network's table."""
        return {f"model.{k}": v for k, v in self._network("parameter_groups").parameter_groups.items()}

    def _network(self, member: str) -> nn.Module:
        """``self.model``, the method's network, for the contract's defaults."""
        network = self._modules.get("model")
        if network is None:
            raise NotImplementedError(
                f"{type(self).__name__} must provide {member} (the method contract), or hold its network as self.model"
            )
        return network

    @property
    def text_encoder(self) -> TextEncoder:
        # Built on first use: the CLIP model exists only after the subclass __init__.
        if self._text_encoder is None:
            # It hooks the CLIP model so that loading weights clears its cache.
            self._text_encoder = TextEncoder(
                self.clip_model, self.templates, model_name=self.clip_model_name, synonym_rule=self.synonym_rule
            )
        return self._text_encoder

    def set_vocabulary(self, class_names: Sequence[str], background_index: Optional[int] = None) -> None:
        """Use these class names at inference (synonyms within a name joined by ', ').

        ``background_index``: the class at this index is background that is scored but not
        prompted (the GroupViT/TCL protocol, datasets with ``background_handling``
        "unprompted_class"): the other names are prompted and the background channel gets
        the constant ``background_threshold`` before the argmax."""
        names = list(validate_vocabulary(class_names))
        if background_index is not None and not (0 <= background_index < len(names) and len(names) > 1):
            raise ValueError(
                f"background_index {background_index} must index one of the {len(names)} class names, "
                "with at least one other (prompted) class"
            )
        self.test_vocabulary = names
        self.background_index = background_index

    @property
    def vocabulary(self) -> List[str]:
        """The class names of the current mode (training or inference)."""
        vocab = self.train_vocabulary if self.training else self.test_vocabulary
        if vocab is None:
            mode = "training" if self.training else "inference"
            hint = "DATASETS.TRAIN" if self.training else "DATASETS.TEST or set_vocabulary()"
            raise RuntimeError(f"no {mode} vocabulary: set {hint}")
        return vocab

    @property
    def prompted_vocabulary(self) -> List[str]:
        """The class names the text tower encodes: :attr:`vocabulary`, at inference without the
        unprompted background class (:meth:`set_vocabulary`'s ``background_index``), if any."""
        vocabulary = self.vocabulary
        if not self.training and self.background_index is not None:
            vocabulary = vocabulary[: self.background_index] + vocabulary[self.background_index + 1 :]
        return vocabulary

    def text_embeddings(self) -> torch.Tensor:
        """(T, P, C) L2-normalised embeddings of :attr:`prompted_vocabulary`, cached per
        vocabulary (at inference without the unprompted background class, if any: T - 1 rows)."""
        return self.text_encoder(self.prompted_vocabulary)

    # ------------------------------------------------------------------ tensors
    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    def prepare_images(self, images: Sequence[torch.Tensor]) -> torch.Tensor:
        """CLIP-normalise each (3, H, W) 0-255 RGB image and resize it to the CLIP resolution:
        (B, 3, H, W).

        Each image is resized on its own (bilinear, no antialias, like the official code), so
        images of different sizes batch together without padding.
        """
        prepared = []
        for image in images:
            image = image.to(self.device, non_blocking=True).float()
            image = (image - self.pixel_mean) / self.pixel_std
            if tuple(image.shape[-2:]) != self.clip_resolution:
                image = F.interpolate(
                    image[None], size=self.clip_resolution, mode="bilinear", align_corners=False
                )[0]
            prepared.append(image)
        return torch.stack(prepared)

    def preprocess_targets(self, batched_inputs: List[Dict]) -> torch.Tensor:
        """(B, H, W) int64 labels; all training images share one size (crop + pad in the mapper)."""
        targets = [x["sem_seg"].to(self.device, non_blocking=True) for x in batched_inputs]
        sizes = {tuple(t.shape) for t in targets}
        if len(sizes) != 1:
            raise ValueError(
                f"training labels of one batch must share one size, got {sorted(sizes)}; "
                "enable INPUT.CROP so the mapper crops and pads to INPUT.CROP.SIZE"
            )
        return torch.stack(targets).long()

    def postprocess(self, probs: Sequence[torch.Tensor], batched_inputs: List[Dict]) -> List[Dict]:
        """Resize each image's (T, h, w) probabilities to its original (height, width)."""
        results = []
        for prob, x in zip(probs, batched_inputs):
            height = x.get("height", x["image"].shape[-2])
            width = x.get("width", x["image"].shape[-1])
            prob = F.interpolate(
                prob[None].float(), size=(height, width), mode="bilinear", align_corners=False
            )[0]
            results.append({"sem_seg": prob})
        return results

    def release_cuda_graphs(self) -> None:
        """Drop the captured inference graphs and their memory pools (the next call captures
        again): e.g. before measuring one case's peak memory alone."""
        self._graphs.clear()

    def train(self, mode: bool = True):
        if mode:
            self.release_cuda_graphs()  # frees their activation memory for training
        self._graph_parameters = None  # modules may have been swapped since the last evaluation
        return super().train(mode)

    def _apply(self, fn, *args, **kwargs):
        self._graph_parameters = None  # .to() / .cuda() / .half() may replace parameters
        return super()._apply(fn, *args, **kwargs)

    def run_network(self, name: str, fn: Callable, *inputs: torch.Tensor):
        """``fn(*inputs)``, the inference network call ``name``. With ``cuda_graphs``, CUDA
        inputs, eval mode and gradients off it is replayed from a CUDA graph captured on
        first use per input shapes / precision (:class:`~sed_d2.ops.cuda_graphs.
        CUDAGraphCache`): the same kernels, bit-identical results, no per-kernel launch
        cost. The graph's output is overwritten by the next call: consume it first. ``fn``
        must not synchronise with the host or depend on values for shapes.

        A capture that fails (e.g. out of memory while recording) is logged once and that
        key (name, shapes, precision, parameter versions) runs eagerly from then on; other
        shapes and calls keep their graphs. The parameters a key depends on are listed once
        per evaluation (``eval()``) or device move, not on every call."""
        if not (self.cuda_graphs and inputs[0].is_cuda and not self.training and not torch.is_grad_enabled()):
            return fn(*inputs)
        if self._graph_parameters is None:
            self._graph_parameters = list(self.parameters())
        # the fast-ops switch too: a graph captured with the Triton kernels would replay them
        key = (name, ops.enabled(), graph_key(inputs, self._graph_parameters))
        if key in self._graph_failures:
            return fn(*inputs)
        try:
            return self._graphs(key, fn, *inputs)
        except Exception as e:  # a capture failure must not stop an evaluation
            logger.warning(
                "CUDA graph capture of %s failed (%s: %s); these inputs run it eagerly from now on",
                name,
                type(e).__name__,
                e,
            )
            self._graph_failures.add(key)
            self._graphs.clear()  # frees what the failed capture and the other graphs hold
            return fn(*inputs)

    def autocast(self, dtype: Optional[torch.dtype]):
        """Autocast context for ``dtype`` (``self.train_dtype`` / ``self.test_dtype``) on the
        model's device; None = full precision."""
        if dtype is None:
            return nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=dtype)

    # ------------------------------------------------------------------ forward
    def forward(self, batched_inputs: List[Dict]):
        """
        Args:
            batched_inputs: detectron2 dicts with "image" (3, H, W) uint8 RGB, in training
                "sem_seg" (H, W) labels or "nouns" (noun phrases, image-caption training), at
                inference optionally "height"/"width".
        Returns:
            training: dict of named losses. Inference: one ``{"sem_seg": (T, height, width)}``
            per image, class probabilities at the original image size.
        """
        if self.training and "nouns" in batched_inputs[0]:
            images = self.prepare_images([x["image"] for x in batched_inputs])
            with self.autocast(self.train_dtype):
                losses = self.forward_train_captions(images, [list(x["nouns"]) for x in batched_inputs])
            return {k: v.float() for k, v in losses.items()}
        if self.training:
            text = self.text_embeddings()
            images = self.prepare_images([x["image"] for x in batched_inputs])
            targets = self.preprocess_targets(batched_inputs)
            with self.autocast(self.train_dtype):
                losses = self.forward_train(images, text, targets)
            return {k: v.float() for k, v in losses.items()}
        return self.postprocess(self.inference_scores([x["image"] for x in batched_inputs]), batched_inputs)

    def inference_scores(self, images: Sequence[torch.Tensor]) -> List[torch.Tensor]:
        """Per image, (T, h, w) class scores of the current vocabulary at the test protocol's
        working size (:mod:`.inference`), before the resize to the image's own size.

        ``images``: (3, H, W) 0-255 RGB tensors of any sizes. Callers that need full-size
        label maps of large images resize these in chunks of classes (``sed_d2.predictor``)
        instead of all T maps at once (:meth:`postprocess`)."""
        text = self.text_embeddings()
        images = [image.to(self.device, non_blocking=True).float() for image in images]
        with self.autocast(self.test_dtype):
            scores = self.inference_protocol(self, images, text)
        if self.background_index is None:
            return scores
        index = self.background_index
        return [
            torch.cat([s[:index], torch.full_like(s[:1], self.background_threshold), s[index:]]) for s in scores
        ]

    # ------------------------------------------------------------------ the network
    def forward_train(self, images, text_embeddings, targets) -> Dict[str, torch.Tensor]:
        raise NotImplementedError(f"{type(self).__name__} must provide forward_train (the method contract)")

    def forward_train_captions(self, images, phrases: List[List[str]]) -> Dict[str, torch.Tensor]:
        raise NotImplementedError(
            f"{type(self).__name__} trains from label maps ('sem_seg'), but the training batch holds "
            "image-caption pairs ('nouns'): set a segmentation dataset in DATASETS.TRAIN and "
            "INPUT.DATASET_MAPPER_NAME 'semantic_segmentation'"
        )

    def image_features(self, images: torch.Tensor) -> Mapping[str, torch.Tensor]:
        return self._network("image_features").image_features(images)

    def decode(self, features: Mapping[str, torch.Tensor], text_embeddings: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError(f"{type(self).__name__} must provide decode (the method contract)")

    @property
    def decode_capturable(self) -> bool:
        """Whether :meth:`decode` can be captured in a CUDA graph (no host synchronisation,
        no value-dependent shapes). False (e.g. SED's category early rejection) replays only
        :meth:`image_features` and decodes eagerly."""
        return True

    def network_logits(self, images: torch.Tensor, text_embeddings: torch.Tensor) -> torch.Tensor:
        """(B, T, h, w) inference logits: :meth:`image_features` then :meth:`decode`, replayed
        from CUDA graphs by :meth:`run_network` (the whole network when the decoder is
        capturable, else the image half)."""
        name = type(self).__name__.lower()
        if self.decode_capturable:
            return self.run_network(
                f"{name}_logits", lambda x, text: self.decode(self.image_features(x), text), images, text_embeddings
            )
        features = self.run_network(f"{name}_image_features", self.image_features, images)
        return self.decode(features, text_embeddings)

    def benchmark_variants(self) -> Dict[str, Callable[[int], ContextManager]]:
        """Method-specific inference variants for ``tools/benchmark.py``: ``{name: value ->
        context manager}``; inside the context the model runs that variant. None here."""
        return {}

    def logits_to_scores(self, logits: torch.Tensor) -> torch.Tensor:
        """Per-class scores in [0, 1]: a sigmoid in float32, also under bf16 (bf16 probabilities
        near 1 are 2^-8 apart, which would turn close scores of confident classes into argmax
        ties). Always a new tensor: a CUDA graph's output is reused by the next replay."""
        return logits.float().sigmoid()

    @property
    def sigmoid_scores(self) -> bool:
        """Whether :meth:`logits_to_scores` is this class's float32 sigmoid (not overridden):
        protocols may then fuse it with their resizing (:mod:`sed_d2.ops.window_merge`)."""
        return type(self).logits_to_scores is OpenVocabSegmentor.logits_to_scores

    def forward_test(self, images: torch.Tensor, text_embeddings: torch.Tensor) -> torch.Tensor:
        """(B, T, h, w) scores of CLIP-prepared images (:meth:`prepare_images`)."""
        return self.logits_to_scores(self.network_logits(images, text_embeddings))
