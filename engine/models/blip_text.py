"""BLIP's bi-encoder text side in NumPy: for a terminal search that does not rerank.

Importing torch costs 1.1-1.4 s on a 2-core CPU and transformers with BLIP's
processor about 2.5 s more, far more than the query itself. `picsift search -k 0`
therefore reads only the text encoder's tensors from model.safetensors and runs
the same BERT layers here in NumPy (float32), with the checkpoint's own
tokenizer.json through `tokenizers`; neither torch nor transformers is imported.
Tests hold its vectors to BlipForImageTextRetrieval's own text embedding.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np

# BlipTextConfig's defaults, for keys a checkpoint's config.json leaves out
DEFAULTS = {"num_attention_heads": 8, "layer_norm_eps": 1e-12, "hidden_act": "gelu", "pad_token_id": 0}


def can_load(folder: str | Path) -> bool:
    folder = Path(folder)
    if not ((folder / "model.safetensors").is_file() and (folder / "tokenizer.json").is_file()):
        return False
    text = json.loads((folder / "config.json").read_text()).get("text_config") or {}
    return text.get("hidden_act", DEFAULTS["hidden_act"]) == "gelu"


def _erf(x: np.ndarray) -> np.ndarray:
    """erf to within 1.2e-7 (Numerical Recipes' erfc Chebyshev fit), vectorised; NumPy has none."""
    z = np.abs(x)
    t = 1.0 / (1.0 + 0.5 * z)
    poly = -z * z - 1.26551223 + t * (1.00002368 + t * (0.37409196 + t * (0.09678418 + t * (
        -0.18628806 + t * (0.27886807 + t * (-1.13520398 + t * (1.48851587 + t * (-0.82215223 + t * 0.17087277))))))))
    erfc = t * np.exp(poly)
    return np.where(x >= 0, 1.0 - erfc, erfc - 1.0)


def _gelu(x: np.ndarray) -> np.ndarray:
    return 0.5 * x * (1.0 + _erf(x / np.sqrt(2.0)).astype(x.dtype))


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


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
        with safe_open(str(folder / "model.safetensors"), framework="np") as f:
            self.w = {k: f.get_tensor(k).astype(np.float32, copy=False) for k in f.keys()
                      if (k.startswith("text_encoder.") and ".crossattention." not in k) or k.startswith("text_proj.")}
        self.layers = len({k.split(".")[3] for k in self.w if k.startswith("text_encoder.encoder.layer.")})
        self.dim = int(self.w["text_proj.weight"].shape[0])
        max_positions = int(self.w["text_encoder.embeddings.position_embeddings.weight"].shape[0])
        self.tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
        self.tokenizer.enable_truncation(min(max_tokens, max_positions))
        self.tokenizer.enable_padding(pad_id=int(text["pad_token_id"]))

    def _ln(self, x: np.ndarray, name: str) -> np.ndarray:
        mean = x.mean(axis=-1, keepdims=True)
        var = ((x - mean) ** 2).mean(axis=-1, keepdims=True)
        return (x - mean) / np.sqrt(var + self.eps) * self.w[name + ".weight"] + self.w[name + ".bias"]

    def _linear(self, x: np.ndarray, name: str) -> np.ndarray:
        return x @ self.w[name + ".weight"].T + self.w[name + ".bias"]

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), np.float32)
        enc = self.tokenizer.encode_batch(list(texts))
        ids = np.array([e.ids for e in enc])
        mask = np.array([e.attention_mask for e in enc], np.float32)
        w, p = self.w, "text_encoder."
        h = w[p + "embeddings.word_embeddings.weight"][ids] + w[p + "embeddings.position_embeddings.weight"][
            : ids.shape[1]]
        h = self._ln(h, p + "embeddings.LayerNorm")
        bias = (1.0 - mask[:, None, None, :]) * np.finfo(np.float32).min
        b, n, width = h.shape
        dh = width // self.heads
        for i in range(self.layers):
            lp = f"{p}encoder.layer.{i}."

            def heads(x: np.ndarray) -> np.ndarray:
                return x.reshape(b, n, self.heads, dh).transpose(0, 2, 1, 3)

            q, k, v = (heads(self._linear(h, lp + f"attention.self.{t}")) for t in ("query", "key", "value"))
            scores = q @ k.transpose(0, 1, 3, 2) / np.float32(np.sqrt(dh)) + bias
            ctx = (_softmax(scores) @ v).transpose(0, 2, 1, 3).reshape(b, n, width)
            h = self._ln(self._linear(ctx, lp + "attention.output.dense") + h, lp + "attention.output.LayerNorm")
            mid = _gelu(self._linear(h, lp + "intermediate.dense"))
            h = self._ln(self._linear(mid, lp + "output.dense") + h, lp + "output.LayerNorm")
        vec = self._linear(h[:, 0, :], "text_proj")
        vec = vec / np.maximum(np.linalg.norm(vec, axis=-1, keepdims=True), 1e-12)
        return vec.astype(np.float32)

    def parameter_count(self) -> int:
        return sum(t.size for t in self.w.values())


class NoVision:
    """The backbone of a text-only load: it embeds no photos."""

    image_batch_size = 8

    def __init__(self, image_size: int):
        self.image_size = image_size

    def preprocess(self, images):
        raise RuntimeError("this model was loaded for text queries only")

    encode_pixels = preprocess


def load_text_side(folder: str, identity: str, name: str):
    """(bi-encoder, vision stand-in, description) of a text-only load; raises ValueError/KeyError/OSError on a
    checkpoint laid out otherwise."""
    import os

    config = json.loads((Path(folder) / "config.json").read_text())
    be = LightTextEncoder(folder, f"blip:{identity}/be", name)
    vision = config.get("vision_config") or {}
    threads = os.cpu_count() or 1
    return be, NoVision(int(vision.get("image_size", 384))), f"CPU, {threads} cores (text side only, NumPy; fp32)"
