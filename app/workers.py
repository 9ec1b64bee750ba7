"""Running engine generators on a worker thread; results come back to the GUI thread by signals."""

from __future__ import annotations

import logging
from typing import Callable, Iterator

from PySide6.QtCore import QThread, Signal

from engine.errors import PicsiftError
from engine.jobs import CancelToken

log = logging.getLogger("picsift.app")


class GeneratorThread(QThread):
    """Iterates `make()` (an engine generator) off the GUI thread, emitting each record.

    Cancel goes through the engine's CancelToken, which the generator checks between batches.
    """

    record = Signal(object)
    failed = Signal(str)
    done = Signal(bool)  # True when it ran to the end, False when cancelled or failed

    def __init__(self, make: Callable[[CancelToken], Iterator], parent=None, name: str = "picsift-worker"):
        super().__init__(parent)
        self.setObjectName(name)
        self._make = make
        self.token = CancelToken()

    def cancel(self) -> None:
        self.token.cancel()

    def run(self) -> None:  # runs on the worker thread
        completed = False
        try:
            # Records keep flowing after a cancel: the engine generator sees the token between
            # batches and ends with its own final record (a cancelled summary), which the window shows.
            for item in self._make(self.token):
                self.record.emit(item)
            completed = True
        except PicsiftError as exc:
            self.failed.emit(str(exc))
        except Exception as exc:  # the window must survive any engine failure; the log keeps the detail
            log.exception("worker %s failed", self.objectName())
            self.failed.emit(f"Something went wrong: {type(exc).__name__}: {exc}")
        self.done.emit(completed and not self.token.cancelled)


def call_generator(fn: Callable[[], object]) -> Callable[[CancelToken], Iterator]:
    """Wrap a plain call so it can run on a GeneratorThread and emit its result once."""

    def make(token: CancelToken) -> Iterator:
        yield fn()

    return make
