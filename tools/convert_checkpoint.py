#!/usr/bin/env python
"""Convert an official checkpoint (e.g. the SED authors' model_final.pth) to sed_d2 keys.

    python tools/convert_checkpoint.py model_final.pth sed_convnextB.pth
    python tools/convert_checkpoint.py model_final.pth out.pth --config-file configs/sed/convnextB_768.yaml

Loading an official file through MODEL.WEIGHTS converts it on the fly too; this tool writes
the converted state_dict once and, given a config, checks it loads with no missing or
unexpected keys. The input is read with torch.load(weights_only=True) unless --trust-file
(only for files you trust: full unpickling can run code).
"""
import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from sed_d2.checkpoint import convert_official, official_layout  # noqa: E402


def load_state_dict(path: str, trust_file: bool) -> dict:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint not found: {path}")
    data = torch.load(path, map_location="cpu", weights_only=not trust_file)
    state_dict = data.get("model", data) if isinstance(data, dict) else data
    if not isinstance(state_dict, dict):
        raise ValueError(f"{path} holds a {type(state_dict).__name__}, not a state_dict")
    return state_dict


def check_against_config(state_dict: dict, config_file: str, opts) -> None:
    """Build the model of ``config_file`` and load ``state_dict`` strictly."""
    from detectron2.modeling import build_model

    import sed_d2  # noqa: F401
    from sed_d2.config import get_cfg

    # Random init for the check: the pretrained CLIP would be overwritten anyway.
    cfg = get_cfg(config_file, ["MODEL.OVSEG.CLIP_PRETRAINED", "", "MODEL.DEVICE", "cpu", *opts])
    model = build_model(cfg)
    result = model.load_state_dict(state_dict, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise SystemExit(
            f"does not match {config_file}: missing {result.missing_keys[:10]} "
            f"({len(result.missing_keys)}), unexpected {result.unexpected_keys[:10]} "
            f"({len(result.unexpected_keys)})"
        )
    print(f"OK: loads into {config_file} with no missing or unexpected keys")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("input", help="official checkpoint (.pth)")
    parser.add_argument("output", help="where to write the sed_d2 checkpoint")
    parser.add_argument("--config-file", help="check the result loads into this config's model")
    parser.add_argument("--trust-file", action="store_true",
                        help="allow full unpickling of the input (only for files you trust)")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides for the check")
    args = parser.parse_args(argv)

    state_dict = load_state_dict(args.input, args.trust_file)
    if official_layout(state_dict) is not None:
        layout, state_dict = convert_official(state_dict)
        print(f"converted {len(state_dict)} tensors from the official {layout} layout")
    else:
        print("input is not in an official layout; re-saving its state_dict unchanged")
    if args.config_file:
        check_against_config(state_dict, args.config_file, args.opts)
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    tmp = args.output + ".tmp"
    torch.save({"model": state_dict, "__author__": "sed_d2 convert_checkpoint"}, tmp)
    os.replace(tmp, args.output)  # atomic: never a half-written checkpoint
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
