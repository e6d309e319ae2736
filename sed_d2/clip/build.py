"""Build an open_clip model by architecture name, with weights from a tag or a local file.

Everything goes through pip ``open_clip_torch``; nothing is vendored or patched. The
three ways of getting weights (``MODEL.OVSEG.CLIP_PRETRAINED``) are:

* ``""``: random init (tests, the CPU demo); no network access.
* a path to a local file, loaded strictly: a state_dict saved with ``torch.save`` or as
  safetensors, or one of OpenAI's own CLIP files (the TorchScript archives
  ``ViT-B-16.pt`` / ``ViT-L-14-336px.pt`` that CAT-Seg loads, or their state_dict).
* an open_clip pretrained tag (``openai``, ``laion_aesthetic_s13b_b82k``, ...): downloaded
  by open_clip into its usual cache. Machines without internet access get an error
  that says where to fetch the file and how to pass it as a local path instead.

Activation check: OpenAI's CLIP weights were trained with QuickGELU, and open_clip
builds ``ViT-B-16`` with ``nn.GELU`` (``ViT-B-16-quickgelu`` with QuickGELU). open_clip 3.3
only warns about a mismatch, and only when it loads the tag itself; we build first and
load afterwards, so a wrong name would go unnoticed and every activation would be off.
A tag whose ``quick_gelu`` differs from the architecture's, or an OpenAI file (recognised
by its ``input_resolution`` / ``context_length`` / ``vocab_size`` entries) loaded into an
architecture without QuickGELU, is refused with a message naming the right architecture.
We refuse rather than correct so that the architecture a config names is the one that
runs. A plain state_dict carries no such mark (e.g. open_clip's own file for the
``openai`` tag): its activation cannot be checked.

Error messages call the weights argument ``pretrained``; a caller that took it from a
config passes the key's name as ``pretrained_key`` so that messages name what users set.
"""

from __future__ import annotations

import contextlib
import copy
import difflib
import logging
import os
import warnings
import zipfile
from pathlib import Path
from typing import Any, Iterator, Mapping

import open_clip
import torch

__all__ = ["build_clip_model", "register_model_configs", "MODEL_CONFIGS_DIR"]

# Tiny open_clip architectures shipped with sed_d2 (tests and the CPU demo).
MODEL_CONFIGS_DIR = Path(__file__).resolve().parent / "model_configs"

# File endings that make a `pretrained` string a path rather than a tag.
_WEIGHT_FILE_SUFFIXES = (".bin", ".pt", ".pth", ".safetensors")
# Keys under which training frameworks commonly nest a state_dict.
_STATE_DICT_WRAPPER_KEYS = ("state_dict", "model")
# How many missing/unexpected keys an error message shows.
_KEYS_SHOWN = 5
# Non-tensor entries of OpenAI's CLIP state_dicts (hyperparameters, not weights); their
# presence marks a file as OpenAI's, i.e. trained with QuickGELU.
_OPENAI_METADATA_KEYS = ("input_resolution", "context_length", "vocab_size")
# open_clip's naming convention for the QuickGELU variant of an architecture.
_QUICKGELU_SUFFIX = "-quickgelu"


def register_model_configs() -> None:
    """Make the sed_d2 tiny architectures known to open_clip (idempotent).

    ``open_clip.add_model_config`` appends the folder to its search path and rescans on
    every call, so it is only called while one of our configs is still missing.
    """
    our_names = {path.stem for path in MODEL_CONFIGS_DIR.glob("*.json")}
    if not our_names <= set(open_clip.list_models()):
        open_clip.add_model_config(MODEL_CONFIGS_DIR)


