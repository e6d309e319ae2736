"""sed_d2.ops.cuda_graphs and the meta-architecture's use of it (run_network)."""

import pytest
import torch

from sed_d2.ops.cuda_graphs import CUDAGraphCache, graph_key

requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA device")


def test_graph_key_tracks_shapes_parameters_precision_and_tf32():
    x, p = torch.zeros(1, 3, 4, 4), torch.nn.Parameter(torch.zeros(2))
    key = graph_key([x], [p])
    assert graph_key([torch.ones(1, 3, 4, 4)], [p]) == key  # values do not matter
    assert graph_key([torch.zeros(2, 3, 4, 4)], [p]) != key
    assert graph_key([x.double()], [p]) != key
    assert graph_key([x], [torch.nn.Parameter(torch.zeros(2))]) != key  # other storage
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert graph_key([x], [p]) != key
    flag = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = not flag
    try:
        assert graph_key([x], [p]) != key
    finally:
        torch.backends.cudnn.allow_tf32 = flag


def test_cache_refuses_cpu_tensors_and_bad_sizes():
    with pytest.raises(ValueError, match="max_graphs"):
        CUDAGraphCache(max_graphs=0)
    with pytest.raises(ValueError, match="CUDA tensors"):
        CUDAGraphCache()("k", lambda x: x * 2, torch.ones(2))


@requires_cuda
def test_replay_is_bit_identical_and_follows_new_inputs_and_in_place_weights():
    torch.manual_seed(0)
    layer = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.GELU(), torch.nn.Conv2d(8, 2, 1)).cuda()
    cache = CUDAGraphCache(max_graphs=1)
    fn = lambda x: layer(x)  # noqa: E731
    with torch.no_grad():
        for _ in range(2):
            x = torch.randn(2, 3, 16, 16, device="cuda")
            assert torch.equal(cache("a", fn, x).clone(), layer(x))
        layer[0].weight.mul_(2)  # in place: the graph reads the same memory
        assert torch.equal(cache("a", fn, x).clone(), layer(x))
        cache("b", fn, torch.randn(1, 3, 8, 8, device="cuda"))
        assert len(cache) == 1  # "a" evicted
        with torch.autocast("cuda", dtype=torch.bfloat16):
            out = cache("c", fn, x)
            assert out.dtype == torch.bfloat16 and torch.equal(out, layer(x))
