"""Indexing photo folders: a generator of progress records, checked for cancel between batches.

Unchanged files (size, mtime) are skipped. Vectors belong to content (a hash),
so a renamed, moved or copied file reuses the vectors its content already has;
a changed file is embedded again; a deleted one leaves the library. A photo is
one row however many library folders hold it. Each batch is one transaction, so an
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

from ..errors import ImageError, LibraryBusyError, LibraryReadOnlyError
from .imaging import decode, photo_facts, read_file
from .ocr import CHECK_SIDE, READ_SIDE, TextReader
from ..jobs import CancelToken
from ..library import Library
from ..paths import in_any, is_under, normalize_path
from .scanner import FileEntry, folder_problem, scan
from ..token_cache import FORMATS, format_for


@dataclass
class IndexProgress:
    phase: str  # "waiting" (for another writer), "scanning", "indexing", "late" (an LI head's tokens of photos
    # indexed before it), "caching" (a new reranker's features of photos indexed before it), "reading" (the
    # text in photos indexed before text was read, or read in other languages), "finishing", "done" or
    # "cancelled"
    done: int = 0  # files of this run's work handled so far
    total: int = 0  # files this run has to look at (new, changed or not yet indexed)
    current: str | None = None
    embedded: int = 0
    moved: int = 0
    copies: int = 0  # new paths whose content the library already had embedded
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
        if self.copies:
            parts.insert(2, f"{self.copies} copies")
        if self.embedded == 0 and self.moved == 0 and self.copies == 0 and self.phase == "done":
            return "Nothing new to embed: " + ", ".join(parts[2:]) + "."
        return ", ".join(parts) + "."


@dataclass
class _Prepared:
    entry: FileEntry
    content_hash: str | None = None
    pixels: object = None  # model input tensor for one photo
    image: object = None  # the decoded photo, for rerankers with a vision pass of their own
    width: int | None = None
    height: int | None = None
    taken: float | None = None  # EXIF date taken, else the file's time (the date filter reads it)
    error: str | None = None
    text: str | None = None  # the words read in it ("" none); None when not read (text reading off, or known)
    same_content: bool = False  # only the file time changed
    known_content: bool = False  # the library has vectors for this content already (a move or a copy)
    # computed elsewhere (a cluster job's shard): the BE vector, and each stage's features as stored bytes
    vector: object = None
    features: dict | None = None


def content_hash(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def decode_for_model(prep: _Prepared, data: bytes, model, size: int | None, keep_image: bool):
    """Decode a photo's bytes (at reduced scale when the format allows, still at least `size`) into the model's
    input pixels and the photo's facts, set on `prep`; returns the decoded image."""
    photo = decode(data, size, name=prep.entry.path)
    prep.width, prep.height = photo.width, photo.height
    prep.taken = photo.taken if photo.taken is not None else prep.entry.mtime_ns / 1e9
    prep.pixels = model.preprocess([photo.image])[0]
    if keep_image:
        prep.image = photo.image
    return photo.image


def photo_error(exc: BaseException) -> str:
    """The reason recorded for a photo that could not be read or decoded."""
    if isinstance(exc, ImageError):
        return str(exc)
    if isinstance(exc, MemoryError):
        return "not enough memory to decode this image"
    return f"could not be decoded: {type(exc).__name__}: {exc}"


