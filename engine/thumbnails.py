"""A disk cache of small JPEG thumbnails, so a results grid never decodes full photos twice."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from PIL import Image

from .errors import ImageError
from .index.imaging import open_photo

DEFAULT_SIZE = 256


def thumbnail_path(cache_dir: str | os.PathLike, photo: str, size: int = DEFAULT_SIZE) -> Path:
    """Where the thumbnail of a photo's current version lives (the key includes size and mtime)."""
    st = os.stat(photo)
    key = hashlib.blake2b(f"{os.path.abspath(photo)}|{st.st_size}|{st.st_mtime_ns}|{size}".encode(),
                          digest_size=16).hexdigest()
    return Path(cache_dir) / key[:2] / f"{key}.jpg"


def thumbnail(cache_dir: str | os.PathLike, photo: str, size: int = DEFAULT_SIZE) -> Path:
    """Path of a JPEG thumbnail no larger than size, made on first use; raises ImageError."""
    try:
        target = thumbnail_path(cache_dir, photo, size)
    except OSError:
        raise ImageError("file vanished") from None
    if target.exists():
        return target
    img = open_photo(photo, target_size=size).image
    img.thumbnail((size, size), Image.Resampling.LANCZOS)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f"{target.name}.{os.getpid()}.tmp")
    img.save(tmp, "JPEG", quality=85)
    os.replace(tmp, target)
    return target
