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


def folder_bounds(folder: str) -> tuple[str, str]:
    """(lo, hi) such that `lo <= path < hi` holds exactly for the paths under folder, compared as SQLite
    compares text by default (binary): /data/Trip holds neither /data/trip nor /data/Trip2."""
    root = folder.rstrip(os.sep) or os.sep
    lo = root if root.endswith(os.sep) else root + os.sep
    return lo, lo[:-1] + chr(ord(os.sep) + 1)


def normalize_path(path: str | os.PathLike) -> str:
    """One spelling of a path: user folder expanded, absolute, normalised, Unicode NFC (macOS hands out NFD)."""
    import unicodedata

    p = os.path.normpath(os.path.abspath(os.path.expanduser(os.fspath(path))))
    return unicodedata.normalize("NFC", p)
