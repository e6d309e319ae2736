#!/usr/bin/env python
"""Speed and memory of a sed_d2 config on the current device.

    python tools/benchmark.py --config-file configs/sed/convnextB_768.yaml \\
        --dataset ade20k_150_test_sem_seg ade20k_full_sem_seg_freq_val_all \\
        --precision tf32 bf16 --mode inference train --json out/bench.json \\
        --opts MODEL.OVSEG.CLIP_PRETRAINED ""

The model is built with detectron2's ``build_model(cfg)`` from the config file and the
``--opts`` overrides, so it is exactly what ``train_net.py`` and ``demo.py`` run (weights
do not change speed: random init is fine). One process measures the cross product of the
lists given (vocabularies x precisions x batch sizes x forced CER survivors x modes) on
one model.

What is measured (CUDA: events around each iteration, synchronised, after warm-up):

* inference, per case:
  - ``network``: the SED network (``model.model``: CLIP image tower + decoder) on a
    ``(B, 3, R, R)`` batch already resized to the CLIP resolution ``R`` (768 for the
    SED configs), under the meta-architecture's precision, called the way inference calls
    it (``SED.network_logits``: replayed from a CUDA graph when MODEL.OVSEG.CUDA_GRAPHS is
    on, ``--cuda-graphs`` overrides; the case records the graph's largest difference to
    the eager logits, which must be 0): the number comparable with the official timing of
    the network at 768x768.
  - ``end_to_end``: the meta-architecture call on detectron2 inputs, ``[{"image": uint8
    (3, H, W), "height": H, "width": W}] * B`` (``--image-size``, default 640x853, a test
    image after the 640 short-side resize): normalisation, resize to ``R``, the network,
    sigmoid and the bilinear resize of all ``T`` probability maps to ``(H, W)``.
  - median and p90 latency per image (iteration time / B), images per second (B / median),
    peak memory (``torch.cuda.max_memory_allocated`` during the timed iterations and the
    first call, which captures the CUDA graph: replays allocate nothing; model weights
    included; also the reserved peak), and fvcore GFLOPs of the network (fvcore
    counts one multiply-add as one flop, and only convolutions, matrix products, einsum
    and a few others; norms and element-wise ops are not counted).
  Text embeddings are cached per vocabulary (as in evaluation) and computed before timing.
* ``train``: one optimizer step of the real Trainer optimizer (``sed_d2.engine.
  build_optimizer``: AdamW groups + full-model gradient clipping), forward (4 losses) +
  backward + step, on a batch of random ``INPUT.CROP.SIZE`` crops with random labels of
  the training vocabulary (``DATASETS.TRAIN[0]``, 171 COCO-Stuff classes for the SED
  configs); ms per step, images per second and peak memory.

Precisions: ``fp32`` (TF32 off: exact float32), ``tf32`` (float32 with TF32 matrix units,
what the official SED runs), ``bf16`` (``MODEL.OVSEG.TEST_PRECISION`` /
``TRAIN_PRECISION`` "bf16" autocast; TF32 on for what stays float32). They are applied to
the one model the way those config keys are (the meta-architecture's ``test_dtype`` /
``train_dtype`` and the ``torch.backends`` TF32 flags ``ALLOW_TF32`` sets).

``--cer-keep N``: category early rejection that keeps exactly ``N`` classes per image at
each rejection point (``SEDDecoder.forward``'s ``cer_keep_classes``), to measure the
rejection path's cost for a known number of survivors; with random weights the real
top-k rule rejects nothing.

``--check``: accuracy of every precision against a float64 evaluation of the same network
and (from a source checkout) against the plain op-by-op reference decoder of the test
suite run in exact float32: relative error ``|a - ref| / |ref|`` of the logits and pixel
argmax agreement.

Prints a table and writes everything (environment, command, per-case numbers) as JSON.
"""

import argparse
import copy
import datetime
import itertools
import json
import logging
import os
import platform
import statistics
import sys
import time
from typing import Dict, List, Optional

import torch

# Run from a source checkout without `pip install -e .` too.
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import sed_d2  # noqa: E402,F401  (registers meta-architectures and datasets)
from sed_d2.config import add_sed_d2_config  # noqa: E402
from sed_d2.data.vocabulary import vocabulary_of  # noqa: E402

