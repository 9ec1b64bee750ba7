"""A library folder: the SQLite truth, the rerank cache, and a FAISS index per bi-encoder derived from them."""

from __future__ import annotations

import hashlib
import logging
import os
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Sequence

from .errors import LibraryError, ModelMismatchError
from .store.database import LEGACY_PREFIX, Store
from .store.photo_text import PhotoText
from .token_cache import DEFAULT_BUDGET_BYTES, TokenCache
from .search.vector_index import EXACT_LIMIT, ONDISK_LIMIT, ONDISK_MIN, VectorIndex

log = logging.getLogger("picsift.library")


class Library:
    DB_NAME = "library.db"
    CACHE_NAME = "rerank_cache.db"
    LEGACY_INDEX_NAME = "photos.faiss"

    def __init__(self, folder: str | os.PathLike, cache_budget_bytes: int = DEFAULT_BUDGET_BYTES,
                 exact_limit: int = EXACT_LIMIT, create: bool = True, check: bool | None = None,
                 ondisk_limit: int = ONDISK_LIMIT):
        """create=False: open only a library that exists (a mistyped folder must not become an empty one).
        Past `ondisk_limit` photos the search index keeps its lists on disk (VectorIndex.build_ondisk)."""
        self.folder = Path(folder)
        if not create and not (self.folder / self.DB_NAME).is_file():
            why = "the folder holds no library" if self.folder.is_dir() else "no such folder"
            raise LibraryError(f"No library at {self.folder} ({why}); check --library or PICSIFT_HOME, "
                               "or create one with: picsift index FOLDER")
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise LibraryError(f"cannot create the library folder {self.folder}: {exc.strerror or exc}") from exc
        self.store = Store(self.folder / self.DB_NAME, check=check)
        self.read_only = self.store.read_only
        self.text = PhotoText(self.store)  # the words read in photos
        saved = self.store.get_meta("cache_budget_bytes")
        self.tokens = TokenCache(self.folder / self.CACHE_NAME, int(saved) if saved else cache_budget_bytes,
                                 read_only=self.read_only)
        self.exact_limit = exact_limit
        self.ondisk_limit = ondisk_limit
        self.notices: list[str] = list(self.tokens.notices) + self.text.notices
        self._indexes: dict[str, VectorIndex] = {}
        self._index_lock = threading.Lock()
        self._deferred: set[str] = set()  # keys whose index is rebuilt after bulk changes (`deferring_index`)
        if not self.read_only:
            for name in (self.LEGACY_INDEX_NAME, "photos.json"):  # schema 1's index file: rebuilt per model now
                try:
                    (self.folder / name).unlink()
                except FileNotFoundError:
                    pass

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

    # ----- models ----------------------------------------------------------
    @property
    def model_id(self) -> str | None:
        """The source of the model serving search (hub id or folder)."""
        return self.store.model_id

    def recognise(self, cascade) -> None:
        """A schema-1 library's vectors and cache belong to this model when it has the same name and width:
        keep them (no re-embedding)."""
        legacy = f"{LEGACY_PREFIX}{cascade.source}/be"
        if self.read_only or legacy not in {m["key"] for m in self.store.models()}:
            return
        if self.store.model_dim(legacy) not in (None, 0, cascade.dim):
            return
        self.store.rekey_model(legacy, cascade.be.key)
        self.store.rekey_model(f"{LEGACY_PREFIX}{cascade.source}/ce", cascade.ce.key if cascade.ce else "")
        self.store.register_model(cascade.be.key, "be", cascade.source, cascade.dim)
        if cascade.ce is not None:
            ids, _ = self.store.vectors(cascade.be.key)
            self.tokens.adopt_v1(self.store.hashes(ids.tolist()), cascade.ce.key)
        self.store.bump_generation()

    def attach_model(self, cascade) -> str | None:
        """Register a cascade's stages for indexing. Vectors of other models stay (the active one keeps serving
        search until this one has embedded every photo). Returns a notice when search will switch."""
        self.recognise(cascade)
        self.store.register_model(cascade.be.key, "be", cascade.source, cascade.dim)
        for r in cascade.rerankers:
            self.store.register_model(r.key, "ce", r.name)
        li = getattr(cascade, "li", None)
        if li is not None:
            self.store.register_model(li.key, "li", li.name, li.feature_shape[1])
        active = self.store.be_key
        if active is None:
            self.activate(cascade)
            return None
        if active != cascade.be.key:
            msg = (f"The library is searched with '{self.store.model_id}'; its photos are now embedded with "
                   f"'{cascade.source}' as well, which takes over search once every photo has its vector. "
                   "Nothing of one model is mixed with the other's.")
            self._notice(msg)
            return msg
        if (cascade.ce.key if cascade.ce else None) != self.store.ce_key or (li.key if li else None) != self.li_key:
            self.activate(cascade)  # same BE, another CE or LI head: search uses them from now on
        return None

    def activate(self, cascade) -> None:
        li = getattr(cascade, "li", None)
        with self.store.batch():
            self.store.set_active(cascade.be.key, cascade.ce.key if cascade.ce else None, cascade.source,
                                  cascade.ce_source)
            self.store.set_meta("li_model", li.key if li is not None else None)
            # the token layout the rerank cache holds (a shrunk CE reads a pooled grid), shown by status
            self.store.set_meta("ce_layout", getattr(cascade.ce, "layout", None) if cascade.ce else None)
        if cascade.ce is not None:
            self.tokens.keep_stage(cascade.ce.key)  # another CE's tokens would only hold the budget

    @property
    def li_key(self) -> str | None:
        """The LI stage serving search (its tokens are stored for every photo), None when there is none."""
        return self.store.get_meta("li_model")

    def coverage(self, key: str) -> tuple[int, int]:
        """(photos with a vector of this BE, readable photos)."""
        return self.store.count_photos(key), self.store.count_readable()

    def check_model(self, cascade) -> None:
        """For searching: the query must be embedded by the model the photos were."""
        self.recognise(cascade)
        key = cascade.be.key
        if key == self.store.be_key:
            return  # the model serving search: nothing to count (a search's usual case)
        done, readable = self.coverage(key)
        if readable == 0 or done == readable:
            return
        active = self.store.model_id
        if done == 0:
            raise ModelMismatchError(
                f"This library was indexed with '{active}', not '{cascade.source}'. Search without --model to use "
                f"the library's model, or run 'picsift index --model {cascade.source}' to embed its photos with it.")
        raise ModelMismatchError(
            f"'{cascade.source}' has embedded {done} of {readable} photos so far; run 'picsift index --model "
            f"{cascade.source}' to finish, or search without --model to use '{active}'.")

    # ----- the FAISS index (derived) ---------------------------------------
    def index_path(self, key: str) -> Path:
        return self.folder / f"index-{hashlib.blake2b(key.encode(), digest_size=8).hexdigest()}.faiss"

    @property
    def index(self) -> VectorIndex:
        """The index of the bi-encoder serving search."""
        return self.index_for(self.store.be_key)

    def index_for(self, key: str | None) -> VectorIndex:
        """The FAISS index of a bi-encoder, brought up to date with the database (another process may have
        changed it): loaded from its file when that matches the database's generation, else rebuilt."""
        with self._index_lock:
            generation = self.store.generation()
            vi = self._indexes.get(key or "")
            if vi is not None and (vi.generation == generation or (key or "") in self._deferred):
                return vi  # while a bulk merge defers it, searches keep the index as it was before the merge
            vi = self._load_or_rebuild(key, generation, reloading=vi is not None)
            self._indexes[key or ""] = vi
            return vi

    def _load_or_rebuild(self, key: str | None, generation: int, reloading: bool) -> VectorIndex:
        dim = self.store.model_dim(key) if key else None
        if not dim:
            # No model has vectors here yet: an empty placeholder, replaced when one is attached.
            vi = VectorIndex.empty(1)
            vi.generation = vi.saved_generation = generation
            return vi
        path = self.index_path(key)
        if path.exists():
            try:
                vi, meta = VectorIndex.load(path)
                if meta.get("generation") == generation and meta.get("model_id") == key:
                    vi.generation = vi.saved_generation = generation
                    return vi
                reason = "it is older than the library"
            except (OSError, ValueError, KeyError) as exc:
                reason = f"it could not be used ({exc})"
            if not reloading:
                self._notice(f"Search index rebuilt from the library database: {reason}.")
        elif self.store.count_photos(key) and not reloading:
            self._notice("Search index file missing; rebuilt from the library database.")
        return self._build(key, generation, save=True)

    def _build(self, key: str, generation: int, save: bool) -> VectorIndex:
        n = self.store.count_photos(key)
        if n > max(self.ondisk_limit, ONDISK_MIN - 1) and not self.read_only:
            # Millions of photos: streamed from the database in chunks into lists on disk, beside the index file
            vi = VectorIndex.build_ondisk(self.folder, self.index_path(key).stem, lambda: self.store.iter_vectors(key),
                                          n, self.store.model_dim(key), exact_limit=self.exact_limit,
                                          calibration_queries=self._text_queries(key))
            vi.generation, vi.saved_generation = generation, None
            self._save(key, vi)  # its build's files are on disk already: the description must name them
            return vi
        ids, vecs = self.store.vectors(key)
        vi = VectorIndex.build(ids, vecs, self.store.model_dim(key), exact_limit=self.exact_limit,
                               calibration_queries=self._text_queries(key) if len(ids) > self.exact_limit else None)
        vi.generation, vi.saved_generation = generation, None
        if save:
            self._save(key, vi)
        return vi

    def _text_queries(self, key: str):
        """Real text embeddings of this bi-encoder (a caption collection's), to calibrate an approximate index
        where queries really sit (away from the photos: the modality gap); None when there are too few."""
        best = None
        for c in self.store.collections():
            _, _, vecs = self.store.caption_vectors(c["id"], key)
            if len(vecs) >= 200 and (best is None or len(vecs) > len(best)):
                best = vecs
        return best

    def verify_index(self, key: str) -> bool:
        """Check the index of `key` holds exactly the photos the database has vectors for; rebuild it when not.
        Returns True when it had to be rebuilt."""
        vi = self.index_for(key)
        if vi.ntotal == self.store.count_photos(key):  # the rows the index is built from, counted, not read
            return False
        self._notice("The search index did not match the library database; it was rebuilt.")
        self.rebuild_index(key)
        return True

    # ----- writing ------------------------------------------------------------
    def write_lock(self, command: str | None = None):
        """The library's write lock: one writer at a time across processes; readers never take it."""
        from .lock import LibraryLock

        return LibraryLock(self.folder, command)

    def rebuild_index(self, key: str | None = None) -> VectorIndex:
        key = key or self.store.be_key
        with self._index_lock:
            vi = self._build(key, self.store.generation(), save=True) if key else VectorIndex.empty(1)
            self._indexes[key or ""] = vi
            return vi

    def save_index(self, key: str | None = None) -> None:
        """Write an index that changed since it was loaded, only when it matches the database exactly."""
        key = key or self.store.be_key
        with self._index_lock:
            vi = self._indexes.get(key or "")
            if vi is None or not key or vi.generation != self.store.generation():
                return  # stale (another writer moved on): it is rebuilt on next use, never saved as current
            if vi.saved_generation == vi.generation:
                return  # nothing changed: the file on disk is this index
            reason = vi.rebuild_reason(exact_limit=self.exact_limit, ondisk_limit=self.ondisk_limit)
            if reason:
                log.info("search index rebuilt: %s", reason)
                vi = self._indexes[key] = self._build(key, vi.generation, save=False)
            self._save(key, vi)

    def _save(self, key: str, vi: VectorIndex) -> None:
        if self.read_only:
            return
        try:
            vi.save(self.index_path(key), vi.generation, key)
            vi.saved_generation = vi.generation
        except OSError as exc:  # the index is a cache: failing to save it loses nothing
            self._notice(f"Could not save the search index ({exc.strerror or exc}); it will be rebuilt next time.")

    @contextmanager
    def deferring_index(self, key: str) -> Iterator[None]:
        """Bulk changes (a cluster job's merge of millions of photos): the index of `key` is not kept up to date
        batch by batch, where its in-memory changes would outgrow the machine; it is rebuilt once from the
        database (on disk past `ondisk_limit`) and saved when they are done, if any were made."""
        self._deferred.add(key)
        before = self.store.generation()
        try:
            yield
        finally:
            self._deferred.discard(key)
            with self._index_lock:
                self._indexes.pop(key, None)
        if self.store.generation() != before and not self.read_only:
            self.rebuild_index(key)

    @contextmanager
    def changing(self, key: str | None) -> Iterator[VectorIndex | None]:
        """One batch of changes to photos and vectors: the database transaction, and the same changes made
        to the in-memory index of `key`, which then matches the new generation (or is marked stale). While
        `deferring_index(key)`, the index is left alone (what is yielded takes the changes and drops them)."""
        if key in self._deferred:
            with self.store.batch():
                yield _DROPPED
                self.store.bump_generation()
            return
        vi = self.index_for(key) if key else None
        try:
            with self.store.batch():
                before = self.store.generation()
                yield vi
                after = self.store.bump_generation()
        except BaseException:
            if vi is not None:
                vi.generation = -1  # it may hold changes the database rolled back: rebuild on next use
            raise
        if vi is not None:
            vi.generation = after if vi.generation == before else -1

    # ----- maintenance -------------------------------------------------------
    def set_cache_budget(self, budget_bytes: int) -> int:
        """Keep a new rerank-cache budget with the library; returns how many cached photos it dropped."""
        self.store.set_meta("cache_budget_bytes", str(int(budget_bytes)))
        return self.tokens.set_budget(budget_bytes)

    def photo_info(self, path: str) -> dict | None:
        """What a preview shows of an indexed photo: bytes, width, height, when taken, and the words read in
        it ("" when none were found, None when it was not read); None when the photo is not in the library."""
        info = self.store.photo_info(path)
        if info is None:
            return None
        row = self.store.photo(path)
        info["text"] = self.text.reading(row.hash) if row is not None and row.hash else None
        return info

    # ----- how photos are read (kept with the library) --------------------------
    RAW_WITH_JPEG = ("one", "both")

    @property
    def raw_with_jpeg(self) -> str:
        """'one': a camera RAW beside a JPEG of the same name is one photo, the JPEG (the default, as people
        shooting RAW+JPEG expect); 'both': each file is a photo."""
        value = self.store.get_meta("raw_with_jpeg")
        return value if value in self.RAW_WITH_JPEG else "one"

    def set_raw_with_jpeg(self, value: str) -> None:
        if value not in self.RAW_WITH_JPEG:
            raise ValueError(f"raw_with_jpeg is one of {', '.join(self.RAW_WITH_JPEG)}, not '{value}'")
        self.store.set_meta("raw_with_jpeg", value)

    @property
    def text_languages(self) -> str | None:
        """The Tesseract languages the photos' text is read in ('eng', 'eng+deu'), or None when the library
        reads no text (turned off)."""
        value = self.store.get_meta("text_languages")
        if value == "off":
            return None
        return value or "eng"

    def set_text_languages(self, value: str | None) -> None:
        """'eng+deu' and the like, or None to read no text in photos."""
        self.store.set_meta("text_languages", value or "off")

    def forget_paths(self, paths: Sequence[str]) -> int:
        """Take photos out of the library by path (files moved to the trash): rows, vectors and cached
        features of content no other photo has; returns how many rows went."""
        return self._forget("picsift: removing photos",
                            lambda: [row.id for row in (self.store.photo(p) for p in paths) if row is not None])

    def _forget(self, command: str, select) -> int:
        """Delete the photos `select()` names, in one write: their rows, FAISS entries, and the vectors, LI
        tokens and cached features of content no photo has any more; returns how many rows went. select runs
        inside the transaction (what it writes commits with the deletion)."""
        key = self.store.be_key
        with self.write_lock(command).acquire(timeout=60), self.changing(key) as vi:
            ids = select()
            self.store.delete_photos(ids)
            if vi is not None:
                vi.remove(ids)
            self.store.sweep_vectors()
            self.text.sweep()
        self.tokens.keep_only(self.store.all_hashes())
        self.save_index(key)
        return len(ids)

    def _strings(self, name: str) -> list[str]:
        """A list of texts kept in the library's meta table as JSON (excluded folders, recent queries)."""
        import json

        try:
            value = json.loads(self.store.get_meta(name) or "[]")
        except ValueError:
            return []
        return [v for v in value if isinstance(v, str)] if isinstance(value, list) else []

    def _set_strings(self, name: str, values: Sequence[str]) -> None:
        import json

        self.store.set_meta(name, json.dumps(list(values), ensure_ascii=False) if values else None)

    # ----- excluded folders -------------------------------------------------
    def excluded_folders(self) -> list[str]:
        """Folders indexing does not walk (besides the built-in junk list), as the user gave them."""
        return self._strings("excluded_folders")

    def exclude_folder(self, path: str) -> int:
        """Stop indexing a folder: it joins the excluded list and the photos under it leave the library
        (the files are not touched). Returns how many photos left."""
        from .paths import normalize_path

        folder = normalize_path(path)

        def select() -> list[int]:
            excluded = self.excluded_folders()
            if folder not in excluded:
                self._set_strings("excluded_folders", excluded + [folder])
            return self.store.ids_under(folder)

        return self._forget("picsift: excluding a folder", select)

    def include_folder(self, path: str) -> bool:
        """Take a folder off the excluded list (the next index walks it again); False when it was not there."""
        from .paths import normalize_path

        folder = normalize_path(path)
        excluded = self.excluded_folders()
        if folder not in excluded:
            return False
        self._set_strings("excluded_folders", [p for p in excluded if p != folder])
        return True

    # ----- recent queries -------------------------------------------------
    RECENT_LIMIT = 50

    def recent_queries(self) -> list[str]:
        """The library's recent queries, newest first (what the search field offers)."""
        return self._strings("recent_queries")

    def remember_query(self, query: str) -> None:
        """Put a query first among the recent ones (once; at most RECENT_LIMIT kept). A read-only library
        keeps none."""
        query = " ".join(query.split())
        if not query or self.read_only:
            return
        recent = [query] + [q for q in self.recent_queries() if q != query]
        self._set_strings("recent_queries", recent[: self.RECENT_LIMIT])

    def clear_recent_queries(self) -> None:
        if not self.read_only:
            self._set_strings("recent_queries", [])

    def remove_folder(self, path: str) -> int:
        """Forget a library folder and the photos no other library folder holds (files are not touched)."""
        from .paths import normalize_path

        key = self.store.be_key
        with self.write_lock("picsift: removing a folder").acquire(timeout=60), self.changing(key) as vi:
            ids = self.store.remove_folder(normalize_path(path))
            if vi is not None:
                vi.remove(ids)
        self.tokens.keep_only(self.store.all_hashes())
        self.save_index(key)
        return len(ids)

    # ----- status --------------------------------------------------------
    def _late_status(self) -> dict | None:
        key = self.li_key
        if not key:
            return None
        photos, size = self.store.late_bytes(key)
        return {"key": key, "photos": photos, "bytes": size}

    def status(self) -> dict:
        errors = self.store.errors()
        readable = self.store.count_readable()
        models = []
        for m in self.store.models():
            if m["role"] == "be":
                models.append({"key": m["key"], "name": m["name"], "photos": self.store.count_photos(m["key"]),
                               "active": m["key"] == self.store.be_key})
        ce = self.store.ce_key
        return {
            "library": str(self.folder),
            "model": self.store.model_id,
            "ce_model": self.store.get_meta("ce_source"),
            "dim": self.store.dim,
            "photos": self.store.count_photos(),
            "readable": readable,
            "models": models,
            "folders": self.store.folders(),
            "skipped": len(errors),
            "errors": errors,
            "collections": self.store.collections(),
            "read_only": self.read_only,
            "rerank_cache": {"photos": self.tokens.count(ce) if ce else 0, "bytes": self.tokens.size_bytes,
                             "budget_bytes": self.tokens.budget_bytes, "layout": self.store.get_meta("ce_layout")},
            "late_interaction": self._late_status(),
            "text_in_photos": self._text_status(),
            "raw_with_jpeg": self.raw_with_jpeg,
        }

    def _text_status(self) -> dict:
        read, with_words = self.text.count()
        return {"languages": self.text_languages, "read": read, "with_text": with_words}


class _Dropped:
    """Takes an index's changes while it is deferred, and drops them: the index is rebuilt afterwards."""

    def add(self, ids, vectors) -> None:
        pass

    def remove(self, ids) -> None:
        pass


_DROPPED = _Dropped()
