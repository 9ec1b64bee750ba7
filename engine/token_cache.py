"""The rerank cache: each photo's CE image tokens, written at indexing time.

A query then never reruns the vision encoder on indexed candidates. It lives in
its own SQLite file beside the library, under a size budget: photos beyond the
budget are simply encoded again when a query reranks them. Tokens are stored as
int8 with a scale per channel and per token by default, fp32 when the exact path is asked for
(fp16 is read too).
"""

from __future__ import annotations

import os
import sqlite3
import threading
from pathlib import Path
from typing import Iterable

import numpy as np

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


class TokenCache:
    def __init__(self, path: str | os.PathLike, budget_bytes: int = DEFAULT_BUDGET_BYTES):
        self.path = Path(path)
        self.budget_bytes = budget_bytes
        self.lock = threading.RLock()
        self.conn = sqlite3.connect(str(self.path), check_same_thread=False, timeout=30, isolation_level=None)
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute("PRAGMA synchronous=NORMAL")
        self.conn.execute(
            "CREATE TABLE IF NOT EXISTS tokens (photo_id INTEGER PRIMARY KEY, fmt TEXT NOT NULL, "
            "n INTEGER NOT NULL, h INTEGER NOT NULL, data BLOB NOT NULL)"
        )
        self._size = self._measure()

    def _measure(self) -> int:
        with self.lock:
            return int(self.conn.execute("SELECT coalesce(sum(length(data)), 0) FROM tokens").fetchone()[0])

    @property
    def size_bytes(self) -> int:
        return self._size

    def count(self) -> int:
        with self.lock:
            return int(self.conn.execute("SELECT count(*) FROM tokens").fetchone()[0])

    def put_many(self, items: Iterable[tuple[int, np.ndarray]], fmt: str) -> int:
        """Store tokens of photos while the budget allows; returns how many were stored."""
        stored = 0
        with self.lock:
            self.conn.execute("BEGIN IMMEDIATE")
            try:
                for photo_id, tokens in items:
                    blob = encode_tokens(tokens, fmt)
                    old = self.conn.execute("SELECT length(data) FROM tokens WHERE photo_id = ?",
                                            (int(photo_id),)).fetchone()
                    old_len = old[0] if old else 0
                    if self._size - old_len + len(blob) > self.budget_bytes:
                        if old:  # a stale entry must not outlive a changed photo
                            self.conn.execute("DELETE FROM tokens WHERE photo_id = ?", (int(photo_id),))
                            self._size -= old_len
                        continue
                    n, h = tokens.shape
                    self.conn.execute("INSERT OR REPLACE INTO tokens(photo_id, fmt, n, h, data) VALUES (?, ?, ?, ?, ?)",
                                      (int(photo_id), fmt, n, h, blob))
                    self._size += len(blob) - old_len
                    stored += 1
                self.conn.execute("COMMIT")
            except BaseException:
                self.conn.execute("ROLLBACK")
                self._size = self._measure()
                raise
        return stored

    def get_many(self, photo_ids: Iterable[int]) -> dict[int, np.ndarray]:
        ids = [int(i) for i in photo_ids]
        out: dict[int, np.ndarray] = {}
        with self.lock:
            for i in range(0, len(ids), 500):
                chunk = ids[i : i + 500]
                rows = self.conn.execute(
                    f"SELECT photo_id, fmt, n, h, data FROM tokens WHERE photo_id IN ({','.join('?' * len(chunk))})",
                    chunk,
                ).fetchall()
                for pid, fmt, n, h, data in rows:
                    out[pid] = decode_tokens(data, fmt, (n, h))
        return out

    def set_budget(self, budget_bytes: int) -> int:
        """Change the budget; entries beyond a lowered one are dropped (newest first). Returns how many."""
        self.budget_bytes = max(0, int(budget_bytes))
        dropped = 0
        with self.lock:
            while self._size > self.budget_bytes:
                rows = self.conn.execute(
                    "SELECT photo_id, length(data) FROM tokens ORDER BY photo_id DESC LIMIT 256").fetchall()
                if not rows:
                    break
                doomed, freed = [], 0
                for pid, length in rows:
                    if self._size - freed <= self.budget_bytes:
                        break
                    doomed.append(pid)
                    freed += length
                self.conn.executemany("DELETE FROM tokens WHERE photo_id = ?", [(p,) for p in doomed])
                self._size -= freed
                dropped += len(doomed)
        return dropped

    def delete(self, photo_ids: Iterable[int]) -> None:
        ids = [int(i) for i in photo_ids]
        with self.lock:
            for i in range(0, len(ids), 500):
                chunk = ids[i : i + 500]
                self.conn.execute(f"DELETE FROM tokens WHERE photo_id IN ({','.join('?' * len(chunk))})", chunk)
            self._size = self._measure()

    def clear(self) -> None:
        with self.lock:
            self.conn.execute("DELETE FROM tokens")
            self._size = 0

    def ids(self) -> set[int]:
        with self.lock:
            return {r[0] for r in self.conn.execute("SELECT photo_id FROM tokens")}

    def close(self) -> None:
        with self.lock:
            self.conn.close()
