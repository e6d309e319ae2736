import pytest
import torch
import torch.nn.functional as F

from sed_d2.layers.swin import GuidedSwinBlockPair, shifted_window_mask


def _regions(size: int, window: int, shift: int) -> torch.Tensor:
    """Region label of every row (or column) of the rolled grid: the last ``window``
    positions before the final ``shift`` ones, and those, are regions of their own."""
    labels = torch.zeros(size, dtype=torch.long)
    labels[size - window : size - shift] = 1
    labels[size - shift :] = 2
    return labels


def _reference_block(block, x, guidance):
    """One block, window by window: x (N, H, W, C), guidance (N, H, W, G) normalised."""
    n, height, width, channels = x.shape
    window, shift = block.window_size, block.shift_size
    if min(height, width) <= window:
        window, shift = min(height, width), 0
    heads = block.attn.num_heads
    h = torch.cat([F.layer_norm(x, (channels,), block.norm1.weight, block.norm1.bias), guidance], dim=-1)
    h = torch.roll(h, (-shift, -shift), dims=(1, 2))
    labels = _regions(height, window, shift)[:, None] * 3 + _regions(width, window, shift)[None, :]
    out = torch.empty(n, height, width, channels)
    for top in range(0, height, window):
        for left in range(0, width, window):
            tokens = h[:, top : top + window, left : left + window].reshape(n, -1, h.shape[-1])
            region = labels[top : top + window, left : left + window].reshape(-1)
            q = F.linear(tokens, block.attn.q.weight, block.attn.q.bias).view(n, -1, heads, channels // heads)
            k = F.linear(tokens, block.attn.k.weight, block.attn.k.bias).view(n, -1, heads, channels // heads)
            v = F.linear(tokens[..., :channels], block.attn.v.weight, block.attn.v.bias).view(n, -1, heads, channels // heads)
            scores = torch.einsum("nqhd,nkhd->nhqk", q, k) * (channels // heads) ** -0.5
            scores = scores + torch.where(region[:, None] == region[None, :], 0.0, -100.0)
            attended = torch.einsum("nhqk,nkhd->nqhd", scores.softmax(-1), v).reshape(n, window, window, channels)
            out[:, top : top + window, left : left + window] = F.linear(attended, block.attn.proj.weight, block.attn.proj.bias)
    x = x + torch.roll(out, (shift, shift), dims=(1, 2))
    hidden = F.gelu(F.linear(F.layer_norm(x, (channels,), block.norm2.weight, block.norm2.bias), block.mlp.fc1.weight, block.mlp.fc1.bias))
    return x + F.linear(hidden, block.mlp.fc2.weight, block.mlp.fc2.bias)


def _reference_pair(pair, x, guidance):
    """The official wrapper: classes folded into the batch, guidance repeated per class."""
    batch, classes, channels, height, width = x.shape
    tokens = x.permute(0, 1, 3, 4, 2).reshape(batch * classes, height, width, channels)
    g = guidance.permute(0, 2, 3, 1).repeat_interleave(classes, dim=0)
    g = F.layer_norm(g, (g.shape[-1],), pair.guidance_norm.weight, pair.guidance_norm.bias)
    tokens = _reference_block(pair.block1, _reference_block(pair.block0, tokens, g), g)
    return tokens.view(batch, classes, height, width, channels).permute(0, 1, 4, 2, 3)


def _randomised(pair):
    torch.manual_seed(0)
    for p in pair.parameters():
        torch.nn.init.normal_(p, std=0.3)  # norms and biases too, or their mapping goes unseen
    return pair


def test_parameters_have_the_official_shapes():
    pair = GuidedSwinBlockPair(128, 128, 4, window_size=12)
    shapes = {name: tuple(p.shape) for name, p in pair.named_parameters() if name.startswith("block0.") or "guidance" in name}
    assert shapes == {
        "block0.norm1.weight": (128,), "block0.norm1.bias": (128,),
        "block0.attn.q.weight": (128, 256), "block0.attn.q.bias": (128,),
        "block0.attn.k.weight": (128, 256), "block0.attn.k.bias": (128,),
        "block0.attn.v.weight": (128, 128), "block0.attn.v.bias": (128,),
        "block0.attn.proj.weight": (128, 128), "block0.attn.proj.bias": (128,),
        "block0.norm2.weight": (128,), "block0.norm2.bias": (128,),
        "block0.mlp.fc1.weight": (512, 128), "block0.mlp.fc1.bias": (512,),
        "block0.mlp.fc2.weight": (128, 512), "block0.mlp.fc2.bias": (128,),
        "guidance_norm.weight": (128,), "guidance_norm.bias": (128,),
    }
    assert (pair.block0.shift_size, pair.block1.shift_size) == (0, 6)
    assert not list(pair.buffers())  # the shift mask is rebuilt, never stored


@pytest.mark.parametrize("size, window", [(8, 4), (12, 4), (4, 4), (3, 4)])
def test_pair_equals_the_window_by_window_reference(size, window):
    pair = _randomised(GuidedSwinBlockPair(16, 8, 2, window_size=window))
    x, guidance = torch.randn(2, 3, 16, size, size), torch.randn(2, 8, size, size)
    with torch.no_grad():
        torch.testing.assert_close(pair(x, guidance), _reference_pair(pair, x, guidance), atol=1e-5, rtol=1e-5)


def test_shifted_mask_is_the_official_one():
    mask = shifted_window_mask(24, 24, 12, 6)
    assert mask.shape == (4, 144, 144)
    assert set(mask.unique().tolist()) == {0.0, -100.0}
    assert mask[0].eq(0).all()  # the top-left window holds one region only
    # window 1 (top right) mixes the columns [12, 18) and [18, 24) of the rolled grid
    col = torch.arange(144) % 12
    assert torch.equal(mask[1] == 0, (col[:, None] < 6) == (col[None, :] < 6))
    with pytest.raises(ValueError, match="not divisible"):
        shifted_window_mask(20, 20, 12, 6)


def test_channels_last_and_contiguous_maps_give_the_same_result():
    pair = _randomised(GuidedSwinBlockPair(16, 8, 2, window_size=4))
    x, guidance = torch.randn(2, 3, 16, 8, 8), torch.randn(2, 8, 8, 8)
    channels_last = x.flatten(0, 1).contiguous(memory_format=torch.channels_last).unflatten(0, (2, 3))
    with torch.no_grad():
        torch.testing.assert_close(pair(channels_last, guidance), pair(x, guidance), atol=1e-6, rtol=1e-6)


def test_classes_and_images_are_independent():
    pair = _randomised(GuidedSwinBlockPair(16, 8, 2, window_size=4))
    x, guidance = torch.randn(2, 3, 16, 8, 8), torch.randn(2, 8, 8, 8)
    with torch.no_grad():
        whole = pair(x, guidance)
        for image in range(2):
            for cls in range(3):
                part = pair(x[image : image + 1, cls : cls + 1], guidance[image : image + 1])
                torch.testing.assert_close(part[0, 0], whole[image, cls], atol=1e-6, rtol=1e-6)


def test_guidance_is_required_exactly_when_configured():
    with pytest.raises(ValueError, match="guidance"):
        GuidedSwinBlockPair(16, 8, 2, window_size=4)(torch.randn(1, 1, 16, 8, 8))
    unguided = GuidedSwinBlockPair(16, 0, 2, window_size=4)
    assert unguided.guidance_norm is None and unguided.block0.attn.q.weight.shape == (16, 16)
    assert unguided(torch.randn(1, 2, 16, 8, 8)).shape == (1, 2, 16, 8, 8)
