"""Replay a network's inference forward from captured CUDA graphs.

At batch 1 the SED network issues a few thousand small kernels per image; on an H200 the
host needs longer to launch them than the GPU needs to run them (the decoder at 150
classes: about 22 ms of launches for 17 ms of GPU work). A CUDA graph launches the whole
recorded sequence at once, so the GPU time is what remains. The graph runs the very same
kernels on the same memory, so results are bit-identical to the eager forward.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Callable, Hashable, NamedTuple, Sequence

import torch
from torch import Tensor

__all__ = ["CUDAGraphCache", "graph_key"]


class _Captured(NamedTuple):
    graph: "torch.cuda.CUDAGraph"
    inputs: tuple[Tensor, ...]
    output: object


def graph_key(inputs: Sequence[Tensor], parameters: Sequence[Tensor]) -> tuple:
    """What a captured graph depends on besides the function: the inputs' shapes, dtypes
    and devices, the parameters' storage and versions (a graph reads the memory it was
    captured on, so moved or replaced parameters need a new capture; so do in-place updates,
    because weights derived from the parameters are cached outside the graph), the
    autocast state and the TF32 flags (cuBLAS / cuDNN pick kernels at capture time)."""
    device_type = inputs[0].device.type
    return (
        tuple((tuple(x.shape), x.dtype, x.device) for x in inputs),
        # versions too: inference kernels read weights prepared once per parameter version
        # (sed_d2.ops.parameter_cache), which a replay would not refresh
        tuple((p.data_ptr(), p._version) for p in parameters),
        torch.is_autocast_enabled(device_type),
        torch.get_autocast_dtype(device_type),
        torch.backends.cuda.matmul.allow_tf32,
        torch.backends.cudnn.allow_tf32,
    )


class CUDAGraphCache:
    """Capture ``fn(*inputs)`` as a CUDA graph once per key and replay it afterwards.

    ``cache(key, fn, *inputs)`` copies ``inputs`` into the graph's static input tensors,
    replays the graph and returns its static output. The output is overwritten by the
    next call with the same key: consume or copy it first. At most ``max_graphs`` graphs
    (each holding its own activation memory) are kept, least recently used evicted.

    Capture runs ``warmup`` eager calls on a side stream first (cuDNN autotuning, Triton
    compilation and lazy allocations must not happen inside the capture), then records one
    call with autocast's weight cache off (cached casts made outside the graph would be
    freed under it). ``fn`` must be capturable: no host synchronisation and no shapes
    that depend on values. Errors propagate; :meth:`clear` drops every graph.
    """

    def __init__(self, max_graphs: int = 2, warmup: int = 2) -> None:
        if max_graphs < 1:
            raise ValueError(f"max_graphs must be >= 1, got {max_graphs}")
        self.max_graphs = max_graphs
        self.warmup = warmup
        self._graphs: OrderedDict[Hashable, _Captured] = OrderedDict()

    def __len__(self) -> int:
        return len(self._graphs)

    def __call__(self, key: Hashable, fn: Callable, *inputs: Tensor):
        entry = self._graphs.get(key)
        if entry is None:
            entry = self._capture(fn, inputs)
            self._graphs[key] = entry
            while len(self._graphs) > self.max_graphs:
                _, evicted = self._graphs.popitem(last=False)
                evicted.graph.reset()  # releases its memory pool
        else:
            self._graphs.move_to_end(key)
        for static, x in zip(entry.inputs, inputs):
            static.copy_(x)
        entry.graph.replay()
        return entry.output

    def clear(self) -> None:
        for entry in self._graphs.values():
            entry.graph.reset()
        self._graphs.clear()

    def _capture(self, fn: Callable, inputs: Sequence[Tensor]) -> _Captured:
        device = inputs[0].device
        if device.type != "cuda":
            raise ValueError(f"CUDA graphs need CUDA tensors, got {device}")
        static_inputs = tuple(x.clone() for x in inputs)
        autocast = torch.autocast(
            "cuda",
            dtype=torch.get_autocast_dtype("cuda"),
            enabled=torch.is_autocast_enabled("cuda"),
            cache_enabled=False,
        )
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side), autocast:
            for _ in range(self.warmup):
                fn(*static_inputs)
        torch.cuda.current_stream(device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph), autocast:
            output = fn(*static_inputs)
        # The warm-up's activations sit in the allocator's cache next to the graph's own
        # pool; hand them back so a graph costs one forward's memory, not two.
        torch.cuda.empty_cache()
        return _Captured(graph, static_inputs, output)
