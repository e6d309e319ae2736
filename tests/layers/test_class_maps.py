import copy

import pytest
import torch
from torch import nn

from sed_d2.layers import (
    ClassLogitHead,
    channels_last_class_maps,
    empty_class_maps,
    in_class_chunks,
    scatter_classes,
    top_k_union,
    top_n_classes,
)
from sed_d2.ops import head_conv


def _class_maps(batch, num_classes, channels, height, width, seed=0, dtype=torch.float32):
    generator = torch.Generator().manual_seed(seed)
    maps = torch.randn(batch * num_classes, channels, height, width, generator=generator, dtype=dtype)
    return maps.contiguous(memory_format=torch.channels_last).unflatten(0, (batch, num_classes))


def _is_channels_last(maps):
    return maps.flatten(0, 1).is_contiguous(memory_format=torch.channels_last)


# ----------------------------------------------------------------------------- layout helpers
def test_channels_last_class_maps_keeps_values_and_skips_copies():
    x = torch.randn(2, 3, 4, 5, 6)  # contiguous (B, T, C, H, W): not channels-last per map
    maps = channels_last_class_maps(x)
    assert torch.equal(maps, x) and _is_channels_last(maps) and not _is_channels_last(x)
    assert channels_last_class_maps(maps).data_ptr() == maps.data_ptr()


def test_empty_class_maps_takes_the_map_shape_of_like():
    like = torch.zeros(1, 2, 4, 5, 6, dtype=torch.float64)
    empty = empty_class_maps(3, 7, like)
    assert empty.shape == (3, 7, 4, 5, 6) and empty.dtype == torch.float64 and _is_channels_last(empty)


def test_in_class_chunks_equals_one_call_over_everything():
    x, cost = _class_maps(2, 5, 3, 4, 4, seed=1), _class_maps(2, 5, 2, 4, 4, seed=2)
    offsets = torch.tensor([10.0, 20.0])
    calls = []

    def fn(image, part, part_cost):
        calls.append((image, part.shape[1]))
        return torch.cat([part, part_cost], dim=2) + offsets[image]

    whole = torch.cat([x, cost], dim=2) + offsets.view(2, 1, 1, 1, 1)
    chunked = in_class_chunks(fn, 2, x, cost)
    assert calls == [(0, 2), (0, 2), (0, 1), (1, 2), (1, 2), (1, 1)]
    assert torch.equal(chunked, whole) and _is_channels_last(chunked)


# ----------------------------------------------------------------------------- ClassLogitHead
def test_class_logit_head_is_a_same_padded_conv_with_conv2d_parameters():
    torch.manual_seed(0)
    head = ClassLogitHead(8, kernel_size=5)
    torch.manual_seed(0)
    conv = nn.Conv2d(8, 1, 5, padding=2)
    assert head.state_dict().keys() == conv.state_dict().keys() == {"weight", "bias"}
    assert torch.equal(head.weight, conv.weight) and torch.equal(head.bias, conv.bias)  # same initialisation
    x = _class_maps(2, 3, 8, 5, 4, dtype=torch.float64)
    head.double(), conv.double()
    torch.testing.assert_close(head(x), conv(x.flatten(0, 1)).view(2, 3, 5, 4), rtol=0, atol=0)
    assert ClassLogitHead(8, bias=False).bias is None
    with pytest.raises(ValueError, match="odd kernel_size"):
        ClassLogitHead(8, kernel_size=4)


