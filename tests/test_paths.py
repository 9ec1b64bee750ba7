"""Photo paths: one spelling per file (NFC, absolute, normalised), exact folder matching, SQL bounds."""

from __future__ import annotations

import os
import sqlite3
import unicodedata

import pytest

from picsift.engine import paths
from picsift.engine.paths import folder_bounds, is_case_sensitive, is_under, normalize_path, path_key

ROOT = normalize_path(os.sep + "data")


def P(*parts: str) -> str:
    return os.path.join(ROOT, *parts)


@pytest.fixture(autouse=True)
def _fresh_case_cache(monkeypatch):
    monkeypatch.setattr(paths, "_case_by_device", {})


def test_normalize_path_composes_nfd_names():
    nfd = P(unicodedata.normalize("NFD", "Café"), unicodedata.normalize("NFD", "Ångström.jpg"))
    nfc = P("Café", "Ångström.jpg")
    assert nfd != nfc and len(nfd) == len(nfc) + 3
    assert normalize_path(nfd) == normalize_path(nfc) == nfc
    assert unicodedata.is_normalized("NFC", normalize_path(nfd))


def test_normalize_path_drops_trailing_separators_dots_and_dotdot_and_keeps_case(tmp_path, monkeypatch):
    expected = P("Trip")
    for spelling in (P("Trip") + os.sep, P("Trip") + os.sep + os.sep, P(".", "Trip"), P("x", "..", "Trip"),
                     ROOT + os.sep + os.sep + "Trip"):
        assert normalize_path(spelling) == expected, spelling
    assert normalize_path(P("TRIP", "IMG_1.JPG")) == P("TRIP", "IMG_1.JPG")
    monkeypatch.chdir(tmp_path)
    assert normalize_path("photos/") == os.path.join(normalize_path(tmp_path), "photos")
    assert normalize_path(tmp_path / "a" / ".." / "b") == os.path.join(normalize_path(tmp_path), "b")
    root = normalize_path(os.sep)
    assert normalize_path(root + os.sep) == root and root.endswith(os.sep)
    if os.sep == "/":
        assert normalize_path("//data//Trip/") == "/data/Trip"


def test_path_key_folds_case_only_where_the_file_system_does():
    path = P("Trip", "IMG_1.JPG")
    assert path_key(path, case_sensitive=True) == path
    assert path_key(path, case_sensitive=False) == path_key(P("trip", "img_1.jpg"), case_sensitive=False)
    nfd = P(unicodedata.normalize("NFD", "ÉTÉ"))
    assert path_key(nfd, case_sensitive=False) == P("été")


def test_is_under_matches_whole_folder_names():
    trip = P("Trip")
    assert is_under(P("Trip", "a.jpg"), trip, case_sensitive=True)
    assert is_under(P("Trip", "day 1", "b.jpg"), trip + os.sep, case_sensitive=True)
    assert not is_under(P("Trip2", "a.jpg"), trip, case_sensitive=True)
    assert not is_under(P("Trip-x", "a.jpg"), trip, case_sensitive=True)
    assert not is_under(P("Tri"), trip, case_sensitive=True)
    assert not is_under(trip, trip, case_sensitive=True)  # a folder is not under itself
    assert not is_under(P("Trip", "..", "Trip2", "a.jpg"), trip, case_sensitive=True)
    assert is_under(P(unicodedata.normalize("NFD", "Été"), "a.jpg"), P("Été"), case_sensitive=True)
    assert is_under(P("a.jpg"), normalize_path(os.sep), case_sensitive=True)


def test_trip_and_trip_differ_only_on_a_case_sensitive_file_system(tmp_path):
    assert not is_under(P("trip", "a.jpg"), P("Trip"), case_sensitive=True)
    assert is_under(P("trip", "a.jpg"), P("Trip"), case_sensitive=False)
    assert not is_under(P("trip2", "a.jpg"), P("Trip"), case_sensitive=False)
    # Without an answer given, the folder's own file system decides.
    (tmp_path / "Trip").mkdir()
    (tmp_path / "Trip" / "a.jpg").write_bytes(b"x")
    folds = os.path.exists(tmp_path / "trip" / "a.jpg")
    assert is_under(tmp_path / "trip" / "a.jpg", tmp_path / "Trip") == folds


TRICKY = [
    "Trip/a.jpg", "Trip/sub/b.jpg", "Trip", "Trip2/c.jpg", "Trip-x/d.jpg", "Trip.x", "Trip 2/e.jpg",
    "Trip0/f.jpg", "Trip/0.jpg", "trip/g.jpg", "TRIP/h.jpg", "Tri", "Tri_/i.jpg", "Trip/%_/j.jpg",
    "Trip/🙂.jpg", "Trip/\uffff", "Tripé/k.jpg", "Trip/" + unicodedata.normalize("NFD", "Café.jpg"),
    "Trip/../Trip2/l.jpg", "Trip/./m.jpg", "Tr/ip/n.jpg", "a/Trip/o.jpg",
]


