"""CLIP-style checkpoints as a bi-encoder only: photos and texts to projected, normalised vectors.

CLIP has no cross-encoder, so a cascade with a CLIP BE reranks with the CE of
another checkpoint (`--ce-model`, a BLIP retrieval one): separately trained
stages, the method's Sep+Coop. This module is the whole of what the family
adds to picsift, besides its line in `registry.FAMILY_MODULES`.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ..errors import ModelNotFoundError
from .registry import FamilyStages, LoadOptions, register
from .stages import ImageEncoding


class ClipBiEncoder:
    """Both towers of a CLIPModel: `embed_texts` here, photos through `encode_pixels` (the cascade's backbone)."""

    def __init__(self, model, tokenizer, image_processor, identity: str, name: str, options: LoadOptions):
        self.model, self.tokenizer, self.image_processor = model, tokenizer, image_processor
        self.key = f"clip:{identity}/be"
        self.name = name
        self.device, self.precision = options.device, options.precision
        self.dim = int(model.config.projection_dim)
        self.image_size = int(model.config.vision_config.image_size)
        self.image_batch_size = 16 if self.device == "cpu" else 64
        self.max_tokens = int(model.config.text_config.max_position_embeddings)

    def describe(self) -> str:
        return f"{self.device} ({self.precision}), CLIP bi-encoder"

    def preprocess(self, images: Sequence[Image.Image]) -> torch.Tensor:
        return self.image_processor(images=list(images), return_tensors="pt")["pixel_values"]

    @torch.inference_mode()
    def encode_pixels(self, pixel_values: torch.Tensor, want: Sequence[str] = ()) -> ImageEncoding:
        out = []
        for a in range(0, len(pixel_values), self.image_batch_size):
            px = pixel_values[a : a + self.image_batch_size].to(self.device)
            feats = self.model.get_image_features(pixel_values=px).pooler_output
            out.append(F.normalize(feats.float(), dim=-1).cpu().numpy())
        vectors = np.concatenate(out) if out else np.zeros((0, self.dim), np.float32)
        return ImageEncoding(vectors=vectors.astype(np.float32))

    @torch.inference_mode()
    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), np.float32)
        enc = self.tokenizer(list(texts), padding=True, truncation=True, max_length=self.max_tokens,
                             return_tensors="pt")
        feats = self.model.get_text_features(input_ids=enc["input_ids"].to(self.device),
                                             attention_mask=enc["attention_mask"].to(self.device)).pooler_output
        return F.normalize(feats.float(), dim=-1).cpu().numpy().astype(np.float32)


@register("clip")
def load_clip(folder: str, identity: str, name: str, options: LoadOptions, text_only: bool = False) -> FamilyStages:
    from transformers import AutoImageProcessor, AutoTokenizer, CLIPModel
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    try:
        model = CLIPModel.from_pretrained(folder, local_files_only=True).eval().to(options.device)
        tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
        image_processor = AutoImageProcessor.from_pretrained(folder, local_files_only=True)
    except Exception as exc:  # transformers raises OSError, ValueError and others alike
        raise ModelNotFoundError(name, str(exc), local=True) from exc
    be = ClipBiEncoder(model, tokenizer, image_processor, identity, name, options)
    return FamilyStages(be=be, rerankers=[], backbone=be, describe=be.describe)
