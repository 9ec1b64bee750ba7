"""BLIP's text side in NumPy: the BE's query vector and the CE's score of cached photos, for the terminal.

Importing torch costs 1.1-1.4 s on a 2-core CPU and transformers with BLIP's
processor about 2.5 s more, far more than the query itself. `picsift search -k 0`
therefore reads only the text encoder's tensors from model.safetensors and runs
the same BERT layers here in NumPy (float32), with the checkpoint's own
tokenizer.json through `tokenizers`; neither torch nor transformers is imported.
`picsift search -k K` adds the text encoder's cross-attention layers and the
matching head (LightCrossEncoder), which score the photos whose image tokens
the rerank cache holds; the vision encoder loads only for a candidate that is
not cached (LazyVision). Tests hold its vectors to BlipForImageTextRetrieval's
own text embedding and its match scores to the torch CE's.
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


def _softmax_normal(x: np.ndarray) -> np.ndarray:
    """Softmax whose smallest weights stay normal floats (engine.models.blip_ce._softmax): a peaked attention
    over hundreds of image tokens otherwise yields denormals, over which a matmul runs several times slower."""
    z = x - x.max(axis=-1, keepdims=True)
    e = np.exp(np.maximum(z, -80.0, out=z), out=z)
    return e / e.sum(axis=-1, keepdims=True)


class LightTextEncoder:
    """The BE's text side (BiEncoder.embed_texts) of a BLIP retrieval checkpoint."""

    def __init__(self, folder: str | Path, key: str, name: str, max_tokens: int = 128, with_ce: bool = False):
        from safetensors import safe_open
        from tokenizers import Tokenizer

        folder = Path(folder)
        cfg = json.loads((folder / "config.json").read_text())
        text = {**DEFAULTS, **(cfg.get("text_config") or {})}
        self.key, self.name = key, name
        self.heads = int(text["num_attention_heads"])
        self.eps = float(text["layer_norm_eps"])
        def wanted(k: str) -> bool:  # the CE also reads the cross-attention layers and the matching head
            if k.startswith("text_encoder."):
                return with_ce or ".crossattention." not in k
            return k.startswith("text_proj.") or (with_ce and k.startswith("itm_head."))

        with safe_open(str(folder / "model.safetensors"), framework="np") as f:
            self.w = {k: f.get_tensor(k).astype(np.float32, copy=False) for k in f.keys() if wanted(k)}
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
        # one 2-D product over every row: a stacked (B, n, width) product runs B small ones, several times slower
        w = self.w[name + ".weight"]
        return (x.reshape(-1, x.shape[-1]) @ w.T + self.w[name + ".bias"]).reshape(*x.shape[:-1], w.shape[0])

    def tokens(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        enc = self.tokenizer.encode_batch(list(texts))
        return np.array([e.ids for e in enc]), np.array([e.attention_mask for e in enc], np.float32)

    def embed(self, ids: np.ndarray) -> np.ndarray:
        w, p = self.w, "text_encoder."
        h = w[p + "embeddings.word_embeddings.weight"][ids] + w[p + "embeddings.position_embeddings.weight"][
            : ids.shape[1]]
        return self._ln(h, p + "embeddings.LayerNorm")

    def self_attention(self, i: int, h: np.ndarray, bias: np.ndarray, rows: slice = slice(None)) -> np.ndarray:
        """Layer i's self-attention block (with its residual and LayerNorm) for the token rows asked."""
        lp = f"text_encoder.encoder.layer.{i}.attention."
        q = self._heads(self._linear(h[:, rows], lp + "self.query"))
        k, v = (self._heads(self._linear(h, lp + f"self.{t}")) for t in ("key", "value"))
        ctx = self._merge(_softmax(q @ k.transpose(0, 1, 3, 2) / np.float32(np.sqrt(self._dh(h))) + bias) @ v)
        return self._ln(self._linear(ctx, lp + "output.dense") + h[:, rows], lp + "output.LayerNorm")

    def feed_forward(self, i: int, h: np.ndarray) -> np.ndarray:
        lp = f"text_encoder.encoder.layer.{i}."
        mid = _gelu(self._linear(h, lp + "intermediate.dense"))
        return self._ln(self._linear(mid, lp + "output.dense") + h, lp + "output.LayerNorm")

    def _dh(self, h: np.ndarray) -> int:
        return h.shape[-1] // self.heads

    def _heads(self, x: np.ndarray) -> np.ndarray:
        b, n, width = x.shape
        return x.reshape(b, n, self.heads, width // self.heads).transpose(0, 2, 1, 3)

    @staticmethod
    def _merge(x: np.ndarray) -> np.ndarray:
        b, heads, n, dh = x.shape
        return x.transpose(0, 2, 1, 3).reshape(b, n, heads * dh)

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), np.float32)
        ids, mask = self.tokens(texts)
        h = self.embed(ids)
        bias = (1.0 - mask[:, None, None, :]) * np.finfo(np.float32).min
        for i in range(self.layers):
            h = self.feed_forward(i, self.self_attention(i, h, bias))
        vec = self._linear(h[:, 0, :], "text_proj")
        vec = vec / np.maximum(np.linalg.norm(vec, axis=-1, keepdims=True), 1e-12)
        return vec.astype(np.float32)

    def parameter_count(self) -> int:
        return sum(t.size for t in self.w.values())