@pytest.mark.parametrize("case_sensitive", [True, False])
@pytest.mark.parametrize("folder", ["Trip", "Trip/", unicodedata.normalize("NFD", "Tripé"), "trip", "Trip/sub"])
def test_folder_bounds_select_in_sqlite_exactly_what_is_under_says(folder, case_sensitive):
    db = sqlite3.connect(":memory:")
    db.execute("CREATE TABLE photos (path TEXT PRIMARY KEY, key TEXT)")
    stored = {normalize_path(P(*t.split("/"))) for t in TRICKY}
    db.executemany("INSERT INTO photos VALUES (?, ?)",
                   [(p, path_key(p, case_sensitive)) for p in stored])
    folder = P(*folder.rstrip("/").split("/")) + ("/" if folder.endswith("/") else "")
    expected = {p for p in stored if is_under(p, folder, case_sensitive=case_sensitive)}
    column = "path" if case_sensitive else "key"
    lo, hi = folder_bounds(folder, key=not case_sensitive, case_sensitive=case_sensitive)
    got = {r[0] for r in db.execute(f"SELECT path FROM photos WHERE {column} >= ? AND {column} < ?", (lo, hi))}
    assert got == expected
    assert expected  # every folder here holds something, so an empty range would not pass
    if case_sensitive and folder.rstrip(os.sep) == P("Trip"):
        assert P("Trip2", "c.jpg") not in got and P("Trip0", "f.jpg") not in got and P("Trip", "0.jpg") in got
    if not case_sensitive and folder in (P("Trip"), P("trip")):
        assert {P("trip", "g.jpg"), P("TRIP", "h.jpg"), P("Trip", "a.jpg")} <= got
    plan = " ".join(str(r) for r in db.execute(
        "EXPLAIN QUERY PLAN SELECT path FROM photos WHERE path >= ? AND path < ?", (lo, hi)))
    assert "USING" in plan and "INDEX" in plan  # a range on the primary key, not a scan


def test_folder_bounds_of_the_root():
    root = normalize_path(os.sep)
    lo, hi = folder_bounds(root)
    assert lo == root and lo <= P("a.jpg") < hi


def test_case_probe_agrees_with_the_file_system(tmp_path):
    (tmp_path / "Probe.txt").write_bytes(b"x")
    expected = not os.path.exists(tmp_path / "pROBE.TXT")
    assert is_case_sensitive(tmp_path) is expected
    assert is_case_sensitive(tmp_path / "not" / "yet" / "made") is expected  # the nearest existing folder's


def test_case_probe_reads_a_lookup_with_swapped_case(tmp_path):
    (tmp_path / "Photo").write_bytes(b"x")
    assert paths._case_tells(str(tmp_path / "Photo")) in (True, False)
    # Two files that differ only in case can only exist where case matters.
    sensitive = tmp_path / "sensitive"
    sensitive.mkdir()
    (sensitive / "Photo").write_bytes(b"1")
    if not os.path.exists(sensitive / "pHOTO"):
        (sensitive / "pHOTO").write_bytes(b"2")
        assert paths._case_tells(str(sensitive / "Photo")) is True
        # A lookup with swapped case reaching the same file is what an insensitive file system does;
        # a hard link under the swapped name looks just like that.
        folding = tmp_path / "folding"
        folding.mkdir()
        (folding / "Photo").write_bytes(b"1")
        os.link(folding / "Photo", folding / "pHOTO")
        assert paths._case_tells(str(folding / "Photo")) is False
    assert paths._case_tells(str(tmp_path / "123")) is None  # nothing to swap


def test_case_probe_falls_back_to_a_probe_file_and_leaves_nothing(tmp_path):
    bare = tmp_path / "123"
    bare.mkdir()
    (tmp_path / "Probe.txt").write_bytes(b"x")
    expected = not os.path.exists(tmp_path / "pROBE.TXT")
    assert paths._probe_case_sensitive(str(bare)) is expected
    assert list(bare.iterdir()) == []


def test_case_probe_runs_once_per_device(tmp_path, monkeypatch):
    calls = []

    def probe(path):
        calls.append(path)
        return False

    monkeypatch.setattr(paths, "_probe_case_sensitive", probe)
    (tmp_path / "a").mkdir()
    assert is_case_sensitive(tmp_path / "a") is False
    assert is_case_sensitive(tmp_path / "b" / "c.jpg") is False
    assert path_key(tmp_path / "A.JPG") == path_key(tmp_path / "a.jpg")
    assert len(calls) == 1
