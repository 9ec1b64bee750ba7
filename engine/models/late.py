"""Late interaction (LI): the stage between the BE's retrieval and the CE's rerank ("Inflate and Shrink").

A BLIP checkpoint may carry an LI head beside its weights (late_interaction.json and
late_interaction.safetensors). The head projects the vision and text encoders' output
tokens to a small width (128) and L2-normalises them; a (text, photo) score is, for each
text token, its best similarity over the photo's tokens, averaged over the text's tokens
(ColBERT's MaxSim divided by the text's length: the same photo order for one query, and
scores in [-1, 1] whatever the caption's length).

Inflate: K learnable codes appended to each encoder's input (attention mask extended);
their outputs are among the tokens that interact. Shrink: a head that keeps M image tokens
(and optionally M text tokens) pools the encoder's outputs with M learned queries (one
softmax attention over the tokens), so a photo is stored as M tokens of the head's width.

The head files do not enter the checkpoint's identity (engine.models.identity): adding an
LI head to a checkpoint keeps its BE vectors and CE cache valid; the LI stage's key names
the head's own digest.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

LI_CONFIG = "late_interaction.json"
LI_WEIGHTS = "late_interaction.safetensors"
LI_FILES = (LI_CONFIG, LI_WEIGHTS)


@dataclass
class LiConfig:
    vision_hidden: int
    text_hidden: int
    width: int = 128
    image_codes: int = 0  # learnable codes appended to the vision encoder's input
    text_codes: int = 0  # and to the text encoder's
    keep_image: int | None = None  # None: every output token interacts; M: M pooled tokens a photo
    keep_text: int | None = None

    def image_tokens(self, encoder_tokens: int) -> int:
        """How many LI tokens a photo has, given its encoder's output length without codes."""
        return self.keep_image or (encoder_tokens + self.image_codes)


def has_head(folder: str | Path) -> bool:
    folder = Path(folder)
    return (folder / LI_CONFIG).is_file() and (folder / LI_WEIGHTS).is_file()


def head_digest(folder: str | Path) -> str:
    """The LI head's own identity: its config and weights."""
    folder = Path(folder)
    h = hashlib.blake2b(digest_size=8)
    h.update(json.dumps(json.loads((folder / LI_CONFIG).read_text()), sort_keys=True).encode())
    h.update((folder / LI_WEIGHTS).read_bytes())
    return h.hexdigest()


def read_config(folder: str | Path) -> LiConfig:
    data = json.loads((Path(folder) / LI_CONFIG).read_text())
    known = set(LiConfig.__dataclass_fields__)
    return LiConfig(**{k: v for k, v in data.items() if k in known})


# ----- scoring ------------------------------------------------------------------------------------------
def maxsim(query: np.ndarray, photos: np.ndarray) -> np.ndarray:
    """LI scores of one query's tokens (L, d) against photos' tokens (n, M, d), in NumPy: (n,)."""
    if len(photos) == 0:
        return np.zeros(0, np.float32)
    sims = photos.reshape(-1, photos.shape[-1]) @ query.T  # (n*M, L)
    best = sims.reshape(len(photos), photos.shape[1], len(query)).max(axis=1)  # (n, L)
    return best.mean(axis=1).astype(np.float32)


# ----- storage: int8 with one scale per token ------------------------------------------------------------
def encode_tokens(tokens: np.ndarray) -> bytes:
    """(M, d) float tokens -> bytes: M float32 scales, then M*d int8 (a 32x128 photo: 4,224 bytes)."""
    t = np.ascontiguousarray(tokens, dtype=np.float32)
    scale = np.abs(t).max(axis=-1, keepdims=True) / 127.0
    scale[scale == 0] = 1.0
    q = np.clip(np.rint(t / scale), -127, 127).astype(np.int8)
    return scale.astype(np.float32).tobytes() + q.tobytes()


def decode_tokens(blob: bytes, shape: tuple[int, int]) -> np.ndarray:
    m, d = shape
    scale = np.frombuffer(blob[: 4 * m], dtype=np.float32).reshape(m, 1)
    q = np.frombuffer(blob[4 * m :], dtype=np.int8).reshape(m, d)
    return q.astype(np.float32) * scale


def bytes_per_photo(shape: tuple[int, int]) -> int:
    m, d = shape
    return 4 * m + m * d


def decode_many(blobs: Sequence[bytes], shape: tuple[int, int]) -> np.ndarray:
    if not blobs:
        return np.zeros((0, *shape), np.float32)
    return np.stack([decode_tokens(b, shape) for b in blobs])
