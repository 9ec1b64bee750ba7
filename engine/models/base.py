"""The one interface every retrieval model offers to the rest of the engine."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, Sequence

import numpy as np
from PIL import Image


@dataclass
class ImageEncoding:
    """One vision pass: BE vectors (n, dim) float32 L2-normalised, and CE image tokens (n, T, H) float32."""

    vectors: np.ndarray
    tokens: np.ndarray


class RetrievalModel(Protocol):
    model_id: str
    dim: int
    device: str
    precision: str

    @property
    def token_shape(self) -> tuple[int, int]:
        """(number of image tokens, token width) of one photo, as the CE reads it."""

    def encode_images(self, images: Sequence[Image.Image]) -> ImageEncoding:
        """BE vectors and CE image tokens of photos, from one pass of the vision encoder."""

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        """BE vectors (n, dim) float32 L2-normalised of texts."""

    def match_probs(self, texts: str | Sequence[str], tokens: np.ndarray) -> np.ndarray:
        """CE match probability of each (text, image tokens) pair; one text is paired with every photo."""

    def describe_device(self) -> str:
        """The device in use and why, for a status line."""
