"""Indexing photo folders: a generator of progress records, checked for cancel between batches.

Unchanged files (size, mtime) are skipped; a renamed or moved file is known by
its content hash and keeps its vectors; a changed file is embedded again; a
deleted one leaves the library. Each batch is one transaction, so an
interrupted run resumes where it stopped. Bad files are recorded with their
reason and never stop the run.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Iterator, Sequence

import numpy as np

from engine.errors import ImageError
from engine.imaging import decode, read_file
from engine.jobs import CancelToken
from engine.library import Library
from engine.scanner import FileEntry, scan
from engine.token_cache import FORMATS, format_for


@dataclass
class IndexProgress:
    phase: str  # "scanning", "indexing", "finishing", "done" or "cancelled"
    done: int = 0  # files of this run's work handled so far
    total: int = 0  # files this run has to look at (new, changed or not yet indexed)
    current: str | None = None
    embedded: int = 0
    moved: int = 0
    unchanged: int = 0
    removed: int = 0
    skipped: int = 0
    rate: float = 0.0  # files per second
    eta_s: float | None = None
    messages: list[str] = field(default_factory=list)
    skipped_files: list[tuple[str, str]] = field(default_factory=list)  # (path, reason), new in this record

    def snapshot(self) -> "IndexProgress":
        """A copy that later progress does not change (safe to hand to another thread)."""
        return replace(self, messages=list(self.messages), skipped_files=list(self.skipped_files))

    def summary(self) -> str:
        parts = [f"{self.embedded} embedded", f"{self.moved} moved", f"{self.unchanged} unchanged",
                 f"{self.removed} removed", f"{self.skipped} skipped"]
        if self.embedded == 0 and self.moved == 0 and self.phase == "done":
            return "Nothing new to embed: " + ", ".join(parts[2:]) + "."
        return ", ".join(parts) + "."


@dataclass
class _Prepared:
    entry: FileEntry
    content_hash: str | None = None
    pixels: object = None  # model input tensor for one photo
    width: int | None = None
    height: int | None = None
    error: str | None = None
    maybe_moved: bool = False
    same_content: bool = False


def content_hash(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=16).hexdigest()


class Indexer:
    """Holds what one indexing run needs; `run` is the generator."""

    def __init__(self, library: Library, model, cancel: CancelToken | None = None, batch_size: int | None = None,
                 decode_threads: int = 2, token_format: str | None = None):
        token_format = token_format or format_for(model)
        if token_format not in FORMATS:
            raise ValueError(f"unknown token format '{token_format}'")
        self.library = library
        self.store = library.store
        self.model = model
        self.cancel = cancel or CancelToken()
        self.batch_size = batch_size or getattr(model, "image_batch_size", 8)
        self.decode_threads = max(1, decode_threads)
        self.token_format = token_format
        # JPEGs may decode at reduced scale, still at least the model's input size.
        self.target_size = getattr(model, "image_size", None)

    # ----- the worker-thread part ------------------------------------------
    def _prepare(self, entry: FileEntry, known) -> _Prepared:
        prep = _Prepared(entry)
        try:
            data = read_file(entry.path)
            prep.content_hash = content_hash(data)
            if known is not None and known.has_vector and known.hash == prep.content_hash:
                prep.same_content = True  # only the time changed
                return prep
            if known is None and self.store.moved_candidates(prep.content_hash):
                prep.maybe_moved = True
                return prep
            photo = decode(data, self.target_size)
            prep.width, prep.height = photo.width, photo.height
            prep.pixels = self.model.preprocess([photo.image])[0]
        except ImageError as exc:
            prep.error = str(exc)
        except MemoryError:
            prep.error = "not enough memory to decode this image"
        except Exception as exc:  # a decoder bug in a library must not stop the run
            prep.error = f"could not be decoded: {type(exc).__name__}: {exc}"
        return prep

    # ----- the generator --------------------------------------------------
    def run(self, folders: Sequence[str]) -> Iterator[IndexProgress]:
        lib, store = self.library, self.store
        progress = IndexProgress("scanning")
        if lib.attach_model(self.model):
            progress.messages.append(lib.notices[-1])
        lib.index  # load or rebuild it before this run changes the database
        yield progress.snapshot()

        work: list[FileEntry] = []
        known: dict[str, object] = {}
        gone: list = []  # rows whose file was not found by the walk: deleted, or moved elsewhere
        for folder in folders:
            root = os.path.abspath(os.path.expanduser(folder))
            if not os.path.isdir(root):
                msg = (f"Folder not found: {root}. Nothing under it was changed in the library."
                       if not os.path.exists(root) else f"Not a folder: {root}.")
                progress.messages.append(msg)
                continue
            store.add_folder(root)
            result = scan(root)
            rows = store.photos_under(root)
            seen = set()
            for entry in result.files:
                seen.add(entry.path)
                row = rows.get(entry.path)
                if row and row.size == entry.size and row.mtime_ns == entry.mtime_ns and (
                        row.has_vector or row.status == "error"):
                    if row.status == "error":
                        progress.skipped += 1  # still unreadable; its reason stays recorded
                    else:
                        progress.unchanged += 1
                    continue
                work.append(entry)
                known[entry.path] = row
            for problem in result.problems:
                seen.add(problem.path)
                old = rows.get(problem.path)
                if old is None or old.error != problem.reason:
                    store.save_photo(problem.path, 0, 0, None, None, None, None, error=problem.reason)
                progress.skipped += 1
                progress.skipped_files.append((problem.path, problem.reason))
            incomplete = [d.rstrip(os.sep) + os.sep for d in result.incomplete]
            gone += [row for path, row in rows.items()
                     if path not in seen and not any(path.startswith(d) for d in incomplete)]
        progress.phase, progress.total = "indexing", len(work)
        yield progress.snapshot()
        progress.messages, progress.skipped_files = [], []

        start = time.monotonic()
        pending: deque[Future] = deque()
        cancelled = False
        with ThreadPoolExecutor(max_workers=self.decode_threads, thread_name_prefix="picsift-decode") as pool:
            it = iter(work)
            lookahead = self.batch_size * 3

            def refill() -> None:
                while len(pending) < lookahead:
                    entry = next(it, None)
                    if entry is None:
                        return
                    pending.append(pool.submit(self._prepare, entry, known.get(entry.path)))

            refill()
            while pending:
                if self.cancel.cancelled:
                    cancelled = True
                    break
                if self.cancel.paused:
                    self.cancel.wait_if_paused()
                    continue
                batch = [pending.popleft().result() for _ in range(min(self.batch_size, len(pending)))]
                refill()
                self._commit(batch, progress)
                progress.done += len(batch)
                progress.current = batch[-1].entry.path
                elapsed = time.monotonic() - start
                progress.rate = progress.done / elapsed if elapsed > 0 else 0.0
                left = progress.total - progress.done
                progress.eta_s = left / progress.rate if progress.rate > 0 else None
                yield progress.snapshot()
                progress.messages, progress.skipped_files = [], []
            for f in pending:
                f.cancel()

        progress.phase = "finishing"
        if not cancelled:
            # Rows whose file is gone and was not recognised at a new path: deleted photos.
            still = store.paths([row.id for row in gone])
            removed = [pid for pid, path in still.items() if not os.path.lexists(path)]
            if removed:
                store.delete_photos(removed)
                lib.tokens.delete(removed)
                lib.index.remove(removed)
                progress.removed = len(removed)
            # Cache entries whose photo row is gone (a run killed between the two deletes).
            orphans = lib.tokens.ids() - store.photo_ids()
            if orphans:
                lib.tokens.delete(orphans)
        lib.save_index()
        progress.phase = "cancelled" if cancelled else "done"
        progress.messages = list(getattr(self.model, "notices", []))
        yield progress.snapshot()

    def _commit(self, batch: list[_Prepared], progress: IndexProgress) -> None:
        store, lib = self.store, self.library
        to_embed = [p for p in batch if p.pixels is not None]
        # A file thought moved whose old row was taken by an earlier copy is decoded here after all.
        moves: list[tuple[_Prepared, int]] = []
        for p in batch:
            if p.maybe_moved:
                candidates = store.moved_candidates(p.content_hash)
                if candidates:
                    moves.append((p, candidates[0].id))
                else:  # an earlier copy in this run took the old row: this one is a new photo
                    p.__dict__.update(self._prepare(p.entry, None).__dict__)
                    if p.pixels is not None:
                        to_embed.append(p)
        encoding = None
        if to_embed:
            import torch

            encoding = self.model.encode_pixels(torch.stack([p.pixels for p in to_embed]))
        new_ids: list[int] = []
        with store.batch():
            for p, photo_id in moves:
                store.move_photo(photo_id, p.entry.path, p.entry.size, p.entry.mtime_ns)
                progress.moved += 1
            for p in batch:
                if p.error is not None:
                    store.save_photo(p.entry.path, p.entry.size, p.entry.mtime_ns, p.content_hash, None, None,
                                     None, error=p.error)
                    progress.skipped += 1
                    progress.skipped_files.append((p.entry.path, p.error))
                elif p.same_content:
                    row = store.photo(p.entry.path)
                    if row:
                        store.touch_photo(row.id, p.entry.size, p.entry.mtime_ns)
                    progress.unchanged += 1
            for i, p in enumerate(to_embed):
                new_ids.append(store.save_photo(p.entry.path, p.entry.size, p.entry.mtime_ns, p.content_hash,
                                                p.width, p.height, encoding.vectors[i]))
        progress.embedded += len(to_embed)
        error_ids = [store.photo(p.entry.path).id for p in batch if p.error is not None]
        if encoding is not None:
            lib.tokens.put_many(zip(new_ids, encoding.tokens), self.token_format)
            lib.index.remove(new_ids)  # a changed photo keeps its id: replace its vector
            lib.index.add(np.asarray(new_ids, np.int64), encoding.vectors)
        if error_ids:  # a photo that became unreadable no longer has a vector
            lib.tokens.delete(error_ids)
            lib.index.remove(error_ids)


def index_folders(library: Library, model, folders: Sequence[str], cancel: CancelToken | None = None,
                  **options) -> Iterator[IndexProgress]:
    """Index folders into the library, yielding progress records."""
    return Indexer(library, model, cancel=cancel, **options).run(folders)