def build_clip_model(
    name: str,
    pretrained: str = "",
    *,
    drop_path_rate: float | None = None,
    head_dropout: float | None = None,
    pretrained_key: str = "pretrained",
) -> open_clip.model.CLIP:
    """Build the open_clip model ``name`` in fp32 on the CPU, in eval mode.

    Args:
        name: an open_clip architecture name (``open_clip.list_models()``), e.g.
            ``convnext_base_w_320``, ``ViT-B-16-quickgelu``, ``ViT-L-14-336-quickgelu`` or
            the tiny ``sed_d2_tiny_convnext`` / ``sed_d2_tiny_vit_quickgelu``.
        pretrained: ``""`` for random init, a local weights file, or an open_clip
            pretrained tag of ``name`` (``open_clip.list_pretrained_tags_by_model``).
        drop_path_rate: stochastic-depth rate of a timm vision trunk (open_clip's
            ``timm_drop_path``). ``None`` keeps the value of open_clip's JSON config.
        head_dropout: dropout inside open_clip's projection head of a timm vision tower
            (``timm_drop``). ``None`` keeps the JSON value.
        pretrained_key: what error messages call ``pretrained``, e.g. the config key
            ``"MODEL.OVSEG.CLIP_PRETRAINED"`` it was read from.

    The official SED trains ConvNeXt-B without drop path and ConvNeXt-L with head
    dropout 0.1 and drop path 0.1, whereas upstream open_clip's JSONs say drop path
    0.1 / head dropout 0.0 for both; the two overrides let configs restore that.
    Both only act in training mode.

    Raises:
        ValueError: unknown architecture or tag, an override the tower lacks, or weights
            trained with another activation than the architecture's (QuickGELU check).
        FileNotFoundError: ``pretrained`` looks like a path but no such file exists.
        RuntimeError: download failure (with instructions), or weights that do not fit.
    """
    register_model_configs()
    _check_model_name(name, pretrained_key)
    vision_cfg = _vision_cfg_with_overrides(name, drop_path_rate, head_dropout)

    # Resolve (and download) the weights before building: a wrong tag or a failed
    # download should fail in a second, not after a large model was initialised.
    weights_file, tag = _resolve_pretrained(name, pretrained, pretrained_key)
    # A local file is read before building too, for the same reason (and its format
    # tells whether it needs QuickGELU).
    local_state_dict = None if tag is not None or weights_file is None else _read_local_weights(name, weights_file)

    model_kwargs: dict[str, Any] = {} if vision_cfg is None else {"vision_cfg": vision_cfg}
    with _without_random_init_warning():
        # open_clip builds randomly initialised; we load the weights ourselves below so
        # that errors can name the file and the tag.
        model = open_clip.create_model(name, pretrained=None, precision="fp32", device="cpu", **model_kwargs)

    if tag is not None:
        _load_tag_weights(model, name, tag, weights_file)
    elif local_state_dict is not None:
        _load_local_weights(model, local_state_dict, weights_file)
    return model.eval()


# ---------------------------------------------------------------------------------------
# name and override handling


def _check_model_name(name: str, pretrained_key: str) -> None:
    known = open_clip.list_models()
    if name in known:
        return
    message = f"Unknown open_clip architecture {name!r}."
    if name.startswith(("hf-hub:", "local-dir:")):
        message += (
            " sed_d2 takes an architecture name plus separate weights: set the name to the"
            f" architecture and {pretrained_key} to a tag or a local weights file."
        )
    close = difflib.get_close_matches(name, known, n=5, cutoff=0.6)
    close += [k for k in known if k.lower() == name.lower() and k not in close]
    if close:
        message += f" Close matches: {close}."
    message += " List all names with `python -c \"import open_clip; print(open_clip.list_models())\"`."
    raise ValueError(message)


def _vision_cfg_with_overrides(
    name: str, drop_path_rate: float | None, head_dropout: float | None
) -> dict[str, Any] | None:
    """The full vision_cfg to pass to ``create_model``, or None when nothing changes.

    In open_clip 3.3 ``create_model(**model_kwargs)`` does ``model_cfg.update(model_kwargs)``,
    so a ``vision_cfg`` kwarg replaces the whole dict; we therefore start from the JSON's
    own vision_cfg and change only the two keys.
    """
    overrides = {"timm_drop_path": drop_path_rate, "timm_drop": head_dropout}
    overrides = {key: float(value) for key, value in overrides.items() if value is not None}
    if not overrides:
        return None
    for key, value in overrides.items():
        if not 0.0 <= value < 1.0:
            raise ValueError(f"{key} must be in [0, 1), got {value}")
    vision_cfg = copy.deepcopy(open_clip.get_model_config(name)["vision_cfg"])
    if "timm_model_name" not in vision_cfg:
        raise ValueError(
            f"drop_path_rate/head_dropout overrides only apply to timm vision towers; "
            f"{name!r} has a non-timm vision tower"
        )
    vision_cfg.update(overrides)
    # create_model decides this flag on its own vision_cfg (False unless it is asked to
    # fetch timm ImageNet weights); our replacement dict must say the same, or timm
    # would try to download ImageNet weights for the trunk.
    vision_cfg["timm_model_pretrained"] = False
    return vision_cfg


