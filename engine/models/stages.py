"""The stages a retrieval cascade is made of: a bi-encoder, rerankers, and the vision pass that feeds them.

A `BiEncoder` turns photos and texts into vectors (the fast first stage, searched
with FAISS). A `Reranker` turns a photo into the features it keeps (for BLIP's
cross-encoder: the vision encoder's image tokens) and scores a text against
them. A checkpoint family (BLIP, ...) supplies one or both; a `Cascade` holds a
bi-encoder and its rerankers, whichever checkpoints they came from.

Every stage has a `key`: the identity of the checkpoint content it was made from
plus its role. Everything a stage computes is stored under that key, so the
vectors or features of one model are never compared with another's.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterator, Protocol, Sequence

import numpy as np
from PIL import Image


@dataclass
class ImageEncoding:
    """One vision pass: BE vectors (n, dim) float32 L2-normalised, and each reranker's features by its key."""

    vectors: np.ndarray
    features: dict[str, np.ndarray] = field(default_factory=dict)


class BiEncoder(Protocol):
    key: str  # identity of the checkpoint content and the role: what its vectors are stored under
    name: str  # the hub id or folder it was loaded from, for people
    dim: int

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        """BE vectors (n, dim) float32 L2-normalised of texts."""


class Reranker(Protocol):
    key: str
    name: str
    feature_shape: tuple[int, int]  # (tokens, width) of one photo's features

    def score(self, texts: str | Sequence[str], features: np.ndarray) -> np.ndarray:
        """Match probability of each (text, photo features) pair; one text is paired with every photo."""

    def logits(self, texts: str | Sequence[str], features: np.ndarray) -> np.ndarray:
        """The match log-odds of each pair (score = sigmoid(logits)): what evaluation adds to a BE cosine."""


class LateInteraction(Protocol):
    """The LI stage: a photo is a few small L2-normalised tokens (stored for every photo at indexing time),
    a query its text's tokens; the score is MaxSim (engine.models.late)."""

    key: str
    name: str
    feature_shape: tuple[int, int]  # (tokens, width) of one photo's LI tokens

    def text_tokens(self, text: str) -> np.ndarray:
        """(L, width) float32 L2-normalised tokens of one query."""

    def score(self, query_tokens: np.ndarray, photo_tokens: np.ndarray) -> np.ndarray:
        """LI score of the query against each photo's tokens (n, M, width): (n,)."""


class VisionBackbone(Protocol):
    """What a checkpoint runs on pixels; `encode_pixels` gives the BE vectors and the features of the
    rerankers that share this pass (BLIP: one pass for both)."""

    image_size: int
    image_batch_size: int

    def preprocess(self, images: Sequence[Image.Image]): ...

    def encode_pixels(self, pixel_values, want: Sequence[str]) -> ImageEncoding: ...


class SharedLock:
    """Many users at once (forward passes on several threads), or one alone (moving a model to another
    device after a GPU out-of-memory): a readers-writer lock."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._readers = 0
        self._writer = False

    @contextmanager
    def shared(self) -> Iterator[None]:
        with self._cond:
            while self._writer:
                self._cond.wait()
            self._readers += 1
        try:
            yield
        finally:
            with self._cond:
                self._readers -= 1
                self._cond.notify_all()

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        with self._cond:
            while self._writer or self._readers:
                self._cond.wait()
            self._writer = True
        try:
            yield
        finally:
            with self._cond:
                self._writer = False
                self._cond.notify_all()
