"""The library's truth in SQLite (through sqlite-utils): photos, vectors, captions, model identity.

Writes that belong together go in one `batch()` transaction, so an interrupted
run leaves either all of a batch or none of it.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import sqlite_utils

from engine.errors import LibraryError

SCHEMA_VERSION = 1
OK, ERROR = "ok", "error"


@dataclass
class PhotoRow:
    id: int
    path: str
    size: int
    mtime_ns: int
    hash: str | None
    status: str
    error: str | None
    has_vector: bool


def to_blob(vec: np.ndarray) -> bytes:
    return np.ascontiguousarray(vec, dtype=np.float32).tobytes()


def from_blob(blob: bytes) -> np.ndarray:
    return np.frombuffer(blob, dtype=np.float32)


class Store:
    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(str(self.path), check_same_thread=False, timeout=30, isolation_level=None)
        except (OSError, sqlite3.Error) as exc:
            raise LibraryError(f"cannot open the library database {self.path}: {exc}") from exc
        self.conn = conn
        self.db = sqlite_utils.Database(conn)
        self.lock = threading.RLock()
        self._in_batch = False
        try:
            self.db.enable_wal()
            conn.execute("PRAGMA synchronous=NORMAL")
            self._migrate()
        except sqlite3.DatabaseError as exc:
            raise LibraryError(f"the library database {self.path} is damaged or not a picsift library: {exc}") from exc

    # ----- schema --------------------------------------------------------
    def _migrate(self) -> None:
        db = self.db
        with self.lock:
            db["meta"].create({"key": str, "value": str}, pk="key", if_not_exists=True)
            version = int(self.get_meta("schema_version", "0"))
            if version > SCHEMA_VERSION:
                raise LibraryError(
                    f"this library was written by a newer picsift (schema {version}); upgrade picsift to open it"
                )
            if version < 1:
                db["folders"].create({"id": int, "path": str, "added_at": float}, pk="id", if_not_exists=True)
                db["folders"].create_index(["path"], unique=True, if_not_exists=True)
                db["photos"].create(
                    {
                        "id": int, "path": str, "size": int, "mtime_ns": int, "hash": str, "width": int,
                        "height": int, "status": str, "error": str, "embedding": bytes, "updated_at": float,
                    },
                    pk="id", not_null={"path", "status"}, if_not_exists=True,
                )
                db["photos"].create_index(["path"], unique=True, if_not_exists=True)
                db["photos"].create_index(["hash"], if_not_exists=True)
                db["collections"].create(
                    {"id": int, "name": str, "source": str, "created_at": float}, pk="id", if_not_exists=True
                )
                db["collections"].create_index(["name"], unique=True, if_not_exists=True)
                db["captions"].create(
                    {"id": int, "collection_id": int, "text": str, "embedding": bytes},
                    pk="id", foreign_keys=[("collection_id", "collections", "id")], if_not_exists=True,
                )
                db["captions"].create_index(["collection_id"], if_not_exists=True)
                self.set_meta("schema_version", str(SCHEMA_VERSION))
                self.set_meta("generation", "0")

    def close(self) -> None:
        with self.lock:
            self.conn.close()

    @contextmanager
    def batch(self) -> Iterator[None]:
        """One transaction; nested calls join the outer one."""
        with self.lock:
            if self._in_batch:
                yield
                return
            self._in_batch = True
            self.conn.execute("BEGIN IMMEDIATE")
            try:
                yield
            except BaseException:
                self.conn.execute("ROLLBACK")
                raise
            else:
                self.conn.execute("COMMIT")
            finally:
                self._in_batch = False

    def _exec(self, sql: str, params: Iterable = ()) -> sqlite3.Cursor:
        with self.lock:
            return self.conn.execute(sql, tuple(params))

    # ----- meta ----------------------------------------------------------
    def get_meta(self, key: str, default: str | None = None) -> str | None:
        row = self._exec("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else default

    def set_meta(self, key: str, value: str) -> None:
        self._exec("INSERT INTO meta(key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                   (key, value))

    @property
    def model_id(self) -> str | None:
        return self.get_meta("model_id")

    @property
    def dim(self) -> int | None:
        d = self.get_meta("dim")
        return int(d) if d else None

    def generation(self) -> int:
        """Bumped with every committed change of photo vectors; the FAISS file records the one it matches."""
        return int(self.get_meta("generation", "0"))

    def bump_generation(self) -> None:
        self._exec("UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE key = 'generation'")

    def set_model(self, model_id: str, dim: int) -> bool:
        """Record the library's model. Returns True when it replaced another one (all vectors dropped)."""
        with self.batch():
            old = self.model_id
            changed = old is not None and (old != model_id or self.dim != dim)
            if changed:
                self._exec("UPDATE photos SET embedding = NULL")
                self._exec("UPDATE captions SET embedding = NULL")
                self.bump_generation()
            self.set_meta("model_id", model_id)
            self.set_meta("dim", str(dim))
        return changed

    # ----- folders -------------------------------------------------------
    def add_folder(self, path: str) -> None:
        self._exec("INSERT OR IGNORE INTO folders(path, added_at) VALUES (?, ?)", (path, time.time()))

    def folders(self) -> list[str]:
        return [r[0] for r in self._exec("SELECT path FROM folders ORDER BY path")]

    def remove_folder(self, path: str) -> list[int]:
        """Forget a folder and its photos; returns the removed photo ids."""
        with self.batch():
            ids = self.ids_under(path)
            self.delete_photos(ids)
            self._exec("DELETE FROM folders WHERE path = ?", (path,))
        return ids

    # ----- photos --------------------------------------------------------
    _ROW = "id, path, size, mtime_ns, hash, status, error, embedding IS NOT NULL"

    def photos_under(self, root: str) -> dict[str, PhotoRow]:
        rows = self._exec(f"SELECT {self._ROW} FROM photos WHERE path = ? OR path LIKE ? ESCAPE '\\'",
                          (root, _like_prefix(root)))
        return {r[1]: PhotoRow(*r[:7], bool(r[7])) for r in rows}

    def photo(self, path: str) -> PhotoRow | None:
        r = self._exec(f"SELECT {self._ROW} FROM photos WHERE path = ?", (path,)).fetchone()
        return PhotoRow(*r[:7], bool(r[7])) if r else None

    def ids_under(self, root: str) -> list[int]:
        rows = self._exec("SELECT id FROM photos WHERE path LIKE ? ESCAPE '\\'", (_like_prefix(root),))
        return [r[0] for r in rows]

    def moved_candidates(self, content_hash: str) -> list[PhotoRow]:
        """Photos with this content whose recorded file is gone: a rename or a move."""
        rows = self._exec(f"SELECT {self._ROW} FROM photos WHERE hash = ? AND embedding IS NOT NULL", (content_hash,))
        return [PhotoRow(*r[:7], bool(r[7])) for r in rows if not os.path.lexists(r[1])]

    def move_photo(self, photo_id: int, path: str, size: int, mtime_ns: int) -> None:
        self._exec("UPDATE photos SET path = ?, size = ?, mtime_ns = ?, updated_at = ? WHERE id = ?",
                   (path, size, mtime_ns, time.time(), photo_id))

    def touch_photo(self, photo_id: int, size: int, mtime_ns: int) -> None:
        self._exec("UPDATE photos SET size = ?, mtime_ns = ? WHERE id = ?", (size, mtime_ns, photo_id))

    def save_photo(self, path: str, size: int, mtime_ns: int, content_hash: str | None, width: int | None,
                   height: int | None, vector: np.ndarray | None, error: str | None = None) -> int:
        """Insert or replace the record of a file; returns its row id (kept when the path was known)."""
        status = ERROR if error else OK
        blob = to_blob(vector) if vector is not None else None
        with self.batch():
            cur = self._exec(
                "INSERT INTO photos(path, size, mtime_ns, hash, width, height, status, error, embedding, updated_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT(path) DO UPDATE SET size = excluded.size, "
                "mtime_ns = excluded.mtime_ns, hash = excluded.hash, width = excluded.width, "
                "height = excluded.height, status = excluded.status, error = excluded.error, "
                "embedding = excluded.embedding, updated_at = excluded.updated_at RETURNING id",
                (path, size, mtime_ns, content_hash, width, height, status, error, blob, time.time()),
            )
            (photo_id,) = cur.fetchone()
            if blob is not None:
                self.bump_generation()
        return photo_id

    def delete_photos(self, ids: list[int]) -> None:
        if not ids:
            return
        with self.batch():
            for chunk in _chunks(ids, 500):
                self._exec(f"DELETE FROM photos WHERE id IN ({','.join('?' * len(chunk))})", chunk)
            self.bump_generation()

    def vectors(self) -> tuple[np.ndarray, np.ndarray]:
        """(ids int64, vectors float32) of every photo that has one."""
        rows = self._exec("SELECT id, embedding FROM photos WHERE embedding IS NOT NULL ORDER BY id").fetchall()
        dim = self.dim or 0
        if not rows:
            return np.zeros(0, np.int64), np.zeros((0, dim), np.float32)
        ids = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
        vecs = np.frombuffer(b"".join(r[1] for r in rows), dtype=np.float32).reshape(len(rows), -1)
        return ids, vecs

    def vector(self, photo_id: int) -> np.ndarray | None:
        r = self._exec("SELECT embedding FROM photos WHERE id = ?", (photo_id,)).fetchone()
        return from_blob(r[0]) if r and r[0] is not None else None

    def paths(self, ids: Iterable[int]) -> dict[int, str]:
        ids = list(ids)
        out: dict[int, str] = {}
        for chunk in _chunks(ids, 500):
            rows = self._exec(f"SELECT id, path FROM photos WHERE id IN ({','.join('?' * len(chunk))})", chunk)
            out.update(dict(rows.fetchall()))
        return out

    def photo_ids(self) -> set[int]:
        """Ids of the photos that have a vector."""
        return {r[0] for r in self._exec("SELECT id FROM photos WHERE embedding IS NOT NULL")}

    def count_photos(self) -> int:
        return self._exec("SELECT count(*) FROM photos WHERE embedding IS NOT NULL").fetchone()[0]

    def errors(self) -> list[dict]:
        rows = self._exec("SELECT path, error FROM photos WHERE status = 'error' ORDER BY path")
        return [{"path": p, "reason": e} for p, e in rows]

    # ----- caption collections -------------------------------------------
    def add_collection(self, name: str, source: str, texts: list[str]) -> int:
        with self.batch():
            old = self._exec("SELECT id FROM collections WHERE name = ?", (name,)).fetchone()
            if old:
                self._exec("DELETE FROM captions WHERE collection_id = ?", (old[0],))
                self._exec("DELETE FROM collections WHERE id = ?", (old[0],))
            cur = self._exec("INSERT INTO collections(name, source, created_at) VALUES (?, ?, ?) RETURNING id",
                             (name, source, time.time()))
            (cid,) = cur.fetchone()
            with self.lock:
                self.conn.executemany("INSERT INTO captions(collection_id, text) VALUES (?, ?)",
                                      [(cid, t) for t in texts])
        return cid

    def collections(self) -> list[dict]:
        rows = self._exec(
            "SELECT c.id, c.name, c.source, count(p.id) FROM collections c LEFT JOIN captions p "
            "ON p.collection_id = c.id GROUP BY c.id ORDER BY c.name"
        )
        return [{"id": i, "name": n, "source": s, "captions": k} for i, n, s, k in rows]

    def collection_id(self, name: str) -> int | None:
        r = self._exec("SELECT id FROM collections WHERE name = ?", (name,)).fetchone()
        return r[0] if r else None

    def captions_missing_vectors(self, collection_id: int) -> list[tuple[int, str]]:
        return self._exec("SELECT id, text FROM captions WHERE collection_id = ? AND embedding IS NULL ORDER BY id",
                          (collection_id,)).fetchall()

    def set_caption_vectors(self, ids: list[int], vectors: np.ndarray) -> None:
        with self.batch():
            with self.lock:
                self.conn.executemany("UPDATE captions SET embedding = ? WHERE id = ?",
                                      [(to_blob(v), i) for i, v in zip(ids, vectors)])

    def caption_vectors(self, collection_id: int) -> tuple[np.ndarray, list[str], np.ndarray]:
        rows = self._exec("SELECT id, text, embedding FROM captions WHERE collection_id = ? AND embedding IS NOT NULL "
                          "ORDER BY id", (collection_id,)).fetchall()
        ids = np.array([r[0] for r in rows], dtype=np.int64)
        texts = [r[1] for r in rows]
        dim = self.dim or 0
        vecs = (np.frombuffer(b"".join(r[2] for r in rows), dtype=np.float32).reshape(len(rows), -1)
                if rows else np.zeros((0, dim), np.float32))
        return ids, texts, vecs


def _like_prefix(root: str) -> str:
    prefix = root.rstrip(os.sep) + os.sep
    return prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


def _chunks(seq: list, n: int) -> Iterator[list]:
    for i in range(0, len(seq), n):
        yield seq[i : i + n]