@contextlib.contextmanager
def _without_random_init_warning() -> Iterator[None]:
    """Drop open_clip's "No pretrained weights loaded ..." warning for this build.

    The message is wrong here (weights are loaded right after the build when asked
    for), and with ``pretrained=""`` random init is the point; everything else open_clip
    logs still gets through.
    """

    def keep(record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("No pretrained weights loaded")

    # open_clip logs through the root logger (`logging.warning(...)`).
    root = logging.getLogger()
    root.addFilter(keep)
    try:
        yield
    finally:
        root.removeFilter(keep)


# ---------------------------------------------------------------------------------------
# weights


def _resolve_pretrained(name: str, pretrained: str, pretrained_key: str) -> tuple[str | None, str | None]:
    """Map ``pretrained`` to ``(weights_file, tag)``; tag is None for local files."""
    if not pretrained:
        return None, None
    path = os.path.expanduser(pretrained)
    if os.path.isfile(path):
        return path, None
    if os.path.isdir(path):
        raise IsADirectoryError(f"{pretrained_key}={pretrained!r} is a directory; pass the weights file inside it")
    if "/" in pretrained or os.sep in pretrained or pretrained.endswith(_WEIGHT_FILE_SUFFIXES):
        raise FileNotFoundError(f"CLIP weights file not found: {pretrained!r} (from {pretrained_key})")
    return _download_tag(name, pretrained, pretrained_key), pretrained


def _download_tag(name: str, tag: str, pretrained_key: str) -> str:
    if not open_clip.is_pretrained_cfg(name, tag):
        valid = open_clip.list_pretrained_tags_by_model(name)
        if valid:
            hint = f"valid tags: {valid}"
        else:
            hint = f"open_clip has no pretrained tags for it; pass a local weights file in {pretrained_key}"
        raise ValueError(f"Unknown pretrained tag {tag!r} for open_clip model {name!r}; {hint}.")

    pretrained_cfg = open_clip.get_pretrained_cfg(name, tag)
    _check_activation(name, bool(pretrained_cfg.get("quick_gelu", False)), f"The weights of tag {tag!r}")
    try:
        weights_file = open_clip.download_pretrained(pretrained_cfg)
    except Exception as error:  # network, proxy, disk, HF hub errors: all end the same way
        raise RuntimeError(_download_failed_message(name, tag, pretrained_cfg, error, pretrained_key)) from error
    if not weights_file:
        raise RuntimeError(_download_failed_message(name, tag, pretrained_cfg, None, pretrained_key))
    return weights_file


def _check_activation(name: str, weights_quick_gelu: bool, weights_description: str) -> None:
    """Refuse weights trained with another activation (QuickGELU or GELU) than ``name``'s."""
    model_quick_gelu = bool(open_clip.get_model_config(name).get("quick_gelu", False))
    if model_quick_gelu == weights_quick_gelu:
        return
    if weights_quick_gelu:
        counterpart = name + _QUICKGELU_SUFFIX
        needed = "QuickGELU"
    else:
        counterpart = name[: -len(_QUICKGELU_SUFFIX)] if name.endswith(_QUICKGELU_SUFFIX) else ""
        needed = "GELU"
    if counterpart in open_clip.list_models():
        fix = f"use the architecture {counterpart!r} instead."
    else:
        fix = f"use an architecture whose open_clip config says \"quick_gelu\": {str(weights_quick_gelu).lower()}."
    raise ValueError(
        f"{weights_description} were trained with {needed}, but the open_clip architecture {name!r} "
        f"uses {'QuickGELU' if model_quick_gelu else 'GELU'}: every activation would be wrong; {fix}"
    )


def _download_failed_message(
    name: str, tag: str, pretrained_cfg: Mapping[str, Any], error: Exception | None, pretrained_key: str
) -> str:
    lines = [f"Could not download the open_clip weights for model {name!r}, tag {tag!r}."]
    if error is not None:
        lines.append(f"Cause: {type(error).__name__}: {error}")
    # open_clip writes hf_hub as "org/repo/" (default file) or "org/repo/filename".
    hub_repo, hub_file = os.path.split(pretrained_cfg.get("hf_hub", ""))
    if hub_repo:
        hub_files = hub_file or f"{open_clip.constants.HF_SAFE_WEIGHTS_NAME} or {open_clip.constants.HF_WEIGHTS_NAME}"
        lines.append(
            f"On a machine with internet access, download {hub_files} from the Hugging Face hub repo "
            f"{hub_repo!r} (https://huggingface.co/{hub_repo}),"
        )
    elif pretrained_cfg.get("url"):
        lines.append(f"On a machine with internet access, download {pretrained_cfg['url']},")
    else:
        lines.append("Download the weights on a machine with internet access,")
    lines.append(f"copy the file here and set {pretrained_key} to its local path.")
    lines.append("(On offline machines, HF_HUB_OFFLINE=1 makes open_clip skip its download retries.)")
    return "\n".join(lines)


def _load_tag_weights(model: torch.nn.Module, name: str, tag: str, weights_file: str) -> None:
    # open_clip's own loader knows the formats and legacy layouts of its published files.
    try:
        open_clip.load_checkpoint(model, weights_file, strict=True)
    except Exception as error:
        raise RuntimeError(
            f"The weights of open_clip tag {tag!r} ({weights_file}) do not load into {name!r}: {error}"
        ) from error


def _read_local_weights(name: str, weights_file: str) -> dict[str, torch.Tensor]:
    """The state_dict of a local file, after the activation check for OpenAI files."""
    state_dict = _read_state_dict(weights_file)
    if any(key in state_dict for key in _OPENAI_METADATA_KEYS):
        _check_activation(name, True, f"The weights in {weights_file} (an OpenAI CLIP file)")
        state_dict = {key: value for key, value in state_dict.items() if key not in _OPENAI_METADATA_KEYS}
    return state_dict


def _load_local_weights(model: torch.nn.Module, state_dict: Mapping[str, torch.Tensor], weights_file: str) -> None:
    try:
        incompatible = model.load_state_dict(state_dict, strict=False)
    except RuntimeError as error:  # shape mismatches raise even with strict=False
        raise RuntimeError(f"CLIP weights in {weights_file} do not fit the model: {error}") from error
    if incompatible.missing_keys or incompatible.unexpected_keys:
        raise RuntimeError(_key_mismatch_message(weights_file, incompatible, model))


def _read_state_dict(weights_file: str) -> dict[str, torch.Tensor]:
    """Read a CLIP state_dict from a .safetensors file, a torch.save file or a TorchScript
    archive (OpenAI's CLIP files)."""
    try:
        if weights_file.endswith(".safetensors"):
            from safetensors.torch import load_file

            checkpoint: Any = load_file(weights_file, device="cpu")
        elif _is_torchscript_archive(weights_file):
            # torch.load refuses TorchScript with weights_only. torch.jit.load compiles the
            # archive's TorchScript, a language without access to Python, and runs none of
            # its methods but __setstate__; we keep only the tensors.
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)  # "torch.jit.load is deprecated"
                checkpoint = torch.jit.load(weights_file, map_location="cpu").state_dict()
        else:
            # weights_only: a weights file must never be able to run code on load.
            checkpoint = torch.load(weights_file, map_location="cpu", weights_only=True)
    except Exception as error:
        raise RuntimeError(f"Could not read CLIP weights from {weights_file}: {error}") from error

    for key in _STATE_DICT_WRAPPER_KEYS:
        if isinstance(checkpoint, Mapping) and isinstance(checkpoint.get(key), Mapping):
            checkpoint = checkpoint[key]
            break
    if not isinstance(checkpoint, Mapping) or not checkpoint:
        raise RuntimeError(
            f"{weights_file} holds no state_dict (expected a dict of tensors, possibly under "
            f"one of the keys {list(_STATE_DICT_WRAPPER_KEYS)})"
        )
    # torch DistributedDataParallel saves every key with a "module." prefix.
    if all(key.startswith("module.") for key in checkpoint):
        checkpoint = {key[len("module."):]: value for key, value in checkpoint.items()}
    return dict(checkpoint)


