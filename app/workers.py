"""Running engine generators on worker threads; results come back to the GUI thread by signals.

The generator loop is superqt's GeneratorWorker; GeneratorThread adapts it to what the
controller needs: the engine's CancelToken, failure messages, and done(completed).
"""

from __future__ import annotations

import logging
import threading
from typing import Callable, Iterator

from PySide6.QtCore import QObject, QThreadPool, Signal
from superqt.utils import GeneratorWorker

from picsift.engine.errors import PicsiftError
from picsift.engine.jobs import CancelToken

log = logging.getLogger("picsift.app")

_pool: QThreadPool | None = None


def _job_pool() -> QThreadPool:
    """Engine jobs get a pool of their own: they run long (an indexing run takes hours), and Qt's
    global pool has one thread per core, so on a 2-core machine two jobs would hold every thread
    and a search would wait for one of them to end."""
    global _pool
    if _pool is None:
        _pool = QThreadPool()
        _pool.setMaxThreadCount(16)
    return _pool


class _EngineWorker(GeneratorWorker):
    """superqt's GeneratorWorker, with its `run` replaced for two reasons (superqt 0.9):

    - WorkerBase.run wraps each job in warnings.catch_warnings(), which swaps process-wide state
      and is not thread-safe (CPython gh-128384): two overlapping jobs (an index and a search)
      leave the 'always' filter and a finished job's showwarning installed for good;
    - GeneratorWorker.work returns a RuntimeError raised by the generator instead of raising it,
      taking it for a deleted Qt object, and run then ends without `errored` or `finished`; torch
      reports most of its failures as RuntimeError.
    Everything else (the generator loop, the signals) is superqt's.
    """

    def __init__(self, func, *args, **kwargs):
        super().__init__(func, *args, **kwargs)
        self.ended = threading.Event()

    def run(self) -> None:  # on a pool thread
        self.started.emit()
        try:
            result = self.work()
            if isinstance(result, Exception):
                raise result
            self.returned.emit(result)
        except Exception as exc:
            self.errored.emit(exc)
        finally:
            self.ended.set()
        self.finished.emit()


def _each(make: Callable[[CancelToken], Iterator], token: CancelToken):
    # GeneratorWorker takes a generator function; `make` may be a lambda returning a generator.
    yield from make(token)


class GeneratorThread(QObject):
    """Iterates `make(token)` (an engine generator) on a worker thread, emitting each record on
    the GUI thread.

    Cancel goes through the engine's CancelToken, which the generator checks between batches;
    the generator is never abandoned, so its own final record (a cancelled summary) still comes.
    """

    record = Signal(object)
    failed = Signal(str)
    done = Signal(bool)  # True when it ran to the end, False when cancelled or failed
    finished = Signal()  # after done: nothing more will come

    def __init__(self, make: Callable[[CancelToken], Iterator], parent=None, name: str = "picsift-worker"):
        super().__init__(parent)
        self.setObjectName(name)
        self.token = CancelToken()
        self._completed = False
        self._started = False
        # The worker's signals live in this (the GUI) thread, so emits from the pool are queued here.
        self.worker = _EngineWorker(_each, make, self.token)
        self.worker.yielded.connect(self.record)
        self.worker.returned.connect(self._on_returned)
        self.worker.errored.connect(self._on_errored)
        self.worker.finished.connect(self._on_finished)

    def start(self) -> None:
        # Straight to the pool: GeneratorWorker.start defers the start by a timer when an event loop
        # runs, and a shutdown that waits before the timer fires would wait for a job not yet begun.
        self._started = True
        _job_pool().start(self.worker)

    def cancel(self) -> None:
        self.token.cancel()

    def isRunning(self) -> bool:  # noqa: N802 (QThread's name, which the controller uses)
        return self._started and not self.worker.ended.is_set()

    def wait(self, timeout_ms: int | None = None) -> bool:
        """Block until the job has ended (True) or timeout_ms has passed (False)."""
        if not self._started:
            return True
        return self.worker.ended.wait(None if timeout_ms is None else timeout_ms / 1000)

    def _on_returned(self, _value) -> None:
        self._completed = True

    def _on_errored(self, exc: Exception) -> None:
        if isinstance(exc, PicsiftError):
            self.failed.emit(str(exc))
            return
        # The window must survive any engine failure; the log keeps the detail.
        log.error("worker %s failed", self.objectName(), exc_info=exc)
        self.failed.emit(f"Something went wrong: {type(exc).__name__}: {exc}")

    def _on_finished(self) -> None:
        self.done.emit(self._completed and not self.token.cancelled)
        self.finished.emit()


def call_generator(fn: Callable[[], object]) -> Callable[[CancelToken], Iterator]:
    """Wrap a plain call so it can run on a GeneratorThread and emit its result once."""

    def make(token: CancelToken) -> Iterator:
        yield fn()

    return make
