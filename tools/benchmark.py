#!/usr/bin/env python
"""Speed and memory of a sed_d2 config on the current device.

    python tools/benchmark.py --config-file configs/sed/convnextB_768.yaml \\
        --dataset ade20k_150_test_sem_seg ade20k_full_sem_seg_freq_val_all \\
        --precision tf32 bf16 --mode inference train --json out/bench.json \\
        --opts MODEL.OVSEG.CLIP_PRETRAINED ""

The model is built with detectron2's ``build_model(cfg)`` from the config file and the
``--opts`` overrides, so it is exactly what ``train_net.py`` and ``demo.py`` run (weights
do not change speed: random init is fine). Any method works: the tool uses only the method
contract of :mod:`sed_d2.meta_arch.base`. One process measures the cross product of the
lists given (vocabularies x precisions x batch sizes x variants x modes) on one model.

What is measured (CUDA: events around each iteration, synchronised, after warm-up):

* inference, per case:
  - ``network``: ``network_logits(images, text)`` on a ``(B, 3, R, R)`` batch already
    prepared at the CLIP resolution ``R`` (768 for the SED configs), under the model's
    test precision, called the way inference calls it (replayed from CUDA graphs when
    MODEL.OVSEG.CUDA_GRAPHS is on, ``--cuda-graphs`` overrides: the whole network, or only
    ``image_features`` where ``decode`` cannot be captured; the case records the largest
    difference to the eager logits, which must be 0): the number comparable with an
    official timing of the network.
  - ``end_to_end``: the meta-architecture call on detectron2 inputs, ``[{"image": uint8
    (3, H, W), "height": H, "width": W}] * B`` (``--image-size``, default 640x853, a test
    image after the 640 short-side resize): the test protocol (for SED: normalisation, resize
    to ``R``, the network, sigmoid) and the bilinear resize of all ``T`` score maps to (H, W).
  - median and p90 latency per image (iteration time / B), images per second (B / median),
    peak memory (``torch.cuda.max_memory_allocated`` during the timed iterations and the
    first call, which captures the CUDA graph: replays allocate nothing; model weights
    included, no graph of another case alive; also the reserved peak), and fvcore GFLOPs of ``image_features`` and
    ``decode`` (fvcore counts one multiply-add as one flop, and only convolutions, matrix
    products, einsum and a few others; norms and element-wise ops are not counted).
  Text embeddings are cached per vocabulary (as in evaluation) and computed before timing.
* ``train``: one optimizer step of the real Trainer optimizer (``sed_d2.engine.
  build_optimizer``: the parameter groups + gradient clipping of the config), forward +
  backward + step, on a batch of random ``INPUT.CROP.SIZE`` crops with random labels of the
  training vocabulary (``DATASETS.TRAIN[0]``); ms per step, images per second, peak memory.
  A config trained from image-caption pairs (``INPUT.DATASET_MAPPER_NAME "image_caption"``,
  SynSeg) gets what its mapper yields instead: random images at the CLIP resolution, each
  with ``--train-phrases`` noun phrases, all distinct (every one encoded, as in training).

Precisions: ``fp32`` (TF32 off: exact float32), ``tf32`` (float32 with TF32 matrix units,
what the official SED runs), ``bf16`` (``MODEL.OVSEG.TEST_PRECISION`` /
``TRAIN_PRECISION`` "bf16" autocast; TF32 on for what stays float32). They are applied to
the one model the way those config keys are (the meta-architecture's ``test_dtype`` /
``train_dtype`` and the ``torch.backends`` TF32 flags ``ALLOW_TF32`` sets).

Variants (``--variant NAME=VALUE``, ``plain`` = none): the method's own ways to run
inference, from its ``benchmark_variants()``. ``--cer-keep N`` is SED's ``cer_keep=N``
(0 = plain): category early rejection that keeps exactly ``N`` classes per image at each
rejection point, to measure the rejection path's cost for a known number of survivors;
with random weights the real top-k rule rejects nothing.

``--check``: accuracy of every precision against the model's own plain path (every fast op
off, ``sed_d2.ops.set_enabled(False)``) in float32 and in float64 (``--check-without-float64``:
float32 only): relative error ``|a - ref| / |ref|`` of the logits and pixel argmax agreement.

Prints a table and writes everything (environment, command, per-case numbers) as JSON.
"""

