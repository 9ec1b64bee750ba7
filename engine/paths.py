"""Where a library lives (platformdirs' per-user data folder, PICSIFT_HOME, or an explicit folder),
and how photo paths are spelled and compared."""

from __future__ import annotations

import os
import sys
import tempfile
import threading
import unicodedata
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


# ----- photo paths: one spelling per file, and exact folder matching ---------------------------
#
# The store keeps each photo's `normalize_path`; comparisons go through `path_key`, which also folds
# case where the file system does. For SQL, `folder_bounds` gives a range that selects exactly the
# paths under a folder with SQLite's default BINARY collation and uses the index on the column
# (LIKE 'folder%' does neither: '_' and '%' are wildcards, /data/Trip2 matches, and the index is
# skipped):
#
#     lo, hi = folder_bounds(folder)
#     db.execute("SELECT id FROM photos WHERE path >= ? AND path < ?", (lo, hi))
#
# On a case-insensitive file system, keep a column of `path_key` values beside the path and query
# it with `folder_bounds(folder, key=True)`, so /Users/me/pictures finds /Users/me/Pictures/a.jpg.

_case_lock = threading.Lock()
_case_by_device: dict[int, bool] = {}


def normalize_path(p: str | os.PathLike) -> str:
    """The one spelling of a path: user folder expanded, absolute, `os.path.normpath`ed (no `..`, no doubled or trailing
    separator), Unicode NFC (macOS hands out NFD names). Case is kept as given, and symbolic links
    are not resolved (the user's folder is the one they chose, not its target); no disk access."""
    path = os.path.abspath(os.path.expanduser(os.fspath(p)))
    if os.sep == "/" and path.startswith("//"):
        path = "/" + path.lstrip("/")  # POSIX keeps a leading "//" as maybe special; Linux and macOS do not
    return unicodedata.normalize("NFC", path)


def path_key(p: str | os.PathLike, case_sensitive: bool | None = None) -> str:
    """A comparison key: `normalize_path`, case-folded where the file system ignores case.

    `case_sensitive` None asks `is_case_sensitive` about the path's file system."""
    norm = normalize_path(p)
    if case_sensitive is None:
        case_sensitive = is_case_sensitive(norm)
    return norm if case_sensitive else unicodedata.normalize("NFC", norm.casefold())


def is_under(path: str | os.PathLike, folder: str | os.PathLike, case_sensitive: bool | None = None) -> bool:
    """Whether `path` lies inside `folder` (strictly: a folder is not under itself).

    Whole names are compared, so /data/Trip2 is not under /data/Trip, and /data/trip/x is under
    /data/Trip only on a case-insensitive file system. `case_sensitive` None asks the folder's file system.
    """
    if case_sensitive is None:
        case_sensitive = is_case_sensitive(folder)
    f = path_key(folder, case_sensitive)
    p = path_key(path, case_sensitive)
    return p != f and p.startswith(_with_sep(f))


def in_any(path: str, folders, case_sensitive: bool | None = True) -> str | None:
    """The first of `folders` that is `path` or holds it (normalised paths, compared as is by default), or
    None."""
    return next((f for f in folders if path == f or is_under(path, f, case_sensitive=case_sensitive)), None)


def folder_bounds(folder: str | os.PathLike, key: bool = False,
                  case_sensitive: bool | None = None) -> tuple[str, str]:
    """(lo, hi) such that `lo <= path < hi` in binary (code point) order holds exactly for the
    normalised paths under `folder`, as `is_under` says. lo is the folder and a separator; hi is
    the folder and the character after the separator, which no name inside it can reach.

    `key=True` gives the bounds for a column of `path_key` values instead of `normalize_path` ones.
    """
    f = path_key(folder, case_sensitive) if key else normalize_path(folder)
    lo = _with_sep(f)
    return lo, lo[:-1] + chr(ord(lo[-1]) + 1)


def is_case_sensitive(path: str | os.PathLike) -> bool:
    """Whether the file system holding `path` (or its nearest existing parent) tells names apart by case.

    Probed once per device: an existing entry's name is looked up with its case swapped; when no
    entry can tell, a probe file is created and removed; when that is not allowed either, the
    platform's default (insensitive on macOS and Windows) is assumed. A folder with its own case
    rule on a device (Windows allows that) is not seen; the device's answer stands.
    """
    here = _existing_parent(normalize_path(path))
    try:
        device = os.stat(here).st_dev
    except OSError:
        return _platform_case_sensitive()
    with _case_lock:
        known = _case_by_device.get(device)
    if known is None:
        known = _probe_case_sensitive(here)
        with _case_lock:
            _case_by_device[device] = known
    return known


def _with_sep(folder: str) -> str:
    return folder if folder.endswith(os.sep) else folder + os.sep  # the root already ends with one


def _existing_parent(path: str) -> str:
    while not os.path.exists(path):
        parent = os.path.dirname(path)
        if parent == path:
            break
        path = parent
    return path


def _platform_case_sensitive() -> bool:
    return not (sys.platform == "darwin" or sys.platform.startswith("win"))


def _probe_case_sensitive(path: str) -> bool:
    folder = path if os.path.isdir(path) else os.path.dirname(path)
    candidates = [path]
    try:
        with os.scandir(folder) as entries:
            candidates += [e.path for _, e in zip(range(50), entries)]
    except OSError:
        pass
    for candidate in candidates:
        answer = _case_tells(candidate)
        if answer is not None:
            return answer
    try:
        fd, probe = tempfile.mkstemp(prefix=".picsift-Case-", dir=folder)
    except OSError:
        return _platform_case_sensitive()
    try:
        os.close(fd)
        answer = _case_tells(probe)
        return _platform_case_sensitive() if answer is None else answer
    finally:
        try:
            os.unlink(probe)
        except OSError:
            pass


def _case_tells(path: str) -> bool | None:
    """True or False when looking `path`'s last name up with its case swapped settles the question."""
    head, name = os.path.split(path)
    swapped = name.swapcase()
    if not name or swapped == name or swapped.lower() != name.lower():
        return None  # no letters to swap, or letters whose swap is not a plain case change
    try:
        original = os.lstat(path)
    except OSError:
        return None
    try:
        other = os.lstat(os.path.join(head, swapped))
    except FileNotFoundError:
        return True
    except OSError:
        return None
    if (other.st_dev, other.st_ino) == (original.st_dev, original.st_ino):
        return False
    return True  # both spellings exist as different files