class Indexer:
    """Holds what one indexing run needs; `run` is the generator."""

    def __init__(self, library: Library, model, cancel: CancelToken | None = None, batch_size: int | None = None,
                 decode_threads: int = 2, token_format: str | None = None, text_reader="auto"):
        """text_reader: reads the words in photos (engine.index.ocr.TextReader); "auto" opens one for the
        library's languages when this machine has Tesseract (else a notice says text in photos is off);
        None reads no text."""
        token_format = token_format or format_for(model)
        if token_format not in FORMATS:
            raise ValueError(f"unknown token format '{token_format}'")
        self.library = library
        self.store = library.store
        self.model = model
        self.key = model.be.key
        self.cancel = cancel or CancelToken()
        self.batch_size = batch_size or getattr(model, "image_batch_size", 8)
        self.decode_threads = max(1, decode_threads)
        self.token_format = token_format
        # JPEGs may decode at reduced scale, still at least the model's input size.
        self.target_size = getattr(model, "image_size", None)
        self._separate_rerankers = bool(getattr(model, "ce_source", None))
        self.text_notice = None
        if text_reader == "auto":  # shared by the process's runs; not closed here
            text_reader, self.text_notice = TextReader.for_library(library.text_languages)
        self.text_reader = text_reader
        self._text_read: set[str] = set()  # content the reader has read already
        self._gone_by_hash: dict[str, list] = {}  # set by each walk (_run)
        self._known_rows: set[str] = set()

    # ----- the worker-thread part ------------------------------------------
    def decode_size(self) -> int | None:
        """The least longer side a photo is decoded at: the model's input, or the text check's copy when words
        are read. The model's pixels are resized from that decode, so it decides them: a cluster job decodes
        at the same size, or its vectors would differ from this machine's."""
        return max(self.target_size or 0, CHECK_SIDE) if self.text_reader is not None else self.target_size

    def _prepare(self, entry: FileEntry, known) -> _Prepared:
        prep = _Prepared(entry)
        try:
            data = read_file(entry.path)
            prep.content_hash = content_hash(data)
            if known is not None and known.has_vector and known.hash == prep.content_hash:
                prep.same_content = True
                return prep
            if self.store.hashes_with_vectors(self.key, [prep.content_hash]):
                prep.known_content = True  # a copy or a move: its size and date from the header alone
                prep.width, prep.height, taken = photo_facts(data, entry.path)
                prep.taken = taken if taken is not None else entry.mtime_ns / 1e9
                return prep
            reader = self.text_reader
            image = decode_for_model(prep, data, self.model, self.decode_size(), self._separate_rerankers)
            if reader is not None and prep.content_hash not in self._text_read:
                prep.text = self._read_text(reader, image, data, entry.path)
        except Exception as exc:  # a decoder bug in a library must not stop the run
            prep.error = photo_error(exc)
        return prep

    @staticmethod
    def _read_text(reader, image, data: bytes, path: str) -> str | None:
        """The words in a decoded photo; None when reading failed (it is tried again on the next run)."""
        try:
            return reader.read(image, larger=lambda: decode(data, READ_SIDE, name=path).image).text
        except Exception:  # Tesseract failing on one photo must not stop the run, nor lose the photo
            return None

    # ----- the generator --------------------------------------------------
    def run(self, folders: Sequence[str]) -> Iterator[IndexProgress]:
        """Take the library's write lock (waiting, with a notice, while another writer holds it), then index."""
        if self.library.read_only:
            raise LibraryReadOnlyError(f"The library {self.library.folder} is read-only: searching works, "
                                       "indexing needs write access to it.")
        lock = self.library.write_lock("picsift index")
        try:
            held = lock.try_acquire()
        except LibraryBusyError as busy:
            waiting = IndexProgress("waiting", messages=[f"{busy} Waiting for it to finish..."])
            yield waiting.snapshot()
            while True:
                if self.cancel.cancelled:
                    yield IndexProgress("cancelled")
                    return
                try:
                    held = lock.acquire(timeout=0.5)
                    break
                except LibraryBusyError:
                    continue
        with held:
            yield from self._run(folders)

    def _run(self, folders: Sequence[str]) -> Iterator[IndexProgress]:
        lib = self.library
        progress = IndexProgress("scanning")
        notice = lib.attach_model(self.model)
        if notice:
            progress.messages.append(notice)
        if lib.verify_index(self.key):  # another writer left it short (or it was damaged): rebuilt
            progress.messages.append(lib.notices[-1])
        if self.text_notice:
            progress.messages.append(self.text_notice)
        if self.text_reader is not None:
            self._text_read = lib.text.hashes_read(self.text_reader.key)
        yield progress.snapshot()
        yield from self._before_scan(progress)
        work, known, gone, paired = self._scan(folders, progress)
        progress.phase, progress.total = "indexing", len(work)
        yield progress.snapshot()
        progress.messages, progress.skipped_files = [], []
        self._gone_by_hash = {}  # content of rows whose file the walk did not find
        for row in gone:
            if row.hash and row.status == "ok":
                self._gone_by_hash.setdefault(row.hash, []).append(row)
        self._known_rows = {path for path, row in known.items() if row is not None}
        cancelled = yield from self._embed(work, known, progress)
        yield from self._finish(gone, paired, cancelled, progress)

    def _before_scan(self, progress: IndexProgress) -> Iterator[IndexProgress]:
        """Work a subclass does once the model is attached, before the folders are walked (none here)."""
        return
        yield

    def _scan(self, folders: Sequence[str], progress: IndexProgress):
        """Walk the folders: returns (entries to look at, their rows by path, rows whose file the walk did not
        find, rows of RAWs now paired with a JPEG), recording unreadable files as it goes."""
        lib, store = self.library, self.store
        work: list[FileEntry] = []
        known: dict[str, object] = {}
        gone: list = []  # rows whose file was not found by the walk: deleted, or moved elsewhere
        paired: list[int] = []  # rows of RAWs that are now one photo with the JPEG beside them
        seen: set[str] = set()  # across folders: a photo in nested library folders is one photo
        roots = [normalize_path(f) for f in folders]
        excluded = frozenset(lib.excluded_folders())
        for root in roots:
            problem = folder_problem(root)
            if problem:
                found = os.path.exists(root)
                progress.messages.append(problem[0].upper() + problem[1:] + (
                    "." if found else ". Nothing under it was changed in the library."))
                continue
            store.add_folder(root)
            if in_any(root, excluded) is not None:
                progress.messages.append(f"{root} is an excluded folder: not indexed ('picsift folders include' "
                                         "undoes it).")
                continue
            if any(is_under(root, r, case_sensitive=True) for r in roots if os.path.isdir(r)):
                continue  # inside another folder of this run: walked with it
            result = scan(root, excluded, pair_raw=lib.raw_with_jpeg == "one")
            rows = store.photos_under(root, self.key)
            walked = set()
            for entry in result.files:
                walked.add(entry.path)
                if entry.path in seen:
                    continue
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
                walked.add(problem.path)
                if problem.path in seen:
                    continue
                seen.add(problem.path)
                old = rows.get(problem.path)
                if old is None or old.error != problem.reason:
                    with lib.changing(self.key) as vi:
                        pid = store.save_photo(problem.path, 0, 0, None, None, None, error=problem.reason)
                        vi.remove([pid])
                progress.skipped += 1
                progress.skipped_files.append((problem.path, problem.reason))
            paired_raws = result.paired_raws
            paired += [rows[raw].id for raw in paired_raws if raw in rows]
            gone += [row for path, row in rows.items() if path not in walked and path not in paired_raws
                     and not any(is_under(path, d, case_sensitive=True) for d in result.incomplete)]
        return work, known, gone, paired

    def _embed(self, work: list[FileEntry], known: dict, progress: IndexProgress) -> Iterator[IndexProgress]:
        """Decode (on threads) and embed the photos of `work`, a batch a transaction. Returns whether the run
        was cancelled."""
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
                self._advance(progress, len(batch), batch[-1].entry.path, start)
                yield progress.snapshot()
                progress.messages, progress.skipped_files = [], []
            for f in pending:
                f.cancel()
        return cancelled

    @staticmethod
    def _advance(progress: IndexProgress, count: int, current: str | None, start: float) -> None:
        """`count` more photos handled since `start` (monotonic), the last `current`: done, rate and ETA."""
        progress.done += count
        progress.current = current
        elapsed = time.monotonic() - start
        progress.rate = progress.done / elapsed if elapsed > 0 else 0.0
        left = progress.total - progress.done
        progress.eta_s = left / progress.rate if progress.rate > 0 else None

    def _finish(self, gone: list, paired: list[int], cancelled: bool,
                progress: IndexProgress) -> Iterator[IndexProgress]:
        lib, store = self.library, self.store
        progress.phase = "finishing"
        if not cancelled:
            # Rows whose file is gone: deleted photos (a moved one has its new row already).
            still = store.paths([row.id for row in gone])
            removed = [pid for pid, path in still.items() if not os.path.lexists(path)] + paired
            if removed:
                with lib.changing(self.key) as vi:
                    store.delete_photos(removed)
                    vi.remove(removed)
                progress.removed = len(removed)
            # Vectors and cached features of content no photo has any more.
            store.sweep_vectors()
            lib.text.sweep()
            lib.tokens.keep_only(store.all_hashes())
            self._fill_facts()
            cancelled = yield from self._fill_text(progress)
            if not cancelled:
                cancelled = yield from self._fill_late_tokens(progress)
            if not cancelled:
                cancelled = yield from self._fill_rerank_cache(progress)
            done, readable = lib.coverage(self.key)
            if store.be_key != self.key and done == readable:
                lib.activate(self.model)
                progress.messages.append(f"Search now uses '{self.model.source}'.")
        lib.save_index(self.key)
        progress.phase = "cancelled" if cancelled else "done"
        progress.messages += list(getattr(self.model, "notices", []))
        yield progress.snapshot()

    def _fill_facts(self) -> None:
        """Date taken and size of photos indexed before picsift recorded them, from the files' headers (no
        pixels decoded; the first MB of a file holds its EXIF): what the filters need."""
        rows = self.store.photos_missing_facts()
        facts = []
        for pid, path, mtime_ns in rows:
            try:
                with open(path, "rb") as fh:
                    head = fh.read(1 << 20)
                w, h, taken = photo_facts(head, path)
                if w is None and len(head) == 1 << 20:
                    w, h, taken = photo_facts(read_file(path), path)
            except (OSError, ImageError):
                w = h = taken = None
            facts.append((pid, w, h, taken if taken is not None else mtime_ns / 1e9))
        if facts:
            self.store.set_facts(facts)

    def _fill_rerank_cache(self, progress: IndexProgress) -> Iterator[IndexProgress]:
        """Photos indexed before the cascade's CE (a --rerank-model given to a library that has photos) get its
        features now, as new photos get them while they are embedded, while the cache budget has room.
        Returns whether the run was cancelled meanwhile."""
        ce = getattr(self.model, "ce", None)
        lib, store = self.library, self.store
        tokens = lib.tokens
        if ce is None or tokens.budget_bytes <= 0:
            return False
        todo, hashes = self._missing(tokens.hashes(ce.key))
        count = tokens.count()
        per_photo = tokens.size_bytes / count if count else 0
        if not todo or tokens.size_bytes + per_photo > tokens.budget_bytes:
            return False  # nothing missing, or no room: photos beyond the budget are encoded when reranked
        for ok, images in self._photo_batches(todo, progress):
            if self.cancel.cancelled:
                return True
            if images:
                feats = self.model.reranker_features(ce, images)
                stored = tokens.put_many(ce.key, [(hashes[i], f) for i, f in zip(ok, feats)], self.token_format)
                if stored < len(ok):
                    progress.messages.append(f"The rerank cache is full: {tokens.count(ce.key):,} photos have the "
                                             "reranker's features; the others are encoded when a query reranks them.")
                    yield progress.snapshot()
                    progress.messages = []
                    return False
            yield progress.snapshot()
            progress.messages, progress.skipped_files = [], []
        return False

    def _fill_text(self, progress: IndexProgress) -> Iterator[IndexProgress]:
        """Photos whose text this reader has not read (indexed while text reading was off, on a machine
        without Tesseract, or in other languages) are read now, on the decode threads. Returns whether the
        run was cancelled meanwhile."""
        reader = self.text_reader
        if reader is None:
            return False
        todo, hashes = self._missing(self.library.text.hashes_read(reader.key))
        if not todo:
            return False
        paths = self.store.paths(todo)

        def read(pid: int) -> tuple[str, str | None]:
            try:
                data = read_file(paths[pid])
                if content_hash(data) != hashes[pid]:
                    return hashes[pid], None  # changed since it was indexed: the next rescan reads it
                image = decode(data, CHECK_SIDE, name=paths[pid]).image
            except (ImageError, OSError, MemoryError):
                return hashes[pid], None
            return hashes[pid], self._read_text(reader, image, data, paths[pid])

        progress.phase, progress.done, progress.total, progress.rate, progress.eta_s = "reading", 0, len(todo), 0.0, None
        start = time.monotonic()
        with ThreadPoolExecutor(max_workers=self.decode_threads, thread_name_prefix="picsift-text") as pool:
            step = max(1, self.batch_size * 4)
            for a in range(0, len(todo), step):
                if self.cancel.cancelled:
                    return True
                chunk = todo[a:a + step]
                read_now = [(h, t) for h, t in pool.map(read, chunk) if t is not None]
                self.library.text.put(reader.key, read_now)
                progress.done += len(chunk)
                progress.current = paths.get(chunk[-1])
                elapsed = time.monotonic() - start
                progress.rate = progress.done / elapsed if elapsed > 0 else 0.0
                progress.eta_s = (progress.total - progress.done) / progress.rate if progress.rate else None
                yield progress.snapshot()
                progress.messages, progress.skipped_files = [], []
        return False

    def _fill_late_tokens(self, progress: IndexProgress) -> Iterator[IndexProgress]:
        """Photos indexed before the model had its LI head get their LI tokens now (every photo needs them:
        the LI stage reads no photo that lacks them). Returns whether the run was cancelled meanwhile."""
        from ..models.late import encode_tokens

        li = getattr(self.model, "li", None)
        if li is None:
            return False
        store = self.store
        todo, hashes = self._missing(store.late_hashes(li.key))
        if not todo:
            return False
        for ok, images in self._photo_batches(todo, progress, phase="late"):
            if self.cancel.cancelled:
                return True
            if images:
                feats = self.model.late_tokens(images)
                store.put_late_tokens(li.key, [(hashes[i], encode_tokens(f)) for i, f in zip(ok, feats)])
            yield progress.snapshot()
            progress.messages, progress.skipped_files = [], []
        return False

    def _missing(self, have: set[str]) -> tuple[list[int], dict[int, str]]:
        """(one photo id per content hash not in `have`, the hashes of the indexed photos)."""
        ids = sorted(self.store.photo_ids(self.key))
        hashes = self.store.hashes(ids)
        todo, seen = [], set(have)
        for i in ids:
            h = hashes.get(i)
            if h and h not in seen:
                seen.add(h)
                todo.append(i)
        return todo, hashes

    def _photo_batches(self, todo: list[int], progress: IndexProgress, phase: str = "caching"):
        """The photos of `todo` opened in batches of the model's size, (ids, images) per batch, with the
        progress record advanced (a photo changed or gone since indexing is left for the next rescan)."""
        from .imaging import open_photo

        paths = self.store.paths(todo)
        progress.phase, progress.done, progress.total, progress.rate, progress.eta_s = phase, 0, len(todo), 0.0, None
        start = time.monotonic()
        for a in range(0, len(todo), self.batch_size):
            chunk = todo[a:a + self.batch_size]
            images, ok = [], []
            for i in chunk:
                try:
                    images.append(open_photo(paths[i], self.model.image_size).image)
                    ok.append(i)
                except ImageError:
                    continue
            progress.done += len(chunk)
            progress.current = paths[chunk[-1]]
            elapsed = time.monotonic() - start
            progress.rate = progress.done / elapsed if elapsed > 0 else 0.0
            progress.eta_s = (progress.total - progress.done) / progress.rate if progress.rate else None
            yield ok, images

    def _claim_moved(self, p: _Prepared) -> int | None:
        """The row of a vanished file with this content, if one is left and this path has no row: a move."""
        if p.entry.path in self._known_rows:
            return None
        rows = self._gone_by_hash.get(p.content_hash) or []
        while rows:
            row = rows.pop()
            if not os.path.lexists(row.path):
                return row.id
        return None

    def _commit(self, batch: list[_Prepared], progress: IndexProgress) -> None:
        store, lib = self.store, self.library
        to_embed: list[_Prepared] = []
        by_hash: dict[str, _Prepared] = {}
        for p in batch:
            if p.pixels is None and p.vector is None:
                continue
            if p.content_hash in by_hash:  # the same content twice in one batch: embed it once
                p.known_content, p.pixels, p.vector = True, None, None
                continue
            by_hash[p.content_hash] = p
            to_embed.append(p)
        encoding = None
        if to_embed and all(p.vector is not None for p in to_embed):  # computed by a cluster job
            from ..models.stages import ImageEncoding

            encoding = ImageEncoding(np.stack([np.asarray(p.vector, np.float32) for p in to_embed]))
        elif to_embed:
            import torch

            images = [p.image for p in to_embed] if self._separate_rerankers else None
            encoding = self.model.encode_pixels(torch.stack([p.pixels for p in to_embed]), images)
        with lib.changing(self.key) as vi:
            if to_embed:
                store.put_vectors(self.key, ((p.content_hash, encoding.vectors[i]) for i, p in enumerate(to_embed)))
            reuse = [p for p in batch if p.known_content]
            reused_vecs = store.vectors_by_hash(self.key, [p.content_hash for p in reuse])
            new_ids, new_vecs = [], []
            for p in batch:
                e = p.entry
                if p.error is not None:
                    pid = store.save_photo(e.path, e.size, e.mtime_ns, p.content_hash, None, None, error=p.error)
                    vi.remove([pid])  # a photo that became unreadable no longer has a vector
                    progress.skipped += 1
                    progress.skipped_files.append((e.path, p.error))
                elif p.same_content:
                    row = store.photo(e.path, self.key)
                    if row:
                        store.touch_photo(row.id, e.size, e.mtime_ns)
                    progress.unchanged += 1
                elif p.known_content:
                    old = self._claim_moved(p)
                    if old is not None:  # renamed or moved: the row keeps its id, FAISS its vector
                        store.move_photo(old, e.path, e.size, e.mtime_ns)
                        progress.moved += 1
                        continue
                    pid = store.save_photo(e.path, e.size, e.mtime_ns, p.content_hash, p.width, p.height,
                                           taken=p.taken)
                    vec = reused_vecs.get(p.content_hash)
                    if vec is None:
                        vec = encoding.vectors[to_embed.index(by_hash[p.content_hash])]
                    new_ids.append(pid)
                    new_vecs.append(vec)
                    progress.copies += 1
            for i, p in enumerate(to_embed):
                e = p.entry
                new_ids.append(store.save_photo(e.path, e.size, e.mtime_ns, p.content_hash, p.width, p.height,
                                                taken=p.taken))
                new_vecs.append(encoding.vectors[i])
            if new_ids:
                vi.remove(new_ids)  # a changed photo keeps its id: replace its vector
                vi.add(np.asarray(new_ids, np.int64), np.stack(new_vecs))
            if self.text_reader is not None:
                read = [(p.content_hash, p.text) for p in to_embed if p.text is not None]
                lib.text.put(self.text_reader.key, read)
                self._text_read.update(h for h, _ in read)
        progress.embedded += len(to_embed)
        if encoding is not None:
            li = getattr(self.model, "li", None)
            for stage_key, feats in encoding.features.items():
                if li is not None and stage_key == li.key:  # LI tokens: every photo's, in the library itself
                    from ..models.late import encode_tokens

                    store.put_late_tokens(stage_key, [(p.content_hash, encode_tokens(feats[i]))
                                                      for i, p in enumerate(to_embed)])
                    continue
                lib.tokens.put_many(stage_key, ((p.content_hash, feats[i]) for i, p in enumerate(to_embed)),
                                    self.token_format)
        self._put_stored_features([p for p in to_embed if p.features])

    def _put_stored_features(self, prepared: list[_Prepared]) -> None:
        """Features a cluster job computed and encoded (each photo's {stage key: (format, shape, bytes)}): LI
        tokens into the library, the others into the rerank cache, as the local path stores them."""
        li = getattr(self.model, "li", None)
        by_stage: dict[str, list] = {}
        for p in prepared:
            for key, (fmt, shape, blob) in p.features.items():
                by_stage.setdefault(key, []).append((p.content_hash, fmt, shape, blob))
        for key, rows in by_stage.items():
            if li is not None and key == li.key:
                self.store.put_late_tokens(key, [(h, blob) for h, _, _, blob in rows])
            else:
                self.library.tokens.put_encoded(key, rows)


def index_folders(library: Library, model, folders: Sequence[str], cancel: CancelToken | None = None,
                  **options) -> Iterator[IndexProgress]:
    """Index folders into the library, yielding progress records."""
    return Indexer(library, model, cancel=cancel, **options).run(folders)
