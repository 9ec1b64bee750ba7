"""BLIP image-text retrieval as one model for both stages.

BE: the contrastive heads (projected, normalised CLS of the vision and text
encoders). CE: the matching head on the text encoder cross-attending the image
tokens. This is the decomposition of `BlipForImageTextRetrieval.forward`, so
photos are encoded once and only the text side runs per query.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from engine.errors import ModelNotFoundError
from engine.models.base import ImageEncoding
from engine.models.blip_ce import itm_logits
from engine.models.blip_vision import vision_tokens
from engine.models.device import is_out_of_memory, pick_device, resolve_precision

log = logging.getLogger("picsift.models")

DEFAULT_MODEL = "Salesforce/blip-itm-base-coco"


def model_identity(model_id: str) -> str:
    """A stable name for a checkpoint: hub ids as given, local folders as absolute paths."""
    p = Path(model_id).expanduser()
    if p.exists():
        return str(p.resolve())
    return model_id


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the model hub answers at all; offline, loading fails at once instead of retrying for minutes."""
    import os
    import socket
    from urllib.parse import urlparse

    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
        return False
    try:
        from huggingface_hub import constants

        host = urlparse(constants.ENDPOINT).hostname or "huggingface.co"
    except Exception:
        host = "huggingface.co"
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return True
    except OSError:
        return False