import argparse
import itertools
import json
import logging
import os
import sys
import time
from contextlib import contextmanager, nullcontext
from typing import Dict, List, Optional, Tuple

import torch
from torch import nn

# Run from a source checkout without `pip install -e .` too.
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from sed_d2 import ops  # noqa: E402  (importing sed_d2 registers methods and datasets)
from sed_d2.config import apply_runtime_flags, get_cfg  # noqa: E402
from sed_d2.data.vocabulary import vocabulary_of  # noqa: E402
from sed_d2.utils.benchmark import Timer, compare, environment, format_table, summarize  # noqa: E402

logger = logging.getLogger("sed_d2.benchmark")

PRECISIONS = ("fp32", "tf32", "bf16")
Variant = Optional[Tuple[str, int]]  # (name, value) of the method's benchmark_variants(); None = plain


# ----------------------------------------------------------------------------- setup
def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config-file", required=True, metavar="FILE")
    vocab = parser.add_mutually_exclusive_group()
    vocab.add_argument("--dataset", nargs="+", default=[], help="registered datasets whose stuff_classes are the vocabulary")
    vocab.add_argument("--num-classes", nargs="+", type=int, default=[], help="synthetic vocabularies of N names ('class 17')")
    parser.add_argument("--mode", nargs="+", choices=("inference", "train"), default=["inference"])
    parser.add_argument("--precision", nargs="+", choices=PRECISIONS, default=["fp32"])
    parser.add_argument("--batch-size", nargs="+", type=int, default=[1], help="inference images per batch")
    parser.add_argument("--train-batch-size", nargs="+", type=int, default=None, help="default: SOLVER.IMS_PER_BATCH")
    parser.add_argument("--train-phrases", type=int, default=4, help="noun phrases per image (image-caption configs)")
    variant = parser.add_mutually_exclusive_group()
    variant.add_argument(
        "--variant", nargs="+", type=parse_variant, default=[None], metavar="NAME=VALUE",
        help="the method's benchmark variants to measure, 'plain' = none (default: plain)",
    )
    variant.add_argument(
        "--cer-keep", nargs="+", type=int, dest="cer_keep",
        help="SED: classes kept per image by early rejection, one case each; 0 = plain",
    )
    parser.add_argument("--image-size", nargs=2, type=int, default=(640, 853), metavar=("H", "W"))
    parser.add_argument("--iters", type=int, default=20, help="timed iterations per case")
    parser.add_argument("--warmup", type=int, default=3, help="untimed iterations per case")
    parser.add_argument("--no-end-to-end", action="store_true", help="time the network only")
    parser.add_argument("--flops", action="store_true", help="count fvcore GFLOPs of the network")
    parser.add_argument("--check", action="store_true", help="accuracy of each precision (see the module doc)")
    parser.add_argument(
        "--check-without-float64", action="store_true",
        help="--check against the plain float32 path only (the float64 model can be slow on a GPU)",
    )
    parser.add_argument(
        "--cudnn-benchmark", choices=("config", "on", "off"), default="config",
        help="torch.backends.cudnn.benchmark: 'config' = as the tools run (the config's CUDNN_BENCHMARK "
        "in training, off at inference: sed_d2.config.apply_runtime_flags), or forced for both",
    )
    parser.add_argument(
        "--compile",
        choices=("off", "default", "reduce-overhead", "max-autotune-no-cudagraphs"),
        default="off",
        help="wrap the method's decode in torch.compile with this mode (experiment)",
    )
    parser.add_argument(
        "--cuda-graphs", choices=("config", "on", "off"), default="config",
        help="replay the inference network from CUDA graphs: MODEL.OVSEG.CUDA_GRAPHS, or forced",
    )
    parser.add_argument("--profile", action="store_true", help="add a torch.profiler kernel table per case to the JSON")
    parser.add_argument("--json", metavar="FILE", help="write the results here")
    parser.add_argument("--device", help="default: MODEL.DEVICE")
    parser.add_argument("--opts", nargs=argparse.REMAINDER, default=[], help="config overrides KEY VALUE ...")
    return parser


