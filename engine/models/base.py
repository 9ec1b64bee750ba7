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
    dim: int  # size of the BE vectors
    device: str
    precision: str
    exact: bool  # fp32 asked for: caches keep full precision too
    image_size: int  # the vision encoder's input side; JPEGs may decode at reduced scale down to it
    image_batch_size: int
    notices: list[str]  # things the user should be told (a fallback to the CPU, ...)

    def preprocess(self, images: Sequence[Image.Image]):
        """Model input pixels (a tensor) by the checkpoint's own processor; safe to call from threads."""

    def encode_pixels(self, pixel_values) -> ImageEncoding:
        """encode_images for pixels already preprocessed."""

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
