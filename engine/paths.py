"""Where a library lives: platformdirs' per-user data folder, PICSIFT_HOME, or an explicit folder."""

from __future__ import annotations

import os
from pathlib import Path

import platformdirs

APP_NAME = "picsift"
ENV_HOME = "PICSIFT_HOME"

ASSETS_DIR = Path(__file__).resolve().parent.parent / "assets"
DEFAULT_COLLECTION_FILE = ASSETS_DIR / "captions" / "everyday.txt"


def library_dir(explicit: str | os.PathLike | None = None) -> Path:
    """The library folder: an explicit one, else $PICSIFT_HOME, else the user data folder."""
    if explicit:
        return Path(explicit).expanduser().resolve()
    env = os.environ.get(ENV_HOME)
    if env:
        return Path(env).expanduser().resolve()
    return Path(platformdirs.user_data_dir(APP_NAME, appauthor=False)).resolve()


def cache_dir() -> Path:
    """Per-user cache (thumbnails and the like), never the library's truth."""
    env = os.environ.get(ENV_HOME)
    if env:
        return Path(env).expanduser().resolve() / "cache"
    return Path(platformdirs.user_cache_dir(APP_NAME, appauthor=False)).resolve()