def parse_variant(text: str) -> Variant:
    """``"plain"`` -> None; ``"NAME=VALUE"`` -> (NAME, int VALUE)."""
    if text == "plain":
        return None
    name, _, value = text.partition("=")
    if not name or not value.lstrip("-").isdigit():
        raise argparse.ArgumentTypeError(f"a variant is 'plain' or NAME=INTEGER, got {text!r}")
    return name, int(value)


def variants(args) -> List[Variant]:
    if args.cer_keep is not None:
        return [("cer_keep", n) if n > 0 else None for n in args.cer_keep]
    return args.variant


def setup_cfg(args):
    cfg = get_cfg(args.config_file, args.opts)
    if args.device:
        cfg.MODEL.DEVICE = args.device
    cfg.freeze()
    return cfg


def vocabularies(args) -> List[Dict]:
    if args.dataset:
        return [{"name": name, "classes": vocabulary_of(name)} for name in args.dataset]
    counts = args.num_classes or [150]
    return [{"name": f"synthetic_{n}", "classes": [f"class {i}" for i in range(n)]} for n in counts]


def apply_precision(model, precision: str) -> None:
    """What TEST_PRECISION / TRAIN_PRECISION and ALLOW_TF32 set, applied to a built model."""
    dtype = torch.bfloat16 if precision == "bf16" else None
    model.test_dtype = dtype
    model.train_dtype = dtype
    tf32 = precision in ("tf32", "bf16")
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32


def synthetic_inputs(batch: int, size, generator) -> List[Dict]:
    height, width = size
    return [
        {
            "image": torch.randint(0, 256, (3, height, width), dtype=torch.uint8, generator=generator),
            "height": height,
            "width": width,
        }
        for _ in range(batch)
    ]


def set_vocabulary(model, classes: List[str]) -> torch.Tensor:
    """Set and encode the inference vocabulary (cached; TF32 allowed while encoding). Without
    gradients, as at evaluation: a trainable text tower (CAT-Seg's q/v) would otherwise encode
    the vocabulary with autograd, uncached (847 classes: ~17 GB of saved activations)."""
    model.set_vocabulary(classes)
    flags = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = True
    try:
        with torch.no_grad():
            return model.text_embeddings()
    finally:
        torch.backends.cuda.matmul.allow_tf32 = flags


def variant_context(model, variant: Variant):
    """The context in which ``model`` runs ``variant`` (one of its ``benchmark_variants()``)."""
    if variant is None:
        return nullcontext()
    name, value = variant
    return model.benchmark_variants()[name](value)


# ----------------------------------------------------------------------------- cases
def run_inference_case(model, timer, args, vocab, precision, batch, variant: Variant, generator) -> Dict:
    # each case's peak memory is its own: no graph (and memory pool) of an earlier case stays
    model.release_cuda_graphs()
    _empty_cache(model.device)
    apply_precision(model, precision)
    model.eval()
    text = set_vocabulary(model, vocab["classes"])
    inputs = synthetic_inputs(batch, args.image_size, generator)
    with torch.no_grad():
        images = model.prepare_images([x["image"] for x in inputs])

    def network():
        with torch.no_grad(), model.autocast(model.test_dtype):
            return model.network_logits(images, text)

    with variant_context(model, variant):
        on_cuda = model.cuda_graphs and images.is_cuda
        case = {
            "mode": "inference",
            "vocabulary": vocab["name"],
            "num_classes": len(vocab["classes"]),
            "precision": precision,
            "batch": batch,
            "variant": dict([variant]) if variant else {},
            "input": list(images.shape[-2:]),
            "image_size": list(args.image_size),
            # what run_network replays: the whole network, its image half, or nothing
            "cuda_graphs": ("network" if model.decode_capturable else "image_features") if on_cuda else "off",
        }
        # The first call captures the CUDA graph (eager warm-up runs, then the recording into
        # the graph's own memory pool); replays allocate nothing, so the peak of one forward's
        # memory is measured here and kept if larger than the timed iterations' peak.
        timer.reset_peak()
        with torch.no_grad():
            logits = network().clone()
            case["kept_classes"] = int(torch.isfinite(logits.flatten(2)[..., 0]).sum(1).max())
            if on_cuda:
                # the graph replays the eager kernels: the logits must be bit-identical
                model.cuda_graphs = False
                eager = network()
                model.cuda_graphs = True
                case["cuda_graph_max_abs_diff_vs_eager"] = float((logits.float() - eager.float()).abs().max())
                del eager
            del logits
        first_call_peak = timer.peak()
        timer.reset_peak()
        case["network"] = {**summarize(timer(network, args.iters, args.warmup), batch), **timer.peak()}
        for key, value in first_call_peak.items():
            if value is not None:
                case["network"][key] = max(value, case["network"][key])
        if not args.no_end_to_end:

            def end_to_end():
                with torch.no_grad():
                    return model(inputs)

            model.release_cuda_graphs()  # the single-view graph above is not part of this peak
            _empty_cache(model.device)
            timer.reset_peak()
            case["end_to_end"] = {**summarize(timer(end_to_end, args.iters, args.warmup), batch), **timer.peak()}
        if args.profile:
            case["profile"] = profile(network, timer)
    return case


