"""BLIP image-text retrieval: one checkpoint, a bi-encoder and a cross-encoder from one vision pass.

BE: the contrastive heads (projected, normalised CLS of the vision and text
encoders). CE: the matching head on the text encoder cross-attending the image
tokens. This is the decomposition of `BlipForImageTextRetrieval.forward`, so
photos are encoded once and only the text side runs per query.
"""

from __future__ import annotations

import json
import logging
import threading
from contextlib import nullcontext
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ..errors import ModelNotFoundError
from .stages import ImageEncoding, SharedLock
from .blip_ce import itm_logits, pool_grid
from .blip_vision import vision_tokens
from .device import is_out_of_memory
from .registry import FamilyStages, LoadOptions, register

log = logging.getLogger("picsift.models")

ARCHITECTURE = "BlipForImageTextRetrieval"


class BlipCheckpoint:
    """The loaded checkpoint both stages use; the vision backbone of the cascade."""

    def __init__(self, model, processor, identity: str, name: str, options: LoadOptions):
        self.model = model
        self.processor = processor
        self.identity = identity
        self.name = name
        self.device, self.device_reason, self.precision = options.device, options.device_reason, options.precision
        self.notices = options.notices
        self.lock = SharedLock()  # forward passes share it; a move to the CPU takes it alone
        self.image_batch_size = 8 if self.device == "cpu" else 32
        self.ce_batch_size = 16 if self.device == "cpu" else 64
        cfg = model.config
        vc = cfg.vision_config
        self.token_shape = ((vc.image_size // vc.patch_size) ** 2 + 1, vc.hidden_size)
        self.image_size = int(vc.image_size)
        self.max_text_tokens = min(int(cfg.text_config.max_position_embeddings), 128)
        self.dim = int(cfg.image_text_hidden_size)
        self.be_key = f"blip:{identity}/be"
        self.ce_key = f"blip:{identity}/ce"
        self.ce_pool = 1  # a shrunk CE reads the patch grid pooled ce_pool x ce_pool (attach_shrunk)
        self.ce_shape = self.token_shape
        self.li_head = None  # an LI head saved beside the weights (attach_late)
        self.li_key: str | None = None
        self.li_shape: tuple[int, int] | None = None
        # The vision encoder's backend (engine.models.openvino_vision): OpenVINO on a CPU when it is installed,
        # converted at the first photo (so a load that only embeds texts or reranks cached photos never pays)
        from .openvino_vision import choose_backend

        try:
            self.backend, self.backend_reason = choose_backend(self.device)
        except ValueError as exc:  # a misspelt PICSIFT_VISION_BACKEND: said once, and torch runs
            self.notices.append(f"{exc}; the vision encoder runs in torch")
            self.backend, self.backend_reason = "torch", str(exc)
        if self.precision not in ("fp32", "bf16"):
            self.backend, self.backend_reason = "torch", f"{self.precision} runs in torch"
        self._openvino = None
        self._openvino_lock = threading.Lock()

    def attach_late(self, head, digest: str) -> None:
        """Use an LI head (engine.models.late_head) loaded from the checkpoint folder."""
        self.li_head = head.to(self.device)
        self.li_key = f"blip:{self.identity}/li-{digest}"
        self.li_shape = (head.cfg.image_tokens(self.token_shape[0]), head.cfg.width)

    def attach_shrunk(self, pool: int, digest: str) -> None:
        """The CE's weights are a shrunk CE's (engine.models.shrunk_ce, applied at loading): it reads the
        patch grid pooled, and its key names that layout, so a rerank cache never mixes the two."""
        from .shrunk_ce import pooled_tokens

        self.ce_pool = pool
        self.ce_shape = (pooled_tokens(self.token_shape[0], pool), self.token_shape[1])
        self.ce_key = f"blip:{self.identity}/ce-pool{pool}-{digest}"

    @property
    def dtype(self) -> torch.dtype:
        return torch.float16 if self.precision == "fp16" else torch.float32

    def image_side(self):
        """The context the vision encoder and the CE run in: bf16 autocast under bf16 (weights stay fp32),
        else nothing. The query's text embedding always runs at the weights' precision."""
        if self.precision == "bf16":
            return torch.autocast(self.device.split(":")[0], dtype=torch.bfloat16)
        return nullcontext()

    def describe_device(self) -> str:
        if self.device.startswith("cuda"):
            return f"GPU {self.device_reason} ({self.precision})"
        if self.device == "mps":
            return f"Apple GPU ({self.precision})"
        via = "; OpenVINO" if self.backend == "openvino" else ""
        return f"CPU, {torch.get_num_threads()} threads ({self.device_reason}; {self.precision}{via})"

    # ----- batching with out-of-memory fallback --------------------------
    def batched(self, n: int, batch_size: int, run: Callable[[int, int], list[np.ndarray]]) -> list[np.ndarray]:
        """Call run(start, stop) over n items; on GPU out-of-memory halve the batch, then fall back to CPU.
        Each call holds the shared lock, so the fallback never moves the model under another thread."""
        outputs: list[list[np.ndarray]] = []
        start = 0
        while start < n:
            stop = min(n, start + batch_size)
            try:
                with self.lock.shared():
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
                self.fall_back_to_cpu()
        return [np.concatenate(parts, axis=0) for parts in zip(*outputs)] if outputs else []

    def fall_back_to_cpu(self) -> None:
        with self.lock.exclusive():
            if self.device == "cpu":
                return
            msg = f"GPU out of memory even with one item; continuing on the CPU (was {self.device})"
            log.warning(msg)
            self.notices.append(msg)
            self.model.float().to("cpu")
            if self.li_head is not None:
                self.li_head.float().to("cpu")
            self.device, self.device_reason, self.precision = "cpu", "fell back after GPU out-of-memory", "fp32"
            self.backend, self.backend_reason = "torch", "fell back after GPU out-of-memory"

    # ----- photos ----------------------------------------------------------
    def _openvino_encoder(self):
        """The OpenVINO vision encoder, converted (or read from the user cache) at its first use; None when
        the backend is torch or the conversion failed (then torch runs, with one notice)."""
        if self.backend != "openvino":
            return None
        with self._openvino_lock:
            if self._openvino is None and self.backend == "openvino":
                from .openvino_vision import OpenVinoVision

                try:
                    self._openvino = OpenVinoVision(self.model.vision_model, self.image_size, self.identity,
                                                    self.precision, torch.get_num_threads())
                except Exception as exc:  # a graph the converter cannot take, a full disk, a broken wheel
                    msg = f"OpenVINO could not run this model's vision encoder ({exc}); using torch"
                    log.warning(msg)
                    self.notices.append(msg)
                    self.backend, self.backend_reason = "torch", "OpenVINO conversion failed"
                else:
                    if self._openvino.converted:
                        log.info("vision encoder converted for OpenVINO: %s", self._openvino.path)
            return self._openvino

    def vision_tokens(self, px: torch.Tensor) -> torch.Tensor:
        """The vision encoder's output tokens for model-ready pixels, by the chosen backend."""
        encoder = self._openvino_encoder()
        if encoder is not None:
            return torch.from_numpy(encoder(px.float().cpu().numpy()))
        return vision_tokens(self.model.vision_model, px)

    def preprocess(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """Model input pixels by the checkpoint's own processor; safe to call from decoding threads."""
        return self.processor(images=list(images), return_tensors="pt")["pixel_values"]

    @torch.inference_mode()
    def encode_pixels(self, pixel_values: torch.Tensor, want: Sequence[str] = ()) -> ImageEncoding:
        """BE vectors, the CE's image tokens when its key is in `want`, the LI tokens when the LI key is. An LI
        head with image codes needs a second vision pass (the codes change every output); one without reads
        the same pass's tokens."""
        keep_tokens = self.ce_key in want
        keep_late = self.li_key is not None and self.li_key in want

        def run(a: int, b: int) -> list[np.ndarray]:
            px = pixel_values[a:b].to(self.device, self.dtype)
            with self.image_side():
                tokens = self.vision_tokens(px)
                vec = F.normalize(self.model.vision_proj(tokens[:, 0, :]).float(), dim=-1)
                if keep_late:
                    head = self.li_head
                    li_in = tokens if head.image_codes is None else vision_tokens(self.model.vision_model, px,
                                                                                  extra=head.image_codes)
                    late = head.image_side(li_in)
            out = [vec.cpu().numpy().astype(np.float32)]
            if keep_tokens:
                out.append(pool_grid(tokens, self.ce_pool).float().cpu().numpy())
            if keep_late:
                out.append(late.float().cpu().numpy())
            return out

        parts = self.batched(len(pixel_values), self.image_batch_size, run)
        if not parts:
            parts = [np.zeros((0, self.dim), np.float32)]
            if keep_tokens:
                parts.append(np.zeros((0, *self.ce_shape), np.float32))
            if keep_late:
                parts.append(np.zeros((0, *self.li_shape), np.float32))
        features = {}
        if keep_tokens:
            features[self.ce_key] = parts[1]
        if keep_late:
            features[self.li_key] = parts[-1]
        return ImageEncoding(vectors=parts[0], features=features)

    # ----- texts -------------------------------------------------------------
    def text_inputs(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        enc = self.processor(
            text=list(texts), padding=True, truncation=True, max_length=self.max_text_tokens, return_tensors="pt"
        )
        return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}


class BlipBiEncoder:
    """The contrastive heads: photos and texts to L2-normalised vectors."""

    def __init__(self, ckpt: BlipCheckpoint):
        self.ckpt = ckpt
        self.key = ckpt.be_key
        self.name = ckpt.name
        self.dim = ckpt.dim

    @torch.inference_mode()
    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), np.float32)
        ckpt = self.ckpt
        inputs = ckpt.text_inputs(texts)

        def run(a: int, b: int) -> list[np.ndarray]:
            ids = inputs["input_ids"][a:b].to(ckpt.device)
            mask = inputs["attention_mask"][a:b].to(ckpt.device)
            hidden = ckpt.model.text_encoder(input_ids=ids, attention_mask=mask).last_hidden_state
            vec = F.normalize(ckpt.model.text_proj(hidden[:, 0, :]).float(), dim=-1)
            return [vec.cpu().numpy().astype(np.float32)]

        (vectors,) = ckpt.batched(len(texts), 64, run)
        return vectors


class BlipCrossEncoder:
    """The matching head: the text encoder cross-attending a photo's image tokens (its features)."""

    def __init__(self, ckpt: BlipCheckpoint):
        self.ckpt = ckpt
        self.key = ckpt.ce_key
        self.name = ckpt.name
        self.feature_shape = ckpt.ce_shape

    @property
    def pool(self) -> int:
        """1 for the full CE; F for a shrunk CE reading the patch grid pooled F x F."""
        return self.ckpt.ce_pool

    @property
    def layout(self) -> str:
        """The image tokens it reads, in words (what the rerank cache holds)."""
        from .shrunk_ce import layout

        return layout(self.ckpt.token_shape[0], self.ckpt.ce_pool)

    def score(self, texts: str | Sequence[str], features: np.ndarray) -> np.ndarray:
        return self._run(texts, features, probabilities=True)

    def logits(self, texts: str | Sequence[str], features: np.ndarray) -> np.ndarray:
        return self._run(texts, features, probabilities=False)

    @torch.inference_mode()
    def _run(self, texts: str | Sequence[str], features: np.ndarray, probabilities: bool) -> np.ndarray:
        ckpt = self.ckpt
        n = len(features)
        if n == 0:
            return np.zeros((0,), np.float32)
        if isinstance(texts, str):
            inputs = ckpt.text_inputs([texts])
            inputs = {k: v.expand(n, -1) for k, v in inputs.items()}
        else:
            if len(texts) != n:
                raise ValueError("one text per image, or a single text for all")
            inputs = ckpt.text_inputs(texts)

        def run(a: int, b: int) -> list[np.ndarray]:
            part = features[a:b]
            part = part if part.flags.writeable else part.copy()  # torch warns on read-only buffers (cache reads)
            img = torch.as_tensor(part).to(ckpt.device, ckpt.dtype)
            with ckpt.image_side():
                logits = itm_logits(ckpt.model, inputs["input_ids"][a:b].to(ckpt.device),
                                    inputs["attention_mask"][a:b].to(ckpt.device), img).float()
            out = torch.softmax(logits, dim=-1)[:, 1] if probabilities else logits[:, 1] - logits[:, 0]
            return [out.cpu().numpy().astype(np.float32)]

        (out,) = ckpt.batched(n, ckpt.ce_batch_size, run)
        return out


class BlipLateInteraction:
    """The LI stage: the checkpoint's encoders (with the head's codes appended) and the LI head."""

    def __init__(self, ckpt: BlipCheckpoint):
        self.ckpt = ckpt
        self.key = ckpt.li_key
        self.name = ckpt.name
        self.feature_shape = ckpt.li_shape
        self.config = ckpt.li_head.cfg

    @torch.inference_mode()
    def text_tokens(self, text: str) -> np.ndarray:
        from .late_head import text_outputs

        ckpt = self.ckpt
        inputs = ckpt.text_inputs([text])
        with ckpt.lock.shared():
            hidden, mask = text_outputs(ckpt.model.text_encoder, inputs["input_ids"].to(ckpt.device),
                                        inputs["attention_mask"].to(ckpt.device), ckpt.li_head.text_codes)
            tokens, mask = ckpt.li_head.text_side(hidden, mask)
        return tokens[0][mask[0].bool()].float().cpu().numpy()

    def score(self, query_tokens: np.ndarray, photo_tokens: np.ndarray) -> np.ndarray:
        from .late import maxsim

        return maxsim(query_tokens, photo_tokens)


@register("blip")
def load_blip(folder: str, identity: str, name: str, options: LoadOptions, text_only: bool = False) -> FamilyStages:
    """BLIP retrieval checkpoints supply both stages on shared weights, from one vision pass. A text-only load
    reaches here only when the checkpoint cannot load its text side alone (registry.text_side_loads_alone,
    engine.models.blip_text): then the whole model loads."""
    config = json.loads((Path(folder) / "config.json").read_text())
    archs = config.get("architectures") or [ARCHITECTURE]
    if ARCHITECTURE not in archs:
        raise ModelNotFoundError(name, f"a BLIP checkpoint of {', '.join(archs)}, not {ARCHITECTURE}", local=True)
    from transformers import AutoProcessor, BlipForImageTextRetrieval
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    try:
        processor = AutoProcessor.from_pretrained(folder, local_files_only=True)
        model = BlipForImageTextRetrieval.from_pretrained(folder, local_files_only=True)
    except Exception as exc:  # transformers raises OSError, ValueError and others alike
        raise ModelNotFoundError(name, str(exc), local=True) from exc
    model.eval()
    if options.precision == "fp16":
        model.half()
    model.to(options.device)
    from . import shrunk_ce

    pool = None
    if shrunk_ce.has_shrunk(folder):
        try:
            pool = shrunk_ce.apply(model, folder).pool
        except Exception as exc:  # a damaged overlay, or one made for another checkpoint
            raise ModelNotFoundError(name, f"its shrunk CE ({shrunk_ce.SHRUNK_WEIGHTS}) cannot be used: {exc}",
                                     local=True) from exc
    ckpt = BlipCheckpoint(model, processor, identity, name, options)
    if pool is not None:
        try:
            ckpt.attach_shrunk(pool, shrunk_ce.digest(folder))
        except ValueError as exc:
            raise ModelNotFoundError(name, f"its shrunk CE cannot pool this model's tokens: {exc}", local=True) from exc
    late = None
    from . import late as late_files

    if late_files.has_head(folder):
        from .late_head import load_head

        try:
            head = load_head(folder)
        except Exception as exc:  # a damaged or mismatched head file
            raise ModelNotFoundError(name, f"its LI head ({late_files.LI_WEIGHTS}) cannot be read: {exc}",
                                     local=True) from exc
        if options.precision == "fp16":
            head.half()
        ckpt.attach_late(head, late_files.head_digest(folder))
        late = BlipLateInteraction(ckpt)
    return FamilyStages(be=BlipBiEncoder(ckpt), rerankers=[BlipCrossEncoder(ckpt)], backbone=ckpt,
                        describe=ckpt.describe_device, late=late)
