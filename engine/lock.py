"""The library's write lock: one writer at a time, across processes; readers never take it.

Two writers (two `picsift index` runs, or the window and a terminal) must not write one library at
once. The lock is an OS file lock (flock on POSIX, msvcrt.locking on Windows) on `write.lock` in the
library folder, so the operating system drops it when its process ends, killed or not: there is
never a stale lock to clean up. Beside it, `write.lock.json` names the holder (pid, host, command,
start time) so that a waiting process can say who it waits for:

    lock = LibraryLock(folder, command="picsift index")
    with lock.acquire(on_wait=lambda h: print(f"the library is being written by {describe(h)}; waiting...")):
        ...write...

Searching and other reading never take the lock. The lock file itself is never deleted: removing a
locked file lets the next writer lock a new file of the same name beside a holder of the old one.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

from .errors import LibraryBusyError, LibraryError

if sys.platform.startswith("win"):  # pragma: no cover - exercised on Windows only
    import msvcrt

    def _try_lock(fd: int) -> bool:
        os.lseek(fd, 0, os.SEEK_SET)
        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        except OSError:
            return False
        return True

    def _unlock(fd: int) -> None:
        os.lseek(fd, 0, os.SEEK_SET)
        msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)

else:
    import errno
    import fcntl

    def _try_lock(fd: int) -> bool:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno in (errno.EAGAIN, errno.EWOULDBLOCK, errno.EACCES):
                return False
            raise
        return True

    def _unlock(fd: int) -> None:
        fcntl.flock(fd, fcntl.LOCK_UN)


LOCK_NAME = "write.lock"
HOLDER_NAME = "write.lock.json"


@dataclass(frozen=True)
class LockHolder:
    """Who holds (or last held) a library's write lock."""

    pid: int
    host: str
    command: str
    started: float  # seconds since the epoch

    def describe(self, now: float | None = None) -> str:
        """For example "picsift index (pid 1234) since 20:31", with the date when not today and
        the host when not this one."""
        start, today = time.localtime(self.started), time.localtime(time.time() if now is None else now)
        same_day = start[:3] == today[:3]
        since = time.strftime("%H:%M" if same_day else "%Y-%m-%d %H:%M", start)
        where = "" if self.host == socket.gethostname() else f" on {self.host}"
        return f"{self.command} (pid {self.pid}{where}) since {since}"

    def is_alive(self) -> bool | None:
        """False when the holder is known to have ended (same host, no such process); None when unknown."""
        if self.host != socket.gethostname() or sys.platform.startswith("win"):
            return None  # os.kill(pid, 0) would terminate the process on Windows
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        except OSError:
            return True  # it exists, as another user
        return True


def describe(holder: LockHolder | None) -> str:
    """A holder's description, or "another process" when it is not known (yet)."""
    return holder.describe() if holder is not None else "another process"


