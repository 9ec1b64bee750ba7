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
    from picsift.engine.index.indexer import index_folders

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
    from picsift.engine.index.indexer import index_folders
    from picsift.engine.search.searcher import Searcher

    list(index_folders(library, tiny_model, [str(dup_folder)]))
    assert library.store.count_photos() == 8
    doomed = [str(dup_folder / "sub" / "a-copy.jpg"), str(dup_folder / "a-small.jpg")]
    result = trash(library, doomed + [str(dup_folder / "gone.jpg")])
    assert sorted(result.moved) == sorted(doomed)
    assert result.failed == [(str(dup_folder / "gone.jpg"), "does not exist")]
    assert not any(os.path.exists(p) for p in doomed)
    assert sorted(os.listdir(trash_home / "files")) == ["a-copy.jpg", "a-small.jpg"]  # kept, not deleted
    assert library.store.count_photos() == 6
    hits = Searcher(library, tiny_model).search("a photo", n=10, k=0)
    assert len(hits) == 6 and not set(doomed) & {h.path for h in hits}
    assert [len(g.members) for g in find_duplicates(library)] == [2]


@pytest.fixture
def indexed_dups(tiny_model, dup_folder, library, tmp_path):
    """dup_folder indexed, with a link in it to a photo outside the library (the scanner follows it, so the
    library records the link) and a link to a text file outside; returns the outside folder."""
    from picsift.engine.index.indexer import index_folders

    outside = tmp_path / "outside"
    make_photo(outside / "elsewhere.jpg", seed=40, size=(64, 48))
    (outside / "notes.txt").write_text("never a photo\n", encoding="utf-8")
    os.symlink(outside / "elsewhere.jpg", dup_folder / "sub" / "link.jpg")
    os.symlink(outside / "notes.txt", dup_folder / "notes.jpg")
    list(index_folders(library, tiny_model, [str(dup_folder)]))
    assert library.store.photo(str(dup_folder / "sub" / "link.jpg")) is not None
    return outside


def _trashed(trash_home) -> list[str]:
    return sorted(os.listdir(trash_home / "files")) if (trash_home / "files").exists() else []


def test_trash_refuses_a_file_outside_the_library(indexed_dups, library, trash_home):
    from picsift.engine.duplicates import trash

    notes = str(indexed_dups / "notes.txt")
    photo = str(indexed_dups / "elsewhere.jpg")
    result = trash(library, [notes, photo])
    assert result.moved == []
    assert result.failed == [(notes, "not in the library"), (photo, "not in the library")]
    assert os.path.exists(notes) and os.path.exists(photo) and _trashed(trash_home) == []


def test_trash_refuses_a_missing_path(indexed_dups, dup_folder, library, trash_home):
    from picsift.engine.duplicates import trash

    missing = str(dup_folder / "never-was.jpg")
    photos = library.store.count_photos()
    assert trash(library, [missing]).failed == [(missing, "does not exist")]
    assert library.store.count_photos() == photos and _trashed(trash_home) == []


def test_trash_refuses_a_folder(indexed_dups, dup_folder, library, trash_home):
    from picsift.engine.duplicates import trash

    sub = str(dup_folder / "sub")
    assert trash(library, [sub]).failed == [(sub, "is a folder")]
    assert os.path.isdir(sub) and _trashed(trash_home) == []


def test_trash_refuses_a_link_in_a_library_folder_that_leads_outside(indexed_dups, dup_folder, library, trash_home):
    from picsift.engine.duplicates import trash

    links = [str(dup_folder / "sub" / "link.jpg"), str(dup_folder / "notes.jpg")]
    result = trash(library, links)
    assert result.moved == []
    assert result.failed == [(p, "a link that leads outside the library") for p in links]
    assert all(os.path.islink(p) for p in links)  # neither the links nor what they lead to moved
    assert (indexed_dups / "elsewhere.jpg").is_file() and (indexed_dups / "notes.txt").is_file()
    assert library.store.photo(links[0]) is not None and _trashed(trash_home) == []


def test_trash_takes_the_library_photo_given_among_refused_ones(indexed_dups, dup_folder, library, trash_home):
    from picsift.engine.duplicates import trash

    photo = str(dup_folder / "sub" / "b-copy.png")
    refused = [str(indexed_dups / "notes.txt"), str(dup_folder / "gone.jpg"), str(dup_folder / "sub" / "link.jpg")]
    photos = library.store.count_photos()
    result = trash(library, [refused[0], photo, *refused[1:]])
    assert result.moved == [photo]
    assert [p for p, _ in result.failed] == refused
    assert not os.path.exists(photo) and _trashed(trash_home) == ["b-copy.png"]
    assert library.store.photo(photo) is None and library.store.count_photos() == photos - 1


def test_trash_from_the_terminal_names_each_refused_path(tiny_model_dir, dup_folder, tmp_path, capsys, trash_home):
    from picsift.engine.cli import main

    lib = str(tmp_path / "lib")
    outside = tmp_path / "outside"
    outside.mkdir()
    notes = outside / "notes.txt"
    notes.write_text("never a photo\n", encoding="utf-8")
    os.symlink(notes, dup_folder / "notes.jpg")
    assert main(["index", str(dup_folder), "--library", lib, "--model", str(tiny_model_dir), "-q"]) == 0
    capsys.readouterr()
    # the case: a text file that was never in the library
    assert main(["trash", str(notes), "--library", lib, "--yes"]) == 1
    out, err = capsys.readouterr()
    assert out == "Nothing moved.\n" and err == f"Not moved: {notes}: not in the library\n"
    assert notes.exists() and _trashed(trash_home) == []
    # refused ones beside a photo of the library: the photo goes, each refused one is named with its reason
    photo = str(dup_folder / "c.png")
    given = [str(notes), str(dup_folder / "gone.jpg"), str(dup_folder / "sub"), str(dup_folder / "notes.jpg"), photo]
    assert main(["trash", *given, "--library", lib, "--yes"]) == 1
    out, err = capsys.readouterr()
    assert out == "1 photo(s) moved to the trash and out of the library.\n"
    assert err.splitlines() == [f"Not moved: {given[0]}: not in the library", f"Not moved: {given[1]}: does not exist",
                                f"Not moved: {given[2]}: is a folder",
                                f"Not moved: {given[3]}: a link that leads outside the library"]
    assert not os.path.exists(photo) and _trashed(trash_home) == ["c.png"] and notes.exists()
    assert main(["trash", *given[:2], "--library", lib, "--yes", "--json"]) == 1
    assert json.loads(capsys.readouterr().out) == {
        "moved": [], "failed": [{"path": given[0], "reason": "not in the library"},
                                {"path": given[1], "reason": "does not exist"}]}


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
