"""Retrieval models: one interface, BLIP image-text retrieval as the first implementation."""

from engine.models.base import ImageEncoding, RetrievalModel
from engine.models.blip import DEFAULT_MODEL, BlipRetrievalModel, model_identity


def load_model(model_id: str = DEFAULT_MODEL, device: str | None = "auto", precision: str | None = "auto",
               on_download=None):
    """Load a retrieval model by hub id or local folder (raises ModelNotFoundError)."""
    return BlipRetrievalModel.load(model_id, device=device, precision=precision, on_download=on_download)


def is_cached(model_id: str) -> bool:
    """Whether a checkpoint can be loaded without the network (a folder, or in the hub cache)."""
    from transformers import AutoConfig

    try:
        AutoConfig.from_pretrained(model_identity(model_id), local_files_only=True)
        return True
    except Exception:  # any failure means: not loadable offline
        return False


__all__ = ["is_cached", "DEFAULT_MODEL", "ImageEncoding", "RetrievalModel", "load_model", "model_identity"]
