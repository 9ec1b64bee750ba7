"""A cascade: a bi-encoder and its rerankers (from one checkpoint or several), run from as few vision passes
as they allow (BLIP: one pass gives the BE vector and the CE's image tokens)."""

from __future__ import annotations

from typing import Sequence

import numpy as np
from PIL import Image

from .stages import BiEncoder, ImageEncoding, LateInteraction, Reranker, VisionBackbone


class Cascade:
    """A bi-encoder and its rerankers (the first is the CE that search uses), with the vision pass(es)
    that feed them. Built by `engine.models.registry.load_cascade`."""

    def __init__(self, be: BiEncoder, be_backbone: VisionBackbone, rerankers: Sequence[tuple[Reranker, VisionBackbone]],
                 source: str, late: LateInteraction | None = None, ce_source: str | None = None, device: str = "cpu", device_reason: str = "",
                 precision: str = "fp32", exact: bool = False, describe=None):
        self.be = be
        self.li = late  # the LI stage between BE and CE, when the BE's checkpoint has an LI head
        self._be_backbone = be_backbone
        self._rerankers = list(rerankers)
        self.source = source  # what to load it from next time (hub id or folder)
        self.ce_source = ce_source  # a separately trained CE's source, None when the BE's checkpoint has it
        self.device, self.device_reason, self.precision = device, device_reason, precision
        self.exact = exact  # fp32 asked for: caches keep full precision too
        self.notices: list[str] = []
        self._describe = describe

    # ----- the stages ------------------------------------------------------
    @property
    def rerankers(self) -> list[Reranker]:
        return [r for r, _ in self._rerankers]

    @property
    def ce(self) -> Reranker | None:
        return self._rerankers[0][0] if self._rerankers else None

    @property
    def dim(self) -> int:
        return self.be.dim

    @property
    def model_id(self) -> str:
        """The name people know the model by (the BE's source)."""
        return self.source

    @property
    def image_size(self) -> int:
        return max([self._be_backbone.image_size] + [b.image_size for _, b in self._rerankers])

    @property
    def image_batch_size(self) -> int:
        return self._be_backbone.image_batch_size

    def describe_device(self) -> str:
        return self._describe() if self._describe else self.device

    # ----- photos ----------------------------------------------------------
    def preprocess(self, images: Sequence[Image.Image]):
        """Model input pixels for the BE's vision pass (safe to call from decoding threads). Rerankers with a
        vision pass of their own preprocess again from the images in `encode_images`."""
        return self._be_backbone.preprocess(images)

    def encode_pixels(self, pixel_values, images: Sequence[Image.Image] | None = None,
                      features: bool = True) -> ImageEncoding:
        """BE vectors, and (features=True) every reranker's features; rerankers sharing the BE's pass get
        theirs from it, others need the images for a pass of their own."""
        shared = [r.key for r, b in self._rerankers if b is self._be_backbone] if features else []
        if self.li is not None:
            shared.append(self.li.key)  # LI tokens are stored for every photo, whatever the rerank cache holds
        enc = self._be_backbone.encode_pixels(pixel_values, shared)
        if features:
            for r, b in self._rerankers:
                if b is not self._be_backbone:
                    if images is None:
                        raise ValueError(f"the reranker {r.name} needs the images for its own vision pass")
                    enc.features[r.key] = _features(b, r.key, images)
        return enc

    def encode_images(self, images: Sequence[Image.Image]) -> ImageEncoding:
        images = list(images)
        if not images:
            stages = self.rerankers + ([self.li] if self.li is not None else [])
            return ImageEncoding(np.zeros((0, self.dim), np.float32),
                                 {r.key: np.zeros((0, *r.feature_shape), np.float32) for r in stages})
        return self.encode_pixels(self.preprocess(images), images)

    def late_tokens(self, images: Sequence[Image.Image]) -> np.ndarray:
        """The LI stage's tokens of photos (photos indexed before the LI head was added)."""
        if self.li is None:
            raise ValueError("this model has no LI head")
        return _features(self._be_backbone, self.li.key, images)

    def reranker_features(self, reranker: Reranker, images: Sequence[Image.Image]) -> np.ndarray:
        """One reranker's features of photos (a rerank of photos not in the cache), nothing else computed."""
        for r, b in self._rerankers:
            if r is reranker:
                return _features(b, r.key, images)
        raise ValueError(f"{reranker.name} is not a stage of this cascade")

    # ----- texts -------------------------------------------------------------
    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        return self.be.embed_texts(texts)

    def match_probs(self, texts: str | Sequence[str], features: np.ndarray) -> np.ndarray:
        if self.ce is None:
            raise ValueError("this model has no reranker")
        return self.ce.score(texts, features)


def _features(backbone: VisionBackbone, key: str, images: Sequence[Image.Image]) -> np.ndarray:
    """One stage's features of photos from its backbone's vision pass, nothing else kept."""
    return backbone.encode_pixels(backbone.preprocess(list(images)), [key]).features[key]
