import torch
import torch.nn.functional as F

from sed_d2.layers import CostEmbedding, CostVolume, cosine_cost_volume


def test_cost_volume_is_cosine_similarity_per_template_and_class():
    torch.manual_seed(0)
    image = torch.randn(2, 8, 3, 4)
    text = torch.randn(5, 3, 8)  # (T, P, C)
    cost = CostVolume()(image, text)
    assert cost.shape == (2, 3, 5, 3, 4)  # (B, P, T, h, w)
    for b, p, t, y, x in [(0, 0, 0, 0, 0), (1, 2, 4, 2, 3), (0, 1, 3, 1, 2)]:
        expected = F.cosine_similarity(image[b, :, y, x], text[t, p], dim=0)
        torch.testing.assert_close(cost[b, p, t, y, x], expected)


def test_cost_volume_has_no_temperature_and_ignores_norms():
    torch.manual_seed(1)
    image, text = torch.randn(1, 6, 2, 2), torch.randn(4, 2, 6)
    cost = cosine_cost_volume(image, text)
    assert cost.abs().max() <= 1.0 + 1e-6
    torch.testing.assert_close(cosine_cost_volume(7.0 * image, 0.1 * text), cost)


def test_class_batched_view_of_cost_is_free():
    cost = cosine_cost_volume(torch.randn(2, 6, 3, 3), torch.randn(4, 5, 6))
    per_class = cost.transpose(1, 2)
    assert per_class.is_contiguous()
    assert per_class.flatten(0, 1).data_ptr() == cost.data_ptr()


def test_cost_embedding_is_a_per_class_conv_over_templates():
    torch.manual_seed(2)
    embed = CostEmbedding(3, 16, kernel_size=7)
    assert embed.conv.weight.shape == (16, 3, 7, 7)
    cost = torch.randn(2, 3, 5, 6, 6)  # (B, P, T, h, w)
    out = embed(cost)
    assert out.shape == (2, 5, 16, 6, 6)  # (B, T, hidden, h, w)
    expected = embed.conv(cost[1, :, 4].unsqueeze(0))[0]
    torch.testing.assert_close(out[1, 4], expected)
