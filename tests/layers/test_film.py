"""FiLM (sed_d2.layers.film): gamma * x + beta per channel, broadcast over tokens."""
import pytest
import torch

from sed_d2.layers import FiLM


def test_linear_film_equals_its_definition_per_sample():
    torch.manual_seed(0)
    film = FiLM(6, 4)
    x, cond = torch.randn(3, 5, 4), torch.randn(3, 6)
    out = film(x, cond)
    for n in range(3):
        gamma = film.scale.weight @ cond[n] + film.scale.bias
        beta = film.shift.weight @ cond[n] + film.shift.bias
        torch.testing.assert_close(out[n], gamma * x[n] + beta)
    # CLIPSeg's parameter count: two Linear(cond, feat)
    assert sum(p.numel() for p in film.parameters()) == 2 * (6 * 4 + 4)


def test_mlp_film_splits_one_output_into_gamma_and_beta():
    torch.manual_seed(0)
    film = FiLM(6, 4, hidden_dim=8)
    x, cond = torch.randn(2, 3, 3, 4), torch.randn(2, 6)
    gamma, beta = film.mlp(cond).split(4, dim=-1)
    torch.testing.assert_close(film(x, cond), gamma[:, None, None] * x + beta[:, None, None])
    with pytest.raises(ValueError, match="same N"):
        film(x, cond[:1])
