"""Cancel and pause tokens for engine generators, checked between batches.

Long jobs in the engine are plain generators that yield progress records; the
caller (CLI, GUI worker, a test) holds the token and may cancel or pause.
"""

from __future__ import annotations

import threading


class CancelToken:
    def __init__(self) -> None:
        self._cancel = threading.Event()
        self._running = threading.Event()
        self._running.set()

    def cancel(self) -> None:
        self._cancel.set()
        self._running.set()  # a paused job must wake up to see the cancel

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()

    def pause(self) -> None:
        self._running.clear()

    def resume(self) -> None:
        self._running.set()

    @property
    def paused(self) -> bool:
        return not self._running.is_set()

    def wait_if_paused(self, timeout: float | None = None) -> None:
        """Block while paused (until resume or cancel)."""
        self._running.wait(timeout)