class BlipRetrievalModel:
    def __init__(self, model, processor, model_id: str, device: str, device_reason: str, precision: str):
        self.model = model
        self.processor = processor
        self.model_id = model_id
        self.device = device
        self.device_reason = device_reason
        self.precision = precision
        self.notices: list[str] = []
        self.exact = False  # True when fp32 was asked for: every cache keeps full precision too
        self.image_batch_size = 8 if device == "cpu" else 32
        self.ce_batch_size = 16 if device == "cpu" else 64
        cfg = model.config
        self.dim = int(cfg.image_text_hidden_size)
        vc = cfg.vision_config
        self._token_shape = ((vc.image_size // vc.patch_size) ** 2 + 1, vc.hidden_size)
        self.image_size = int(vc.image_size)
        self.max_text_tokens = min(int(cfg.text_config.max_position_embeddings), 128)

    # ----- loading -------------------------------------------------------
    @classmethod
    def load(cls, model_id: str = DEFAULT_MODEL, device: str | None = "auto", precision: str | None = "auto",
             on_download=None):
        """Load from a folder or the cache; a hub id not cached yet is downloaded first (on_download
        receives (bytes done, bytes in all, file name); without it the hub shows its own bars)."""
        from transformers import AutoProcessor, BlipForImageTextRetrieval

        identity = model_identity(model_id)
        dev, reason = pick_device(device)
        prec = resolve_precision(precision, dev)
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        hf_logging.set_verbosity_error()
        try:
            # The cache (or a local folder) first: no network round trips when the files are here.
            processor = AutoProcessor.from_pretrained(identity, local_files_only=True)
            model = BlipForImageTextRetrieval.from_pretrained(identity, local_files_only=True)
        except Exception as local_exc:
            if Path(identity).exists():
                raise ModelNotFoundError(identity, str(local_exc), local=True) from local_exc
            if not hub_reachable():
                raise ModelNotFoundError(identity, str(local_exc)) from local_exc
            from engine.models.download import download

            try:  # a first run: fetch the checkpoint once, showing its progress, then load it from the cache
                folder = download(identity, on_download)
                processor = AutoProcessor.from_pretrained(folder)
                model = BlipForImageTextRetrieval.from_pretrained(folder)
            except Exception as exc:  # transformers raises OSError, ValueError or hub errors alike
                raise ModelNotFoundError(identity, str(exc)) from exc
        model.eval()
        if prec == "fp16":
            model.half()
        model.to(dev)
        loaded = cls(model, processor, identity, dev, reason, prec)
        loaded.exact = (precision or "auto").lower() == "fp32"
        return loaded

    # ----- properties ----------------------------------------------------
    @property
    def token_shape(self) -> tuple[int, int]:
        return self._token_shape

    @property
    def dtype(self) -> torch.dtype:
        return torch.float16 if self.precision == "fp16" else torch.float32

    def describe_device(self) -> str:
        if self.device.startswith("cuda"):
            return f"GPU {self.device_reason} ({self.precision})"
        if self.device == "mps":
            return f"Apple GPU ({self.precision})"
        return f"CPU, {torch.get_num_threads()} threads ({self.device_reason}; {self.precision})"

    # ----- batching with out-of-memory fallback --------------------------
    def _batched(self, n: int, batch_size: int, run: Callable[[int, int], list[np.ndarray]]) -> list[np.ndarray]:
        """Call run(start, stop) over n items; on GPU out-of-memory halve the batch, then fall back to CPU."""
        outputs: list[list[np.ndarray]] = []
        start = 0
        while start < n:
            stop = min(n, start + batch_size)
            try:
                outputs.append(run(start, stop))
                start = stop
            except Exception as exc:
                if not is_out_of_memory(exc) or self.device == "cpu":
                    raise
                if self.device.startswith("cuda"):
                    torch.cuda.empty_cache()
                if batch_size > 1:
                    batch_size = max(1, batch_size // 2)
                    log.warning("GPU out of memory; batch size lowered to %d", batch_size)
                    continue
                self._fall_back_to_cpu()
        return [np.concatenate(parts, axis=0) for parts in zip(*outputs)] if outputs else []

    def _fall_back_to_cpu(self) -> None:
        msg = f"GPU out of memory even with one item; continuing on the CPU (was {self.device})"
        log.warning(msg)
        self.notices.append(msg)
        self.model.float().to("cpu")
        self.device, self.device_reason, self.precision = "cpu", "fell back after GPU out-of-memory", "fp32"

    # ----- BE and CE -----------------------------------------------------
    def preprocess(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """Model input pixels by the checkpoint's own processor; safe to call from decoding threads."""
        return self.processor(images=list(images), return_tensors="pt")["pixel_values"]

    def _text_inputs(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        enc = self.processor(
            text=list(texts), padding=True, truncation=True, max_length=self.max_text_tokens, return_tensors="pt"
        )
        return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}

    @torch.inference_mode()
    def encode_pixels(self, pixel_values: torch.Tensor) -> ImageEncoding:
        def run(a: int, b: int) -> list[np.ndarray]:
            px = pixel_values[a:b].to(self.device, self.dtype)
            tokens = vision_tokens(self.model.vision_model, px)
            vec = F.normalize(self.model.vision_proj(tokens[:, 0, :]).float(), dim=-1)
            return [vec.cpu().numpy().astype(np.float32), tokens.float().cpu().numpy()]

        vectors, tokens = self._batched(len(pixel_values), self.image_batch_size, run)
        return ImageEncoding(vectors=vectors, tokens=tokens)

    def encode_images(self, images: Sequence[Image.Image]) -> ImageEncoding:
        if not images:
            h, w = self.token_shape
            return ImageEncoding(np.zeros((0, self.dim), np.float32), np.zeros((0, h, w), np.float32))
        return self.encode_pixels(self.preprocess(images))

    @torch.inference_mode()
    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), np.float32)
        inputs = self._text_inputs(texts)

        def run(a: int, b: int) -> list[np.ndarray]:
            ids = inputs["input_ids"][a:b].to(self.device)
            mask = inputs["attention_mask"][a:b].to(self.device)
            hidden = self.model.text_encoder(input_ids=ids, attention_mask=mask).last_hidden_state
            vec = F.normalize(self.model.text_proj(hidden[:, 0, :]).float(), dim=-1)
            return [vec.cpu().numpy().astype(np.float32)]

        (vectors,) = self._batched(len(texts), 64, run)
        return vectors

    @torch.inference_mode()
    def match_probs(self, texts: str | Sequence[str], tokens: np.ndarray) -> np.ndarray:
        n = len(tokens)
        if n == 0:
            return np.zeros((0,), np.float32)
        if isinstance(texts, str):
            inputs = self._text_inputs([texts])
            inputs = {k: v.expand(n, -1) for k, v in inputs.items()}
        else:
            if len(texts) != n:
                raise ValueError("one text per image, or a single text for all")
            inputs = self._text_inputs(texts)

        def run(a: int, b: int) -> list[np.ndarray]:
            img = torch.as_tensor(tokens[a:b]).to(self.device, self.dtype)
            logits = itm_logits(self.model, inputs["input_ids"][a:b].to(self.device),
                                inputs["attention_mask"][a:b].to(self.device), img).float()
            return [torch.softmax(logits, dim=-1)[:, 1].cpu().numpy().astype(np.float32)]

        (probs,) = self._batched(n, self.ce_batch_size, run)
        return probs
