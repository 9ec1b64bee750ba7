"""The LI head in torch: codes, pooling queries and projections; the encoders run with codes appended;
MaxSim over batches for training and evaluation. Storage and query-time scoring are in engine.models.late
(NumPy, no torch)."""

from __future__ import annotations

import json
import math
from dataclasses import asdict
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .late import LI_CONFIG, LI_WEIGHTS, LiConfig, has_head, read_config


class LateInteractionHead(nn.Module):
    def __init__(self, cfg: LiConfig):
        super().__init__()
        self.cfg = cfg
        self.image_codes = nn.Parameter(torch.randn(cfg.image_codes, cfg.vision_hidden) * 0.02) \
            if cfg.image_codes else None
        self.text_codes = nn.Parameter(torch.randn(cfg.text_codes, cfg.text_hidden) * 0.02) \
            if cfg.text_codes else None
        # Pooling queries of unit-scale entries: each starts attending to its own mix of tokens.
        self.image_queries = nn.Parameter(torch.randn(cfg.keep_image, cfg.vision_hidden)) if cfg.keep_image else None
        self.text_queries = nn.Parameter(torch.randn(cfg.keep_text, cfg.text_hidden)) if cfg.keep_text else None
        self.image_proj = nn.Linear(cfg.vision_hidden, cfg.width)
        self.text_proj = nn.Linear(cfg.text_hidden, cfg.width)

    def image_side(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, N, Hv) encoder outputs (codes' outputs included) -> (B, M, width) L2-normalised."""
        if self.image_queries is not None:
            tokens = pool(tokens, None, self.image_queries)
        return F.normalize(self.image_proj(tokens).float(), dim=-1)

    def text_side(self, tokens: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, L, Ht) outputs and their mask -> ((B, L', width) L2-normalised, (B, L') mask)."""
        if self.text_queries is not None:
            tokens = pool(tokens, mask, self.text_queries)
            mask = torch.ones(tokens.shape[:2], dtype=torch.long, device=tokens.device)
        return F.normalize(self.text_proj(tokens).float(), dim=-1), mask


def make_head(cfg: LiConfig, seed: int | None = None) -> LateInteractionHead:
    if seed is not None:
        torch.manual_seed(seed)
    return LateInteractionHead(cfg)


def head_for(config, width: int = 128, codes: int = 0, keep_image: int | None = None,
             keep_text: int | None = None) -> LateInteractionHead:
    """A fresh head sized for a BLIP retrieval model's config (BlipConfig)."""
    cfg = config
    return make_head(LiConfig(vision_hidden=int(cfg.vision_config.hidden_size),
                              text_hidden=int(cfg.text_config.hidden_size), width=width, image_codes=codes,
                              text_codes=codes, keep_image=keep_image, keep_text=keep_text))


def pool(tokens: torch.Tensor, mask: torch.Tensor | None, queries: torch.Tensor) -> torch.Tensor:
    """M learned queries attend over tokens (softmax of scaled dot products): (B, N, H) -> (B, M, H)."""
    scores = torch.einsum("mh,bnh->bmn", queries.to(tokens.dtype), tokens) / math.sqrt(tokens.shape[-1])
    if mask is not None:
        scores = scores.masked_fill(~mask.bool()[:, None, :], float("-inf"))
    return torch.softmax(scores.float(), dim=-1).to(tokens.dtype) @ tokens


def append_codes(hidden: torch.Tensor, mask: torch.Tensor | None, codes: torch.Tensor | None):
    """Codes (K, H) appended to every row of a (B, N, H) input, the mask (B, N) extended with ones."""
    if codes is None:
        return hidden, mask
    b = hidden.shape[0]
    hidden = torch.cat([hidden, codes.to(hidden.dtype)[None].expand(b, -1, -1)], dim=1)
    if mask is not None:
        mask = torch.cat([mask, torch.ones(b, len(codes), dtype=mask.dtype, device=mask.device)], dim=1)
    return hidden, mask


def vision_outputs(vision_model, pixel_values: torch.Tensor, codes: torch.Tensor | None = None) -> torch.Tensor:
    """BLIP's vision encoder outputs (B, 1 + patches [+ K], Hv), codes appended after the embeddings."""
    from .blip_vision import vision_tokens

    return vision_tokens(vision_model, pixel_values, extra=codes)


def text_outputs(text_encoder, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                 codes: torch.Tensor | None = None):
    """BLIP's text encoder outputs (unimodal, as for the BE) with codes appended: (hidden, extended mask)."""
    emb = text_encoder.embeddings(input_ids=input_ids)
    emb, mask = append_codes(emb, attention_mask, codes)
    hidden = text_encoder(encoder_embeds=emb, attention_mask=mask).last_hidden_state
    return hidden, mask


def save_head(head: LateInteractionHead, folder: str | Path) -> None:
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().float().cpu().contiguous() for k, v in head.state_dict().items()}
    tmp = folder / (LI_WEIGHTS + ".tmp")
    save_file(tensors, str(tmp))
    tmp.replace(folder / LI_WEIGHTS)
    (folder / LI_CONFIG).write_text(json.dumps(asdict(head.cfg), indent=1))


def load_head(folder: str | Path) -> LateInteractionHead | None:
    """The LI head saved in a checkpoint folder, in eval mode; None when it has none."""
    from safetensors.torch import load_file

    folder = Path(folder)
    if not has_head(folder):
        return None
    head = make_head(read_config(folder))
    head.load_state_dict(load_file(str(folder / LI_WEIGHTS)))
    head.eval()
    return head


def maxsim_matrix(text: torch.Tensor, text_mask: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
    """(T, I) LI scores of every text against every photo: text (T, L, d) with mask (T, L), image (I, M, d);
    for each text token the best dot product over the photo's tokens, averaged over the text's tokens."""
    sim = torch.einsum("tld,imd->tilm", text, image)
    best = sim.amax(dim=-1)  # (T, I, L)
    m = text_mask.to(best.dtype)
    return (best * m[:, None, :]).sum(-1) / m.sum(-1).clamp(min=1)[:, None]


def maxsim_pairs(text: torch.Tensor, text_mask: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
    """LI score of each (text b, photo b) pair: (B, L, d), (B, L), (B, M, d) -> (B,)."""
    best = torch.einsum("bld,bmd->blm", text, image).amax(dim=-1)
    m = text_mask.to(best.dtype)
    return (best * m).sum(-1) / m.sum(-1).clamp(min=1)
