"""The library write lock, with real processes: waiting, refusing, and surviving a killed holder."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from picsift.engine.errors import LibraryBusyError, LibraryError
from picsift.engine.lock import HOLDER_NAME, LibraryLock, LockHolder, describe

REPO = Path(__file__).resolve().parent.parent

# A writer in another process: takes the lock, says so, waits for a line on stdin (or is killed),
# leaves a mark, then releases.
WRITER = r"""
import sys
from picsift.engine.lock import LibraryLock
lock = LibraryLock(sys.argv[1], command="picsift index")
lock.acquire()
print("held", flush=True)
sys.stdin.readline()
open(sys.argv[2], "w").write("written")
lock.release()
print("released", flush=True)
"""


@pytest.fixture
def writer(tmp_path):
    """Start a writer process on tmp_path/lib; returns (process, mark file)."""
    procs = []

    def start():
        mark = tmp_path / f"mark-{len(procs)}"
        env = dict(os.environ, PYTHONPATH=str(REPO))
        proc = subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path / "lib"), str(mark)], cwd=REPO, env=env,
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        procs.append(proc)
        assert proc.stdout.readline().strip() == "held"
        return proc, mark

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)
        proc.stdin.close()
        proc.stdout.close()


def _let_go(proc):
    proc.stdin.write("go\n")
    proc.stdin.flush()


def test_second_writer_waits_until_the_first_releases(tmp_path, writer):
    proc, mark = writer()
    waits = []

    def on_wait(holder):
        waits.append(holder)
        assert not mark.exists()
        _let_go(proc)  # the first writer finishes only once we are waiting

    lock = LibraryLock(tmp_path / "lib", command="picsift gui")
    with lock.acquire(timeout=30, on_wait=on_wait):
        assert mark.read_text() == "written"  # it finished its write before we got in
        assert lock.held and lock.holder().pid == os.getpid() and lock.holder().command == "picsift gui"
    assert len(waits) == 1 and waits[0].pid == proc.pid and waits[0].command == "picsift index"
    assert f"picsift index (pid {proc.pid})" in describe(waits[0])
    assert proc.stdout.readline().strip() == "released"
    assert not lock.held and not (tmp_path / "lib" / HOLDER_NAME).exists()


def test_try_variant_names_the_holder(tmp_path, writer):
    proc, _ = writer()
    lock = LibraryLock(tmp_path / "lib")
    with pytest.raises(LibraryBusyError, match=rf"picsift index \(pid {proc.pid}\) since \d\d:\d\d") as caught:
        lock.try_acquire()
    assert isinstance(caught.value, LibraryError)
    assert caught.value.holder.pid == proc.pid and caught.value.holder.host == socket.gethostname()
    t = time.monotonic()
    with pytest.raises(LibraryBusyError, match=str(proc.pid)):
        lock.acquire(timeout=0.3)
    assert time.monotonic() - t >= 0.3
    assert not lock.held
    _let_go(proc)
    proc.wait(timeout=10)
    with lock.try_acquire():
        assert lock.held


def test_a_killed_holder_leaves_no_stale_lock(tmp_path, writer):
    proc, mark = writer()
    assert LibraryLock(tmp_path / "lib").holder().pid == proc.pid
    proc.kill()  # SIGKILL on POSIX, TerminateProcess on Windows: no chance to release
    proc.wait(timeout=10)
    lock = LibraryLock(tmp_path / "lib")
    if sys.platform != "win32":
        assert lock.holder() is None  # its description is left behind, but it names a process that is gone
    with lock.try_acquire():
        assert lock.holder().pid == os.getpid()
    assert not mark.exists()  # it never got to finish: the lock was freed by its death, not by a release


def test_threads_of_one_process_take_turns(tmp_path):
    first, second = LibraryLock(tmp_path), LibraryLock(tmp_path)
    order = []
    first.acquire()
    waiting = threading.Event()

    def other():
        with second.acquire(timeout=30, on_wait=lambda holder: waiting.set()):
            order.append("second")

    t = threading.Thread(target=other)
    t.start()
    assert waiting.wait(10)
    order.append("first")
    first.release()
    t.join(10)
    assert order == ["first", "second"] and not second.held
    # One object shared by two threads: the other thread waits too.
    shared = LibraryLock(tmp_path)
    errors = []

    def try_shared():
        try:
            shared.try_acquire()
        except LibraryBusyError as exc:
            errors.append(exc)

    with shared:
        t = threading.Thread(target=try_shared)
        t.start()
        t.join(10)
    assert len(errors) == 1 and errors[0].holder.pid == os.getpid()


def test_reentrant_for_its_holder_and_no_self_deadlock(tmp_path):
    lock, other = LibraryLock(tmp_path), LibraryLock(tmp_path)
    with lock:
        with lock.try_acquire():
            pass
        assert lock.held  # the inner block gave back only its own level
        with pytest.raises(LibraryBusyError):
            other.try_acquire()
        with pytest.raises(RuntimeError):
            other.acquire()  # waiting forever on ourselves would never end
    assert not lock.held
    with other.try_acquire():
        pass
    with pytest.raises(RuntimeError):
        lock.release()


def test_on_wait_can_cancel_the_wait(tmp_path, writer):
    writer()

    class Cancelled(Exception):
        pass

    def cancel(holder):
        raise Cancelled

    lock = LibraryLock(tmp_path / "lib")
    with pytest.raises(Cancelled):
        lock.acquire(on_wait=cancel)
    assert not lock.held


def test_holder_description():
    at = time.mktime((2024, 5, 17, 20, 31, 0, 0, 0, -1))
    me = LockHolder(1234, socket.gethostname(), "picsift index", at)
    assert me.describe(now=at + 3600) == "picsift index (pid 1234) since 20:31"
    assert me.describe(now=at + 3 * 86400) == "picsift index (pid 1234) since 2024-05-17 20:31"
    away = LockHolder(1234, "other-host", "picsift index", at)
    assert away.describe(now=at) == "picsift index (pid 1234 on other-host) since 20:31"
    assert away.is_alive() is None and describe(None) == "another process"


def test_unwritable_folder_is_a_library_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_bytes(b"")
    with pytest.raises(LibraryError):
        LibraryLock(blocker / "lib").try_acquire()