def synthetic_training_batch(model, cfg, batch: int, generator) -> List[Dict]:
    """Random crops of ``INPUT.CROP.SIZE`` with random labels of the training vocabulary."""
    num_classes = len(model.train_vocabulary)
    height, width = cfg.INPUT.CROP.SIZE if cfg.INPUT.CROP.ENABLED else model.clip_resolution
    inputs = []
    for _ in range(batch):
        labels = torch.randint(0, num_classes, (height, width), generator=generator)
        labels[: height // 8] = cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE  # some padding
        image = torch.randint(0, 256, (3, height, width), dtype=torch.uint8, generator=generator)
        inputs.append({"image": image, "sem_seg": labels})
    return inputs


def run_train_case(model, cfg, timer, args, precision, batch, generator) -> Dict:
    from sed_d2.engine import build_optimizer

    apply_precision(model, precision)
    model.train()
    if cfg.INPUT.DATASET_MAPPER_NAME == "image_caption":
        num_classes = args.train_phrases  # per image
        height, width = model.clip_resolution
        inputs = [
            {
                "image": torch.randint(0, 256, (3, height, width), dtype=torch.uint8, generator=generator),
                "nouns": [f"phrase {i * num_classes + j}" for j in range(num_classes)],
            }
            for i in range(batch)
        ]
    else:
        inputs = synthetic_training_batch(model, cfg, batch, generator)
        num_classes = len(model.train_vocabulary)
        height, width = inputs[0]["sem_seg"].shape
    optimizer = build_optimizer(cfg, model)
    state = {}

    def step():
        losses = model(inputs)
        total = sum(losses.values())
        optimizer.zero_grad()
        total.backward()
        optimizer.step()
        state["loss"] = total.detach()

    timer.reset_peak()
    times = timer(step, args.iters, args.warmup)
    case = {
        "mode": "train",
        "vocabulary": cfg.DATASETS.TRAIN[0] if cfg.DATASETS.TRAIN else None,
        "num_classes": num_classes,
        "precision": precision,
        "batch": batch,
        "variant": {},
        "input": [height, width],
        "step": {**summarize(times, 1), **timer.peak()},
        "loss": round(float(state["loss"]), 5),
    }
    case["step"]["images_per_s"] = round(1e3 * batch / case["step"]["median_ms"], 2)
    optimizer.zero_grad(set_to_none=True)  # the optimizer (and its state) dies with this frame
    model.eval()
    return case


def profile(fn, timer, iters: int = 3) -> str:
    from torch.profiler import ProfilerActivity, profile as torch_profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if timer.cuda else [])
    fn()
    timer.synchronize()
    with torch_profile(activities=activities) as prof:
        for _ in range(iters):
            fn()
        timer.synchronize()
    key = "cuda_time_total" if timer.cuda else "cpu_time_total"
    return prof.key_averages().table(sort_by=key, row_limit=30, max_name_column_width=60)


def _in_order(features: Dict, names: List[str]) -> Tuple:
    return tuple(features[name] for name in names)


