"""The method-independent parts of ``tools/benchmark.py``: timing, summaries, accuracy
comparison, the environment record and the results table.

Nothing here knows a method: a case is a dict of numbers that the command line fills in
through the method contract (:class:`sed_d2.meta_arch.base.OpenVocabSegmentor`).
"""
from __future__ import annotations

import datetime
import os
import platform
import statistics
import sys
import time
from typing import Callable, Dict, List, Optional

import torch

__all__ = ["GIB", "Timer", "compare", "environment", "format_table", "summarize"]

GIB = 2**30


def environment(device: torch.device) -> Dict:
    """What a measurement depends on besides the code: date, command, versions, GPU."""
    env = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join([os.path.basename(sys.executable)] + sys.argv),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "device": str(device),
    }
    for module in ("detectron2", "open_clip", "timm", "fvcore", "triton"):
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


class Timer:
    """Per-iteration wall time of ``fn`` in ms: CUDA events (synchronised) on a GPU, else
    ``time.perf_counter``; and the peak memory of what ran between :meth:`reset_peak` and
    :meth:`peak`."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"

    def __call__(self, fn: Callable[[], object], iters: int, warmup: int) -> List[float]:
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

    def synchronize(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()

    def reset_peak(self) -> None:
        if self.cuda:
            self.synchronize()
            torch.cuda.reset_peak_memory_stats()

    def peak(self) -> Dict[str, Optional[float]]:
        """``torch.cuda.max_memory_allocated`` / ``max_memory_reserved`` in GiB; None on CPU."""
        if not self.cuda:
            return {"peak_mem_gib": None, "peak_reserved_gib": None}
        self.synchronize()
        return {
            "peak_mem_gib": round(torch.cuda.max_memory_allocated() / GIB, 3),
            "peak_reserved_gib": round(torch.cuda.max_memory_reserved() / GIB, 3),
        }


def summarize(times_ms: List[float], batch: int) -> Dict[str, float]:
    """Median and p90 (nearest rank) time per image, and images per second, of iterations
    that each ran ``batch`` images."""
    ordered = sorted(times_ms)
    p90 = ordered[min(len(ordered) - 1, int(round(0.9 * (len(ordered) - 1))))]
    median = statistics.median(ordered)
    return {
        "median_ms": round(median / batch, 3),
        "p90_ms": round(p90 / batch, 3),
        "images_per_s": round(1e3 * batch / median, 2),
        "iters": len(ordered),
    }


def compare(value: torch.Tensor, reference: torch.Tensor) -> Dict[str, Optional[float]]:
    """Errors of ``(B, T, H, W)`` logits against a reference, and how decisive the
    reference's argmax is: the median top-1 minus top-2 margin, the fraction of pixels whose
    margin exceeds the 99th percentile of the absolute error (where rounding cannot decide
    the winner), and the argmax agreement overall and on those pixels."""
    value, reference = value.double(), reference.double()
    error = (value - reference).abs()
    agree = value.argmax(1) == reference.argmax(1)
    top2 = reference.topk(min(2, reference.shape[1]), dim=1).values
    margin = top2[:, 0] - top2[:, -1]
    sample = error.flatten()[:: error.numel() // (2**24 - 1) + 1].float()  # quantile takes < 2^24 values
    err_p99 = float(torch.quantile(sample, 0.99))
    decided = margin > err_p99
    return {
        "rel_err": float(error.norm() / reference.norm()),
        "max_abs_err": float(error.max()),
        "err_p99": err_p99,
        "argmax_agreement": float(agree.double().mean()),
        "margin_median": float(margin.median()),
        "decided_fraction": float(decided.double().mean()),
        "argmax_agreement_decided": float(agree[decided].double().mean()) if bool(decided.any()) else None,
    }


def _fmt(value, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _variant(case: Dict) -> str:
    return ",".join(f"{k}={v}" for k, v in case.get("variant", {}).items()) or "-"


def format_table(results: Dict) -> str:
    """One line per case (inference: network and end-to-end times; train: ms per step) and
    the accuracy checks, as printed by ``tools/benchmark.py``."""
    env = results["environment"]
    lines = [f"{env.get('gpu', env['device'])} | torch {env['torch']}", ""]
    header = (
        f"{'mode':<9} {'vocabulary':<34} {'T':>4} {'prec':<5} {'B':>2} {'variant':<12} | "
        f"{'net ms':>7} {'p90':>7} {'img/s':>7} {'GiB':>6} | {'e2e ms':>7} {'GiB':>6} | {'GFLOPs':>7}"
    )
    lines += [header, "-" * len(header)]
    for case in results["cases"]:
        prefix = (
            f"{case['mode']:<9} {str(case['vocabulary'])[:34]:<34} {case['num_classes']:>4} "
            f"{case['precision']:<5} {case['batch']:>2} {_variant(case)[:12]:<12} | "
        )
        if case["mode"] == "inference":
            net, e2e = case["network"], case.get("end_to_end", {})
            flops = case.get("flops", {}).get("gflops")
            lines.append(
                prefix + f"{_fmt(net['median_ms']):>7} {_fmt(net['p90_ms']):>7} "
                f"{_fmt(net['images_per_s']):>7} {_fmt(net['peak_mem_gib'], 2):>6} | "
                f"{_fmt(e2e.get('median_ms')):>7} {_fmt(e2e.get('peak_mem_gib'), 2):>6} | {_fmt(flops):>7}"
            )
        else:
            step = case["step"]
            lines.append(
                prefix + f"{_fmt(step['median_ms']):>7} {_fmt(step['p90_ms']):>7} "
                f"{_fmt(step['images_per_s']):>7} {_fmt(step['peak_mem_gib'], 2):>6} | {'(ms/step)':>7} {'':>6} |"
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
