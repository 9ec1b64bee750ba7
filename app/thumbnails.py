"""Thumbnails for the results grid, loaded off the GUI thread from the engine's disk cache."""

from __future__ import annotations

from PySide6.QtCore import QObject, QRunnable, QThreadPool, Signal
from PySide6.QtGui import QImage

from picsift.engine.errors import ImageError
from picsift.engine.thumbnails import thumbnail


class _Signals(QObject):
    loaded = Signal(str, QImage)
    failed = Signal(str)


class _Job(QRunnable):
    def __init__(self, cache_dir: str, path: str, size: int, signals: _Signals):
        super().__init__()
        self.cache_dir, self.path, self.size, self.signals = cache_dir, path, size, signals

    def run(self) -> None:
        try:
            image = QImage(str(thumbnail(self.cache_dir, self.path, self.size)))
        except (ImageError, OSError):
            image = QImage()
        if image.isNull():
            self.signals.failed.emit(self.path)
        else:
            self.signals.loaded.emit(self.path, image)


class ThumbnailLoader(QObject):
    """Asks once per photo; answers with `loaded(path, QImage)` or `failed(path)`."""

    loaded = Signal(str, QImage)
    failed = Signal(str)

    def __init__(self, cache_dir: str, size: int = 256, parent: QObject | None = None):
        super().__init__(parent)
        self.cache_dir, self.size = cache_dir, size
        self.pool = QThreadPool(self)
        self.pool.setMaxThreadCount(2)
        self._signals = _Signals(self)
        self._signals.loaded.connect(self._done)
        self._signals.failed.connect(self._fail)
        self._pending: set[str] = set()

    def request(self, path: str) -> None:
        if path in self._pending:
            return
        self._pending.add(path)
        self.pool.start(_Job(self.cache_dir, path, self.size, self._signals))

    def _done(self, path: str, image: QImage) -> None:
        self._pending.discard(path)
        self.loaded.emit(path, image)

    def _fail(self, path: str) -> None:
        self._pending.discard(path)
        self.failed.emit(path)

    def shutdown(self) -> None:
        self.pool.clear()
        self.pool.waitForDone(10000)
