"""The window's link to the engine: owns the library and the model, runs engine jobs on workers.

It holds no retrieval logic: every search, rerank, caption or indexing step is an
engine call; this class only starts, cancels and forwards them as Qt signals.
"""

from __future__ import annotations

import os

from PySide6.QtCore import QObject, Signal

from picsift.workers import GeneratorThread, call_generator
from picsift.engine.captions import import_collection
from picsift.engine.errors import ModelMismatchError, PicsiftError
from picsift.engine.index.indexer import index_folders
from picsift.engine.library import Library
from picsift.engine.search.searcher import SearchUpdate, Searcher, arrange


class Controller(QObject):
    modelLoading = Signal(str)
    downloadProgress = Signal(object, object, str)  # (bytes done, bytes in all, file): a first-run download
    modelReady = Signal(str)  # device description
    modelFailed = Signal(str)
    searchUpdate = Signal(object, object)  # (request id, SearchUpdate)
    searchFailed = Signal(str)
    indexProgress = Signal(object)  # IndexProgress
    indexFinished = Signal(bool)
    indexFailed = Signal(str)
    captionsUpdate = Signal(str, object)  # (photo path, SearchUpdate)
    similarReady = Signal(str, object)  # (photo path, list of Hit)
    captionsPreparing = Signal(str, int, int)  # (photo path, captions embedded, captions in all)
    dropFailed = Signal(str)
    libraryChanged = Signal()
    notice = Signal(str)  # something the user should read, not an error
    maintenanceDone = Signal(str)  # a folder removal or cache trim finished (its summary, may be empty)
    duplicatesReady = Signal(object)  # list of engine.duplicates.Group
    duplicatesFailed = Signal(str)
    trashed = Signal(object)  # engine.duplicates.TrashResult
    foldersChanged = Signal(object)  # library folders whose photos changed on disk (from the watcher's thread)

    def __init__(self, library: Library, model_id: str | None, device: str = "auto", precision: str = "auto",
                 parent: QObject | None = None):
        super().__init__(parent)
        self.library = library
        self.model_id = model_id
        self.device = device
        self.precision = precision
        self.model = None
        self.searcher: Searcher | None = None
        self._threads: set[GeneratorThread] = set()
        self._search: GeneratorThread | None = None
        self._index: GeneratorThread | None = None
        self._drop: GeneratorThread | None = None
        self._request = 0
        self.session = None  # the engine's state of the current query (candidates, scores, scope)
        self.min_score: float | None = None  # what the user sees of the order: weak hits hidden,
        self.sort = "relevance"  # and the order (engine.search.searcher.arrange)
        self._last: tuple[int, SearchUpdate] | None = None  # the last update, to arrange again
        self.watcher = None  # engine.watch.FolderWatcher over the library's folders, once the model is ready
        self._changed: set[str] = set()  # folders that changed while an indexing run was busy
        self.foldersChanged.connect(self._on_folders_changed)  # queued: the watcher calls from its thread

    # ----- threads -------------------------------------------------------
    def _start(self, make, name: str) -> GeneratorThread:
        thread = GeneratorThread(make, self, name)
        self._threads.add(thread)
        thread.finished.connect(lambda t=thread: self._threads.discard(t))
        thread.start()
        return thread

    def shutdown(self, timeout_ms: int = 30000) -> None:
        """Cancel everything and wait for the workers (what is committed stays committed)."""
        if self.watcher is not None:
            self.watcher.stop()
            self.watcher = None
        for t in list(self._threads):
            t.cancel()
        for t in list(self._threads):
            t.wait(timeout_ms)

    # ----- model ---------------------------------------------------------
    def load_model(self, model_id: str | None = None) -> None:
        from picsift.engine.models import DEFAULT_MODEL, load_model

        if model_id is not None:
            self.model_id = model_id
        wanted = self.model_id or self.library.model_id or DEFAULT_MODEL
        self.modelLoading.emit(wanted)
        device, precision = self.device, self.precision

        def load():
            return load_model(wanted, device, precision,
                              on_download=lambda done, total, name: self.downloadProgress.emit(done, total, name))

        thread = self._start(call_generator(load), "picsift-model")
        thread.record.connect(self._on_model)
        thread.failed.connect(self.modelFailed)

    def _on_model(self, model) -> None:
        self.model = model
        try:
            self.searcher = Searcher(self.library, model)
        except ModelMismatchError:
            # The photos are not embedded by this model yet. A model already loaded keeps serving search
            # on its own vectors while a rescan embeds them with the new one; nothing is mixed.
            if self.searcher is not None and self.searcher.model is model:
                self.searcher = None
            self.modelReady.emit(model.describe_device())
            keeps = " Search keeps using the current model until then." if self.searcher is not None else ""
            self.notice.emit(f"This library was indexed with another model ({self.library.model_id}); "
                             f"rescan it (F5) to embed its photos with the new one.{keeps}")
            return
        self.modelReady.emit(model.describe_device())
        self.watch_folders()

    # ----- a library that keeps itself current ----------------------------------
    def watch_folders(self) -> None:
        """Watch the library's folders (again, after they changed): new, changed, moved and deleted photos are
        indexed without a rescan, debounced and batched (engine.watch)."""
        from picsift.engine.watch import FolderWatcher

        if self.watcher is None:
            self.watcher = FolderWatcher(self.foldersChanged.emit)
        for problem in self.watcher.watch(self.library.store.folders(), self.library.excluded_folders()):
            self.notice.emit(problem[0].upper() + problem[1:] + ".")

    def _on_folders_changed(self, folders) -> None:
        current = set(self.library.store.folders())
        folders = [f for f in folders if f in current]
        if not folders:
            return
        if self.indexing or self.model is None or self.searcher is None:
            self._changed.update(folders)  # indexed when the running job is done
            return
        self.index(folders)

    @property
    def ready(self) -> bool:
        return self.model is not None

    # ----- search --------------------------------------------------------
    @property
    def query(self) -> str | None:
        return self.session.query if self.session is not None else None

    def search(self, query: str, n: int, k: int, scope: str | None = None, filters=None,
               photo: str | None = None) -> int:
        """Start a search (cancelling the one in flight); returns its request id. The query may carry terms
        (engine.search.query), filters narrow the photos ranked, a photo is where the search starts from."""
        self.cancel_search()
        self._request += 1
        request = self._request
        self.session = None
        self._last = None
        if self.searcher is None:
            self.searchFailed.emit("The model is not loaded yet." if self.model is None else
                                   "Rescan the library (F5) before searching: its photos were embedded by another model.")
            return request
        try:
            session = self.session = self.searcher.session(query, max(n, k), scope, filters, photo)
        except PicsiftError as exc:  # a query with nothing to look for
            self.searchFailed.emit(str(exc))
            return request
        if query.strip():
            try:
                self.library.remember_query(query)
            except PicsiftError:
                pass  # another process holds the library: the history can wait
        return self._stream(request, lambda token: session.stream(k, cancel=token), "picsift-search")

    def set_view(self, min_score: float | None, sort: str) -> None:
        """Hide weak hits and order by relevance or date: the last results shown again, no new search."""
        self.min_score, self.sort = min_score, sort
        if self._last is not None:
            self._on_search(*self._last)

    def recent_queries(self) -> list[str]:
        return self.library.recent_queries()

    def clear_recent_queries(self) -> None:
        self.library.clear_recent_queries()

    def rerank(self, k: int) -> int | None:
        """A new rerank depth for the current query: the engine's session reranks its own candidates
        (same query, same scope), widening them only when k asks for more."""
        if self.session is None:
            return None
        self.cancel_search()
        self._request += 1
        session = self.session
        return self._stream(self._request, lambda token: session.rerank(k, cancel=token), "picsift-rerank")

    def _stream(self, request: int, make, name: str) -> int:
        thread = self._start(make, name)
        thread.record.connect(lambda update, r=request: self._on_search(r, update))
        thread.failed.connect(self.searchFailed)
        self._search = thread
        return request

    def _on_search(self, request: int, update) -> None:
        if request != self._request:
            return  # a late update of a cancelled search
        self._last = (request, update)
        if self.min_score is not None or self.sort != "relevance":
            update = SearchUpdate(arrange(update.hits, self.library, self.min_score, self.sort), update.scored,
                                  update.to_score, update.done)
        self.searchUpdate.emit(request, update)

    def cancel_search(self) -> None:
        if self._search is not None:
            self._search.cancel()

    # ----- drop: captions and similar photos ---------------------------------
    def describe_photo(self, path: str, collection: str | None = None, n: int = 10, k: int = 20,
                       similar_n: int = 20) -> None:
        if self.searcher is None:
            self.dropFailed.emit("The model is not loaded yet.")
            return
        if self._drop is not None:
            self._drop.cancel()
        searcher = self.searcher

        def make(token):
            yield ("similar", searcher.similar(path, similar_n))
            # A collection's first use embeds all its captions: report that, it takes a while on a CPU.
            for done, total in searcher.prepare_captions(collection):
                yield ("preparing", (done, total))
                if token.cancelled:
                    return
            for update in searcher.captions_stream(path, n, k, collection, cancel=token):
                yield ("captions", update)

        thread = self._start(make, "picsift-drop")
        thread.record.connect(lambda item, p=path: self._on_drop(p, item))
        thread.failed.connect(self.dropFailed)
        self._drop = thread

    def _on_drop(self, path: str, item) -> None:
        kind, payload = item
        if kind == "similar":
            self.similarReady.emit(path, payload)
        elif kind == "preparing":
            self.captionsPreparing.emit(path, *payload)
        else:
            self.captionsUpdate.emit(path, payload)

    def import_captions(self, file: str, name: str | None = None) -> tuple[str, int]:
        result = import_collection(self.library, file, name)
        self.libraryChanged.emit()
        return result

    # ----- indexing ------------------------------------------------------
    def index(self, folders: list[str] | None = None) -> bool:
        """Start indexing (folders, or a rescan of the library's folders); False if one is running."""
        if self._index is not None and self._index.isRunning():
            return False
        if self.model is None:
            self.indexFailed.emit("The model is not loaded yet.")
            return False
        folders = [os.path.abspath(f) for f in (folders or self.library.store.folders())]
        library, model = self.library, self.model
        thread = self._start(lambda token: index_folders(library, model, folders, cancel=token), "picsift-index")
        thread.record.connect(self.indexProgress)
        thread.failed.connect(self.indexFailed)
        thread.done.connect(self._on_index_done)
        self._index = thread
        return True

    def _on_index_done(self, completed: bool) -> None:
        if self.model is not None and (self.searcher is None or self.searcher.model is not self.model):
            try:
                self.searcher = Searcher(self.library, self.model)  # the new model covers every photo now
                self.modelReady.emit(self.model.describe_device())
            except ModelMismatchError:
                pass  # a cancelled run: the model in use keeps serving search
        self.libraryChanged.emit()
        self.indexFinished.emit(completed)
        if self.model is not None and self.searcher is not None:
            self.watch_folders()  # a run may have added folders
            if self._changed:
                changed, self._changed = sorted(self._changed), set()
                self._on_folders_changed(changed)

    @property
    def indexing(self) -> bool:
        return self._index is not None and self._index.isRunning()

    def pause_indexing(self, paused: bool) -> None:
        if self._index is not None:
            (self._index.token.pause if paused else self._index.token.resume)()

    def cancel_indexing(self) -> None:
        if self._index is not None:
            self._index.cancel()

    # ----- library upkeep, off the window's thread -----------------------------
    def remove_folder(self, path: str) -> None:
        """Forget a folder and its photos on a worker (it rewrites the index); `maintenanceDone` reports it."""
        library = self.library

        def job() -> str:
            count = library.remove_folder(path)
            return f"Removed {path} ({count} photos) from the library."

        self._maintain(job)

    # ----- excluded folders ------------------------------------------------------
    def exclude_folder(self, path: str) -> None:
        """Stop indexing a folder and forget its photos, on a worker; `maintenanceDone` reports it."""
        library = self.library

        def job() -> str:
            count = library.exclude_folder(path)
            return f"Excluded {path}: {count} photos left the library (the files are untouched)."

        self._maintain(job)

    def include_folder(self, path: str) -> bool:
        return self.library.include_folder(path)

    # ----- duplicates ---------------------------------------------------------
    def find_duplicates(self) -> None:
        """Groups of duplicates on a worker (it reads the photos' headers); `duplicatesReady` gives them."""
        from picsift.engine.duplicates import find_duplicates

        library = self.library
        thread = self._start(call_generator(lambda: find_duplicates(library)), "picsift-duplicates")
        thread.record.connect(self.duplicatesReady)
        thread.failed.connect(self.duplicatesFailed)

    def trash(self, paths: list[str]) -> None:
        """Move photos the user chose to the system trash and out of the library, on a worker."""
        from picsift.engine.duplicates import trash

        library = self.library
        thread = self._start(call_generator(lambda: trash(library, paths)), "picsift-trash")
        thread.record.connect(self._on_trashed)
        thread.failed.connect(self.duplicatesFailed)

    def _on_trashed(self, result) -> None:
        self.libraryChanged.emit()
        self.trashed.emit(result)

    def set_cache_budget(self, budget_bytes: int) -> None:
        """Keep a new rerank-cache budget; trimming a large cache runs on a worker."""
        library = self.library

        def job() -> str:
            dropped = library.set_cache_budget(budget_bytes)
            return f"Rerank cache trimmed: {dropped} photos will be encoded on demand." if dropped else ""

        self._maintain(job)

    def _maintain(self, fn) -> None:
        thread = self._start(call_generator(fn), "picsift-upkeep")
        thread.record.connect(self._on_maintained)
        thread.failed.connect(self.notice)

    def _on_maintained(self, message: str) -> None:
        if self.watcher is not None:
            self.watch_folders()  # a folder was removed or excluded
        self.libraryChanged.emit()
        self.maintenanceDone.emit(message)
