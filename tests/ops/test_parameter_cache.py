"""sed_d2.ops.parameter_cache: derived weights are computed once per parameter version."""

import torch
from torch import nn

from sed_d2.ops.cuda_graphs import graph_key
from sed_d2.ops.parameter_cache import derived_from_parameters


def test_derived_tensors_are_cached_until_a_source_changes():
    layer = nn.Linear(4, 3)
    calls = []

    def build():
        calls.append(1)
        return (layer.weight.t().contiguous() * 2,)

    first = derived_from_parameters(layer, "doubled", (layer.weight, layer.bias), build)
    again = derived_from_parameters(layer, "doubled", (layer.weight, layer.bias), build)
    assert len(calls) == 1 and again[0] is first[0]
    torch.testing.assert_close(first[0], layer.weight.t() * 2)
    with torch.no_grad():
        layer.weight.add_(1.0)  # in place: the version changes
    updated = derived_from_parameters(layer, "doubled", (layer.weight, layer.bias), build)
    assert len(calls) == 2
    torch.testing.assert_close(updated[0], layer.weight.t() * 2)
    layer.load_state_dict({"weight": torch.zeros(3, 4), "bias": torch.zeros(3)})
    assert derived_from_parameters(layer, "doubled", (layer.weight, layer.bias), build)[0].abs().sum() == 0
    derived_from_parameters(layer, "doubled", (layer.weight, layer.bias), build, extra=(torch.bfloat16,))
    assert len(calls) == 4  # a different extra key (e.g. the operand dtype) recomputes
    assert "_derived_tensors" not in layer.state_dict()


def test_layer_norm_mlp_reference_uses_fresh_weights_after_an_update():
    from sed_d2.layers import ConvNeXtBlock

    block = ConvNeXtBlock(8, 3).eval()
    x = torch.randn(2, 8, 5, 5)
    with torch.no_grad():
        before = block(x)
        block.fc1.weight.mul_(0.5)
        after = block(x)
        fresh = ConvNeXtBlock(8, 3).eval()
        fresh.load_state_dict(block.state_dict())
        torch.testing.assert_close(after, fresh(x))
    assert not torch.allclose(before, after)


def test_graph_key_changes_with_parameter_versions():
    layer = nn.Linear(2, 2)
    x = torch.zeros(1, 2)
    key = graph_key([x], list(layer.parameters()))
    assert graph_key([x], list(layer.parameters())) == key
    with torch.no_grad():
        layer.bias.zero_()
    assert graph_key([x], list(layer.parameters())) != key
