"""Engine generators on worker threads: records on the GUI thread, cancel through the engine's
token, failure messages, done(completed), and no job left running."""

from __future__ import annotations

import logging
import threading
import time
import warnings

import pytest

pytest.importorskip("PySide6")

from PySide6.QtCore import QTimer  # noqa: E402

from picsift.workers import GeneratorThread, _job_pool  # noqa: E402
from picsift.engine.errors import PicsiftError  # noqa: E402


@pytest.fixture(autouse=True)
def _no_job_left_running():
    yield
    assert _job_pool().waitForDone(10_000), "an engine job outlived its test"


def test_records_come_to_the_gui_thread_in_order_then_done(qtbot):
    from superqt.utils import GeneratorWorker

    gui = threading.get_ident()
    made_on, seen = [], []

    def make(token):
        made_on.append(threading.get_ident())
        for i in range(5):
            yield i

    job = GeneratorThread(make, name="picsift-test")
    assert isinstance(job.worker, GeneratorWorker)  # superqt runs the generator
    job.record.connect(lambda r: seen.append((r, threading.get_ident())))
    finished = []
    job.finished.connect(lambda: finished.append(True))
    with qtbot.waitSignal(job.done, timeout=10_000) as done:
        job.start()
    assert done.args == [True]
    assert [r for r, _ in seen] == [0, 1, 2, 3, 4]
    assert all(ident == gui for _, ident in seen)
    assert made_on and made_on[0] != gui  # the generator itself ran off the GUI thread
    qtbot.waitUntil(lambda: bool(finished), timeout=5000)
    assert job.wait(1000) and not job.isRunning()


def test_cancel_is_seen_by_the_generator_and_its_last_record_still_comes(qtbot):
    """As the engine does: check the token between batches, then yield a final 'cancelled' record."""

    def make(token):
        i = 0
        while not token.cancelled:
            yield ("batch", i)
            i += 1
            time.sleep(0.01)
        yield ("cancelled", i)

    job = GeneratorThread(make)
    seen, failed = [], []
    job.record.connect(lambda r: (seen.append(r), r == ("batch", 2) and job.cancel()))
    job.failed.connect(failed.append)
    with qtbot.waitSignal(job.done, timeout=10_000) as done:
        job.start()
    assert done.args == [False]
    assert seen[:3] == [("batch", 0), ("batch", 1), ("batch", 2)] and seen[-1][0] == "cancelled"
    assert failed == []
    assert job.wait(1000) and not job.isRunning()


@pytest.mark.parametrize("error, message", [
    (PicsiftError("No caption collection named 'x'."), "No caption collection named 'x'."),
    (ValueError("bad shape"), "Something went wrong: ValueError: bad shape"),
    # torch reports most failures as RuntimeError, which superqt's own run() swallows silently
    (RuntimeError("CUDA error: device-side assert triggered"),
     "Something went wrong: RuntimeError: CUDA error: device-side assert triggered"),
])
def test_a_failure_becomes_one_message_and_done_false(qtbot, caplog, error, message):
    def make(token):
        yield "first"
        raise error

    job = GeneratorThread(make, name="picsift-failing")
    seen, failed = [], []
    job.record.connect(seen.append)
    job.failed.connect(failed.append)
    with caplog.at_level(logging.ERROR, logger="picsift.app"):
        with qtbot.waitSignal(job.done, timeout=10_000) as done:
            job.start()
    assert done.args == [False]
    assert seen == ["first"] and failed == [message]
    logged = [r for r in caplog.records if r.name == "picsift.app"]
    if isinstance(error, PicsiftError):
        assert logged == []  # a message for the user, not a bug
    else:
        assert len(logged) == 1 and "picsift-failing" in logged[0].getMessage() and logged[0].exc_info
    assert job.wait(1000) and not job.isRunning()


def test_overlapping_jobs_leave_the_process_warning_settings_alone(qtbot):
    """superqt's WorkerBase.run swaps the process-wide warning filters per job (not thread-safe):
    a job that starts after another and ends after it would leave the first one's settings behind."""
    filters, showwarning = list(warnings.filters), warnings.showwarning
    second_in, first_out = threading.Event(), threading.Event()

    def first(token):
        yield "first"
        assert second_in.wait(5)

    def second(token):
        second_in.set()
        yield "second"
        assert first_out.wait(5)

    a, b = GeneratorThread(first), GeneratorThread(second)
    a.done.connect(lambda _: first_out.set())
    with qtbot.waitSignal(a.record, timeout=10_000):
        a.start()
    with qtbot.waitSignals([a.done, b.done], timeout=10_000):
        b.start()
    assert warnings.filters == filters and warnings.showwarning is showwarning


def test_a_job_started_from_the_event_loop_can_be_waited_for_at_once(qtbot):
    """A window closing right after starting a job cancels it and waits, inside the event loop."""
    def make(token):
        while not token.cancelled:
            yield None
            time.sleep(0.01)

    job = GeneratorThread(make)
    waited = []

    def start_cancel_wait():
        job.start()
        job.cancel()
        t = time.monotonic()
        waited.append((job.wait(5000), time.monotonic() - t))

    QTimer.singleShot(0, start_cancel_wait)
    qtbot.waitUntil(lambda: bool(waited), timeout=10_000)
    ended, seconds = waited[0]
    assert ended and seconds < 2 and not job.isRunning()
