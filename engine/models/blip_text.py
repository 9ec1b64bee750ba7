"""BLIP's bi-encoder text side without transformers: for a terminal search that does not rerank.

Importing transformers and BLIP's processor costs about 2.5 s on a 2-core CPU,
far more than the query itself, so `picsift search -k 0` reads only the text
encoder's tensors from model.safetensors and runs the same BERT layers here in
plain torch, with the checkpoint's own tokenizer.json through `tokenizers`.
Tests hold its vectors to BlipForImageTextRetrieval's own text embedding.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

# BlipTextConfig's defaults, for keys a checkpoint's config.json leaves out
DEFAULTS = {"num_attention_heads": 8, "layer_norm_eps": 1e-12, "hidden_act": "gelu", "pad_token_id": 0}


def can_load(folder: str | Path) -> bool:
    folder = Path(folder)
    if not ((folder / "model.safetensors").is_file() and (folder / "tokenizer.json").is_file()):
        return False
    text = json.loads((folder / "config.json").read_text()).get("text_config") or {}
    return text.get("hidden_act", DEFAULTS["hidden_act"]) == "gelu"


class LightTextEncoder:
    """The BE's text side (BiEncoder.embed_texts) of a BLIP retrieval checkpoint."""

    def __init__(self, folder: str | Path, key: str, name: str, max_tokens: int = 128):
        from safetensors import safe_open
        from tokenizers import Tokenizer

        folder = Path(folder)
        cfg = json.loads((folder / "config.json").read_text())
        text = {**DEFAULTS, **(cfg.get("text_config") or {})}
        self.key, self.name = key, name
        self.heads = int(text["num_attention_heads"])
        self.eps = float(text["layer_norm_eps"])
        with safe_open(str(folder / "model.safetensors"), framework="pt") as f:
            self.w = {k: f.get_tensor(k).float() for k in f.keys()
                      if (k.startswith("text_encoder.") and ".crossattention." not in k) or k.startswith("text_proj.")}
        self.layers = len({k.split(".")[3] for k in self.w if k.startswith("text_encoder.encoder.layer.")})
        self.dim = int(self.w["text_proj.weight"].shape[0])
        max_positions = int(self.w["text_encoder.embeddings.position_embeddings.weight"].shape[0])
        self.tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
        self.tokenizer.enable_truncation(min(max_tokens, max_positions))
        self.tokenizer.enable_padding(pad_id=int(text["pad_token_id"]))

    def _ln(self, x: torch.Tensor, name: str) -> torch.Tensor:
        return F.layer_norm(x, x.shape[-1:], self.w[name + ".weight"], self.w[name + ".bias"], self.eps)

    def _linear(self, x: torch.Tensor, name: str) -> torch.Tensor:
        return F.linear(x, self.w[name + ".weight"], self.w[name + ".bias"])

    @torch.inference_mode()
    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), np.float32)
        enc = self.tokenizer.encode_batch(list(texts))
        ids = torch.tensor([e.ids for e in enc])
        mask = torch.tensor([e.attention_mask for e in enc])
        w, p = self.w, "text_encoder."
        h = w[p + "embeddings.word_embeddings.weight"][ids] + w[p + "embeddings.position_embeddings.weight"][
            : ids.shape[1]]
        h = self._ln(h, p + "embeddings.LayerNorm")
        bias = (1.0 - mask[:, None, None, :].float()) * torch.finfo(torch.float32).min
        b, n, width = h.shape
        dh = width // self.heads
        for i in range(self.layers):
            lp = f"{p}encoder.layer.{i}."

            def heads(x: torch.Tensor) -> torch.Tensor:
                return x.view(b, n, self.heads, dh).transpose(1, 2)

            q, k, v = (heads(self._linear(h, lp + f"attention.self.{t}")) for t in ("query", "key", "value"))
            scores = q @ k.transpose(-1, -2) / math.sqrt(dh) + bias
            ctx = (torch.softmax(scores, dim=-1) @ v).transpose(1, 2).reshape(b, n, width)
            h = self._ln(self._linear(ctx, lp + "attention.output.dense") + h, lp + "attention.output.LayerNorm")
            mid = F.gelu(self._linear(h, lp + "intermediate.dense"))
            h = self._ln(self._linear(mid, lp + "output.dense") + h, lp + "output.LayerNorm")
        vec = F.normalize(self._linear(h[:, 0, :], "text_proj"), dim=-1)
        return vec.numpy().astype(np.float32)

    def parameter_count(self) -> int:
        return sum(t.numel() for t in self.w.values())
