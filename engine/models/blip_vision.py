"""BLIP's vision encoder with fused attention.

The same layers as `BlipVisionModel` (its own modules and weights), but each
attention goes through torch's scaled_dot_product_attention instead of an
explicit softmax matrix: on a CPU the fused kernel is faster, and it never
materialises the 577 x 577 weights whose many denormal entries make the
explicit path crawl. Tests hold the tokens to the reference forward within 1e-4.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def vision_tokens(vision_model, pixel_values: torch.Tensor, extra: torch.Tensor | None = None) -> torch.Tensor:
    """last_hidden_state of BlipVisionModel (B, 1 + patches, width), post-layernorm applied. extra (K, width):
    tokens appended to every photo's input after the embeddings (an LI head's codes), their outputs last."""
    hidden = vision_model.embeddings(pixel_values)
    if extra is not None:
        hidden = torch.cat([hidden, extra.to(hidden.dtype)[None].expand(hidden.shape[0], -1, -1)], dim=1)
    for layer in vision_model.encoder.layers:
        att = layer.self_attn
        b, n, width = hidden.shape
        qkv = att.qkv(layer.layer_norm1(hidden)).reshape(b, n, 3, att.num_heads, att.head_dim).permute(2, 0, 3, 1, 4)
        ctx = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2], scale=att.scale)
        hidden = hidden + att.projection(ctx.transpose(1, 2).reshape(b, n, width))
        hidden = hidden + layer.mlp(layer.layer_norm2(hidden))
    return vision_model.post_layernorm(hidden)