class LibraryLock:
    """The write lock of the library in `folder`.

    `command` is what the holder is doing, as others will read it ("picsift index", "the picsift
    window"); by default the program name and its first argument. The lock is reentrant for the
    thread that holds it (nested `acquire`s need as many `release`s); another thread, through this
    object or another, and another process wait for it. The thread that holds it through one
    LibraryLock asking through another without a timeout gets RuntimeError instead of waiting for
    itself forever.

    `with lock:` waits as long as it takes; `with lock.acquire(timeout=5, on_wait=...):` and
    `with lock.try_acquire():` release at the end of the block too, and `acquire()` without `with`
    needs a `release()`.
    """

    def __init__(self, folder: str | os.PathLike, command: str | None = None):
        self.folder = Path(folder)
        self.path = self.folder / LOCK_NAME
        self.holder_path = self.folder / HOLDER_NAME
        self.command = command or _default_command()
        self._key = os.path.normcase(os.path.abspath(self.path))
        self._mutex = threading.RLock()
        self._depth = 0
        self._owner: int | None = None  # the thread holding it
        self._fd: int | None = None

    # ----- taking and giving back -------------------------------------------
    def acquire(self, timeout: float | None = None, on_wait: Callable[[LockHolder | None], None] | None = None,
                poll: float = 0.1) -> "Acquired":
        """Take the lock, waiting up to `timeout` seconds (None: as long as it takes; 0: not at all).

        When the lock is busy, `on_wait(holder)` is called before waiting, and again whenever the
        holder changes; holder is None when the other writer has not said who it is (yet). An
        exception raised by `on_wait` stops the wait and propagates, which is how a caller cancels.
        Raises LibraryBusyError, naming the holder, when the timeout passes, and LibraryError when
        the lock file cannot be made.
        """
        deadline = None if timeout is None else time.monotonic() + max(0.0, timeout)
        seen: object = _NOT_YET
        while not self._try(forever=timeout is None):
            holder = self.holder()
            if on_wait is not None and holder != seen:
                seen = holder
                on_wait(holder)
            if deadline is not None and time.monotonic() >= deadline:
                self._close_if_unheld()
                raise LibraryBusyError(f"The library is being written by {describe(holder)}.", holder)
            time.sleep(poll if deadline is None else max(0.0, min(poll, deadline - time.monotonic())))
        return Acquired(self)

    def try_acquire(self) -> "Acquired":
        """Take the lock now or raise LibraryBusyError naming the holder."""
        return self.acquire(timeout=0)

    def release(self) -> None:
        """Give back one level of the lock; the last one lets the next writer in."""
        if self._depth == 0 or self._owner != threading.get_ident():
            raise RuntimeError("release of a library lock that this thread does not hold")
        self._depth -= 1
        if self._depth == 0:
            self._owner = None
            try:
                self.holder_path.unlink()
            except OSError:
                pass
            self._unlock_and_close()
        self._mutex.release()  # the level taken by the acquire this release answers

    @property
    def held(self) -> bool:
        """Whether this object holds the lock (in any of this process's threads)."""
        return self._depth > 0

    def holder(self) -> LockHolder | None:
        """Who holds the lock, as its holder wrote; None when nobody (still alive) says so."""
        try:
            data = json.loads(self.holder_path.read_text(encoding="utf-8"))
            holder = LockHolder(int(data["pid"]), str(data["host"]), str(data["command"]), float(data["started"]))
        except (OSError, ValueError, KeyError, TypeError):
            return None
        return None if holder.is_alive() is False else holder

    def __enter__(self) -> "LibraryLock":
        return self.acquire()._lock

    def __exit__(self, *exc) -> None:
        self.release()

    # ----- inside ----------------------------------------------------------
    def _try(self, forever: bool) -> bool:
        if not self._mutex.acquire(blocking=False):
            return False  # another thread holds it through this object
        if self._depth > 0:
            self._depth += 1
            return True
        try:
            with _held_lock:
                mine = _held_here.get(self._key) == threading.get_ident()
            if mine:  # held by this very thread through another LibraryLock: busy, and never freed by waiting
                if forever:
                    raise RuntimeError(f"this thread already holds {self.path} through another LibraryLock")
                self._mutex.release()
                return False
            if self._fd is None:
                self._fd = self._open()
            if not _try_lock(self._fd):
                self._mutex.release()
                return False
            with _held_lock:
                _held_here[self._key] = threading.get_ident()
            self._depth, self._owner = 1, threading.get_ident()
            self._write_holder()
            return True
        except BaseException:
            self._depth, self._owner = 0, None
            self._unlock_and_close()
            self._mutex.release()
            raise

    def _open(self) -> int:
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            return os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise LibraryError(f"cannot create the library's lock file {self.path}: {exc.strerror or exc}") from exc

    def _close_if_unheld(self) -> None:
        """After a wait that gave up: close the file unless a thread of ours holds or is trying it."""
        if self._mutex.acquire(blocking=False):
            try:
                if self._depth == 0 and self._fd is not None:
                    fd, self._fd = self._fd, None
                    os.close(fd)
            finally:
                self._mutex.release()

    def _unlock_and_close(self) -> None:
        with _held_lock:
            if _held_here.get(self._key) == threading.get_ident():
                del _held_here[self._key]
        fd, self._fd = self._fd, None
        if fd is not None:
            try:
                _unlock(fd)
            except OSError:
                pass  # closing releases it anyway
            finally:
                os.close(fd)

    def _write_holder(self) -> None:
        me = LockHolder(os.getpid(), socket.gethostname(), self.command, time.time())
        try:
            fd, tmp = tempfile.mkstemp(dir=self.folder, prefix=HOLDER_NAME + ".", suffix=".tmp")
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(asdict(me), f)
            os.replace(tmp, self.holder_path)
        except OSError:
            pass  # only the description is lost; the lock itself holds


class Acquired:
    """What `acquire` returns: a held lock that a `with` block releases at its end."""

    def __init__(self, lock: LibraryLock):
        self._lock = lock

    def __enter__(self) -> LibraryLock:
        return self._lock

    def __exit__(self, *exc) -> None:
        self._lock.release()


_NOT_YET = object()
_held_lock = threading.Lock()
_held_here: dict[str, int] = {}  # lock files this process holds, by the thread holding each


def _default_command() -> str:
    """The program and its subcommand, as `picsift index /photos` gives "picsift index"."""
    argv = sys.argv or [""]
    if argv[0] in ("", "-c", "-"):
        return "python"
    prog = os.path.basename(argv[0])
    if prog == "__main__.py":  # python -m package
        prog = os.path.basename(os.path.dirname(argv[0]))
    for suffix in (".exe", ".py"):
        prog = prog.removesuffix(suffix)
    return " ".join([prog, *[a for a in argv[1:2] if not a.startswith("-")]])
