#!/usr/bin/env python
"""Train or evaluate a sed_d2 method (the usual detectron2 ``train_net.py`` shape).

    python tools/train_net.py --config-file configs/sed/convnextB_768.yaml --num-gpus 4
    python tools/train_net.py --config-file ... --eval-only MODEL.WEIGHTS model_final.pth
    python tools/train_net.py --config-file ... --resume           # continue exactly
"""
import os
import sys

from detectron2.engine import default_argument_parser, default_setup, launch
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

# Run from a source checkout without `pip install -e .` too.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import sed_d2  # noqa: E402,F401  (registers meta-architectures and datasets)
from sed_d2.config import apply_runtime_flags, get_cfg  # noqa: E402
from sed_d2.engine import ConvertingCheckpointer, Trainer  # noqa: E402
from sed_d2.engine.preflight import preflight  # noqa: E402


def setup(args):
    cfg = get_cfg(args.config_file, args.opts)
    cfg.freeze()
    default_setup(cfg, args)
    setup_logger(output=cfg.OUTPUT_DIR, distributed_rank=comm.get_rank(), name="sed_d2")
    apply_runtime_flags(cfg, training=not args.eval_only)
    return cfg


def argument_parser():
    """detectron2's arguments, plus ``--overwrite``."""
    parser = default_argument_parser()
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="start a new run in an OUTPUT_DIR that holds a previous run's checkpoints, overwriting them",
    )
    return parser


def main(args):
    cfg = setup(args)
    # Before any model is built or data read: clear errors in seconds (sed_d2/engine/preflight.py).
    preflight(cfg, eval_only=args.eval_only, resume=args.resume, overwrite=getattr(args, "overwrite", False))
    if args.eval_only:
        model = Trainer.build_model(cfg)
        ConvertingCheckpointer(
            model, save_dir=cfg.OUTPUT_DIR, strict=not cfg.MODEL.OVSEG.ALLOW_PARTIAL_WEIGHTS
        ).resume_or_load(cfg.MODEL.WEIGHTS, resume=args.resume)
        return Trainer.test(cfg, model)
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    return trainer.train()


if __name__ == "__main__":
    args = argument_parser().parse_args()
    print("Command Line Args:", args)
    launch(
        main,
        args.num_gpus,
        num_machines=args.num_machines,
        machine_rank=args.machine_rank,
        dist_url=args.dist_url,
        args=(args,),
    )
