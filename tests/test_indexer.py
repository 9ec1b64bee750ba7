"""Indexing: incremental, rename-aware, resumable, and never stopped by a bad file."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import make_photo
from picsift.engine.index.indexer import index_folders
from picsift.engine.jobs import CancelToken
from picsift.engine.errors import ModelMismatchError
from picsift.engine.library import Library


def run(library, model, folders, **kw):
    records = list(index_folders(library, model, [str(f) for f in folders], **kw))
    return records[-1], records


def consistent(library: Library, expected_paths=None):
    """Every photo exactly once: one row per file, one vector per row in FAISS, no orphans."""
    ids, vecs = library.store.vectors()
    assert len(set(ids.tolist())) == len(ids)
    index_ids = faiss_ids(library)
    assert sorted(index_ids) == sorted(ids.tolist())
    assert library.tokens.hashes() <= library.store.all_hashes()
    if expected_paths is not None:
        paths = set(library.store.paths(ids.tolist()).values())
        assert paths == {str(p) for p in expected_paths}


def faiss_ids(library):
    import faiss

    vi = library.index
    return faiss.vector_to_array(vi.index.id_map).tolist()


def all_photos(folder):
    return sorted(str(p) for p in folder.rglob("*") if p.suffix in (".png", ".jpg"))


def test_index_then_nothing_to_do(library, tiny_model, photo_folder):
    last, records = run(library, tiny_model, [photo_folder])
    assert last.phase == "done" and last.embedded == 12 and last.skipped == 0
    assert records[1].phase == "indexing" and records[1].total == 12
    assert library.tokens.count() == 12
    consistent(library, all_photos(photo_folder))
    again, _ = run(library, tiny_model, [photo_folder])
    assert again.embedded == 0 and again.unchanged == 12
    assert again.summary().startswith("Nothing new to embed")


def test_progress_records_count_up_with_rate(library, tiny_model, photo_folder):
    _, records = run(library, tiny_model, [photo_folder], batch_size=4)
    indexing = [r for r in records if r.phase == "indexing"]  # each record is a snapshot of its moment
    assert [r.done for r in indexing] == [0, 4, 8, 12] and all(r.total == 12 for r in indexing)
    assert indexing[0].rate == 0 and all(r.rate > 0 for r in indexing[1:])
    assert all(r.eta_s > 0 for r in indexing[1:-1]) and indexing[-1].eta_s == 0
    assert all(r.current for r in indexing[1:]) and len({r.current for r in indexing[1:]}) == 3
    assert records[-1].phase == "done" and records[-1].done == 12


def test_rename_and_move_keep_vectors(library, tiny_model, photo_folder):
    run(library, tiny_model, [photo_folder])
    old = str(photo_folder / "home" / "photo_00.jpg")
    row = library.store.photo(old)
    vec = library.store.vector(row.id)
    new = photo_folder / "trips" / "renamed.jpg"
    os.rename(old, new)
    last, _ = run(library, tiny_model, [photo_folder])
    assert last.moved == 1 and last.embedded == 0 and last.removed == 0
    moved = library.store.photo(str(new))
    assert moved.id == row.id
    np.testing.assert_array_equal(library.store.vector(moved.id), vec)
    assert library.store.photo(old) is None
    consistent(library, all_photos(photo_folder))


def test_modified_file_is_embedded_again(library, tiny_model, photo_folder):
    run(library, tiny_model, [photo_folder])
    path = str(photo_folder / "home" / "photo_02.png")
    row = library.store.photo(path)
    before = library.store.vector(row.id).copy()
    make_photo(path, seed=999)
    os.utime(path, ns=(time.time_ns(), time.time_ns() + 10**9))
    last, _ = run(library, tiny_model, [photo_folder])
    assert last.embedded == 1
    after = library.store.photo(path)
    assert after.id == row.id
    assert not np.allclose(library.store.vector(row.id), before)
    consistent(library, all_photos(photo_folder))


def test_touched_but_same_content_is_not_embedded(library, tiny_model, photo_folder):
    run(library, tiny_model, [photo_folder])
    path = photo_folder / "home" / "photo_02.png"
    os.utime(path, ns=(time.time_ns(), time.time_ns() + 10**9))
    last, _ = run(library, tiny_model, [photo_folder])
    assert last.embedded == 0 and last.unchanged == 12


def test_deleted_file_leaves_library_index_and_cache(library, tiny_model, photo_folder):
    run(library, tiny_model, [photo_folder])
    path = str(photo_folder / "trips" / "photo_01.png")
    row = library.store.photo(path)
    os.remove(path)
    last, _ = run(library, tiny_model, [photo_folder])
    assert last.removed == 1
    assert library.store.photo(path) is None
    assert row.id not in faiss_ids(library) and row.hash not in library.tokens.hashes()
    assert not library.store.vectors_by_hash(tiny_model.be.key, [row.hash])  # its vector went with it
    consistent(library, all_photos(photo_folder))


def test_missing_root_folder_keeps_its_photos(library, tiny_model, photo_folder, tmp_path):
    run(library, tiny_model, [photo_folder])
    moved_away = tmp_path / "unplugged"
    shutil.move(str(photo_folder), moved_away)
    last, records = run(library, tiny_model, [photo_folder])
    assert last.phase == "done" and last.removed == 0 and last.embedded == 0
    assert library.store.count_photos() == 12 and library.index.ntotal == 12 and library.tokens.count() == 12
    messages = [m for r in records for m in r.messages]
    assert messages == [f"Folder not found: {photo_folder}. Nothing under it was changed in the library."]
    assert library.store.folders() == [str(photo_folder)]  # still a library folder, for when it comes back


def write_bomb_png(path, width=100_000, height=100_000):
    import struct
    import zlib

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")
    path.write_bytes(png)


def test_bad_files_are_recorded_and_the_run_goes_on(library, tiny_model, photo_folder):
    bad = photo_folder / "bad"
    bad.mkdir()
    (bad / "zero.jpg").write_bytes(b"")
    (bad / "random.jpg").write_bytes(os.urandom(2048))
    (bad / "notes.png").write_text("this is not a picture\n")
    full = make_photo(bad / "full.jpg", seed=5, size=(200, 160))
    data = open(full, "rb").read()
    (bad / "truncated.jpg").write_bytes(data[: len(data) // 2])
    os.remove(full)
    write_bomb_png(bad / "bomb.png")
    os.symlink("loop.jpg", bad / "loop.jpg")
    os.symlink(str(bad), bad / "again")  # a folder link back into itself
    last, _ = run(library, tiny_model, [photo_folder])
    assert last.phase == "done" and last.embedded == 12
    reasons = {os.path.basename(e["path"]): e["reason"] for e in library.store.errors()}
    assert set(reasons) == {"zero.jpg", "random.jpg", "notes.png", "truncated.jpg", "bomb.png", "loop.jpg"}
    assert "empty" in reasons["zero.jpg"]
    assert "not an image" in reasons["random.jpg"] and "not an image" in reasons["notes.png"]
    assert "truncated" in reasons["truncated.jpg"] or "corrupt" in reasons["truncated.jpg"]
    assert "too large" in reasons["bomb.png"]
    assert "loop" in reasons["loop.jpg"]
    assert last.skipped == 6
    consistent(library, [p for p in all_photos(photo_folder) if "/bad/" not in p])
    again, _ = run(library, tiny_model, [photo_folder])
    assert again.embedded == 0 and len(library.store.errors()) == 6
    assert again.unchanged == 12 and again.skipped == 6  # the summary still counts them


def test_folder_deleted_during_the_run(library, tiny_model, photo_folder):
    gen = index_folders(library, tiny_model, [str(photo_folder)], batch_size=2, decode_threads=1)
    phases = []
    for rec in gen:
        phases.append(rec.phase)
        if rec.phase == "indexing" and rec.done == 2:
            shutil.rmtree(photo_folder / "trips")
    assert phases[-1] == "done"
    home = [p for p in all_photos(photo_folder)]
    assert len(home) == 6
    indexed = set(library.store.paths(library.store.vectors()[0].tolist()).values())
    assert set(home) <= indexed  # nothing that still exists was lost
    reasons = [e["reason"] for e in library.store.errors()]
    assert reasons and all("vanished" in r for r in reasons)
    consistent(library)
    run(library, tiny_model, [photo_folder])  # the next run sweeps what is gone
    assert library.store.errors() == []
    consistent(library, home)


def test_cancel_stops_within_a_batch_and_resume_finishes_exactly_once(library, tiny_model, photo_folder):
    token = CancelToken()
    seen = []
    for rec in index_folders(library, tiny_model, [str(photo_folder)], cancel=token, batch_size=3):
        seen.append((rec.phase, rec.done))
        if rec.phase == "indexing" and rec.done >= 3:
            token.cancel()
    assert seen[-1][0] == "cancelled"
    assert library.store.count_photos() == 3
    consistent(library)
    last, _ = run(library, tiny_model, [photo_folder])
    assert last.embedded == 9 and last.unchanged == 3
    consistent(library, all_photos(photo_folder))


def test_pause_blocks_until_resume(library, tiny_model, photo_folder):
    import threading

    token = CancelToken()
    gen = index_folders(library, tiny_model, [str(photo_folder)], cancel=token, batch_size=4)
    next(gen)
    next(gen)  # scanned
    token.pause()
    threading.Timer(0.3, token.resume).start()
    start = time.monotonic()
    rec = next(gen)
    assert time.monotonic() - start >= 0.25 and rec.done == 4
    for _ in gen:
        pass


def test_kill_during_indexing_then_resume(tmp_path, tiny_model_dir, tiny_model):
    folder = tmp_path / "many"
    for i in range(160):
        make_photo(folder / f"{i:03d}.png", seed=i, size=(900, 700))
    lib_dir = tmp_path / "lib"
    cmd = [sys.executable, "-m", "picsift.engine.cli", "index", str(folder), "--library", str(lib_dir),
           "--model", str(tiny_model_dir), "--batch-size", "2", "-q"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    import sqlite3

    committed = 0
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            con = sqlite3.connect(lib_dir / "library.db", timeout=1)
            committed = con.execute("SELECT count(*) FROM vectors").fetchone()[0]
            con.close()
        except sqlite3.Error:
            committed = 0
        if committed >= 6:
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert 6 <= committed < 160, "the run must be killed in the middle"
    with Library(lib_dir) as lib:
        killed_at = lib.store.count_photos()
        assert killed_at < 160
        last, records = run(lib, tiny_model, [folder])
        assert last.embedded == 160 - killed_at and last.unchanged == killed_at
        consistent(lib, all_photos(folder))


def test_another_model_embeds_beside_the_first_then_takes_over_search(library, tiny_model, photo_folder, tmp_path):
    from picsift.engine.models import load_model
    from picsift.engine.models.random_blip import build_random_blip
    from picsift.engine.search.searcher import Searcher

    run(library, tiny_model, [photo_folder])
    pid = library.store.photo(str(photo_folder / "home" / "photo_00.jpg")).id
    before = library.store.vector(pid).copy()
    other = load_model(str(build_random_blip(tmp_path / "other", "tiny", seed=1)), device="cpu")
    cancel = CancelToken()
    gen = index_folders(library, other, [str(photo_folder)], cancel=cancel, batch_size=4)
    records = [next(gen), next(gen), next(gen)]  # scanning, indexing, one batch of 4
    assert any("as well" in m for m in records[0].messages)
    # Half way: the first model still serves search, on its own vectors, with every photo.
    assert library.model_id == tiny_model.model_id
    assert len(Searcher(library, tiny_model).search("a dog", n=20, k=0)) == 12
    with pytest.raises(ModelMismatchError, match="4 of 12"):
        Searcher(library, other)
    for _ in gen:
        pass
    assert library.model_id == other.model_id  # complete: the new model takes over
    np.testing.assert_array_equal(library.store.vector(pid, tiny_model.be.key), before)  # nothing lost
    assert not np.allclose(library.store.vector(pid, other.be.key), before)
    assert library.index_for(other.be.key).ntotal == 12 and library.index.dim == other.dim
    consistent(library, all_photos(photo_folder))
    again, _ = run(library, tiny_model, [photo_folder])  # back to the first: nothing to embed again
    assert again.embedded == 0 and library.model_id == tiny_model.model_id


@pytest.mark.parametrize("damage", ["missing", "stale", "corrupt"])
def test_index_file_is_rebuilt_from_the_database(tmp_path, tiny_model, photo_folder, damage):
    lib_dir = tmp_path / "lib"
    with Library(lib_dir) as lib:
        run(lib, tiny_model, [photo_folder])
        index_file = lib.index_path(lib.store.be_key)
        assert index_file.exists()
        if damage == "stale":  # a later commit that the saved index never saw, as after kill -9
            lib.store.bump_generation()
    if damage == "missing":
        index_file.unlink()
    elif damage == "corrupt":
        index_file.write_bytes(b"\0" * 100)
    with Library(lib_dir) as lib:
        assert lib.index.ntotal == 12
        assert lib.notices and "rebuilt" in lib.notices[0]
        consistent(lib, all_photos(photo_folder))


def test_rerank_cache_budget_is_kept_and_enforced(tmp_path, tiny_model, photo_folder):
    lib_dir = tmp_path / "lib"
    with Library(lib_dir) as lib:
        run(lib, tiny_model, [photo_folder])
        per_photo = lib.tokens.size_bytes // 12
        dropped = lib.set_cache_budget(per_photo * 5)
        assert dropped == 7 and lib.tokens.count() == 5 and lib.tokens.size_bytes <= per_photo * 5
    with Library(lib_dir) as lib:  # the budget stays with the library
        assert lib.tokens.budget_bytes == per_photo * 5
        make_photo(photo_folder / "home" / "extra.png", seed=77)
        run(lib, tiny_model, [photo_folder])
        assert lib.tokens.count() == 5  # no room: the new photo is reranked on demand instead
        from picsift.engine.search.searcher import Searcher

        hits = Searcher(lib, tiny_model).search("a dog", n=13, k=13)
        assert all(h.rerank_score is not None for h in hits)


def test_a_library_without_a_model_yet_can_be_used_then_indexed(library, tiny_model, photo_folder):
    assert library.index.ntotal == 0
    assert library.remove_folder(str(photo_folder)) == 0
    last, _ = run(library, tiny_model, [photo_folder])
    assert last.embedded == 12 and library.index.dim == tiny_model.dim
    consistent(library, all_photos(photo_folder))


def test_a_new_reranker_gets_the_features_of_photos_indexed_before_it_while_the_budget_has_room(
        library, tiny_model, tiny_model_dir, photo_folder, tmp_path):
    from picsift.engine.models import load_model
    from picsift.engine.models.random_blip import build_random_blip

    list(index_folders(library, tiny_model, [str(photo_folder)]))
    own = tiny_model.ce.key
    assert library.tokens.count(own) == 12
    per_photo = library.tokens.size_bytes / 12
    library.tokens.set_budget(int(per_photo * 8.5))  # room for 8 photos' features
    other = build_random_blip(tmp_path / "other-ce", "tiny", seed=9)
    sep = load_model(str(tiny_model_dir), device="cpu", precision="fp32", ce_model=str(other))
    records = list(index_folders(library, sep, [str(photo_folder)]))
    assert records[-1].embedded == 0  # the BE is the same: nothing embedded again
    caching = [r for r in records if r.phase == "caching"]
    assert caching and caching[0].total == 12
    # the library's CE changed: the old CE's entries went (they would only hold the budget), the new one's fill it
    assert library.tokens.count(sep.ce.key) == 8 and library.tokens.count(own) == 0
    assert any("rerank cache is full" in m for r in records for m in r.messages)
    # The features are the new CE's own: a rerank from the cache matches one computed fresh.
    from picsift.engine.index.imaging import open_photo

    path = sorted(str(p) for p in photo_folder.rglob("*.png"))[0]
    row = library.store.photo(path)
    cached = library.tokens.get_many(sep.ce.key, [row.hash]).get(row.hash)
    if cached is not None:
        fresh = sep.reranker_features(sep.ce, [open_photo(path, sep.image_size).image])[0]
        assert sep.ce.score("a dog", cached[None])[0] == pytest.approx(sep.ce.score("a dog", fresh[None])[0], abs=0.02)
    # A later run finds no room and no work: it does not encode photos only to throw them away.
    again = list(index_folders(library, sep, [str(photo_folder)]))
    assert not [r for r in again if r.phase == "caching"]


def test_excluded_folders_leave_the_library_and_are_not_walked_until_included(library, tiny_model, photo_folder):
    list(index_folders(library, tiny_model, [str(photo_folder)]))
    assert library.store.count_photos() == 12
    trips = str(photo_folder / "trips")
    gone = library.exclude_folder(trips)
    assert gone == 6 and library.store.count_photos() == 6
    assert all(os.path.exists(p) for p in map(str, (photo_folder / "trips").iterdir()))  # files untouched
    assert library.excluded_folders() == [trips]
    records = list(index_folders(library, tiny_model, [str(photo_folder)]))
    assert records[-1].embedded == 0 and library.store.count_photos() == 6
    from picsift.engine.search.searcher import Searcher

    hits = Searcher(library, tiny_model).search("a photo", n=12, k=0)
    assert len(hits) == 6 and not any("/trips/" in h.path for h in hits)
    # indexing the excluded folder itself says so and indexes nothing
    records = list(index_folders(library, tiny_model, [trips]))
    assert any("excluded folder" in m for r in records for m in r.messages)
    assert library.include_folder(trips) and not library.include_folder(trips)
    records = list(index_folders(library, tiny_model, [str(photo_folder)]))
    assert library.store.count_photos() == 12 and records[-1].embedded == 6  # they left: embedded again


def test_folders_command_lists_excludes_and_includes(tiny_model_dir, photo_folder, tmp_path, capsys, _isolated_home):
    import json

    from picsift.engine.cli import main

    lib = str(tmp_path / "lib")
    assert main(["index", str(photo_folder), "--library", lib, "--model", str(tiny_model_dir), "-q"]) == 0
    assert main(["folders", "exclude", str(photo_folder / "home"), "--library", lib]) == 0
    assert "6 photo(s) left the library" in capsys.readouterr().err
    assert main(["folders", "--library", lib, "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"folders": [str(photo_folder)],
                                                   "excluded": [str(photo_folder / "home")]}
    assert main(["folders", "include", str(photo_folder / "trips"), "--library", lib]) == 1
    assert "not an excluded folder" in capsys.readouterr().err
    assert main(["folders", "exclude", "--library", lib]) == 1