class _Traced(nn.Module):
    """A method call as a module with tensor arguments and a tuple of tensors out, as fvcore's
    tracer needs; the model is a submodule, so its parameters are traced as parameters."""

    def __init__(self, model: nn.Module, fn):
        super().__init__()
        self.model = model
        self.fn = fn

    def forward(self, *args):
        return self.fn(*args)


def count_flops(model, args, vocab, batch, generator) -> Dict:
    """fvcore GFLOPs (multiply-adds) per image in float32: ``image_features`` and ``decode``
    (the two halves of the method contract's network) and their total."""
    try:
        from fvcore.nn import FlopCountAnalysis
    except ImportError as e:
        return {"error": f"fvcore not importable: {e}"}
    apply_precision(model, "fp32")
    model.eval()
    text = set_vocabulary(model, vocab["classes"])
    with torch.no_grad():
        images = model.prepare_images([x["image"] for x in synthetic_inputs(batch, args.image_size, generator)])
        features = model.image_features(images)
        names = sorted(features)
        halves = {
            # one image_features call, its outputs in the order of names (a call per name would
            # count the image tower once per output)
            "image_features": (_Traced(model, lambda x: _in_order(model.image_features(x), names)), (images,)),
            "decode": (
                _Traced(model, lambda text, *tensors: model.decode(dict(zip(names, tensors)), text)),
                (text, *(features[n] for n in names)),
            ),
        }
        gflops = {}
        for half, (module, inputs) in halves.items():
            try:
                analysis = FlopCountAnalysis(module, inputs)
                analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
                gflops[f"gflops_{half}"] = round(analysis.total() / batch / 1e9, 2)
            except Exception as e:  # tracing can fail on exotic setups: report, don't abort
                return {"error": f"{half}: {type(e).__name__}: {e}"}
    return {
        "gflops": round(sum(gflops.values()), 2),
        **gflops,
        "counts": "fvcore: 1 multiply-add = 1 flop; conv/matmul/einsum/linear/upsample, no norms or element-wise ops",
    }


# ----------------------------------------------------------------------------- checks
@contextmanager
def plain_path(model):
    """Every fast op off and no CUDA graphs (a graph would replay the fast kernels)."""
    fast, graphs = ops.enabled(), model.cuda_graphs
    ops.set_enabled(False)
    model.cuda_graphs = False
    try:
        yield
    finally:
        ops.set_enabled(fast)
        model.cuda_graphs = graphs


@contextmanager
def in_float64(model):
    """The model's floating parameters and buffers in float64, back to float32 (exactly)
    afterwards; refuses a model that is not all float32."""
    dtypes = {t.dtype for t in itertools.chain(model.parameters(), model.buffers()) if t.is_floating_point()}
    if dtypes != {torch.float32}:
        raise ValueError(f"--check needs a float32 model, got {sorted(map(str, dtypes))}")
    model.double()
    try:
        yield
    finally:
        model.float()


def run_check(model, args, vocab, generator) -> Dict:
    """Logits of each precision vs the plain path in float32 and in float64."""
    model.eval()
    text = set_vocabulary(model, vocab["classes"])
    with torch.no_grad():
        images = model.prepare_images([x["image"] for x in synthetic_inputs(1, args.image_size, generator)])
    logits = {}
    # Each precision's first call captures its CUDA graphs and compiles its kernels, which
    # can take minutes on a cold machine: log every step so a slow one is seen, not guessed.
    with torch.no_grad():
        for precision in PRECISIONS:
            apply_precision(model, precision)
            started = time.perf_counter()
            with model.autocast(model.test_dtype):
                logits[precision] = model.network_logits(images, text).float().clone()
            logger.info("  %s logits: %.1f s", precision, time.perf_counter() - started)
        apply_precision(model, "fp32")
        with plain_path(model):
            started = time.perf_counter()
            plain = model.network_logits(images, text).clone()
            logger.info("  plain fp32 logits: %.1f s", time.perf_counter() - started)
            reference64 = None
            if not args.check_without_float64:
                started = time.perf_counter()
                with in_float64(model):
                    reference64 = model.network_logits(images.double(), text.double())
                logger.info("  float64 logits: %.1f s", time.perf_counter() - started)
    result = {"vocabulary": vocab["name"], "num_classes": len(vocab["classes"])}
    if reference64 is not None:
        for precision, value in logits.items():
            result[f"{precision}_vs_fp64"] = compare(value, reference64)
        result["plain_fp32_vs_fp64"] = compare(plain, reference64)
    result["bf16_vs_fp32"] = compare(logits["bf16"], logits["fp32"])
    for precision, value in logits.items():
        result[f"{precision}_vs_plain_fp32"] = compare(value, plain)
    _empty_cache(model.device)
    return result


