"""A checkpoint's identity is its content, not where it lies.

The identity is a hash of the config and the weight files. A checkpoint
overwritten in place is a new model; the same files moved to another folder are
the same one. Hashing a 900 MB checkpoint takes about a second, so the result is
remembered per file (path, size, modification time, inode) in the user cache.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from contextlib import contextmanager
from pathlib import Path

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")
CONFIG_NAME = "config.json"
_memo_lock = threading.Lock()


def _memo_path() -> Path:
    import platformdirs

    # The user's cache, not a library's: a checkpoint is the same whichever library uses it.
    return Path(platformdirs.user_cache_dir("picsift", appauthor=False)) / "checkpoint-hashes.json"


def _file_digest(path: Path, memo: dict) -> str:
    st = path.stat()
    key = f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}|{st.st_ino}"
    if key in memo:
        return memo[key]
    h = hashlib.blake2b(digest_size=20)
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(8 << 20), b""):
            h.update(block)
    memo[key] = h.hexdigest()
    return memo[key]


def content_identity(folder: str | os.PathLike) -> str:
    """Hex digest of a checkpoint folder's config and weights (file names and contents)."""
    folder = Path(folder)
    from .late import LI_FILES
    from .shrunk_ce import SHRUNK_FILES

    # An LI head or a shrunk CE beside the weights is a stage of its own (its key names its own digest):
    # adding one keeps the checkpoint's BE vectors (and, for an LI head, the CE cache) valid.
    side = set(LI_FILES) | set(SHRUNK_FILES)
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.name not in side
                   and (p.name == CONFIG_NAME or p.suffix in WEIGHT_SUFFIXES))
    if not any(p.name == CONFIG_NAME for p in files):
        raise FileNotFoundError(f"no {CONFIG_NAME} in {folder}")
    with _memo() as memo:
        outer = hashlib.blake2b(digest_size=10)
        for p in files:
            if p.name == CONFIG_NAME:
                # The config as data, so that formatting or key order alone does not make a new model.
                digest = hashlib.blake2b(json.dumps(json.loads(p.read_text()), sort_keys=True).encode(),
                                         digest_size=20).hexdigest()
            else:
                digest = _file_digest(p, memo)
            outer.update(f"{p.name}:{digest};".encode())
    return outer.hexdigest()


def file_digest(path: str | os.PathLike) -> str:
    """One file's content hash, remembered like a checkpoint's weights (for files beside a checkpoint)."""
    with _memo() as memo:
        return _file_digest(Path(path), memo)


@contextmanager
def _memo():
    """The remembered file hashes, under the lock; written back when a hash was added."""
    with _memo_lock:
        memo = _load_memo()
        before = len(memo)
        yield memo
        if len(memo) != before:
            _save_memo(memo)


def _load_memo() -> dict:
    try:
        data = json.loads(_memo_path().read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _save_memo(memo: dict) -> None:
    path = _memo_path()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(dict(list(memo.items())[-500:])))
        os.replace(tmp, path)
    except OSError:
        pass  # a memo that cannot be written only costs a rehash next time