logger = logging.getLogger("sed_d2.benchmark")

PRECISIONS = ("fp32", "tf32", "bf16")
GIB = 2**30


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
    parser.add_argument("--cer-topk", type=int, default=None, help="CER k at inference (default: MODEL.SED.CER_TOPK)")
    parser.add_argument("--cer-keep", nargs="+", type=int, default=[0], help="forced CER survivors per image; 0 = off")
    parser.add_argument("--image-size", nargs=2, type=int, default=(640, 853), metavar=("H", "W"))
    parser.add_argument("--iters", type=int, default=20, help="timed iterations per case")
    parser.add_argument("--warmup", type=int, default=3, help="untimed iterations per case")
    parser.add_argument("--no-end-to-end", action="store_true", help="time the network only")
    parser.add_argument("--flops", action="store_true", help="count fvcore GFLOPs of the network")
    parser.add_argument("--check", action="store_true", help="accuracy of each precision (see the module doc)")
    parser.add_argument(
        "--cudnn-benchmark", choices=("config", "on", "off"), default="config",
        help="torch.backends.cudnn.benchmark: the config's CUDNN_BENCHMARK, or forced",
    )
    parser.add_argument("--chunk-pixels", type=int, default=None, help="override the decoder's inference_chunk_pixels")
    parser.add_argument(
        "--trunk-channels-last", action="store_true", help="run the CLIP image trunk on channels-last images"
    )
    parser.add_argument(
        "--compile",
        choices=("off", "default", "reduce-overhead", "max-autotune-no-cudagraphs"),
        default="off",
        help="wrap the decoder's forward in torch.compile with this mode (experiment)",
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


def setup_cfg(args):
    from detectron2.config import get_cfg

    cfg = get_cfg()
    add_sed_d2_config(cfg)
    cfg.merge_from_file(args.config_file)
    cfg.merge_from_list(args.opts)
    if args.device:
        cfg.MODEL.DEVICE = args.device
    cfg.freeze()
    return cfg


def vocabularies(args) -> List[Dict]:
    if args.dataset:
        return [{"name": name, "classes": vocabulary_of(name)} for name in args.dataset]
    counts = args.num_classes or [150]
    return [{"name": f"synthetic_{n}", "classes": [f"class {i}" for i in range(n)]} for n in counts]


def environment(device: torch.device) -> Dict:
    env = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join([os.path.basename(sys.executable)] + sys.argv),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "device": str(device),
    }
    for module in ("detectron2", "open_clip", "timm", "fvcore"):
        try:
            env[module] = getattr(__import__(module), "__version__", "?")
        except ImportError:
            env[module] = None
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        env.update(
            gpu=props.name,
            gpu_memory_gib=round(props.total_memory / GIB, 1),
            cuda=torch.version.cuda,
            cudnn=torch.backends.cudnn.version(),
        )
    return env