# ----------------------------------------------------------------------------- main
def main(argv=None) -> Dict:
    parser = get_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    cfg = setup_cfg(args)
    from detectron2.modeling import build_model

    apply_runtime_flags(cfg)  # the fast-ops switch; TF32 and cuDNN autotuning are set below
    model = build_model(cfg)
    device = model.device
    cases = variants(args)
    for variant in cases:
        if variant is not None and variant[0] not in model.benchmark_variants():
            parser.error(
                f"{type(model).__name__} has no benchmark variant {variant[0]!r}; "
                f"it offers {sorted(model.benchmark_variants()) or 'none'}"
            )
    if args.cuda_graphs != "config":
        model.cuda_graphs = args.cuda_graphs == "on"
    if args.compile != "off":
        # Compiles once per vocabulary size; the first (warm-up) call pays for it.
        model.decode = torch.compile(model.decode, mode=args.compile, dynamic=False)
        if args.cuda_graphs == "config":
            model.cuda_graphs = False  # compiled code is not captured by our graphs
    # cuDNN autotuning as train_net runs (apply_runtime_flags) unless forced; its trial
    # workspaces count in the first call's peak memory
    benchmark = {
        mode: {"config": mode == "train" and cfg.CUDNN_BENCHMARK, "on": True, "off": False}[args.cudnn_benchmark]
        for mode in ("inference", "train")
    }
    torch.backends.cudnn.benchmark = bool(benchmark["inference"])  # checks and inference cases
    timer = Timer(device)
    generator = torch.Generator().manual_seed(0)
    results = {
        "environment": environment(device),
        "settings": {
            "config_file": args.config_file,
            "opts": args.opts,
            "method": type(model).__name__,
            "cudnn_benchmark": benchmark,
            "fast_ops": ops.enabled(),
            "iters": args.iters,
            "warmup": args.warmup,
            "compile": args.compile,
            "cuda_graphs": model.cuda_graphs,
        },
        "cases": [],
    }
    vocabs = vocabularies(args)
    if args.check:
        results["checks"] = []
        for vocab in vocabs:
            logger.info("check %s", vocab["name"])
            results["checks"].append(run_check(model, args, vocab, generator))
            logger.info("  -> %s", json.dumps(results["checks"][-1]))
            _write(results, args)
    if "inference" in args.mode:
        flops_cache = {}
        for vocab, batch, precision, variant in itertools.product(vocabs, args.batch_size, args.precision, cases):
            logger.info("inference %s B=%d %s %s", vocab["name"], batch, precision, variant or "plain")
            case = run_inference_case(model, timer, args, vocab, precision, batch, variant, generator)
            if args.flops and variant is None:
                key = (vocab["name"], batch)
                if key not in flops_cache:
                    flops_cache[key] = count_flops(model, args, vocab, batch, generator)
                case["flops"] = flops_cache[key]
            _record(results, case, args)
            _empty_cache(device)
    if "train" in args.mode:
        torch.backends.cudnn.benchmark = bool(benchmark["train"])
        for batch, precision in itertools.product(args.train_batch_size or [cfg.SOLVER.IMS_PER_BATCH], args.precision):
            logger.info("train B=%d %s", batch, precision)
            _record(results, run_train_case(model, cfg, timer, args, precision, batch, generator), args)
            _empty_cache(device)
    print(format_table(results))
    _write(results, args)
    return results


def _record(results: Dict, case: Dict, args) -> None:
    """Keep a finished case: log its numbers and rewrite the JSON (partial runs keep them)."""
    results["cases"].append(case)
    numbers = {key: case[key] for key in ("network", "end_to_end", "step") if key in case}
    logger.info("  -> %s", json.dumps(numbers))
    _write(results, args)


def _write(results: Dict, args) -> None:
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


def _empty_cache(device):
    if device.type == "cuda":
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
