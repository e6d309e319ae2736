"""A plain reference of the SED decoder forward (official ``Aggregator.conv_decoder``),
written op by op on the parameters of a :class:`sed_d2.models.SEDDecoder`.

No layout tricks, no folding, no shared-input convolutions: ``F.layer_norm``,
``F.group_norm``, the skip guidance materialised with ``repeat_interleave``, and the
official linear attention (values divided by the sequence length, separate normaliser).
The tests compare the optimised decoder with it; ``tools/benchmark.py --check`` uses it
on the GPU when the source checkout (with ``tests/``) is at hand.
"""

import torch
import torch.nn.functional as F

__all__ = ["reference_decoder_forward"]


def _official_linear_attention(q, k, v, eps=1e-6):
    q, k = F.elu(q) + 1, F.elu(k) + 1
    length = v.shape[1]
    v = v / length
    kv = torch.einsum("nshd,nshv->nhdv", k, v)
    z = 1 / (torch.einsum("nlhd,nhd->nlh", q, k.sum(dim=1)) + eps)
    return torch.einsum("nlhd,nhdv,nlh->nlhv", q, kv, z) * length


def _convnext_block(block, x):
    channels = x.shape[1]
    conv = block.depthwise_conv
    y = F.conv2d(x, conv.weight, conv.bias, padding=conv.padding, groups=channels)
    y = y.permute(0, 2, 3, 1)
    y = F.layer_norm(y, (channels,), block.norm.weight, block.norm.bias, block.norm.eps)
    y = F.linear(F.gelu(F.linear(y, block.fc1.weight, block.fc1.bias)), block.fc2.weight, block.fc2.bias)
    return x + (block.layer_scale * y).permute(0, 3, 1, 2)


def _class_transformer(layer, x, batch, num_classes, pooling):
    channels, height, width = x.shape[1:]
    pooled = F.avg_pool2d(x, pooling) if tuple(pooling) != (1, 1) else x
    ph, pw = pooled.shape[-2:]
    tokens = pooled.view(batch, num_classes, channels, ph, pw).permute(0, 3, 4, 1, 2)
    tokens = tokens.reshape(batch * ph * pw, num_classes, channels)
    attn = layer.attention
    heads = attn.num_heads
    normed = F.layer_norm(tokens, (channels,), layer.attention_norm.weight, layer.attention_norm.bias, layer.attention_norm.eps)
    q = F.linear(normed, attn.query.weight, attn.query.bias).unflatten(-1, (heads, -1))
    k = F.linear(normed, attn.key.weight, attn.key.bias).unflatten(-1, (heads, -1))
    v = F.linear(normed, attn.value.weight, attn.value.bias).unflatten(-1, (heads, -1))
    tokens = tokens + _official_linear_attention(q, k, v, attn.attention.eps).flatten(-2)
    normed = F.layer_norm(tokens, (channels,), layer.mlp_norm.weight, layer.mlp_norm.bias, layer.mlp_norm.eps)
    mlp = layer.mlp
    tokens = tokens + F.linear(F.relu(F.linear(normed, mlp.fc1.weight, mlp.fc1.bias)), mlp.fc2.weight, mlp.fc2.bias)
    pooled = tokens.view(batch, ph, pw, num_classes, channels).permute(0, 3, 4, 1, 2)
    pooled = pooled.reshape(batch * num_classes, channels, ph, pw)
    if (ph, pw) != (height, width):
        pooled = F.interpolate(pooled, size=(height, width), mode="bilinear", align_corners=True)
    return x + pooled


def _double_conv(block, x):
    for conv, norm in ((block.conv1, block.norm1), (block.conv2, block.norm2)):
        x = F.conv2d(x, conv.weight, conv.bias, padding=conv.padding)
        x = F.relu(F.group_norm(x, norm.num_groups, norm.weight, norm.bias, norm.eps))
    return x


def _stage(stage, x, guidance, cost_guidance, batch, num_classes, training):
    x = _convnext_block(stage.spatial_block, x)
    pooling = stage.class_block.pooling_size if training else stage.class_block.test_pooling_size
    x = _class_transformer(stage.class_block, x, batch, num_classes, pooling)
    up = stage.fusion.upsample
    x = F.conv_transpose2d(x, up.weight, up.bias, stride=2)
    x = torch.cat([x, guidance.repeat_interleave(num_classes, dim=0), cost_guidance], dim=1)
    return _double_conv(stage.fusion.double_conv, x)


def reference_decoder_forward(decoder, image_embedding, text_embeddings, skip_features, training=None):
    """``(logits (B, T, 8h, 8w), [aux logits at h, 2h, 4h])`` of ``decoder`` computed plainly.

    ``training`` picks the class-attention pooling (default: ``decoder.training``); the
    auxiliary logits are returned in both modes."""
    training = decoder.training if training is None else training
    image = F.normalize(image_embedding, dim=1)
    text = F.normalize(text_embeddings, dim=-1)
    corr = torch.einsum("bchw,tpc->btphw", image, text)  # (B, T, P, h, w)
    batch, num_classes, prompts, height, width = corr.shape
    corr = corr.reshape(batch * num_classes, prompts, height, width)
    embed = decoder.cost_embed.conv
    x = F.conv2d(corr, embed.weight, embed.bias, padding=embed.padding)
    guidance = [
        F.relu(F.conv2d(skip_features[name], proj.weight, proj.bias, padding=proj.padding))
        for proj, name in zip(decoder.skip_projections, decoder.skip_feature_names)
    ]
    cost = corr
    aux = []
    for index, stage in enumerate(decoder.stages):
        head = decoder.aux_heads[index]
        # the official auxiliary heads read detached features (stop-gradient #2)
        aux.append(F.conv2d(x.detach(), head.weight, head.bias, padding=1).view(batch, num_classes, *x.shape[-2:]))
        upsampler = decoder.cost_upsamplers[index]
        cost = F.relu(F.conv_transpose2d(cost, upsampler.weight, upsampler.bias, stride=2))
        x = _stage(stage, x, guidance[index], cost, batch, num_classes, training)
    head = decoder.head
    logits = F.conv2d(x, head.weight, head.bias, padding=1).view(batch, num_classes, *x.shape[-2:])
    return logits, aux