# At inference on channels-last CUDA maps the head runs as the Triton kernel
# single_output_conv2d; on CPU that kernel runs in Triton's interpreter (marked
# triton_interpreter: TRITON_INTERPRET=1, see tests/triton_interpreter_plugin.py). Everything
# else is the convolution.
@pytest.mark.triton_interpreter
def test_class_logit_head_kernel_equals_the_convolution(monkeypatch):
    launches = []
    forward = head_conv._single_output_conv_forward

    def counting(*args):
        launches.append(args[0].shape)
        return forward(*args)

    monkeypatch.setattr(head_conv, "_single_output_conv_forward", counting)

    torch.manual_seed(0)
    B, T, C, H, W = 2, 3, 16, 7, 9
    head = ClassLogitHead(C, kernel_size=3)
    conv = nn.Conv2d(C, 1, 3, padding=1)
    conv.load_state_dict(head.state_dict())
    x = torch.randn(B * T, C, H, W).contiguous(memory_format=torch.channels_last).unflatten(0, (B, T))
    plain = conv(x.flatten(0, 1)).view(B, T, H, W)  # grad enabled, params need grad: the module
    assert head(x).grad_fn is not None and not launches
    with torch.no_grad():
        out = head(x)
        assert len(launches) == 1 and out.shape == (B, T, H, W) and out.dtype == torch.float32
        torch.testing.assert_close(out, plain.detach(), rtol=1e-5, atol=1e-5)
        with torch.autocast("cpu", dtype=torch.bfloat16):  # the convolution's dtype under autocast
            fast, module = head(x), conv(x.flatten(0, 1))
            fast16 = head(x.bfloat16())
        assert len(launches) == 3 and fast.dtype == module.dtype == fast16.dtype == torch.bfloat16
        torch.testing.assert_close(fast.float(), module.float().view(B, T, H, W), rtol=2e-2, atol=5e-2)
        torch.testing.assert_close(fast16.float(), module.float().view(B, T, H, W), rtol=2e-2, atol=5e-2)
        # a bf16 head on bf16 maps, no autocast: the kernel, as the convolution would give
        out16 = copy.deepcopy(head).bfloat16()(x.bfloat16())
        assert len(launches) == 4 and out16.dtype == torch.bfloat16
        torch.testing.assert_close(out16.float(), plain.detach(), rtol=2e-2, atol=5e-2)
        # the head's own hooks wrap its forward: they see class maps and apply on the fast path too
        seen = []
        handle = head.register_forward_hook(lambda m, args, out: seen.append(args[0].shape) or out * 0)
        assert head(x).abs().max() == 0 and seen == [(B, T, C, H, W)] and len(launches) == 5
        handle.remove()
        # not taken: NCHW maps, and a float32 head on bf16 maps without autocast (the
        # convolution raises; so must the head)
        torch.testing.assert_close(head(x.contiguous()), plain.detach(), rtol=1e-5, atol=1e-5)
        with pytest.raises(RuntimeError):  # mixed dtypes must raise as the convolution does
            head(x.bfloat16())
        assert len(launches) == 5


# ----------------------------------------------------------------------------- class selection
def test_top_k_union_golden():
    # (B=1, T=4, H=1, W=3): per pixel the top-2 classes are {0, 1}, {1, 2}, {1, 2}
    logits = torch.tensor([[[[5.0, 0.0, 0.0]], [[4.0, 9.0, 9.0]], [[0.0, 8.0, 7.0]], [[-1.0, -1.0, -1.0]]]])
    assert top_k_union(logits, 2).tolist() == [[True, True, True, False]]
    assert top_k_union(logits, 1).tolist() == [[True, True, False, False]]
    assert top_k_union(logits, 10).tolist() == [[True] * 4]  # k >= T keeps everything
    batch = torch.cat([logits, -logits])  # the second image: top-1 {3} at every pixel, top-2 {3, 2}, {3, 0}, {3, 0}
    assert top_k_union(batch, 1).tolist() == [[True, True, False, False], [False, False, False, True]]
    assert top_k_union(batch, 2).tolist() == [[True, True, True, False], [True, False, True, True]]


def test_top_n_classes_golden():
    # maximum logit per class: 5, 9, 8, -1
    logits = torch.tensor([[[[5.0, 0.0, 0.0]], [[4.0, 9.0, 9.0]], [[0.0, 8.0, 7.0]], [[-1.0, -1.0, -1.0]]]])
    assert top_n_classes(logits, 2).tolist() == [[False, True, True, False]]
    assert top_n_classes(logits, 3).tolist() == [[True, True, True, False]]
    assert top_n_classes(logits, 9).tolist() == [[True] * 4]


def test_scatter_classes_golden():
    values = [torch.tensor([[1.0, 2.0], [3.0, 4.0]]), torch.tensor([[5.0, 6.0]])]
    classes = [torch.tensor([2, 0]), torch.tensor([1])]
    inf = float("-inf")
    assert scatter_classes(values, classes, 3).tolist() == [
        [[3.0, 4.0], [inf, inf], [1.0, 2.0]],
        [[inf, inf], [5.0, 6.0], [inf, inf]],
    ]
    filled = scatter_classes([values[1].double()], [classes[1]], 2, fill=-100.0)
    assert filled.dtype == torch.float64 and filled.tolist() == [[[-100.0, -100.0], [5.0, 6.0]]]
    with pytest.raises(ValueError, match="one values tensor per class index tensor"):
        scatter_classes(values, classes[:1], 3)
    with pytest.raises(ValueError, match="at least one image"):
        scatter_classes([], [], 3)
