"""picsift.engine.index.scanner.scan: which files are listed, with what size and time, what is skipped, and what is
reported when a folder or link cannot be walked."""

from __future__ import annotations

import os
import threading

import pytest

from picsift.engine.index import scanner
from picsift.engine.index.scanner import FileEntry, scan

from conftest import make_photo


def _write(path, data: bytes = b"x") -> str:
    path = str(path)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as fh:
        fh.write(data)
    return path


def _paths(result) -> list[str]:
    return sorted(f.path for f in result.files)


def scan_within(root, seconds: float):
    """scan(root) on a thread; its result, or None when it has not finished within seconds."""
    results = []
    worker = threading.Thread(target=lambda: results.append(scan(str(root))), daemon=True)
    worker.start()
    worker.join(seconds)
    return results[0] if results else None


def fail_scandir(monkeypatch, folder: str, error: OSError) -> None:
    """Listing this one folder raises error; every other folder lists as usual."""
    real_scandir = os.scandir

    def scandir(path="."):
        if os.fspath(path) == folder:
            raise error
        return real_scandir(path)

    monkeypatch.setattr(scanner.os, "scandir", scandir)


def _rel(root, result) -> list[str]:
    return sorted(os.path.relpath(f.path, root) for f in result.files)


def test_lists_supported_files_recursively_with_size_and_mtime(tmp_path):
    root = tmp_path / "photos"
    a = make_photo(root / "a.jpg", seed=1, fmt="JPEG")
    b = make_photo(root / "trip" / "b.PNG", seed=2, fmt="PNG")
    c = make_photo(root / "trip" / "day 2" / "deep" / "c.webp", seed=3, fmt="WEBP")
    os.utime(b, ns=(1_600_000_000_123_456_789, 1_500_000_000_987_654_321))
    # Unsupported files are ignored, wherever they are.
    _write(root / "notes.txt", b"hello")
    _write(root / "trip" / "movie.mp4", b"\x00" * 10)
    _write(root / "trip" / "README", b"readme")
    _write(root / "trip" / "day 2" / "layers.xcf", b"gimp")

    result = scan(str(root))

    assert _paths(result) == sorted([a, b, c])
    by_path = {f.path: f for f in result.files}
    for path in (a, b, c):
        st = os.stat(path)
        assert by_path[path] == FileEntry(path, st.st_size, st.st_mtime_ns)
        assert by_path[path].size > 0
    assert by_path[b].mtime_ns == 1_500_000_000_987_654_321
    assert result.problems == []
    assert result.incomplete == []


def test_paths_are_absolute_even_for_a_relative_root(tmp_path, monkeypatch):
    make_photo(tmp_path / "photos" / "a.jpg", seed=1, fmt="JPEG")
    monkeypatch.chdir(tmp_path)
    result = scan("photos")
    assert _paths(result) == [str(tmp_path / "photos" / "a.jpg")]


def test_empty_root_yields_nothing(tmp_path):
    (tmp_path / "empty").mkdir()
    result = scan(str(tmp_path / "empty"))
    assert (result.files, result.problems, result.incomplete) == ([], [], [])


def test_hidden_and_junk_folders_and_hidden_files_are_skipped(tmp_path):
    root = tmp_path / "photos"
    keep = make_photo(root / "album" / "keep.jpg", seed=1, fmt="JPEG")
    for skipped in [".git", ".thumbnails", "album/.hidden", "node_modules", "album/@eaDir", "__MACOSX",
                    "album/node_modules/pkg"]:
        make_photo(root / skipped / "skip.jpg", seed=2, fmt="JPEG")
    make_photo(root / ".hidden.jpg", seed=3, fmt="JPEG")
    make_photo(root / "album" / "._resource.jpg", seed=4, fmt="JPEG")

    result = scan(str(root))

    assert _paths(result) == [keep]
    assert result.problems == []


def test_a_hidden_root_itself_is_scanned(tmp_path):
    # Skipping hidden folders applies to what is inside the root, not to the folder the user chose.
    photo = make_photo(tmp_path / ".photos" / "a.jpg", seed=1, fmt="JPEG")
    assert _paths(scan(str(tmp_path / ".photos"))) == [photo]


def test_folder_link_back_to_its_parent_does_not_loop_or_duplicate(tmp_path):
    root = tmp_path / "photos"
    a = make_photo(root / "a.jpg", seed=1, fmt="JPEG")
    b = make_photo(root / "sub" / "b.jpg", seed=2, fmt="JPEG")
    os.symlink(root / "sub", root / "sub" / "again")  # sub/again -> sub
    os.symlink("..", root / "sub" / "up")  # sub/up -> photos (relative)

    result = scan_within(root, 10)
    assert result is not None, "scan did not finish: it followed a folder link loop"
    assert _paths(result) == sorted([a, b])
    assert result.problems == []
    assert result.incomplete == []


def test_self_referencing_file_link_is_a_loop_problem(tmp_path):
    root = tmp_path / "photos"
    good = make_photo(root / "good.jpg", seed=1, fmt="JPEG")
    os.symlink("loop.jpg", root / "loop.jpg")
    result = scan(str(root))
    assert _paths(result) == [good]
    assert [p.path for p in result.problems] == [str(root / "loop.jpg")]
    assert "loop" in result.problems[0].reason.lower()
    assert result.incomplete == []


