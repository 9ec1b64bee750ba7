"""Duplicates: exact copies by content hash, near-duplicates by BE cosine confirmed by a perceptual hash,
largest groups first with what a user picks by; the chosen ones go to the system trash and out of the
library, never deleted."""

from __future__ import annotations

import json
import os
import shutil

import pytest
from PIL import Image

from conftest import make_photo


@pytest.fixture
def dup_folder(tmp_path):
    """a.jpg with an exact copy and a smaller re-encoded copy; b.png with an exact copy; c, d, e distinct."""
    root = tmp_path / "dups"
    a = make_photo(root / "a.jpg", seed=1, size=(96, 80))
    (root / "sub").mkdir()
    shutil.copy(a, root / "sub" / "a-copy.jpg")
    Image.open(a).resize((72, 60)).save(root / "a-small.jpg", quality=70)
    b = make_photo(root / "b.png", seed=2, size=(64, 64))
    shutil.copy(b, root / "sub" / "b-copy.png")
    for i, name in enumerate("cde"):
        make_photo(root / f"{name}.png", seed=10 + i, size=(64, 48))
    return root


@pytest.fixture
def trash_home(tmp_path, monkeypatch):
    """send2trash's home trash pointed into the test's folder (it reads XDG_DATA_HOME when imported)."""
    import send2trash.plat_other as plat

    data = tmp_path / "trash-data"
    data.mkdir()
    monkeypatch.setattr(plat, "XDG_DATA_HOME", os.fsencode(data))
    monkeypatch.setattr(plat, "HOMETRASH_B", os.fsencode(data / "Trash"))
    monkeypatch.setattr(plat, "HOMETRASH", str(data / "Trash"))
    return data / "Trash"


def _names(group) -> list[str]:
    return [os.path.relpath(m.path, os.path.dirname(os.path.dirname(m.path)) if "/sub/" in m.path
                            else os.path.dirname(m.path)) for m in group.members]


def test_exact_and_near_duplicates_are_grouped_largest_first(tiny_model, dup_folder, library):
    from picsift.engine.duplicates import dhash, find_duplicates, hamming
    from picsift.engine.indexer import index_folders

    list(index_folders(library, tiny_model, [str(dup_folder)]))
    groups = find_duplicates(library)
    assert [len(g.members) for g in groups] == [3, 2]
    a, b = groups
    assert not a.exact and b.exact  # a-small differs in content; b's copy is byte for byte the same
    assert _names(a)[2] == "a-small.jpg" and set(_names(a)[:2]) == {"a.jpg", "sub/a-copy.jpg"}
    assert a.members[0].pixels == 96 * 80 and a.members[2].pixels == 72 * 60  # the most pixels first
    assert set(_names(b)) == {"b.png", "sub/b-copy.png"}
    assert hamming(dhash(str(dup_folder / "a.jpg")), dhash(str(dup_folder / "a-small.jpg"))) <= 10
    # the perceptual hash is what confirms a pair: at any cosine, distinct photos stay apart
    loose = find_duplicates(library, cosine=-1.0)
    assert [len(g.members) for g in loose] == [3, 2]
    # and without its confirmation only the exact copies remain
    strict = find_duplicates(library, cosine=-1.0, max_hamming=-1)
    assert sorted(len(g.members) for g in strict) == [2, 2] and all(g.exact for g in strict)


def test_trash_moves_the_chosen_photos_and_the_library_forgets_them(tiny_model, dup_folder, library, trash_home):
    from picsift.engine.duplicates import find_duplicates, trash
    from picsift.engine.indexer import index_folders
    from picsift.engine.search import Searcher

    list(index_folders(library, tiny_model, [str(dup_folder)]))
    assert library.store.count_photos() == 8
    doomed = [str(dup_folder / "sub" / "a-copy.jpg"), str(dup_folder / "a-small.jpg")]
    result = trash(library, doomed + [str(dup_folder / "gone.jpg")])
    assert sorted(result.moved) == sorted(doomed)
    assert result.failed == [(str(dup_folder / "gone.jpg"), "the file is not there any more")]
    assert not any(os.path.exists(p) for p in doomed)
    assert sorted(os.listdir(trash_home / "files")) == ["a-copy.jpg", "a-small.jpg"]  # kept, not deleted
    assert library.store.count_photos() == 6
    hits = Searcher(library, tiny_model).search("a photo", n=10, k=0)
    assert len(hits) == 6 and not set(doomed) & {h.path for h in hits}
    assert [len(g.members) for g in find_duplicates(library)] == [2]


def test_duplicates_and_trash_from_the_terminal(tiny_model_dir, dup_folder, tmp_path, capsys, trash_home,
                                                _isolated_home, monkeypatch):
    from picsift.engine.cli import main

    lib = str(tmp_path / "lib")
    assert main(["index", str(dup_folder), "--library", lib, "--model", str(tiny_model_dir), "-q"]) == 0
    capsys.readouterr()
    assert main(["duplicates", "--library", lib, "--json"]) == 0
    groups = json.loads(capsys.readouterr().out)
    assert [(g["kind"], len(g["photos"])) for g in groups] == [("near", 3), ("exact", 2)]
    assert set(groups[0]["photos"][0]) == {"path", "bytes", "width", "height", "taken", "content_hash"}
    assert main(["duplicates", "--library", lib]) == 0
    out = capsys.readouterr().out
    assert "2 group(s) of duplicates; 3 photo(s) beyond the first of each" in out and "96x80" in out
    copy = str(dup_folder / "sub" / "b-copy.png")
    monkeypatch.setattr("sys.stdin.isatty", lambda: False)
    assert main(["trash", copy, "--library", lib]) == 1  # no terminal to confirm in, no --yes: nothing moved
    assert "--yes" in capsys.readouterr().err and os.path.exists(copy)
    assert main(["trash", copy, "--library", lib, "--yes", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"moved": [copy], "failed": []}
    assert not os.path.exists(copy) and (trash_home / "files" / "b-copy.png").exists()
    assert main(["duplicates", "--library", lib, "--json"]) == 0
    assert [len(g["photos"]) for g in json.loads(capsys.readouterr().out)] == [3]