class LightCrossEncoder:
    """The CE (BlipCrossEncoder) of a BLIP retrieval checkpoint, in NumPy: the text encoder cross-attending a
    photo's image tokens, then the matching head. The cross-attention runs in the cheaper association order
    of engine.models.blip_ce (the queries are projected into the image tokens' space), and the last layer
    computes only the [CLS] row the head reads."""

    chunk = 16  # candidates a pass

    def __init__(self, text: LightTextEncoder, key: str, feature_shape: tuple[int, int]):
        if "itm_head.weight" not in text.w:
            raise KeyError("itm_head.weight: the checkpoint has no matching head")
        self.text, self.key, self.name, self.feature_shape = text, key, text.name, feature_shape

    def score(self, texts: str | Sequence[str], features: np.ndarray) -> np.ndarray:
        return (1.0 / (1.0 + np.exp(-self.logits(texts, features)))).astype(np.float32)

    def logits(self, texts: str | Sequence[str], features: np.ndarray) -> np.ndarray:
        """Match log-odds (logit of match minus logit of no match) of each (text, photo tokens) pair."""
        n = len(features)
        if n == 0:
            return np.zeros((0,), np.float32)
        if isinstance(texts, str):
            ids, mask = self.text.tokens([texts])
            ids, mask = np.repeat(ids, n, axis=0), np.repeat(mask, n, axis=0)
        else:
            if len(texts) != n:
                raise ValueError("one text per image, or a single text for all")
            ids, mask = self.text.tokens(texts)
        out = [self._logits(ids[a:a + self.chunk], mask[a:a + self.chunk],
                            np.asarray(features[a:a + self.chunk], np.float32)) for a in range(0, n, self.chunk)]
        return np.concatenate(out).astype(np.float32)

    def _logits(self, ids: np.ndarray, mask: np.ndarray, image: np.ndarray) -> np.ndarray:
        t = self.text
        h = t.embed(ids)
        bias = (1.0 - mask[:, None, None, :]) * np.finfo(np.float32).min
        for i in range(t.layers):
            rows = slice(0, 1) if i == t.layers - 1 else slice(None)
            h = t.feed_forward(i, self._cross_attention(i, t.self_attention(i, h, bias, rows), image))
        head = t._linear(h[:, 0, :], "itm_head")
        return head[:, 1] - head[:, 0]

    def _cross_attention(self, i: int, h: np.ndarray, image: np.ndarray) -> np.ndarray:
        t = self.text
        lp = f"text_encoder.encoder.layer.{i}.crossattention."
        heads, dh, width = t.heads, t._dh(h), image.shape[-1]
        b, length = h.shape[:2]
        q = t._heads(t._linear(h, lp + "self.query"))  # (B, H, L, dh)
        wk = t.w[lp + "self.key.weight"].reshape(heads, dh, width)
        wv = t.w[lp + "self.value.weight"].reshape(heads, dh, width)
        # the key bias adds the same amount to every score of a row (softmax ignores it); rows of attention
        # weights sum to one, so the value bias passes through
        q_img = (q @ wk[None]).reshape(b, heads * length, width)
        scores = q_img @ image.transpose(0, 2, 1) / np.float32(np.sqrt(dh))  # (B, H*L, N)
        mixed = (_softmax_normal(scores) @ image).reshape(b, heads, length, width)
        ctx = mixed @ wv.transpose(0, 2, 1)[None] + t.w[lp + "self.value.bias"].reshape(1, heads, 1, dh)
        return t._ln(t._linear(t._merge(ctx), lp + "output.dense") + h, lp + "output.LayerNorm")


class NoVision:
    """The backbone of a text-only load: it embeds no photos."""

    image_batch_size = 8

    def __init__(self, image_size: int):
        self.image_size = image_size

    def preprocess(self, images):
        raise RuntimeError("this model was loaded for text queries only")

    encode_pixels = preprocess


class LazyVision:
    """The backbone of a terminal rerank: the vision encoder, loaded (with the whole checkpoint) only when a
    candidate is not in the rerank cache and must be encoded; `load` returns the loaded backbone."""

    image_batch_size = 8

    def __init__(self, load, image_size: int):
        import threading

        self._load, self._backbone, self.image_size = load, None, image_size
        self._lock = threading.Lock()

    @property
    def loaded(self) -> bool:
        return self._backbone is not None

    def _get(self):
        with self._lock:
            if self._backbone is None:
                self._backbone = self._load()
            return self._backbone

    def preprocess(self, images):
        return self._get().preprocess(images)

    def encode_pixels(self, pixel_values, want):
        return self._get().encode_pixels(pixel_values, want)


def token_shape(folder: str | Path) -> tuple[int, int]:
    """(tokens, width) of a photo's image tokens, the CE's features: BlipVisionConfig's defaults where the
    checkpoint's config.json leaves a key out."""
    vision = json.loads((Path(folder) / "config.json").read_text()).get("vision_config") or {}
    size, patch = int(vision.get("image_size", 384)), int(vision.get("patch_size", 16))
    return (size // patch) ** 2 + 1, int(vision.get("hidden_size", 768))


def load_text_side(folder: str, identity: str, name: str):
    """(bi-encoder, vision stand-in, description) of a text-only load; raises ValueError/KeyError/OSError on a
    checkpoint laid out otherwise."""
    import os

    config = json.loads((Path(folder) / "config.json").read_text())
    be = LightTextEncoder(folder, f"blip:{identity}/be", name)
    vision = config.get("vision_config") or {}
    threads = os.cpu_count() or 1
    return be, NoVision(int(vision.get("image_size", 384))), f"CPU, {threads} cores (text side only, NumPy; fp32)"
