"""A library folder: the SQLite truth, the rerank cache and the FAISS index derived from them."""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path

from engine.errors import LibraryError, ModelMismatchError
from engine.store import Store
from engine.token_cache import DEFAULT_BUDGET_BYTES, TokenCache
from engine.vector_index import EXACT_LIMIT, VectorIndex

log = logging.getLogger("picsift.library")


class Library:
    DB_NAME = "library.db"
    CACHE_NAME = "rerank_cache.db"
    INDEX_NAME = "photos.faiss"

    def __init__(self, folder: str | os.PathLike, cache_budget_bytes: int = DEFAULT_BUDGET_BYTES,
                 exact_limit: int = EXACT_LIMIT, create: bool = True):
        """create=False: open only a library that exists (a mistyped folder must not become an empty one)."""
        self.folder = Path(folder)
        if not create and not (self.folder / self.DB_NAME).is_file():
            why = "the folder holds no library" if self.folder.is_dir() else "no such folder"
            raise LibraryError(f"No library at {self.folder} ({why}); check --library or PICSIFT_HOME, "
                               "or create one with: picsift index FOLDER")
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise LibraryError(f"cannot create the library folder {self.folder}: {exc.strerror or exc}") from exc
        self.store = Store(self.folder / self.DB_NAME)
        saved = self.store.get_meta("cache_budget_bytes")
        self.tokens = TokenCache(self.folder / self.CACHE_NAME, int(saved) if saved else cache_budget_bytes)
        self.index_path = self.folder / self.INDEX_NAME
        self.exact_limit = exact_limit
        self.notices: list[str] = []
        self._index: VectorIndex | None = None
        self._index_lock = threading.Lock()

    def close(self) -> None:
        self.tokens.close()
        self.store.close()

    def __enter__(self) -> "Library":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _notice(self, msg: str) -> None:
        log.warning(msg)
        self.notices.append(msg)

    # ----- model identity ------------------------------------------------
    @property
    def model_id(self) -> str | None:
        return self.store.model_id

    def attach_model(self, model) -> bool:
        """Bind the library to a model for indexing; another model's vectors are dropped, never mixed."""
        old = self.store.model_id
        changed = self.store.set_model(model.model_id, model.dim)
        if self._index is not None and self._index.dim != model.dim:
            self._index = None  # the placeholder of a library that had no model yet
        if changed:
            self.tokens.clear()
            self._index = None
            self._drop_index_file()
            self._notice(f"The library was indexed with '{old}'; its vectors are recomputed with '{model.model_id}'.")
        return changed

    def check_model(self, model) -> None:
        """For searching: the query must be embedded by the model the photos were."""
        if self.store.model_id and self.store.model_id != model.model_id and self.store.count_photos():
            raise ModelMismatchError(
                f"This library was indexed with '{self.store.model_id}', not '{model.model_id}'. Search without "
                "--model to use the library's model, or run 'picsift index' with the new model to re-embed."
            )

    # ----- the FAISS index (derived) ---------------------------------------
    @property
    def index(self) -> VectorIndex:
        with self._index_lock:
            if self._index is None:
                self._index = self._load_or_rebuild()
            return self._index

    def _load_or_rebuild(self) -> VectorIndex:
        generation = self.store.generation()
        if self.index_path.exists():
            try:
                vi, meta = VectorIndex.load(self.index_path)
                if meta.get("generation") == generation and meta.get("model_id") == self.store.model_id:
                    return vi
                reason = "it is older than the library"
            except (OSError, ValueError, KeyError) as exc:
                reason = f"it could not be read ({exc})"
            self._notice(f"Search index rebuilt from the library database: {reason}.")
        elif self.store.count_photos():
            self._notice("Search index file missing; rebuilt from the library database.")
        return self.rebuild_index()

    def rebuild_index(self) -> VectorIndex:
        if not self.store.dim:
            # No model has been bound yet, so there are no vectors and no dimension: an empty
            # placeholder, replaced as soon as a model is attached.
            self._index = VectorIndex.empty(1)
            return self._index
        ids, vecs = self.store.vectors()
        vi = VectorIndex.build(ids, vecs, self.store.dim, exact_limit=self.exact_limit)
        self._index = vi
        self.save_index()
        return vi

    def save_index(self) -> None:
        vi = self._index
        if vi is None or not self.store.model_id:
            return
        if (vi.kind == "flat" and vi.ntotal > self.exact_limit) or (vi.kind == "ivf" and vi.ntotal < self.exact_limit // 2):
            ids, vecs = self.store.vectors()
            vi = self._index = VectorIndex.build(ids, vecs, vi.dim, exact_limit=self.exact_limit)
        try:
            vi.save(self.index_path, self.store.generation(), self.store.model_id)
        except OSError as exc:  # the index is a cache: failing to save it loses nothing
            self._notice(f"Could not save the search index ({exc.strerror or exc}); it will be rebuilt next time.")

    def _drop_index_file(self) -> None:
        for p in (self.index_path, self.index_path.with_suffix(".json")):
            try:
                p.unlink()
            except FileNotFoundError:
                pass

    def set_cache_budget(self, budget_bytes: int) -> int:
        """Keep a new rerank-cache budget with the library; returns how many cached photos it dropped."""
        self.store.set_meta("cache_budget_bytes", str(int(budget_bytes)))
        return self.tokens.set_budget(budget_bytes)

    # ----- folders -------------------------------------------------------
    def remove_folder(self, path: str) -> int:
        """Forget a library folder and its photos (the files are not touched); returns how many went."""
        ids = self.store.remove_folder(os.path.abspath(path))
        self.tokens.delete(ids)
        self.index.remove(ids)
        self.save_index()
        return len(ids)

    # ----- status --------------------------------------------------------
    def status(self) -> dict:
        errors = self.store.errors()
        return {
            "library": str(self.folder),
            "model": self.store.model_id,
            "dim": self.store.dim,
            "photos": self.store.count_photos(),
            "folders": self.store.folders(),
            "skipped": len(errors),
            "errors": errors,
            "collections": self.store.collections(),
            "rerank_cache": {"photos": self.tokens.count(), "bytes": self.tokens.size_bytes,
                             "budget_bytes": self.tokens.budget_bytes},
        }
