import math

import pytest
import torch

from sed_d2.layers.position_encoding import sine_position_embedding


def _detr(height, width, channels):
    """DETR / Mask2Former PositionEmbeddingSine(channels // 2, normalize=True) on an unpadded
    mask, literally (cumsum of the not-mask)."""
    features = channels // 2
    not_mask = torch.ones(1, height, width)
    y = not_mask.cumsum(1, dtype=torch.float32)
    x = not_mask.cumsum(2, dtype=torch.float32)
    y = y / (y[:, -1:, :] + 1e-6) * 2 * math.pi
    x = x / (x[:, :, -1:] + 1e-6) * 2 * math.pi
    dim_t = torch.arange(features, dtype=torch.float32)
    dim_t = 10000 ** (2 * (dim_t // 2) / features)
    pos_x, pos_y = x[:, :, :, None] / dim_t, y[:, :, :, None] / dim_t
    pos_x = torch.stack((pos_x[:, :, :, 0::2].sin(), pos_x[:, :, :, 1::2].cos()), dim=4).flatten(3)
    pos_y = torch.stack((pos_y[:, :, :, 0::2].sin(), pos_y[:, :, :, 1::2].cos()), dim=4).flatten(3)
    return torch.cat((pos_y, pos_x), dim=3).permute(0, 3, 1, 2)[0]


@pytest.mark.parametrize("height, width, channels", [(24, 24, 512), (5, 7, 48), (1, 3, 8)])
def test_equals_detr_position_embedding_sine(height, width, channels):
    torch.testing.assert_close(sine_position_embedding(height, width, channels), _detr(height, width, channels))


def test_dtype_and_channels():
    assert sine_position_embedding(2, 2, 8, dtype=torch.bfloat16).dtype == torch.bfloat16
    with pytest.raises(ValueError, match="divisible by 4"):
        sine_position_embedding(2, 2, 6)