def _is_torchscript_archive(weights_file: str) -> bool:
    # The marker torch.serialization itself looks for: TorchScript zips hold constants.pkl.
    if not zipfile.is_zipfile(weights_file):
        return False
    with zipfile.ZipFile(weights_file) as archive:
        return any(entry.rsplit("/", 1)[-1] == "constants.pkl" for entry in archive.namelist())


def _key_mismatch_message(weights_file: str, incompatible: Any, model: torch.nn.Module) -> str:
    missing, unexpected = incompatible.missing_keys, incompatible.unexpected_keys
    lines = [f"CLIP weights in {weights_file} do not match the model (strict loading):"]
    if missing:
        lines.append(f"  {len(missing)} missing keys, first: {missing[:_KEYS_SHOWN]}")
    if unexpected:
        lines.append(f"  {len(unexpected)} unexpected keys, first: {unexpected[:_KEYS_SHOWN]}")
    # A whole-model checkpoint (e.g. a SED checkpoint with the CLIP under
    # "sem_seg_head.predictor.clip_model.") shows up as every key being prefixed.
    probe = next(iter(model.state_dict()))
    prefixes = sorted({key[: -len(probe)] for key in unexpected if key.endswith("." + probe)})
    if prefixes:
        lines.append(
            f"  The file looks like a whole-model checkpoint with the CLIP under {prefixes[0]!r}; "
            "load it as MODEL.WEIGHTS, not as the CLIP weights."
        )
    else:
        lines.append("  Is the file for a different open_clip architecture?")
    return "\n".join(lines)
