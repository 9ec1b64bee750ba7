"""BLIP's image-text matching head, computed in the cheaper association order.

The text encoder's cross-attention projects every image token into keys and
values (577 tokens x 768 x 768 per layer and per candidate for BLIP base), yet
only a dozen query tokens read them. Because the projections are linear,

    softmax(Q (X Wk^T + bk)^T) (X Wv^T + bv) = softmax((Q Wk) X^T) X Wv^T + bv

per head (the bias term Q bk is the same for every key of a query row, so
softmax ignores it, and attention rows sum to one, so bv passes through).
Projecting the queries instead of the image tokens does the same arithmetic
with about a fifth of the work. The last layer computes only the [CLS] row,
the one the matching head reads. Tests hold the result to the reference
forward of BlipForImageTextRetrieval within 1e-4.
"""

from __future__ import annotations

import math

import torch


def _softmax(scores: torch.Tensor) -> torch.Tensor:
    """Softmax whose smallest weights stay normal floats: a peaked attention otherwise yields millions
    of denormals, and a matmul over denormals runs several times slower on x86 CPUs. Weights below
    e^-80 (1.8e-35) are raised to it, which changes no result visibly."""
    scores = scores - scores.amax(dim=-1, keepdim=True)
    return torch.softmax(scores.clamp_(min=-80.0), dim=-1)


def _heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    b, n, d = x.shape
    return x.view(b, n, heads, d // heads).transpose(1, 2)  # (B, H, n, dh)


def _merge(x: torch.Tensor) -> torch.Tensor:
    b, h, n, dh = x.shape
    return x.transpose(1, 2).reshape(b, n, h * dh)


def _self_attention(block, hidden: torch.Tensor, mask: torch.Tensor | None, rows: slice) -> torch.Tensor:
    att = block.self
    heads, dh = att.num_attention_heads, att.attention_head_size
    q = _heads(att.query(hidden[:, rows]), heads)
    k = _heads(att.key(hidden), heads)
    v = _heads(att.value(hidden), heads)
    scores = q @ k.transpose(-1, -2) / math.sqrt(dh)
    if mask is not None:
        scores = scores + mask
    ctx = _merge(_softmax(scores) @ v)
    return block.output(ctx, hidden[:, rows])


def _cross_attention(block, hidden: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
    att = block.self
    heads, dh = att.num_attention_heads, att.attention_head_size
    width = image.shape[-1]
    b, length = hidden.shape[:2]
    q = _heads(att.query(hidden), heads)  # (B, H, L, dh)
    wk = att.key.weight.view(heads, dh, width)
    wv = att.value.weight.view(heads, dh, width)
    # Queries moved into the image-token space, then plain batched matmuls over the image tokens
    # (explicit bmm: einsum picks a far slower plan for the second product).
    q_img = torch.einsum("bhld,hde->bhle", q, wk).reshape(b, heads * length, width)
    scores = torch.bmm(q_img, image.transpose(1, 2)) / math.sqrt(dh)  # (B, H*L, N)
    mixed = torch.bmm(_softmax(scores), image).view(b, heads, length, width)
    ctx = torch.einsum("bhle,hde->bhld", mixed, wv) + att.value.bias.view(1, heads, 1, dh)
    return block.output(_merge(ctx), hidden)


def itm_logits(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
    """ITM logits (B, 2) of BlipForImageTextRetrieval for (text, image tokens) pairs."""
    encoder = model.text_encoder
    hidden = encoder.embeddings(input_ids=input_ids)
    mask = None
    if attention_mask is not None and not bool(attention_mask.all()):
        mask = (1.0 - attention_mask[:, None, None, :].to(hidden.dtype)) * torch.finfo(hidden.dtype).min
    layers = encoder.encoder.layer
    for i, layer in enumerate(layers):
        rows = slice(0, 1) if i == len(layers) - 1 else slice(None)  # the head reads [CLS] only
        hidden = _self_attention(layer.attention, hidden, mask, rows)
        hidden = _cross_attention(layer.crossattention, hidden, image)
        hidden = layer.output(layer.intermediate(hidden), hidden)
    return model.itm_head(hidden[:, 0, :])


def pool_grid(tokens, factor: int = 2):
    """Image tokens (n, 1 + g*g, width) with the patch grid average-pooled factor x factor (the CLS token
    kept): 577 -> 145 for BLIP base at factor 2. The token layout a shrunk CE reads (engine.models.shrunk_ce);
    a NumPy array or a torch tensor, returned as the same kind."""
    import numpy as np

    from .shrunk_ce import pooled_tokens

    n, count, width = tokens.shape
    pooled_tokens(count, factor)  # raises ValueError for a layout that is no grid divisible by factor
    g = int(round((count - 1) ** 0.5))
    if factor == 1:
        return tokens
    grid = tokens[:, 1:].reshape(n, g // factor, factor, g // factor, factor, width)
    if isinstance(tokens, np.ndarray):
        grid = grid.mean(axis=(2, 4), dtype=np.float32).reshape(n, -1, width)
        return np.concatenate([tokens[:, :1], grid.astype(tokens.dtype)], axis=1)
    grid = grid.float().mean(dim=(2, 4)).reshape(n, -1, width).to(tokens.dtype)
    return torch.cat([tokens[:, :1], grid], dim=1)
