"""The library's truth in SQLite (through sqlite-utils): photos, folders, models, vectors, captions.

Schema 2 keys every vector by the model stage that made it and by the photo's
content hash: two files with the same content share one set of vectors, a
second model's vectors sit beside the first's, and nothing of one model is ever
read as another's. Writes that belong together go in one `batch()`
transaction, so an interrupted run leaves either all of a batch or none of it.
Each thread has its own connection (WAL lets readers work beside a writer).
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np
import sqlite_utils

from ..errors import LibraryDamagedError, LibraryError, LibraryReadOnlyError
from ..paths import folder_bounds, is_under

SCHEMA_VERSION = 2
OK, ERROR = "ok", "error"
LEGACY_PREFIX = "legacy:"


@dataclass
class PhotoRow:
    id: int
    path: str
    size: int
    mtime_ns: int
    hash: str | None
    status: str
    error: str | None
    has_vector: bool  # for the model stage it was read for


def to_blob(vec: np.ndarray) -> bytes:
    return np.ascontiguousarray(vec, dtype=np.float32).tobytes()


def from_blob(blob: bytes) -> np.ndarray:
    return np.frombuffer(blob, dtype=np.float32)


def _damaged(path: Path, exc: Exception) -> LibraryDamagedError:
    return LibraryDamagedError(
        f"The library database {path} is damaged ({exc}). Your photos are untouched: move {path.name} aside "
        f"(or delete it) and run 'picsift index' on your folders to build the library again."
    )


def _translate(path: Path, exc: sqlite3.Error, read_only: bool) -> LibraryError:
    text = str(exc).lower()
    if "readonly" in text or "read-only" in text or read_only and "attempt to write" in text:
        return LibraryReadOnlyError(
            f"The library {path.parent} is read-only: searching works, but this needs write access to it.")
    if isinstance(exc, sqlite3.DatabaseError) and any(
            w in text for w in ("malformed", "not a database", "corrupt", "disk i/o error", "file is not")):
        return _damaged(path, exc)
    return LibraryError(f"library database error in {path}: {exc}")


class Store:
    QUICK_CHECK_BYTES = 256 * 1024**2  # PRAGMA quick_check on open costs about 1.5 ms a MB on 2 cores

    def __init__(self, path: str | os.PathLike, create: bool = True, check: bool | None = None):
        """check: run PRAGMA quick_check on open; None checks databases under QUICK_CHECK_BYTES (a larger one
        is checked by `status` and by writers; damage met by any query still gives one clear error)."""
        self.path = Path(path)
        self._local = threading.local()
        self._conns: list[sqlite3.Connection] = []
        self._conns_lock = threading.Lock()
        exists = self.path.exists()
        if not exists and not create:
            raise LibraryError(f"no library at {self.path.parent}")
        self.read_only = exists and not (os.access(self.path, os.W_OK) and os.access(self.path.parent, os.W_OK))
        try:
            if not exists:
                self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = self._conn()
            if not self.read_only:
                self.db.enable_wal()
                conn.execute("PRAGMA synchronous=NORMAL")
            if check is None:
                check = not exists or self.path.stat().st_size < self.QUICK_CHECK_BYTES
            if check:
                result = conn.execute("PRAGMA quick_check").fetchone()[0]
                if result != "ok":
                    raise _damaged(self.path, sqlite3.DatabaseError(result))
            self._migrate()
        except OSError as exc:
            raise LibraryError(f"cannot open the library database {self.path}: {exc.strerror or exc}") from exc
        except sqlite3.Error as exc:
            raise _translate(self.path, exc, self.read_only) from exc

    # ----- connections ---------------------------------------------------------
    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            if self.read_only:
                # immutable: a read-only disk cannot hold the WAL's shared-memory file, and nothing writes there
                uri = f"file:{self.path}?mode=ro&immutable=1"
                conn = sqlite3.connect(uri, uri=True, check_same_thread=False, timeout=30, isolation_level=None)
            else:
                conn = sqlite3.connect(str(self.path), check_same_thread=False, timeout=30, isolation_level=None)
            self._local.conn = conn
            self._local.db = sqlite_utils.Database(conn)
            self._local.in_batch = False
            with self._conns_lock:
                self._conns.append(conn)
        return conn

    @property
    def db(self) -> sqlite_utils.Database:
        self._conn()
        return self._local.db

    @property
    def conn(self) -> sqlite3.Connection:
        return self._conn()

    def close(self) -> None:
        with self._conns_lock:
            for conn in self._conns:
                try:
                    conn.close()
                except sqlite3.Error:
                    pass
            self._conns.clear()
        self._local = threading.local()

    def _exec(self, sql: str, params: Iterable = ()) -> sqlite3.Cursor:
        try:
            return self._conn().execute(sql, tuple(params))
        except sqlite3.Error as exc:
            raise _translate(self.path, exc, self.read_only) from exc

    def _rows(self, sql: str, params: Iterable = ()) -> list[tuple]:
        try:
            return self._conn().execute(sql, tuple(params)).fetchall()
        except sqlite3.Error as exc:
            raise _translate(self.path, exc, self.read_only) from exc

    def _many(self, sql: str, rows: Iterable[tuple]) -> None:
        try:
            self._conn().executemany(sql, rows)
        except sqlite3.Error as exc:
            raise _translate(self.path, exc, self.read_only) from exc

    @contextmanager
    def batch(self) -> Iterator[None]:
        """One transaction on this thread's connection; nested calls join the outer one."""
        self._conn()
        if self._local.in_batch:
            yield
            return
        if self.read_only:
            raise _translate(self.path, sqlite3.OperationalError("attempt to write a readonly database"), True)
        self._local.in_batch = True
        self._exec("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self._exec("ROLLBACK")
            raise
        else:
            self._exec("COMMIT")
        finally:
            self._local.in_batch = False

    # ----- schema --------------------------------------------------------
    def _migrate(self) -> None:
        db = self.db
        if "meta" not in db.table_names():
            if self.read_only:
                raise LibraryError(f"{self.path} is not a picsift library")
            db["meta"].create({"key": str, "value": str}, pk="key")
        version = int(self.get_meta("schema_version", "0"))
        if version > SCHEMA_VERSION:
            raise LibraryError(
                f"this library was written by a newer picsift (schema {version}); upgrade picsift to open it")
        if version == SCHEMA_VERSION:
            if not self.read_only:
                self._create_late_table()
                self._add_taken_column()
            return
        if self.read_only:
            raise LibraryReadOnlyError(f"The library {self.path.parent} was written by an older picsift and must be "
                                       "upgraded once, which needs write access to it.")
        with self.batch():
            if version < 1:
                self._create_v1_tables()
            if version < 2:
                self._upgrade_to_v2(fresh=version == 0)
            self._create_late_table()
            self._add_taken_column()
            self.set_meta("schema_version", str(SCHEMA_VERSION))
            if self.get_meta("generation") is None:
                self.set_meta("generation", "0")

    def _create_v1_tables(self) -> None:
        db = self.db
        db["folders"].create({"id": int, "path": str, "added_at": float}, pk="id", if_not_exists=True)
        db["folders"].create_index(["path"], unique=True, if_not_exists=True)
        db["photos"].create(
            {"id": int, "path": str, "size": int, "mtime_ns": int, "hash": str, "width": int, "height": int,
             "status": str, "error": str, "embedding": bytes, "updated_at": float},
            pk="id", not_null={"path", "status"}, if_not_exists=True,
        )
        db["photos"].create_index(["path"], unique=True, if_not_exists=True)
        db["photos"].create_index(["hash"], if_not_exists=True)
        db["collections"].create({"id": int, "name": str, "source": str, "created_at": float}, pk="id",
                                 if_not_exists=True)
        db["collections"].create_index(["name"], unique=True, if_not_exists=True)
        db["captions"].create({"id": int, "collection_id": int, "text": str, "embedding": bytes}, pk="id",
                              foreign_keys=[("collection_id", "collections", "id")], if_not_exists=True)
        db["captions"].create_index(["collection_id"], if_not_exists=True)

    def _create_late_table(self) -> None:
        """LI tokens (a few KB a photo, kept for every photo: no budget), keyed like vectors. Added to schema 2
        without a version change: a picsift without LI stages never reads it, and a library opened read-only
        without it simply has no LI tokens."""
        self._exec("CREATE TABLE IF NOT EXISTS late_tokens (stage TEXT NOT NULL, hash TEXT NOT NULL, "
                   "tokens BLOB NOT NULL)")
        self._exec("CREATE UNIQUE INDEX IF NOT EXISTS late_tokens_key ON late_tokens(stage, hash)")

    def _add_taken_column(self) -> None:
        """When each photo was taken (EXIF DateTimeOriginal, else the file's time; seconds since the epoch),
        for the date filter. Added to schema 2 like the LI tokens: an older picsift ignores the column, and
        indexing fills it in for photos indexed before it existed."""
        if not self._has_taken():
            self._exec("ALTER TABLE photos ADD COLUMN taken REAL")

    def _columns(self, table: str) -> set[str]:
        return {r[1] for r in self._rows(f"PRAGMA table_info({table})")}

    def _has_taken(self) -> bool:
        """Whether photos have the date-taken column (a read-only library written before it lacks it)."""
        return "taken" in self._columns("photos")

    def _upgrade_to_v2(self, fresh: bool) -> None:
        """Vectors move out of the photo and caption rows into tables keyed by model stage; a v1 library's
        vectors are kept under a legacy key until a model with the same name is attached (no re-embedding)."""
        db = self.db
        db["models"].create({"key": str, "role": str, "name": str, "dim": int, "created_at": float}, pk="key",
                            if_not_exists=True)
        # Ordinary rowid tables: a 1 KB vector in a WITHOUT ROWID row spills to an overflow page of its own
        # (4 KB a vector on disk instead of about 1 KB).
        self._exec("CREATE TABLE IF NOT EXISTS vectors (model_key TEXT NOT NULL, hash TEXT NOT NULL, "
                   "vector BLOB NOT NULL)")
        self._exec("CREATE UNIQUE INDEX IF NOT EXISTS vectors_key ON vectors(model_key, hash)")
        self._exec("CREATE TABLE IF NOT EXISTS caption_vectors (model_key TEXT NOT NULL, caption_id INTEGER NOT NULL, "
                   "vector BLOB NOT NULL)")
        self._exec("CREATE UNIQUE INDEX IF NOT EXISTS caption_vectors_key ON caption_vectors(model_key, caption_id)")
        old_model = self.get_meta("model_id")
        if not fresh and old_model:
            key = f"{LEGACY_PREFIX}{old_model}/be"
            dim = int(self.get_meta("dim") or 0)
            self._exec("INSERT OR IGNORE INTO models(key, role, name, dim, created_at) VALUES (?, 'be', ?, ?, ?)",
                       (key, old_model, dim, time.time()))
            self._exec("INSERT OR IGNORE INTO vectors(model_key, hash, vector) SELECT ?, hash, embedding FROM photos "
                       "WHERE embedding IS NOT NULL AND hash IS NOT NULL", (key,))
            self._exec("INSERT OR IGNORE INTO caption_vectors(model_key, caption_id, vector) SELECT ?, id, embedding "
                       "FROM captions WHERE embedding IS NOT NULL", (key,))
            self.set_meta("be_model", key)
            self.set_meta("ce_model", f"{LEGACY_PREFIX}{old_model}/ce")
        db["photos"].transform(drop={"embedding"})
        db["captions"].transform(drop={"embedding"})

    # ----- meta ----------------------------------------------------------
    def get_meta(self, key: str, default: str | None = None) -> str | None:
        rows = self._rows("SELECT value FROM meta WHERE key = ?", (key,))
        return rows[0][0] if rows else default

    def set_meta(self, key: str, value: str | None) -> None:
        if value is None:
            self._exec("DELETE FROM meta WHERE key = ?", (key,))
            return
        self._exec("INSERT INTO meta(key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                   (key, value))

    def generation(self) -> int:
        """Bumped with every committed change of photos or vectors; a FAISS file records the one it matches."""
        return int(self.get_meta("generation", "0"))

    def bump_generation(self) -> int:
        with self.batch():
            self._exec("UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE key = 'generation'")
            return self.generation()

    # ----- models ----------------------------------------------------------
    @property
    def model_id(self) -> str | None:
        """The source (hub id or folder) of the model that serves search."""
        return self.get_meta("model_id")

    @property
    def be_key(self) -> str | None:
        return self.get_meta("be_model")

    @property
    def ce_key(self) -> str | None:
        return self.get_meta("ce_model")

    @property
    def dim(self) -> int | None:
        key = self.be_key
        if not key:
            return None
        return self.model_dim(key)

    def model_dim(self, key: str) -> int | None:
        rows = self._rows("SELECT dim FROM models WHERE key = ?", (key,))
        return int(rows[0][0]) if rows else None

    def register_model(self, key: str, role: str, name: str, dim: int = 0) -> None:
        self._exec("INSERT INTO models(key, role, name, dim, created_at) VALUES (?, ?, ?, ?, ?) "
                   "ON CONFLICT(key) DO UPDATE SET name = excluded.name", (key, role, name, dim, time.time()))

    def models(self) -> list[dict]:
        rows = self._rows("SELECT key, role, name, dim FROM models ORDER BY created_at")
        return [{"key": k, "role": r, "name": n, "dim": d} for k, r, n, d in rows]

    def rekey_model(self, old: str, new: str) -> None:
        """Vectors stored under a legacy key belong to `new` (a v1 library's model attached again)."""
        with self.batch():
            self._exec("UPDATE OR REPLACE vectors SET model_key = ? WHERE model_key = ?", (new, old))
            self._exec("UPDATE OR REPLACE caption_vectors SET model_key = ? WHERE model_key = ?", (new, old))
            self._exec("DELETE FROM models WHERE key = ?", (old,))
            for meta in ("be_model", "ce_model"):
                if self.get_meta(meta) == old:
                    self.set_meta(meta, new)

    def set_active(self, be_key: str, ce_key: str | None, source: str, ce_source: str | None) -> None:
        """The model that serves search from now on."""
        with self.batch():
            self.set_meta("be_model", be_key)
            self.set_meta("ce_model", ce_key)
            self.set_meta("model_id", source)
            self.set_meta("ce_source", ce_source)

    # ----- folders -------------------------------------------------------
    def add_folder(self, path: str) -> None:
        self._exec("INSERT OR IGNORE INTO folders(path, added_at) VALUES (?, ?)", (path, time.time()))

    def folders(self) -> list[str]:
        return [r[0] for r in self._rows("SELECT path FROM folders ORDER BY path")]

    def remove_folder(self, path: str) -> list[int]:
        """Forget a folder and the photos no other library folder holds; returns the removed photo ids."""
        with self.batch():
            self._exec("DELETE FROM folders WHERE path = ?", (path,))
            others = self.folders()
            ids = [pid for pid, p in self._rows(*self._under_sql("id, path", path))
                   if not any(is_under(p, f, case_sensitive=True) for f in others)]
            self.delete_photos(ids)
        return ids

    # ----- photos --------------------------------------------------------
    _ROW = "p.id, p.path, p.size, p.mtime_ns, p.hash, p.status, p.error"

    def _has_vec(self) -> str:
        return "EXISTS (SELECT 1 FROM vectors v WHERE v.model_key = ? AND v.hash = p.hash)"

    @staticmethod
    def _under_sql(columns: str, root: str) -> tuple[str, tuple]:
        lo, hi = folder_bounds(root)
        return f"SELECT {columns} FROM photos p WHERE p.path >= ? AND p.path < ?", (lo, hi)

    def photos_under(self, root: str, key: str | None) -> dict[str, PhotoRow]:
        lo, hi = folder_bounds(root)
        rows = self._rows(f"SELECT {self._ROW}, {self._has_vec()} FROM photos p WHERE p.path >= ? AND p.path < ?",
                          (key or "", lo, hi))
        return {r[1]: PhotoRow(*r[:7], bool(r[7])) for r in rows}

    def photo(self, path: str, key: str | None = None) -> PhotoRow | None:
        rows = self._rows(f"SELECT {self._ROW}, {self._has_vec()} FROM photos p WHERE p.path = ?",
                          (key or self.be_key or "", path))
        return PhotoRow(*rows[0][:7], bool(rows[0][7])) if rows else None

    def ids_under(self, root: str) -> list[int]:
        return [r[0] for r in self._rows(*self._under_sql("id", root))]

    def rows_with_hash(self, content_hash: str) -> list[tuple[int, str]]:
        return self._rows("SELECT id, path FROM photos WHERE hash = ?", (content_hash,))

    def save_photo(self, path: str, size: int, mtime_ns: int, content_hash: str | None, width: int | None,
                   height: int | None, error: str | None = None, taken: float | None = None) -> int:
        """Insert or replace the record of a file; returns its row id (kept when the path was known)."""
        status = ERROR if error else OK
        with self.batch():
            rows = self._rows(
                "INSERT INTO photos(path, size, mtime_ns, hash, width, height, status, error, updated_at, taken) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT(path) DO UPDATE SET size = excluded.size, "
                "mtime_ns = excluded.mtime_ns, hash = excluded.hash, width = coalesce(excluded.width, width), "
                "height = coalesce(excluded.height, height), status = excluded.status, error = excluded.error, "
                "updated_at = excluded.updated_at, taken = coalesce(excluded.taken, taken) RETURNING id",
                (path, size, mtime_ns, content_hash, width, height, status, error, time.time(), taken),
            )
        return rows[0][0]

    # ----- what filters read ------------------------------------------------
    def photos_missing_facts(self, limit: int = 10_000) -> list[tuple[int, str, int]]:
        """(id, path, mtime_ns) of readable photos without a date taken or a size (indexed before picsift
        recorded them, or copies whose pixels were never decoded)."""
        if not self._has_taken():
            return []
        return self._rows("SELECT id, path, mtime_ns FROM photos WHERE status = ? AND (taken IS NULL OR width IS NULL "
                          "OR height IS NULL) LIMIT ?", (OK, limit))

    def set_facts(self, rows: Sequence[tuple[int, int | None, int | None, float | None]]) -> None:
        """(id, width, height, taken) of photos; a None keeps what is there."""
        with self.batch():
            self._many("UPDATE photos SET width = coalesce(?, width), height = coalesce(?, height), "
                                  "taken = coalesce(?, taken) WHERE id = ?", [(w, h, t, i) for i, w, h, t in rows])

    def filter_ids(self, filters) -> list[int]:
        """Ids of readable photos that pass a search's filters (engine.search.filters.Filters)."""
        where, args = ["status = ?"], [OK]
        if filters.folder:
            lo, hi = folder_bounds(filters.folder)
            where.append("path >= ? AND path < ?")
            args += [lo, hi]
        if filters.taken_from is not None or filters.taken_to is not None:
            if not self._has_taken():
                return []  # a read-only library written before dates were kept
            if filters.taken_from is not None:
                where.append("taken >= ?")
                args.append(filters.taken_from)
            if filters.taken_to is not None:
                where.append("taken < ?")
                args.append(filters.taken_to)
        if filters.types:
            where.append("(" + " OR ".join("lower(path) LIKE ?" for _ in filters.types) + ")")
            args += [f"%.{t}" for t in filters.types]
        if filters.orientation:
            # square: sides within 2% of each other
            sql = {"landscape": "width > height * 1.02", "portrait": "height > width * 1.02",
                   "square": "width <= height * 1.02 AND height <= width * 1.02"}[filters.orientation]
            where.append(f"width IS NOT NULL AND height IS NOT NULL AND {sql}")
        return [r[0] for r in self._rows(f"SELECT id FROM photos WHERE {' AND '.join(where)}", tuple(args))]

    def photo_details(self) -> list[tuple]:
        """(id, path, size, width, height, taken, hash) of every readable photo (the duplicate finder)."""
        taken = "taken" if self._has_taken() else "NULL"
        return self._rows(f"SELECT id, path, size, width, height, {taken}, hash FROM photos "
                          "WHERE status = ? AND hash IS NOT NULL ORDER BY id", (OK,))

    def photo_info(self, path: str) -> dict | None:
        """What a preview shows of an indexed photo: bytes, width, height, when taken; None when unknown."""
        taken = "taken" if self._has_taken() else "NULL"
        rows = self._rows(f"SELECT size, width, height, {taken} FROM photos WHERE path = ?", (path,))
        if not rows:
            return None
        size, w, h, t = rows[0]
        return {"bytes": size, "width": w, "height": h, "taken": t}

    def taken(self, ids: Sequence[int]) -> dict[int, float | None]:
        """When each photo was taken, by id."""
        out: dict[int, float | None] = {}
        if not self._has_taken():
            return {i: None for i in ids}
        ids = list(ids)
        for a in range(0, len(ids), 500):
            chunk = ids[a:a + 500]
            out.update(self._rows(f"SELECT id, taken FROM photos WHERE id IN ({','.join('?' * len(chunk))})",
                                  tuple(chunk)))
        return out

    def move_photo(self, photo_id: int, path: str, size: int, mtime_ns: int) -> None:
        self._exec("UPDATE photos SET path = ?, size = ?, mtime_ns = ?, updated_at = ? WHERE id = ?",
                   (path, size, mtime_ns, time.time(), photo_id))

    def touch_photo(self, photo_id: int, size: int, mtime_ns: int) -> None:
        self._exec("UPDATE photos SET size = ?, mtime_ns = ? WHERE id = ?", (size, mtime_ns, photo_id))

    def delete_photos(self, ids: Sequence[int]) -> None:
        if not ids:
            return
        with self.batch():
            for chunk in _chunks(list(ids), 500):
                self._exec(f"DELETE FROM photos WHERE id IN ({','.join('?' * len(chunk))})", chunk)

    # ----- vectors ---------------------------------------------------------
    def put_vectors(self, key: str, items: Iterable[tuple[str, np.ndarray]]) -> None:
        with self.batch():
            self._many("INSERT OR REPLACE INTO vectors(model_key, hash, vector) VALUES (?, ?, ?)",
                       [(key, h, to_blob(v)) for h, v in items])

    def hashes_with_vectors(self, key: str, hashes: Iterable[str]) -> set[str]:
        hashes = [h for h in hashes if h]
        out: set[str] = set()
        for chunk in _chunks(hashes, 500):
            out.update(r[0] for r in self._rows(
                f"SELECT hash FROM vectors WHERE model_key = ? AND hash IN ({','.join('?' * len(chunk))})",
                (key, *chunk)))
        return out

    def vectors_by_hash(self, key: str, hashes: Iterable[str]) -> dict[str, np.ndarray]:
        out: dict[str, np.ndarray] = {}
        for chunk in _chunks([h for h in hashes if h], 500):
            out.update((h, from_blob(b)) for h, b in self._rows(
                f"SELECT hash, vector FROM vectors WHERE model_key = ? AND hash IN ({','.join('?' * len(chunk))})",
                (key, *chunk)))
        return out

    def vectors(self, key: str | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(photo ids int64, vectors float32) of every photo with a vector of this model stage."""
        key = key or self.be_key or ""
        rows = self._rows("SELECT p.id, v.vector FROM photos p JOIN vectors v ON v.hash = p.hash AND v.model_key = ? "
                          "WHERE p.status = 'ok' ORDER BY p.id", (key,))
        dim = self.model_dim(key) or 0
        if not rows:
            return np.zeros(0, np.int64), np.zeros((0, dim), np.float32)
        ids = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
        vecs = np.frombuffer(b"".join(r[1] for r in rows), dtype=np.float32).reshape(len(rows), -1)
        return ids, vecs

    def iter_vectors(self, key: str | None = None, chunk: int = 100_000) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """`vectors` in chunks of at most `chunk` photos, in id order, never all in memory."""
        key = key or self.be_key or ""
        after = -1
        while True:
            rows = self._rows("SELECT p.id, v.vector FROM photos p JOIN vectors v ON v.hash = p.hash AND "
                              "v.model_key = ? WHERE p.status = 'ok' AND p.id > ? ORDER BY p.id LIMIT ?",
                              (key, after, chunk))
            if not rows:
                return
            ids = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
            yield ids, np.frombuffer(b"".join(r[1] for r in rows), dtype=np.float32).reshape(len(rows), -1)
            after = int(ids[-1])

    def vector(self, photo_id: int, key: str | None = None) -> np.ndarray | None:
        rows = self._rows("SELECT v.vector FROM photos p JOIN vectors v ON v.hash = p.hash AND v.model_key = ? "
                          "WHERE p.id = ?", (key or self.be_key or "", photo_id))
        return from_blob(rows[0][0]) if rows else None

    def sweep_vectors(self) -> int:
        """Drop vectors (and LI tokens) no photo has any more (their files were deleted); returns how many
        vectors went."""
        with self.batch():
            cur = self._exec("DELETE FROM vectors WHERE hash NOT IN (SELECT hash FROM photos WHERE hash IS NOT NULL)")
            gone = cur.rowcount
            if self._has_late_table():
                self._exec("DELETE FROM late_tokens WHERE hash NOT IN (SELECT hash FROM photos WHERE hash IS NOT NULL)")
            return gone

    # ----- cluster shards -----------------------------------------------------
    def shards_merged(self, names: Iterable[str]) -> set[str]:
        """Which of these cluster-job shards (engine.cluster) were merged into the library already."""
        if not self._rows("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'merged_shards'"):
            return set()
        out: set[str] = set()
        for chunk in _chunks(list(names), 500):
            out.update(r[0] for r in self._rows(
                f"SELECT name FROM merged_shards WHERE name IN ({','.join('?' * len(chunk))})", chunk))
        return out

    def mark_shard_merged(self, name: str, photos: int) -> None:
        """Record a merged shard (its name is its content's hash), so that merging it again does nothing. Added
        to schema 2 like the LI tokens: created by the first cluster merge."""
        with self.batch():
            self._exec("CREATE TABLE IF NOT EXISTS merged_shards (name TEXT PRIMARY KEY, photos INTEGER NOT NULL, "
                       "merged_at REAL NOT NULL)")
            self._exec("INSERT OR REPLACE INTO merged_shards(name, photos, merged_at) VALUES (?, ?, ?)",
                       (name, int(photos), time.time()))

    # ----- LI tokens --------------------------------------------------------
    def _has_late_table(self) -> bool:
        return bool(self._rows("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'late_tokens'"))

    def put_late_tokens(self, stage: str, items: Iterable[tuple[str, bytes]]) -> None:
        with self.batch():
            self._many("INSERT OR REPLACE INTO late_tokens(stage, hash, tokens) VALUES (?, ?, ?)",
                       [(stage, h, b) for h, b in items])

    def late_tokens(self, stage: str, hashes: Iterable[str]) -> dict[str, bytes]:
        """The stored LI tokens (encoded, engine.models.late) of content hashes that have them."""
        if not self._has_late_table():
            return {}
        out: dict[str, bytes] = {}
        for chunk in _chunks([h for h in hashes if h], 500):
            out.update(self._rows(
                f"SELECT hash, tokens FROM late_tokens WHERE stage = ? AND hash IN ({','.join('?' * len(chunk))})",
                (stage, *chunk)))
        return out

    def late_hashes(self, stage: str) -> set[str]:
        if not self._has_late_table():
            return set()
        return {r[0] for r in self._rows("SELECT hash FROM late_tokens WHERE stage = ?", (stage,))}

    def late_bytes(self, stage: str) -> tuple[int, int]:
        """(photos, bytes) of one LI stage's stored tokens."""
        if not self._has_late_table():
            return 0, 0
        n, size = self._rows("SELECT count(*), coalesce(sum(length(tokens)), 0) FROM late_tokens WHERE stage = ?",
                             (stage,))[0]
        return int(n), int(size)

    def paths(self, ids: Iterable[int]) -> dict[int, str]:
        return dict(self._by_ids("path", ids))

    def hashes(self, ids: Iterable[int]) -> dict[int, str]:
        return {i: h for i, h in self._by_ids("hash", ids) if h}

    def _by_ids(self, column: str, ids: Iterable[int]) -> list[tuple]:
        out: list[tuple] = []
        for chunk in _chunks([int(i) for i in ids], 500):
            out += self._rows(f"SELECT id, {column} FROM photos WHERE id IN ({','.join('?' * len(chunk))})", chunk)
        return out

    def photo_ids(self, key: str | None = None) -> set[int]:
        """Ids of the photos that have a vector of this model stage."""
        return {r[0] for r in self._rows(
            "SELECT p.id FROM photos p WHERE p.status = 'ok' AND " + self._has_vec(), (key or self.be_key or "",))}

    def all_hashes(self) -> set[str]:
        return {r[0] for r in self._rows("SELECT DISTINCT hash FROM photos WHERE hash IS NOT NULL")}

    def count_photos(self, key: str | None = None) -> int:
        """Readable photos that have a vector of this model stage (default: the one serving search)."""
        return self._rows("SELECT count(*) FROM photos p WHERE p.status = 'ok' AND " + self._has_vec(),
                          (key or self.be_key or "",))[0][0]

    def count_readable(self) -> int:
        return self._rows("SELECT count(*) FROM photos WHERE status = 'ok'")[0][0]

    def errors(self) -> list[dict]:
        rows = self._rows("SELECT path, error FROM photos WHERE status = 'error' ORDER BY path")
        return [{"path": p, "reason": e} for p, e in rows]

    # ----- caption collections -------------------------------------------
    def add_collection(self, name: str, source: str, texts: list[str]) -> int:
        with self.batch():
            old = self._rows("SELECT id FROM collections WHERE name = ?", (name,))
            if old:
                self._exec("DELETE FROM caption_vectors WHERE caption_id IN "
                           "(SELECT id FROM captions WHERE collection_id = ?)", (old[0][0],))
                self._exec("DELETE FROM captions WHERE collection_id = ?", (old[0][0],))
                self._exec("DELETE FROM collections WHERE id = ?", (old[0][0],))
            cid = self.db["collections"].insert({"name": name, "source": source, "created_at": time.time()}).last_pk
            self.db["captions"].insert_all(({"collection_id": cid, "text": t} for t in texts), batch_size=1000)
        return cid

    def collections(self) -> list[dict]:
        rows = self._rows(
            "SELECT c.id, c.name, c.source, count(p.id) FROM collections c LEFT JOIN captions p "
            "ON p.collection_id = c.id GROUP BY c.id ORDER BY c.name"
        )
        return [{"id": i, "name": n, "source": s, "captions": k} for i, n, s, k in rows]

    def collection_id(self, name: str) -> int | None:
        rows = self._rows("SELECT id FROM collections WHERE name = ?", (name,))
        return rows[0][0] if rows else None

    def collection_created(self, collection_id: int) -> float | None:
        rows = self._rows("SELECT created_at FROM collections WHERE id = ?", (collection_id,))
        return rows[0][0] if rows else None

    def captions_missing_vectors(self, collection_id: int, key: str) -> list[tuple[int, str]]:
        return self._rows("SELECT c.id, c.text FROM captions c WHERE c.collection_id = ? AND NOT EXISTS "
                          "(SELECT 1 FROM caption_vectors v WHERE v.model_key = ? AND v.caption_id = c.id) ORDER BY c.id",
                          (collection_id, key))

    def set_caption_vectors(self, key: str, ids: list[int], vectors: np.ndarray) -> None:
        with self.batch():
            self._many("INSERT OR REPLACE INTO caption_vectors(model_key, caption_id, vector) VALUES (?, ?, ?)",
                       [(key, int(i), to_blob(v)) for i, v in zip(ids, vectors)])

    def caption_vectors(self, collection_id: int, key: str) -> tuple[np.ndarray, list[str], np.ndarray]:
        rows = self._rows("SELECT c.id, c.text, v.vector FROM captions c JOIN caption_vectors v ON v.caption_id = c.id "
                          "AND v.model_key = ? WHERE c.collection_id = ? ORDER BY c.id", (key, collection_id))
        ids = np.array([r[0] for r in rows], dtype=np.int64)
        texts = [r[1] for r in rows]
        dim = self.model_dim(key) or 0
        vecs = (np.frombuffer(b"".join(r[2] for r in rows), dtype=np.float32).reshape(len(rows), -1)
                if rows else np.zeros((0, dim), np.float32))
        return ids, texts, vecs


def _chunks(seq: list, n: int) -> Iterator[list]:
    for i in range(0, len(seq), n):
        yield seq[i : i + n]
