"""Retrieval models: one interface, BLIP image-text retrieval as the first implementation."""

from engine.models.base import ImageEncoding, RetrievalModel
from engine.models.blip import DEFAULT_MODEL, BlipRetrievalModel, model_identity


def load_model(model_id: str = DEFAULT_MODEL, device: str | None = "auto", precision: str | None = "auto",
               on_download=None):
    """Load a retrieval model by hub id or local folder (raises ModelNotFoundError)."""
    return BlipRetrievalModel.load(model_id, device=device, precision=precision, on_download=on_download)


__all__ = ["DEFAULT_MODEL", "ImageEncoding", "RetrievalModel", "load_model", "model_identity"]
