"""The rerank cache: each photo's reranker features (BLIP's CE image tokens), kept under a size budget.

A query never reruns the vision encoder on a cached candidate. Entries are keyed
by the reranker stage that made them and the photo's content hash, so copies
share one entry and another model's features are never read; when a library's CE
changes (another checkpoint, or a shrunk CE reading a pooled grid), the other
stages' entries go. Indexing fills the
cache while it has room; a query's rerank stores what it had to encode and, when
the cache is full, the least recently used entries make room for it, so the
budget ends up holding what queries actually rerank. Tokens are int8 with a
scale per channel and per token by default, fp32 when the exact path is asked
for (fp16 is read too). It is a cache: a damaged file is rebuilt empty.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
from pathlib import Path
from typing import Iterable

import numpy as np

log = logging.getLogger("picsift.cache")

FORMATS = ("fp32", "fp16", "int8")
DEFAULT_BUDGET_BYTES = 4 * 1024**3


def format_for(model) -> str:
    """fp32 tokens when the exact path was asked for, int8 otherwise (a quarter of the size;
    tests hold rerank results to the fp32 path)."""
    return "fp32" if getattr(model, "exact", False) else "int8"


def encode_tokens(tokens: np.ndarray, fmt: str) -> bytes:
    t = np.ascontiguousarray(tokens, dtype=np.float32)
    if fmt == "fp32":
        return t.tobytes()
    if fmt == "fp16":
        return t.astype(np.float16).tobytes()
    if fmt == "int8":
        # Two-level scales: vision transformers carry a few channels of huge magnitude in every token,
        # which would leave one scale per token too coarse for the rest; dividing by each channel's
        # range first, then quantising each token by its own range, keeps both kinds of spread.
        chan = np.abs(t).max(axis=0, keepdims=True)
        chan[chan == 0] = 1.0
        norm = t / chan
        tok = np.abs(norm).max(axis=-1, keepdims=True) / 127.0
        tok[tok == 0] = 1.0
        q = np.clip(np.rint(norm / tok), -127, 127).astype(np.int8)
        return chan.astype(np.float32).tobytes() + tok.astype(np.float32).tobytes() + q.tobytes()
    raise ValueError(f"unknown token format '{fmt}'")


def decode_tokens(blob: bytes, fmt: str, shape: tuple[int, int]) -> np.ndarray:
    n, h = shape
    if fmt == "fp32":
        return np.frombuffer(blob, dtype=np.float32).reshape(n, h)
    if fmt == "fp16":
        return np.frombuffer(blob, dtype=np.float16).reshape(n, h).astype(np.float32)
    if fmt == "int8":
        chan = np.frombuffer(blob[: 4 * h], dtype=np.float32).reshape(1, h)
        tok = np.frombuffer(blob[4 * h : 4 * (h + n)], dtype=np.float32).reshape(n, 1)
        q = np.frombuffer(blob[4 * (h + n) :], dtype=np.int8).reshape(n, h)
        return q.astype(np.float32) * tok * chan
    raise ValueError(f"unknown token format '{fmt}'")


_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS features (stage TEXT NOT NULL, hash TEXT NOT NULL, fmt TEXT NOT NULL, "
    "n INTEGER NOT NULL, h INTEGER NOT NULL, data BLOB NOT NULL, last_used REAL NOT NULL)",
    "CREATE UNIQUE INDEX IF NOT EXISTS features_key ON features(stage, hash)",
    "CREATE INDEX IF NOT EXISTS features_lru ON features(last_used)",
)


class TokenCache:
    def __init__(self, path: str | os.PathLike, budget_bytes: int = DEFAULT_BUDGET_BYTES, read_only: bool = False):
        self.path = Path(path)
        self.budget_bytes = budget_bytes
        self.read_only = read_only
        self.lock = threading.RLock()
        self.notices: list[str] = []
        self.hits = self.misses = 0  # of this process's lookups
        self.legacy_rows = 0  # v1 entries keyed by photo id, waiting for `adopt_v1`
        try:
            self._open()
        except sqlite3.DatabaseError as exc:
            if read_only:
                self._open_empty_memory()
            else:
                self._rebuild(exc)

    def _open(self) -> None:
        if self.read_only:
            if not self.path.exists():
                self._open_empty_memory()
                return
            self.conn = sqlite3.connect(f"file:{self.path}?mode=ro&immutable=1", uri=True, check_same_thread=False,
                                        isolation_level=None)
        else:
            self.conn = sqlite3.connect(str(self.path), check_same_thread=False, timeout=30, isolation_level=None)
            self.conn.execute("PRAGMA journal_mode=WAL")
            self.conn.execute("PRAGMA synchronous=NORMAL")
        check = self.conn.execute("PRAGMA quick_check").fetchone()[0]
        if check != "ok":
            raise sqlite3.DatabaseError(check)
        if not self.read_only:
            tables = {r[0] for r in self.conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            if "tokens" in tables and "tokens_v1" not in tables:  # picsift schema 1: keyed by photo id
                self.conn.execute("ALTER TABLE tokens RENAME TO tokens_v1")
            for sql in _SCHEMA:
                self.conn.execute(sql)
            if "tokens" in tables or "tokens_v1" in tables:
                self.legacy_rows = self.conn.execute("SELECT count(*) FROM tokens_v1").fetchone()[0]
        self._size = self._measure()

    def _open_empty_memory(self) -> None:
        self.conn = sqlite3.connect(":memory:", check_same_thread=False, isolation_level=None)
        for sql in _SCHEMA:
            self.conn.execute(sql)
        self._size = 0

    def _rebuild(self, exc: Exception) -> None:
        msg = f"The rerank cache {self.path.name} was damaged ({exc}); it was rebuilt empty and refills as you search."
        log.warning(msg)
        self.notices.append(msg)
        for suffix in ("", "-wal", "-shm"):
            try:
                os.unlink(f"{self.path}{suffix}")
            except FileNotFoundError:
                pass
        self._open()

    def _measure(self) -> int:
        with self.lock:
            return int(self.conn.execute("SELECT coalesce(sum(length(data)), 0) FROM features").fetchone()[0])

    @property
    def size_bytes(self) -> int:
        return self._size

    def count(self, stage: str | None = None) -> int:
        with self.lock:
            if stage is None:
                return int(self.conn.execute("SELECT count(*) FROM features").fetchone()[0])
            return int(self.conn.execute("SELECT count(*) FROM features WHERE stage = ?", (stage,)).fetchone()[0])

    # ----- reads and writes ------------------------------------------------------
    def put_many(self, stage: str, items: Iterable[tuple[str, np.ndarray]], fmt: str, evict: bool = False) -> int:
        """Store features of photos (by content hash). While the budget allows; with evict=True (a query's
        rerank) the least recently used entries make room. Returns how many were stored."""
        return self.put_encoded(stage, ((h, fmt, t.shape, encode_tokens(t, fmt)) for h, t in items), evict)

    def put_encoded(self, stage: str, items: Iterable[tuple[str, str, tuple[int, int], bytes]],
                    evict: bool = False) -> int:
        """put_many for features encoded already (encode_tokens), each as (content hash, format, shape, bytes):
        what a cluster job's shards carry."""
        if self.read_only:
            return 0
        stored = 0
        now = time.time()
        with self.lock:
            self.conn.execute("BEGIN IMMEDIATE")
            try:
                for content_hash, fmt, shape, blob in items:
                    if fmt not in FORMATS:
                        raise ValueError(f"unknown token format '{fmt}'")
                    old = self.conn.execute("SELECT length(data) FROM features WHERE stage = ? AND hash = ?",
                                            (stage, content_hash)).fetchone()
                    old_len = old[0] if old else 0
                    over = self._size - old_len + len(blob) - self.budget_bytes
                    if over > 0 and evict and len(blob) <= self.budget_bytes:
                        self._evict(over, keep=(stage, content_hash))
                        over = self._size - old_len + len(blob) - self.budget_bytes
                    if over > 0:
                        continue
                    n, h = shape
                    self.conn.execute(
                        "INSERT INTO features(stage, hash, fmt, n, h, data, last_used) VALUES (?, ?, ?, ?, ?, ?, ?) "
                        "ON CONFLICT(stage, hash) DO UPDATE SET fmt = excluded.fmt, n = excluded.n, h = excluded.h, "
                        "data = excluded.data, last_used = excluded.last_used",
                        (stage, content_hash, fmt, n, h, blob, now))
                    self._size += len(blob) - old_len
                    stored += 1
                self.conn.execute("COMMIT")
            except BaseException:
                self.conn.execute("ROLLBACK")
                self._size = self._measure()
                raise
        return stored

    def _evict(self, need: int, keep: tuple[str, str]) -> int:
        """Drop least recently used entries until `need` bytes are free (inside the caller's transaction)."""
        freed = 0
        while freed < need:
            rows = self.conn.execute("SELECT rowid, stage, hash, length(data) FROM features ORDER BY last_used LIMIT 64"
                                     ).fetchall()
            rows = [r for r in rows if (r[1], r[2]) != keep]
            if not rows:
                break
            doomed = []
            for rowid, _stage, _hash, length in rows:
                if freed >= need:
                    break
                doomed.append((rowid,))
                freed += length
            self.conn.executemany("DELETE FROM features WHERE rowid = ?", doomed)
        self._size -= freed
        return freed

    def get_many(self, stage: str, hashes: Iterable[str]) -> dict[str, np.ndarray]:
        """Features by content hash for those cached; marks them used (least recently used goes first)."""
        keys = list(dict.fromkeys(h for h in hashes if h))
        out: dict[str, np.ndarray] = {}
        with self.lock:
            for i in range(0, len(keys), 500):
                chunk = keys[i : i + 500]
                rows = self.conn.execute(
                    f"SELECT hash, fmt, n, h, data FROM features WHERE stage = ? AND hash IN ({','.join('?' * len(chunk))})",
                    (stage, *chunk),
                ).fetchall()
                for content_hash, fmt, n, h, data in rows:
                    out[content_hash] = decode_tokens(data, fmt, (n, h))
            if out and not self.read_only:
                now = time.time()
                self.conn.executemany("UPDATE features SET last_used = ? WHERE stage = ? AND hash = ?",
                                      [(now, stage, h) for h in out])
        self.hits += len(out)
        self.misses += len(keys) - len(out)
        return out

    def set_budget(self, budget_bytes: int) -> int:
        """Change the budget; the least recently used entries beyond a lowered one go. Returns how many."""
        self.budget_bytes = max(0, int(budget_bytes))
        with self.lock:
            before = self.count()
            if self._size > self.budget_bytes:
                self.conn.execute("BEGIN IMMEDIATE")
                self._evict(self._size - self.budget_bytes, keep=("", ""))
                self.conn.execute("COMMIT")
            return before - self.count()

    def keep_only(self, hashes: set[str]) -> int:
        """Drop entries of photos the library no longer has; returns how many went."""
        with self.lock:
            stale = [(r[0],) for r in self.conn.execute("SELECT rowid, hash FROM features") if r[1] not in hashes]
            self.conn.executemany("DELETE FROM features WHERE rowid = ?", stale)
            self._size = self._measure()
        return len(stale)

    def keep_stage(self, stage: str) -> int:
        """Drop every other stage's entries (the library's CE changed, a shrunk CE's layout for one); returns
        how many went."""
        if self.read_only:
            return 0
        with self.lock:
            gone = self.conn.execute("DELETE FROM features WHERE stage != ?", (stage,)).rowcount
            self._size = self._measure()
        return int(gone)

    def clear(self) -> None:
        with self.lock:
            self.conn.execute("DELETE FROM features")
            self._size = 0

    def hashes(self, stage: str | None = None) -> set[str]:
        with self.lock:
            if stage is None:
                return {r[0] for r in self.conn.execute("SELECT hash FROM features")}
            return {r[0] for r in self.conn.execute("SELECT hash FROM features WHERE stage = ?", (stage,))}

    def adopt_v1(self, photo_hashes: dict[int, str], stage: str) -> int:
        """Move a schema-1 cache (keyed by photo id) under `stage` and content hashes; returns how many moved."""
        if not self.legacy_rows:
            return 0
        now = time.time()
        moved = 0
        with self.lock:
            self.conn.execute("BEGIN IMMEDIATE")
            for pid, fmt, n, h, data in self.conn.execute("SELECT photo_id, fmt, n, h, data FROM tokens_v1").fetchall():
                content_hash = photo_hashes.get(pid)
                if content_hash:
                    self.conn.execute("INSERT OR IGNORE INTO features(stage, hash, fmt, n, h, data, last_used) "
                                      "VALUES (?, ?, ?, ?, ?, ?, ?)", (stage, content_hash, fmt, n, h, data, now))
                    moved += 1
            self.conn.execute("DROP TABLE tokens_v1")
            self.conn.execute("COMMIT")
            self.legacy_rows = 0
            self._size = self._measure()
        return moved

    def close(self) -> None:
        with self.lock:
            self.conn.close()