# ----------------------------------------------------------------------------- timing
class Timer:
    """Per-iteration wall time of ``fn``: CUDA events (synchronised) on GPU, else perf_counter."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"

    def __call__(self, fn, iters: int, warmup: int) -> List[float]:
        for _ in range(warmup):
            fn()
        self.synchronize()
        times = []
        for _ in range(iters):
            if self.cuda:
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                fn()
                end.record()
                end.synchronize()
                times.append(start.elapsed_time(end))
            else:
                start = time.perf_counter()
                fn()
                times.append((time.perf_counter() - start) * 1e3)
        return times

    def synchronize(self):
        if self.cuda:
            torch.cuda.synchronize()

    def reset_peak(self):
        if self.cuda:
            self.synchronize()
            torch.cuda.reset_peak_memory_stats()

    def peak(self) -> Dict[str, Optional[float]]:
        if not self.cuda:
            return {"peak_mem_gib": None, "peak_reserved_gib": None}
        self.synchronize()
        return {
            "peak_mem_gib": round(torch.cuda.max_memory_allocated() / GIB, 3),
            "peak_reserved_gib": round(torch.cuda.max_memory_reserved() / GIB, 3),
        }


def summarize(times_ms: List[float], batch: int) -> Dict[str, float]:
    ordered = sorted(times_ms)
    p90 = ordered[min(len(ordered) - 1, int(round(0.9 * (len(ordered) - 1))))]
    median = statistics.median(ordered)
    return {
        "median_ms": round(median / batch, 3),
        "p90_ms": round(p90 / batch, 3),
        "images_per_s": round(1e3 * batch / median, 2),
        "iters": len(ordered),
    }


def apply_precision(model, precision: str, device: torch.device) -> None:
    """What TEST_PRECISION / TRAIN_PRECISION and ALLOW_TF32 set, applied to a built model."""
    dtype = torch.bfloat16 if precision == "bf16" else None
    model.test_dtype = dtype
    model.train_dtype = dtype
    tf32 = precision in ("tf32", "bf16")
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32


def synthetic_inputs(batch: int, size, device, generator) -> List[Dict]:
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
    """Set and encode the inference vocabulary (cached; TF32 allowed while encoding)."""
    model.set_vocabulary(classes)
    flags = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = True
    try:
        return model.text_embeddings()
    finally:
        torch.backends.cuda.matmul.allow_tf32 = flags


# ----------------------------------------------------------------------------- cases
def run_inference_case(model, timer, args, vocab, precision, batch, cer_keep, generator) -> Dict:
    device = model.device
    apply_precision(model, precision, device)
    model.eval()
    model.cer_keep_classes = cer_keep
    text = set_vocabulary(model, vocab["classes"])
    inputs = synthetic_inputs(batch, args.image_size, device, generator)
    with torch.no_grad():
        images = model.prepare_images([x["image"] for x in inputs])

    def network():
        with torch.no_grad(), model.autocast(model.test_dtype):
            return model.network_logits(images, text)

    case = {
        "mode": "inference",
        "vocabulary": vocab["name"],
        "num_classes": len(vocab["classes"]),
        "precision": precision,
        "batch": batch,
        "cer_topk": model.cer_topk,
        "cer_keep": cer_keep,
        "input": list(images.shape[-2:]),
        "image_size": list(args.image_size),
    }
    # The first call captures the CUDA graph (eager warm-up runs, then the recording into
    # the graph's own memory pool); replays allocate nothing, so the peak of one forward's
    # memory is measured here and kept if larger than the timed iterations' peak.
    timer.reset_peak()
    with torch.no_grad():
        logits = network().clone()
        case["kept_classes"] = int(torch.isfinite(logits.flatten(2)[..., 0]).sum(1).max())
        case["cuda_graphs"] = bool(model.cuda_graphs and device.type == "cuda" and not (model.cer_topk or cer_keep))
        if case["cuda_graphs"]:
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

        timer.reset_peak()
        case["end_to_end"] = {**summarize(timer(end_to_end, args.iters, args.warmup), batch), **timer.peak()}
    if args.profile:
        case["profile"] = profile(network, timer)
    model.cer_keep_classes = 0
    return case


def run_train_case(model, cfg, timer, args, precision, batch, generator) -> Dict:
    from sed_d2.engine import build_optimizer

    device = model.device
    apply_precision(model, precision, device)
    model.train()
    num_classes = len(model.train_vocabulary)
    height, width = cfg.INPUT.CROP.SIZE if cfg.INPUT.CROP.ENABLED else model.clip_resolution
    inputs = []
    for _ in range(batch):
        labels = torch.randint(0, num_classes, (height, width), generator=generator)
        labels[: height // 8] = cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE  # some padding
        image = torch.randint(0, 256, (3, height, width), dtype=torch.uint8, generator=generator)
        inputs.append({"image": image, "sem_seg": labels})
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


def count_flops(model, args, vocab, batch, generator) -> Dict:
    """fvcore GFLOPs (multiply-adds) of the network in float32, total and per top module."""
    try:
        from fvcore.nn import FlopCountAnalysis
    except ImportError as e:
        return {"error": f"fvcore not importable: {e}"}
    apply_precision(model, "fp32", model.device)
    model.eval()
    text = set_vocabulary(model, vocab["classes"])
    with torch.no_grad():
        images = model.prepare_images([x["image"] for x in synthetic_inputs(batch, args.image_size, model.device, generator)])
        try:
            analysis = FlopCountAnalysis(model.model, (images, text))
            analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
            total = analysis.total()
            by_module = analysis.by_module()
        except Exception as e:  # tracing can fail on exotic setups: report, don't abort
            return {"error": f"{type(e).__name__}: {e}"}
    return {
        "gflops": round(total / batch / 1e9, 2),
        "gflops_clip_image": round(by_module.get("clip_model.visual", 0) / batch / 1e9, 2),
        "gflops_decoder": round(by_module.get("decoder", 0) / batch / 1e9, 2),
        "counts": "fvcore: 1 multiply-add = 1 flop; conv/matmul/einsum/linear/upsample, no norms or element-wise ops",
    }


# ----------------------------------------------------------------------------- checks
def _reference_decoder():
    try:
        from tests.models.sed_reference import reference_decoder_forward
    except ImportError:
        return None
    return reference_decoder_forward


def run_check(model, args, vocab, generator) -> Dict:
    """Logits of each precision vs float64 (same network) and vs the plain reference."""
    from sed_d2.clip import convnext_dense_features

    device = model.device
    model.eval()
    text = set_vocabulary(model, vocab["classes"])
    with torch.no_grad():
        images = model.prepare_images([x["image"] for x in synthetic_inputs(1, args.image_size, device, generator)])
    logits = {}
    for precision in PRECISIONS:
        apply_precision(model, precision, device)
        with torch.no_grad(), model.autocast(model.test_dtype):
            logits[precision] = model.model(images, text).logits.float()
    apply_precision(model, "fp32", device)
    network64 = copy.deepcopy(model.model).double()
    with torch.no_grad():
        reference64 = network64(images.double(), text.double()).logits
    del network64
    result = {"vocabulary": vocab["name"], "num_classes": len(vocab["classes"])}
    for precision, value in logits.items():
        result[f"{precision}_vs_fp64"] = compare(value, reference64)
    result["bf16_vs_fp32"] = compare(logits["bf16"], logits["fp32"])
    reference = _reference_decoder()
    if reference is not None:
        with torch.no_grad():
            features = convnext_dense_features(model.model.clip_model.visual, images)
            skips = {name: features[name] for name in model.model.decoder.skip_feature_names}
            plain, _ = reference(model.model.decoder, features["clip_vis_dense"], text, skips)
        result["plain_reference_fp32_vs_fp64"] = compare(plain, reference64)
        for precision, value in logits.items():
            result[f"{precision}_vs_plain_reference_fp32"] = compare(value, plain)
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return result


def compare(value: torch.Tensor, reference: torch.Tensor) -> Dict[str, float]:
    """Errors of ``(B, T, H, W)`` logits, and how decisive the reference's argmax is: the
    median top-1 minus top-2 margin, and the agreement on pixels whose margin exceeds the
    99th percentile of the absolute error (where rounding cannot decide the winner)."""
    value, reference = value.double(), reference.double()
    error = (value - reference).abs()
    agree = value.argmax(1) == reference.argmax(1)
    top2 = reference.topk(min(2, reference.shape[1]), dim=1).values
    margin = top2[:, 0] - top2[:, -1]
    sample = error.flatten()[:: error.numel() // (2**24 - 1) + 1].float()  # quantile takes < 2^24 values
    err_p99 = float(torch.quantile(sample, 0.99))
    decided = margin > err_p99
    return {
        "rel_err": float((value - reference).norm() / reference.norm()),
        "max_abs_err": float(error.max()),
        "err_p99": err_p99,
        "argmax_agreement": float(agree.double().mean()),
        "margin_median": float(margin.median()),
        "decided_fraction": float(decided.double().mean()),
        "argmax_agreement_decided": float(agree[decided].double().mean()) if bool(decided.any()) else None,
    }


# ----------------------------------------------------------------------------- output
def _fmt(value, digits=1):
    return "-" if value is None else f"{value:.{digits}f}"


def format_table(results: Dict) -> str:
    env = results["environment"]
    lines = [f"{env.get('gpu', env['device'])} | torch {env['torch']}", ""]
    header = (
        f"{'mode':<9} {'vocabulary':<34} {'T':>4} {'prec':<5} {'B':>2} {'keep':>4} | "
        f"{'net ms':>7} {'p90':>7} {'img/s':>7} {'GiB':>6} | {'e2e ms':>7} {'GiB':>6} | {'GFLOPs':>7}"
    )
    lines += [header, "-" * len(header)]
    for case in results["cases"]:
        if case["mode"] == "inference":
            net, e2e = case["network"], case.get("end_to_end", {})
            flops = case.get("flops", {}).get("gflops")
            keep = case["cer_keep"] or "-"
            lines.append(
                f"{'inference':<9} {case['vocabulary'][:34]:<34} {case['num_classes']:>4} {case['precision']:<5} "
                f"{case['batch']:>2} {keep!s:>4} | {_fmt(net['median_ms'])!s:>7} {_fmt(net['p90_ms'])!s:>7} "
                f"{_fmt(net['images_per_s'])!s:>7} {_fmt(net['peak_mem_gib'], 2)!s:>6} | "
                f"{_fmt(e2e.get('median_ms'))!s:>7} {_fmt(e2e.get('peak_mem_gib'), 2)!s:>6} | {_fmt(flops)!s:>7}"
            )
        else:
            step = case["step"]
            lines.append(
                f"{'train':<9} {str(case['vocabulary'])[:34]:<34} {case['num_classes']:>4} {case['precision']:<5} "
                f"{case['batch']:>2} {'-':>4} | {_fmt(step['median_ms'])!s:>7} {_fmt(step['p90_ms'])!s:>7} "
                f"{_fmt(step['images_per_s'])!s:>7} {_fmt(step['peak_mem_gib'], 2)!s:>6} | {'(ms/step)':>7} {'':>6} |"
            )
    for check in results.get("checks", []):
        lines.append("")
        lines.append(f"check {check['vocabulary']} (T={check['num_classes']}): rel. error / argmax agreement")
        for key, value in check.items():
            if isinstance(value, dict):
                decided = value.get("argmax_agreement_decided")
                lines.append(
                    f"  {key:<36} {value['rel_err']:.2e}  {100 * value['argmax_agreement']:.3f}%  "
                    f"(margin p50 {value['margin_median']:.2e}, err p99 {value['err_p99']:.2e}: "
                    f"{100 * value['decided_fraction']:.1f}% of pixels decided, agreement there "
                    f"{'-' if decided is None else f'{100 * decided:.3f}%'})"
                )
    return "\n".join(lines)


# ----------------------------------------------------------------------------- main
def main(argv=None) -> Dict:
    args = get_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    cfg = setup_cfg(args)
    from detectron2.modeling import build_model

    model = build_model(cfg)
    device = model.device
    if args.chunk_pixels is not None:
        model.model.decoder.inference_chunk_pixels = args.chunk_pixels
    if args.trunk_channels_last:
        model.model.trunk_channels_last = True
    if args.cer_topk is not None:
        model.cer_topk = args.cer_topk
    if args.cuda_graphs != "config":
        model.cuda_graphs = args.cuda_graphs == "on"
    if args.compile != "off":
        # Compiles once per vocabulary size; the first (warm-up) call pays for it.
        decoder = model.model.decoder
        decoder.forward = torch.compile(decoder.forward, mode=args.compile, dynamic=False)
        if args.cuda_graphs == "config":
            model.cuda_graphs = False  # compiled code is not captured by our graphs
    benchmark = {"config": cfg.CUDNN_BENCHMARK, "on": True, "off": False}[args.cudnn_benchmark]
    torch.backends.cudnn.benchmark = bool(benchmark)
    timer = Timer(device)
    generator = torch.Generator().manual_seed(0)
    results = {
        "environment": environment(device),
        "settings": {
            "config_file": args.config_file,
            "opts": args.opts,
            "cudnn_benchmark": bool(benchmark),
            "inference_chunk_pixels": getattr(model.model.decoder, "inference_chunk_pixels", None),
            "trunk_channels_last": getattr(model.model, "trunk_channels_last", False),
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
        for vocab, batch, precision, keep in itertools.product(vocabs, args.batch_size, args.precision, args.cer_keep):
            logger.info("inference %s B=%d %s keep=%d", vocab["name"], batch, precision, keep)
            case = run_inference_case(model, timer, args, vocab, precision, batch, keep, generator)
            if args.flops and keep == 0:
                key = (vocab["name"], batch)
                if key not in flops_cache:
                    flops_cache[key] = count_flops(model, args, vocab, batch, generator)
                case["flops"] = flops_cache[key]
            _record(results, case, args)
            _empty_cache(device)
    if "train" in args.mode:
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
