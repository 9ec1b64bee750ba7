"""The library never loses or mixes anything: nested folders, copies, exact folder matching, two processes,
damaged files, a read-only disk, model identity, schema 1 libraries."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from conftest import make_photo
from picsift.engine.errors import LibraryDamagedError, LibraryReadOnlyError
from picsift.engine.index.indexer import index_folders
from picsift.engine.library import Library
from picsift.engine.search.searcher import Searcher


def run(library, model, folders, **kw):
    records = list(index_folders(library, model, [str(f) for f in folders], **kw))
    return records[-1]


def faiss_ids(library):
    import faiss

    return sorted(faiss.vector_to_array(library.index.index.id_map).tolist())


def cli(*args, check=True):
    proc = subprocess.run([sys.executable, "-m", "picsift.engine.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=300)
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


# ----- one photo, one row ----------------------------------------------------------------
@pytest.mark.parametrize("order", ["parent first", "child first", "together"])
def test_nested_library_folders_hold_each_photo_once(library, tiny_model, photo_folder, order):
    sub = photo_folder / "trips"
    if order == "parent first":
        run(library, tiny_model, [photo_folder])
        last = run(library, tiny_model, [sub])
    elif order == "child first":
        run(library, tiny_model, [sub])
        last = run(library, tiny_model, [photo_folder])
    else:
        last = run(library, tiny_model, [photo_folder, sub])
    assert library.store.count_photos() == 12 and len(faiss_ids(library)) == 12
    hits = Searcher(library, tiny_model).search("a dog", n=30, k=0)
    assert len(hits) == 12 == len({h.path for h in hits})
    assert last.embedded == (6 if order == "child first" else 0 if order == "parent first" else 12)
    # Removing the inner folder keeps its photos: the outer folder still holds them.
    assert library.remove_folder(str(sub)) == 0 and library.store.count_photos() == 12
    assert library.store.folders() == [str(photo_folder)]


def test_a_rename_and_a_copy_in_one_rescan_keep_both(library, tiny_model, photo_folder):
    run(library, tiny_model, [photo_folder])
    src = photo_folder / "home" / "photo_00.jpg"
    row = library.store.photo(str(src))
    shutil.copy2(src, photo_folder / "trips" / "copy.jpg")
    os.rename(src, photo_folder / "home" / "renamed.jpg")
    last = run(library, tiny_model, [photo_folder])
    assert (last.moved, last.copies, last.embedded, last.removed) == (1, 1, 0, 0)
    moved = library.store.photo(str(photo_folder / "home" / "renamed.jpg"))
    copy = library.store.photo(str(photo_folder / "trips" / "copy.jpg"))
    assert moved.id == row.id and copy.id != row.id and copy.hash == row.hash
    np.testing.assert_array_equal(library.store.vector(copy.id), library.store.vector(row.id))
    assert library.store.count_photos() == 13 and len(faiss_ids(library)) == 13
    paths = {h.path for h in Searcher(library, tiny_model).search("a dog", n=30, k=0)}
    assert {moved.path, copy.path} <= paths and str(src) not in paths


def test_folders_match_exactly_not_by_case_or_prefix(library, tiny_model, tmp_path):
    root = tmp_path / "data"
    for name, seed in (("Trip", 1), ("trip", 2), ("Trip2", 3), ("Trip_x", 4)):
        make_photo(root / name / "a.png", seed=seed)
    run(library, tiny_model, [root / n for n in ("Trip", "trip", "Trip2", "Trip_x")])
    searcher = Searcher(library, tiny_model)
    scoped = searcher.search("a dog", n=10, k=2, scope=str(root / "Trip"))
    assert [h.path for h in scoped] == [str(root / "Trip" / "a.png")]
    assert library.remove_folder(str(root / "Trip")) == 1
    left = sorted(library.store.paths(library.store.vectors()[0].tolist()).values())
    assert left == [str(root / n / "a.png") for n in ("Trip2", "Trip_x", "trip")]


# ----- two processes ------------------------------------------------------------------------
def test_a_writer_in_another_process_never_leaves_a_stale_index_stamped_current(tmp_path, tiny_model, tiny_model_dir):
    lib_dir = tmp_path / "lib"
    first, second = tmp_path / "first", tmp_path / "second"
    for i in range(4):
        make_photo(first / f"{i}.png", seed=i)
        make_photo(second / f"{i}.png", seed=50 + i)
    window = Library(lib_dir)  # a long-lived process, as the window is
    try:
        run(window, tiny_model, [first])
        assert window.index.ntotal == 4
        cli("index", second, "--library", lib_dir, "--model", tiny_model_dir, "-q")  # the terminal, meanwhile
        make_photo(first / "new.png", seed=99)
        run(window, tiny_model, [first])  # the window writes again and saves its index
        assert window.index.ntotal == 9
    finally:
        window.close()
    with Library(lib_dir) as fresh:  # after a restart: every photo in the database is searchable
        assert fresh.store.count_photos() == 9
        assert len(Searcher(fresh, tiny_model).search("a dog", n=20, k=0)) == 9
        assert not fresh.notices


def test_two_index_runs_at_once_take_turns_and_leave_a_complete_index(tmp_path, tiny_model_dir, tiny_model):
    from picsift.engine.lock import LibraryLock

    lib_dir = tmp_path / "lib"
    Library(lib_dir).close()
    folders = [tmp_path / "a", tmp_path / "b"]
    for f, base in zip(folders, (0, 100)):
        for i in range(30):
            make_photo(f / f"{i:02d}.png", seed=base + i, size=(300, 200))
    held = LibraryLock(lib_dir, "a test holding the library").acquire()  # both start while it is busy
    logs = [tmp_path / "a.log", tmp_path / "b.log"]
    procs = [subprocess.Popen([sys.executable, "-m", "picsift.engine.cli", "index", str(f), "--library", str(lib_dir),
                               "--model", str(tiny_model_dir), "--batch-size", "2"], stdout=subprocess.DEVNULL,
                              stderr=open(log, "w")) for f, log in zip(folders, logs)]
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not all("Waiting" in log.read_text() for log in logs):
        time.sleep(0.1)
    waited = [log.read_text() for log in logs]
    with held:
        pass  # released: they go one after the other
    assert [p.wait(timeout=300) for p in procs] == [0, 0], [log.read_text() for log in logs]
    assert all("a test holding the library" in w for w in waited)  # each said who it waited for
    with Library(lib_dir) as lib:
        assert lib.store.count_photos() == 60
        assert len(faiss_ids(lib)) == 60 and not lib.notices
        assert len(Searcher(lib, tiny_model).search("a dog", n=100, k=0)) == 60


def test_index_repairs_an_index_that_misses_photos(tmp_path, tiny_model, photo_folder):
    lib_dir = tmp_path / "lib"
    with Library(lib_dir) as lib:
        run(lib, tiny_model, [photo_folder])
        vi = lib.index
        vi.remove(faiss_ids(lib)[:5])  # as a crashed writer could leave it
        lib._save(lib.store.be_key, vi)  # stamped current, yet short
    with Library(lib_dir) as lib:
        assert lib.index.ntotal == 7
        last = run(lib, tiny_model, [photo_folder])
        assert last.embedded == 0 and any("rebuilt" in m for m in lib.notices)
        assert lib.index.ntotal == 12


# ----- damage ---------------------------------------------------------------------------------
def test_a_damaged_rerank_cache_is_rebuilt_with_a_notice(tmp_path, tiny_model, photo_folder):
    lib_dir = tmp_path / "lib"
    with Library(lib_dir) as lib:
        run(lib, tiny_model, [photo_folder])
    for suffix in ("-wal", "-shm"):
        (lib_dir / f"rerank_cache.db{suffix}").unlink(missing_ok=True)
    (lib_dir / "rerank_cache.db").write_bytes(b"this is no database" * 500)
    with Library(lib_dir) as lib:
        assert any("rerank cache" in n and "rebuilt" in n for n in lib.notices)
        hits = Searcher(lib, tiny_model).search("a dog", n=5, k=5)
        assert all(h.rerank_score is not None for h in hits) and lib.tokens.count() == 5
    proc = cli("status", "--library", lib_dir)
    assert "Traceback" not in proc.stderr


def _damage_a_page(db_path):
    con = sqlite3.connect(db_path)
    con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    page = con.execute("PRAGMA page_size").fetchone()[0]
    root = con.execute("SELECT rootpage FROM sqlite_master WHERE name = 'photos'").fetchone()[0]
    con.close()
    with open(db_path, "r+b") as fh:
        fh.seek((root - 1) * page)
        fh.write(b"\xff" * page)


def test_a_damaged_library_database_gives_one_sentence_and_the_way_back(tmp_path, tiny_model, photo_folder,
                                                                        tiny_model_dir):
    lib_dir = tmp_path / "lib"
    with Library(lib_dir) as lib:
        run(lib, tiny_model, [photo_folder])
    _damage_a_page(lib_dir / "library.db")
    with pytest.raises(LibraryDamagedError, match="damaged.*index"):
        Library(lib_dir)
    for command in (["status"], ["search", "a dog"], ["index"]):
        proc = cli(*command, "--library", lib_dir, "--model", tiny_model_dir, check=False)
        assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
        assert "damaged" in proc.stderr and "picsift index" in proc.stderr


def test_bytes_flipped_in_the_index_file_are_caught_and_it_is_rebuilt(tmp_path, tiny_model, photo_folder):
    lib_dir = tmp_path / "lib"
    with Library(lib_dir) as lib:
        run(lib, tiny_model, [photo_folder])
        path = lib.index_path(lib.store.be_key)
    data = bytearray(path.read_bytes())
    for i in range(len(data) // 2, len(data) // 2 + 64):
        data[i] ^= 0x5A
    path.write_bytes(bytes(data))
    with Library(lib_dir) as lib:
        hits = Searcher(lib, tiny_model).search("a dog", n=12, k=0)
        assert any("rebuilt" in n for n in lib.notices)
        assert len(hits) == 12 and all(-1.0 <= h.score <= 1.0 for h in hits)


def test_unchanged_and_cancelled_runs_do_not_rewrite_the_index(library, tiny_model, photo_folder):
    from picsift.engine.jobs import CancelToken

    run(library, tiny_model, [photo_folder])
    path = library.index_path(library.store.be_key)
    before = path.stat().st_mtime_ns
    time.sleep(0.01)
    run(library, tiny_model, [photo_folder])
    make_photo(photo_folder / "home" / "new.png", seed=123)  # work to do, cancelled before any of it
    cancel = CancelToken()
    cancel.cancel()
    assert run(library, tiny_model, [photo_folder], cancel=cancel).phase == "cancelled"
    assert path.stat().st_mtime_ns == before


# ----- read-only ---------------------------------------------------------------------------------
def test_a_read_only_library_can_be_searched_but_not_written(tmp_path, tiny_model, photo_folder, monkeypatch):
    """A library on a read-only disk (simulated: the tests run as root, whom permissions do not stop)."""
    lib_dir = tmp_path / "lib"
    with Library(lib_dir) as lib:
        run(lib, tiny_model, [photo_folder])
        expected = [h.path for h in Searcher(lib, tiny_model).search("a dog", n=5, k=5)]
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode, **kw: False if mode & os.W_OK and str(lib_dir) in str(p)
                        else real_access(p, mode, **kw))
    files_before = {p.name: p.stat().st_mtime_ns for p in lib_dir.iterdir()}
    with Library(lib_dir, create=False) as lib:
        assert lib.read_only
        searcher = Searcher(lib, tiny_model)
        assert [h.path for h in searcher.search("a dog", n=5, k=5)] == expected
        # Captions too: the built-in collection is embedded in memory, since it cannot be stored.
        photo = str(photo_folder / "home" / "photo_02.png")
        assert list(searcher.prepare_captions())[-1][0] > 2000
        captions = searcher.captions(photo, n=3, k=3)
        assert len(captions) == 3 and all(h.text and h.rerank_score is not None for h in captions)
        assert list(searcher.prepare_captions()) == []  # prepared once
        with pytest.raises(LibraryReadOnlyError, match="read-only"):
            run(lib, tiny_model, [photo_folder])
    assert {p.name: p.stat().st_mtime_ns for p in lib_dir.iterdir()} == files_before


# ----- threads -------------------------------------------------------------------------------------
def test_a_reader_never_sees_another_threads_uncommitted_batch(library):
    inside, release = threading.Event(), threading.Event()

    def writer():
        with library.store.batch():
            library.store.save_photo("/x/a.png", 1, 1, "h1", 1, 1)
            inside.set()
            release.wait(5)
            raise RuntimeError("rolled back")

    def guarded():
        with pytest.raises(RuntimeError):
            writer()

    t = threading.Thread(target=guarded)
    t.start()
    assert inside.wait(5)
    try:
        assert library.store.photo("/x/a.png") is None  # not visible before it commits
    finally:
        release.set()
        t.join()
    assert library.store.photo("/x/a.png") is None  # and it never committed


def test_the_cpu_fallback_waits_for_forward_passes_in_flight(tiny_model, monkeypatch):
    ckpt = tiny_model.be.ckpt
    order = []
    entered = threading.Event()

    def forward():
        with ckpt.lock.shared():
            entered.set()
            time.sleep(0.3)
            order.append("forward done")

    monkeypatch.setattr(ckpt, "device", "cuda")
    monkeypatch.setattr(ckpt, "notices", [])  # the shared test model's own notices stay clean
    monkeypatch.setattr(ckpt.model, "to", lambda device: order.append(f"moved to {device}") or ckpt.model)
    t = threading.Thread(target=forward)
    t.start()
    entered.wait(5)
    ckpt.fall_back_to_cpu()
    t.join()
    assert order == ["forward done", "moved to cpu"]
    ckpt.device, ckpt.precision = "cpu", "fp32"


# ----- identity and migration -------------------------------------------------------------------------
def test_model_identity_is_its_content_not_its_folder(tiny_model_dir, tmp_path):
    from picsift.engine.models import load_model
    from picsift.engine.models.random_blip import build_random_blip

    moved = tmp_path / "moved"
    shutil.copytree(tiny_model_dir, moved)
    a = load_model(str(tiny_model_dir), device="cpu")
    b = load_model(str(moved), device="cpu")
    assert a.be.key == b.be.key and a.ce.key == b.ce.key and a.be.key != a.ce.key
    build_random_blip(moved, "tiny", seed=9)  # overwritten in place: a new model
    c = load_model(str(moved), device="cpu")
    assert c.be.key != a.be.key


def test_a_schema_1_library_migrates_without_re_embedding(tmp_path, tiny_model, tiny_model_dir, photo_folder):
    """A library written by picsift 0.1 (schema 1): its vectors, caption vectors and rerank cache are kept."""
    lib_dir = tmp_path / "lib"
    with Library(lib_dir) as lib:
        run(lib, tiny_model, [photo_folder])
        ids, vecs = lib.store.vectors()
        paths, hashes = lib.store.paths(ids.tolist()), lib.store.hashes(ids.tolist())
        feats = lib.tokens.get_many(tiny_model.ce.key, hashes.values())
    _make_schema_1(lib_dir, str(tiny_model_dir), ids, vecs, paths, hashes, feats)
    with Library(lib_dir) as lib:
        last = run(lib, tiny_model, [photo_folder])
        assert last.embedded == 0 and last.unchanged == 12
        assert lib.tokens.count(tiny_model.ce.key) == 12
        got_ids, got = lib.store.vectors(tiny_model.be.key)
        np.testing.assert_array_equal(got[np.argsort(got_ids)], vecs[np.argsort(ids)])
        assert len(Searcher(lib, tiny_model).search("a dog", n=20, k=3)) == 12


def _make_schema_1(lib_dir, model_id, ids, vecs, paths, hashes, feats):
    from picsift.engine.token_cache import encode_tokens

    for p in lib_dir.iterdir():
        p.unlink()
    con = sqlite3.connect(lib_dir / "library.db")
    con.executescript("""
        CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT);
        CREATE TABLE folders (id INTEGER PRIMARY KEY, path TEXT, added_at FLOAT);
        CREATE UNIQUE INDEX idx_folders_path ON folders(path);
        CREATE TABLE photos (id INTEGER PRIMARY KEY, path TEXT NOT NULL, size INTEGER, mtime_ns INTEGER, hash TEXT,
            width INTEGER, height INTEGER, status TEXT NOT NULL, error TEXT, embedding BLOB, updated_at FLOAT);
        CREATE UNIQUE INDEX idx_photos_path ON photos(path);
        CREATE TABLE collections (id INTEGER PRIMARY KEY, name TEXT, source TEXT, created_at FLOAT);
        CREATE TABLE captions (id INTEGER PRIMARY KEY, collection_id INTEGER REFERENCES collections(id), text TEXT,
            embedding BLOB);
    """)
    con.executemany("INSERT INTO meta VALUES (?, ?)", [("schema_version", "1"), ("generation", "7"),
                                                       ("model_id", model_id), ("dim", str(vecs.shape[1]))])
    folder = os.path.commonpath([os.path.dirname(p) for p in paths.values()])
    con.execute("INSERT INTO folders(path, added_at) VALUES (?, 0)", (folder,))
    for i, v in zip(ids.tolist(), vecs):
        st = os.stat(paths[i])
        con.execute("INSERT INTO photos VALUES (?, ?, ?, ?, ?, 1, 1, 'ok', NULL, ?, 0)",
                    (i, paths[i], st.st_size, st.st_mtime_ns, hashes[i], np.asarray(v, np.float32).tobytes()))
    con.commit()
    con.close()
    cache = sqlite3.connect(lib_dir / "rerank_cache.db")
    cache.execute("CREATE TABLE tokens (photo_id INTEGER PRIMARY KEY, fmt TEXT NOT NULL, n INTEGER NOT NULL, "
                  "h INTEGER NOT NULL, data BLOB NOT NULL)")
    for i in ids.tolist():
        t = feats[hashes[i]]
        cache.execute("INSERT INTO tokens VALUES (?, 'fp32', ?, ?, ?)", (i, *t.shape, encode_tokens(t, "fp32")))
    cache.commit()
    cache.close()


def test_a_large_database_is_checked_by_status_and_writers_and_damage_met_by_a_search_is_one_sentence(
        tmp_path, tiny_model, photo_folder, tiny_model_dir, monkeypatch):
    from picsift.engine.store.database import Store

    lib_dir = tmp_path / "lib"
    with Library(lib_dir) as lib:
        run(lib, tiny_model, [photo_folder])
    _damage_a_page(lib_dir / "library.db")
    monkeypatch.setattr(Store, "QUICK_CHECK_BYTES", 0)  # as if the database were large
    with pytest.raises(LibraryDamagedError):
        Library(lib_dir, check=True)
    with pytest.raises(LibraryDamagedError, match="damaged"):  # not checked on open: the first query finds it
        with Library(lib_dir) as lib:
            Searcher(lib, tiny_model).search("a dog", n=5, k=0)
