"""The watched library: photo changes in the library's folders are debounced into batches of folders to
index again; hidden, junk, excluded and non-photo changes are ignored."""

from __future__ import annotations

import os
import threading
import time

import pytest

from conftest import make_photo

pytest.importorskip("watchdog")


@pytest.fixture
def watcher():
    from picsift.engine.watch import FolderWatcher

    batches: list[list[str]] = []
    got = threading.Event()

    def on_batch(folders):
        batches.append(folders)
        got.set()

    w = FolderWatcher(on_batch, debounce=0.5, max_wait=5.0)
    w.batches, w.got = batches, got
    yield w
    w.stop()


def _wait(w, timeout=10.0) -> bool:
    ok = w.got.wait(timeout)
    w.got.clear()
    return ok


def test_new_photos_arrive_as_one_batch_of_their_library_folder(watcher, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    assert watcher.watch([str(a), str(b)]) == []
    for i in range(5):  # a burst: one batch once it has been quiet for the debounce
        make_photo(a / "new" / f"p{i}.jpg", seed=i)
    assert _wait(watcher)
    time.sleep(1.0)
    assert watcher.batches == [[str(a)]]
    os.remove(a / "new" / "p0.jpg")  # a deletion is a change too
    assert _wait(watcher) and watcher.batches[-1] == [str(a)]
    os.rename(a / "new" / "p1.jpg", b / "p1.jpg")  # a move between folders: both
    assert _wait(watcher)
    time.sleep(1.0)
    assert sorted(f for batch in watcher.batches[2:] for f in batch) == [str(a), str(b)]


def test_hidden_junk_excluded_and_non_photo_changes_are_ignored(watcher, tmp_path):
    root = tmp_path / "lib"
    (root / "skip").mkdir(parents=True)
    (root / ".hidden").mkdir()
    (root / "@eaDir").mkdir()
    watcher.watch([str(root)], excluded=[str(root / "skip")])
    make_photo(root / "skip" / "p.jpg", seed=1)
    make_photo(root / ".hidden" / "p.jpg", seed=2)
    make_photo(root / "@eaDir" / "p.jpg", seed=3)
    (root / "notes.txt").write_text("not a photo")
    assert not _wait(watcher, timeout=2.5) and watcher.batches == []
    make_photo(root / "ok.png", seed=4)
    assert _wait(watcher) and watcher.batches == [[str(root)]]


def test_a_folder_that_cannot_be_watched_is_reported_and_the_rest_watched(watcher, tmp_path):
    ok = tmp_path / "ok"
    ok.mkdir()
    problems = watcher.watch([str(tmp_path / "gone"), str(ok)])
    assert len(problems) == 1 and "gone" in problems[0]
    make_photo(ok / "p.jpg", seed=1)
    assert _wait(watcher) and watcher.batches == [[str(ok)]]


def test_picsift_watch_indexes_changes_as_they_happen(tiny_model_dir, photo_folder, tmp_path, _isolated_home):
    import signal
    import subprocess
    import sys

    from picsift.engine.cli import main
    from picsift.engine.library import Library

    lib = tmp_path / "lib"
    assert main(["index", str(photo_folder), "--library", str(lib), "--model", str(tiny_model_dir), "-q"]) == 0
    # As from a terminal: SIGINT at its default in the child. An ignored SIGINT is inherited through exec, and a
    # Python started with it ignored never raises KeyboardInterrupt; by the time this test ran in the whole
    # suite the process had it ignored (SigIgn in /proc showed it), and the watch never stopped.
    proc = subprocess.Popen([sys.executable, "-m", "picsift.engine.cli", "watch", "--library", str(lib),
                             "--debounce", "0.3"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        first = proc.stdout.readline()  # the first pass over the folders
        assert "Nothing new to embed" in first, first + proc.stderr.read() if proc.poll() is not None else first
        make_photo(photo_folder / "home" / "arrived.jpg", seed=77)
        line = proc.stdout.readline()
        assert "1 embedded" in line, line
        library = Library(lib)
        assert library.store.count_photos() == 13
        library.close()
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            out, err = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()  # never left running after the test
            proc.communicate()
            raise
    assert proc.returncode == 130 and "interrupted" in err
