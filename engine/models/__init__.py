"""Retrieval models as stages: a bi-encoder and rerankers, found by each checkpoint's config."""

from .cascade import Cascade
from .stages import BiEncoder, ImageEncoding, Reranker
from .registry import DEFAULT_MODEL, is_cached, load_cascade, source_name


def load_model(model_id: str = DEFAULT_MODEL, device: str | None = "auto", precision: str | None = "auto",
               on_download=None, ce_model: str | None = None, text_only: bool = False,
               light: bool = False) -> Cascade:
    """Load a retrieval cascade by hub id or local folder (raises ModelNotFoundError)."""
    return load_cascade(model_id, ce_model=ce_model, device=device, precision=precision, on_download=on_download,
                        text_only=text_only, light=light)


__all__ = ["BiEncoder", "Cascade", "DEFAULT_MODEL", "ImageEncoding", "Reranker", "is_cached", "load_cascade",
           "load_model", "source_name"]