def test_broken_link_is_a_broken_problem(tmp_path):
    root = tmp_path / "photos"
    good = make_photo(root / "good.jpg", seed=1, fmt="JPEG")
    os.symlink(tmp_path / "nowhere" / "gone.jpg", root / "x.jpg")
    result = scan(str(root))
    assert _paths(result) == [good]
    assert [p.path for p in result.problems] == [str(root / "x.jpg")]
    assert "broken" in result.problems[0].reason.lower()


def test_broken_link_with_unsupported_name_is_ignored(tmp_path):
    root = tmp_path / "photos"
    root.mkdir()
    os.symlink(tmp_path / "nowhere", root / "notes.txt")
    os.symlink(tmp_path / "nowhere", root / "some folder")
    result = scan(str(root))
    assert (result.files, result.problems, result.incomplete) == ([], [], [])


def test_file_link_is_listed_with_the_target_size(tmp_path):
    root = tmp_path / "photos"
    target = make_photo(tmp_path / "elsewhere" / "t.jpg", seed=5, size=(64, 48), fmt="JPEG")
    root.mkdir()
    os.symlink(target, root / "linked.jpg")
    result = scan(str(root))
    assert len(result.files) == 1
    entry = result.files[0]
    assert entry.path == str(root / "linked.jpg")
    assert entry.size == os.path.getsize(target)
    assert entry.mtime_ns == os.stat(target).st_mtime_ns


def test_folder_linked_from_outside_the_root_is_followed_once(tmp_path):
    root = tmp_path / "photos"
    outside = tmp_path / "external"
    o1 = make_photo(outside / "o1.jpg", seed=1, fmt="JPEG")
    make_photo(outside / "nested" / "o2.png", seed=2, fmt="PNG")
    own = make_photo(root / "own.jpg", seed=3, fmt="JPEG")
    os.symlink(outside, root / "linked")
    os.symlink(outside, root / "z-linked-again")  # a second link to the same folder
    result = scan(str(root))
    rel = _rel(root, result)
    assert "own.jpg" in rel
    assert "linked/o1.jpg" in rel
    assert "linked/nested/o2.png" in rel
    assert len(rel) == 3, rel  # the second link adds no duplicates
    assert not any(p.startswith("z-linked-again") for p in rel)
    assert own in _paths(result) and o1 not in _paths(result)  # listed under the link's path
    assert result.problems == []


def test_missing_root_yields_nothing_and_is_incomplete(tmp_path):
    missing = tmp_path / "unplugged-drive" / "photos"
    result = scan(str(missing))
    assert result.files == []
    assert result.incomplete == [str(missing)]


def test_root_that_is_a_file_is_incomplete_not_a_crash(tmp_path):
    path = make_photo(tmp_path / "a.jpg", seed=1, fmt="JPEG")
    result = scan(path)
    assert result.files == []
    assert result.incomplete == [path]


def test_unreadable_subfolder_is_incomplete_and_reported(tmp_path, monkeypatch):
    root = tmp_path / "photos"
    top = make_photo(root / "top.jpg", seed=1, fmt="JPEG")
    make_photo(root / "locked" / "hidden-from-us.jpg", seed=2, fmt="JPEG")
    sibling = make_photo(root / "open" / "fine.jpg", seed=3, fmt="JPEG")
    locked = str(root / "locked")
    fail_scandir(monkeypatch, locked, PermissionError(13, "Permission denied", locked))
    result = scan(str(root))

    assert _paths(result) == sorted([top, sibling])
    assert result.incomplete == [locked]
    assert len(result.problems) == 1
    assert result.problems[0].path == locked
    assert "permission denied" in result.problems[0].reason.lower()


def test_unreadable_root_is_incomplete_and_reported(tmp_path, monkeypatch):
    root = tmp_path / "photos"
    make_photo(root / "a.jpg", seed=1, fmt="JPEG")
    fail_scandir(monkeypatch, str(root), PermissionError(13, "Permission denied", str(root)))
    result = scan(str(root))
    assert result.files == []
    assert result.incomplete == [str(root)]
    assert [p.path for p in result.problems] == [str(root)]
    assert "permission denied" in result.problems[0].reason.lower()


def test_folder_vanishing_during_the_scan_is_incomplete(tmp_path, monkeypatch):
    root = tmp_path / "photos"
    keep = make_photo(root / "keep.jpg", seed=1, fmt="JPEG")
    make_photo(root / "going" / "g.jpg", seed=2, fmt="JPEG")
    going = str(root / "going")
    fail_scandir(monkeypatch, going, FileNotFoundError(2, "No such file or directory", going))
    result = scan(str(root))
    assert _paths(result) == [keep]
    assert going in result.incomplete


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs on this platform")
def test_fifo_named_like_a_photo_is_ignored_without_blocking(tmp_path):
    root = tmp_path / "photos"
    good = make_photo(root / "good.jpg", seed=1, fmt="JPEG")
    os.mkfifo(root / "photo.jpg")

    result = scan_within(root, 10)
    if result is None:
        # Unblock a reader stuck on the FIFO so the thread can end, then fail.
        fd = os.open(root / "photo.jpg", os.O_WRONLY | os.O_NONBLOCK)
        os.close(fd)
        pytest.fail("scan blocked on a FIFO")
    assert _paths(result) == [good]
    assert result.problems == []


def test_folder_named_like_a_photo_is_walked_not_listed(tmp_path):
    root = tmp_path / "photos"
    inner = make_photo(root / "album.jpg" / "inner.jpg", seed=1, fmt="JPEG")
    result = scan(str(root))
    assert _paths(result) == [inner]
