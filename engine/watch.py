"""A library that keeps itself current: the library's folders watched (watchdog), changes to photos
debounced and batched into the folders to index again, which `index` then brings up to date with its usual
incremental rules (new and changed photos embedded, moved ones kept, deleted ones removed)."""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import Callable, Iterable

from .index.imaging import is_supported
from .paths import in_any, is_under, normalize_path
from .index.scanner import skip_dir

log = logging.getLogger("picsift.watch")


class FolderWatcher:
    """Calls `on_batch(folders)` with the library folders whose photos changed, once the changes have been
    quiet for `debounce` seconds (or, under a steady stream of changes, every `max_wait` seconds), on the
    watcher's own thread. Hidden, junk and excluded folders are ignored."""

    def __init__(self, on_batch: Callable[[list[str]], None], debounce: float = 2.0, max_wait: float = 15.0):
        self.on_batch = on_batch
        self.debounce, self.max_wait = debounce, max_wait
        self.roots: list[str] = []
        self.excluded: list[str] = []
        self._observer = None
        self._pending: set[str] = set()
        self._first = 0.0
        self._last = 0.0
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # ----- what is watched -----------------------------------------------------------
    def watch(self, folders: Iterable[str], excluded: Iterable[str] = ()) -> list[str]:
        """Watch these library folders (replacing what was watched); returns the problems (a folder that
        cannot be watched is reported and skipped, the rest are watched)."""
        from watchdog.observers import Observer

        self._stop_observer()
        self.roots = [normalize_path(f) for f in folders]
        self.excluded = [normalize_path(f) for f in excluded]
        problems = []
        observer = Observer()
        handler = _Handler(self)
        for root in self.roots:
            if any(root != r and is_under(root, r, case_sensitive=True) for r in self.roots):
                continue  # watched with the folder that holds it
            if not os.path.isdir(root):
                problems.append(f"{root} cannot be watched (the folder is not there); rescan it by hand (F5)")
                continue
            try:
                observer.schedule(handler, root, recursive=True)
            except (OSError, RuntimeError) as exc:
                problems.append(f"{root} cannot be watched ({exc}); rescan it by hand (F5)")
        observer.daemon = True
        try:
            observer.start()
        except (OSError, RuntimeError) as exc:  # a folder vanished meanwhile, or the system's watch limit
            problems.append(f"the library's folders cannot be watched ({exc}); rescan by hand (F5)")
            return problems
        self._observer = observer
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name="picsift-watch", daemon=True)
            self._thread.start()
        return problems

    def stop(self) -> None:
        self._stop_observer()
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def _stop_observer(self) -> None:
        if self._observer is not None:
            self._observer.stop()
            self._observer.join(timeout=5)
            self._observer = None

    # ----- events ---------------------------------------------------------------------
    def relevant(self, path: str, is_dir: bool) -> str | None:
        """The library folder a changed path belongs to, or None when the change does not matter."""
        path = normalize_path(path)
        root = in_any(path, self.roots)
        if root is None:
            return None
        rel = os.path.relpath(path, root).split(os.sep)
        parts = rel if is_dir else rel[:-1]
        if any(skip_dir(p) for p in parts if p not in ("", ".")):
            return None
        if in_any(path, self.excluded) is not None:
            return None
        if not is_dir and (os.path.basename(path).startswith(".") or not is_supported(path)):
            return None
        return root

    def note(self, root: str) -> None:
        now = time.monotonic()
        with self._lock:
            if not self._pending:
                self._first = now
            self._pending.add(root)
            self._last = now
        self._wake.set()

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(timeout=0.5)
            self._wake.clear()
            with self._lock:
                if not self._pending:
                    continue
                now = time.monotonic()
                if now - self._last < self.debounce and now - self._first < self.max_wait:
                    continue
                batch, self._pending = sorted(self._pending), set()
            try:
                self.on_batch(batch)
            except Exception:  # the watcher must outlive a failing callback
                log.exception("a folder-change callback failed")


class _Handler:
    """watchdog's handler protocol, without subclassing (dispatch is all it needs)."""

    def __init__(self, watcher: FolderWatcher):
        self.watcher = watcher

    def dispatch(self, event) -> None:
        if event.event_type in ("opened", "closed_no_write"):
            return  # reading a file changes nothing
        if event.is_directory and event.event_type == "modified":
            return  # a folder's own time: the files in it report their changes
        paths = [event.src_path] + ([event.dest_path] if getattr(event, "dest_path", "") else [])
        for p in paths:
            p = os.fsdecode(p)
            root = self.watcher.relevant(p, event.is_directory)
            if root is not None:
                self.watcher.note(root)
