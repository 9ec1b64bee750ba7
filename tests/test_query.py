"""Searching the way people search: query terms (negative, weighted, a photo plus words), filters stored at
indexing and applied before the BE ranks, the match shown and cut off, and sorting by date."""

from __future__ import annotations

import datetime as dt
import json
import os

import numpy as np
import pytest
from PIL import Image

from conftest import make_photo


# ----- the query's terms ------------------------------------------------------------------------------
def test_terms_signs_weights_and_quotes():
    from picsift.engine.search.query import Term, parse_query

    q = parse_query('beach at sunset -people 2:"golden hour" -0.5:car 0:ignored t-shirt')
    assert q.terms == [Term("beach at sunset t-shirt"), Term("people", -1.0), Term("golden hour", 2.0),
                       Term("car", -0.5)]
    # the CE reads the positive words as typed, without signs and weights
    assert q.positive_text == "beach at sunset golden hour t-shirt"
    assert q.negatives == ["people", "car"]
    assert not q.plain and parse_query("a dog on a beach").plain


def test_a_query_of_negative_terms_alone_is_refused_unless_a_photo_is_given():
    from picsift.engine.search.query import QueryError, parse_query

    with pytest.raises(QueryError, match="nothing to search for"):
        parse_query("-people -cars")
    with pytest.raises(QueryError):
        parse_query("   ")
    q = parse_query("-people", photo="x.jpg")
    assert q.positive_text == "" and q.photo == "x.jpg"


def test_the_be_vector_is_the_normalised_weighted_sum_of_the_terms_and_the_photo():
    from picsift.engine.search.query import QueryError, parse_query

    q = parse_query("red 2:car -people", photo="p.jpg")
    texts = np.array([[1.0, 0, 0, 0], [0, 1.0, 0, 0], [0, 0, 1.0, 0]], np.float32)  # red, car, people
    photo = np.array([0, 0, 0, 1.0], np.float32)
    v = q.combine(texts, photo)
    expected = np.array([1.0, 2.0, -1.0, 1.0]) / np.sqrt(7)
    assert v.shape == (1, 4) and np.allclose(v[0], expected)
    with pytest.raises(QueryError, match="cancel out"):
        parse_query("red -red").combine(np.array([[1.0, 0], [1.0, 0]], np.float32))


# ----- filters -----------------------------------------------------------------------------------------
def test_date_ranges_as_people_type_them():
    from picsift.engine.search.filters import FilterError, parse_date_range

    today = dt.date(2026, 3, 15)
    at = lambda *d: dt.datetime(*d).timestamp()  # noqa: E731
    assert parse_date_range("2024", today) == (at(2024, 1, 1), at(2025, 1, 1))
    assert parse_date_range("2024-02", today) == (at(2024, 2, 1), at(2024, 3, 1))
    assert parse_date_range("2024-02-29", today) == (at(2024, 2, 29), at(2024, 3, 1))
    assert parse_date_range("2023-06..2024-02", today) == (at(2023, 6, 1), at(2024, 3, 1))
    assert parse_date_range("2024..", today) == (at(2024, 1, 1), None)
    assert parse_date_range("..2019", today) == (None, at(2020, 1, 1))
    assert parse_date_range("this year", today) == (at(2026, 1, 1), at(2026, 3, 16))
    assert parse_date_range("Last  Month", today) == (at(2026, 2, 1), at(2026, 3, 1))
    assert parse_date_range("last year", today) == (at(2025, 1, 1), at(2026, 1, 1))
    assert parse_date_range("last 7 days", today) == (at(2026, 3, 9), at(2026, 3, 16))
    for bad in ("2024-13", "May 2024", "2025..2024", "..", "2023-02-29"):
        with pytest.raises(FilterError):
            parse_date_range(bad, today)


def test_file_types_and_orientation():
    from picsift.engine.search.filters import FilterError, parse_orientation, parse_types

    assert parse_types("JPG, png") == ("jpg", "jpeg", "jpe", "png")
    assert parse_types(".heic") == ("heic", "heif")
    assert parse_orientation(" Portrait ") == "portrait"
    with pytest.raises(FilterError):
        parse_types("*.jpg")
    with pytest.raises(FilterError):
        parse_orientation("upright")


def _jpeg_with_date(path, size, taken: str | None, seed: int, orientation: int = 1) -> str:
    """A JPEG whose EXIF says when it was taken (DateTimeOriginal) and how it is turned."""
    rng = np.random.default_rng(seed)
    img = Image.fromarray(rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8), "RGB")
    exif = Image.Exif()
    if orientation != 1:
        exif[0x0112] = orientation
    if taken:
        exif.get_ifd(0x8769)[0x9003] = taken
    os.makedirs(os.path.dirname(path), exist_ok=True)
    img.save(path, "JPEG", exif=exif)
    return str(path)


@pytest.fixture
def dated_folder(tmp_path):
    """Ten photos: landscape ones taken in 2019, portrait ones in 2023 (one turned by EXIF), a square PNG
    and one without a date (its file time, set to 2021)."""
    root = tmp_path / "dated"
    paths = {}
    for i in range(4):
        paths[f"l2019_{i}"] = _jpeg_with_date(root / "old" / f"l2019_{i}.jpg", (60, 40), f"2019:0{i + 1}:10 10:00:00", i)
    for i in range(3):
        paths[f"p2023_{i}"] = _jpeg_with_date(root / "new" / f"p2023_{i}.jpg", (40, 60), f"2023:07:0{i + 1} 09:00:00",
                                              10 + i)
    # stored 60x40 but turned a quarter by EXIF: portrait as shown
    paths["turned"] = _jpeg_with_date(root / "new" / "turned.jpg", (60, 40), "2023:08:01 12:00:00", 20, orientation=6)
    paths["square"] = make_photo(root / "new" / "square.png", seed=30, size=(50, 50))
    paths["nodate"] = _jpeg_with_date(root / "old" / "nodate.jpg", (60, 40), None, 40)
    t = dt.datetime(2021, 5, 5, 12).timestamp()
    os.utime(paths["nodate"], (t, t))
    os.utime(paths["square"], (t, t))
    return root, paths


def test_indexing_stores_when_photos_were_taken_and_filters_select_them(tiny_model, dated_folder, library):
    from picsift.engine.search.filters import Filters, parse_date_range
    from picsift.engine.index.indexer import index_folders
    from picsift.engine.search.searcher import Searcher

    root, paths = dated_folder
    list(index_folders(library, tiny_model, [str(root)]))
    searcher = Searcher(library, tiny_model)
    names = {v: k for k, v in paths.items()}

    def passing(**kw) -> set[str]:
        return {names[library.store.paths([i])[i]] for i in searcher.scope_ids(None, Filters(**kw))}

    lo, hi = parse_date_range("2019")
    assert passing(taken_from=lo, taken_to=hi) == {f"l2019_{i}" for i in range(4)}
    lo, hi = parse_date_range("2021")
    assert passing(taken_from=lo, taken_to=hi) == {"nodate", "square"}  # the file time stands in
    assert passing(orientation="portrait") == {"p2023_0", "p2023_1", "p2023_2", "turned"}
    assert passing(orientation="square") == {"square"}
    assert passing(types=("png",)) == {"square"}
    assert passing(folder=str(root / "old")) == {f"l2019_{i}" for i in range(4)} | {"nodate"}
    lo, _ = parse_date_range("2023..")
    assert passing(taken_from=lo, orientation="landscape") == set()

    # applied before the BE ranks: n hits come back when n photos pass, whatever the BE thinks of the rest
    hits = searcher.search("a photo", n=3, k=0)
    f = Filters(orientation="portrait")
    filtered = searcher.session("a photo", n=3, filters=f).retrieve(3)
    assert len(filtered) == 3 and {names[h.path] for h in filtered} <= passing(orientation="portrait")
    assert [h.path for h in hits] != [h.path for h in filtered]


def test_photos_indexed_before_dates_were_kept_get_them_at_the_next_index(tiny_model, dated_folder, library):
    from picsift.engine.index.indexer import index_folders

    root, paths = dated_folder
    list(index_folders(library, tiny_model, [str(root)]))
    library.store._exec("UPDATE photos SET taken = NULL, width = NULL, height = NULL")
    assert len(library.store.photos_missing_facts()) == 10
    events = list(index_folders(library, tiny_model, [str(root)]))
    assert events[-1].embedded == 0
    assert library.store.photos_missing_facts() == []
    row = library.store.photo(paths["turned"])
    assert library.store._rows("SELECT width, height FROM photos WHERE id = ?", (row.id,)) == [(40, 60)]
    taken = library.store.taken([row.id])[row.id]
    assert dt.datetime.fromtimestamp(taken) == dt.datetime(2023, 8, 1, 12)


# ----- terms in a search session --------------------------------------------------------------------------
def test_a_session_searches_with_the_terms_vector_and_the_ce_reads_the_positive_words(tiny_model, photo_folder,
                                                                                       library):
    from picsift.engine.index.indexer import index_folders
    from picsift.engine.search.searcher import Searcher

    list(index_folders(library, tiny_model, [str(photo_folder)]))
    searcher = Searcher(library, tiny_model)
    session = searcher.session("red square -circle 2:blue", n=6)
    hits = session.retrieve(6)
    e = tiny_model.embed_texts(["red square", "circle", "blue"])
    want = e[0] - e[1] + 2 * e[2]
    want /= np.linalg.norm(want)
    assert np.allclose(session._vector[0], want, atol=1e-6)
    vi = library.index_for(tiny_model.be.key)
    scores, ids = vi.search(want[None].astype(np.float32), 6)
    assert [h.id for h in hits] == [int(i) for i in ids[0]]
    # the CE scored the words "red square blue", not the negative term
    from picsift.engine.search.searcher import _final_hits

    final = _final_hits(session.stream(2))
    top = [h for h in final if h.rerank_score is not None]
    feats = searcher.photo_tokens([h.id for h in top], {h.id: h.path for h in top})
    for h in top:
        assert h.rerank_score == pytest.approx(float(tiny_model.ce.score("red square blue", feats[h.id][None])[0]),
                                               abs=0.02)


def test_a_photo_plus_words_starts_from_the_photo_and_leaves_it_out(tiny_model, photo_folder, library):
    from picsift.engine.index.indexer import index_folders
    from picsift.engine.search.searcher import Searcher, _final_hits

    list(index_folders(library, tiny_model, [str(photo_folder)]))
    searcher = Searcher(library, tiny_model)
    start = sorted(str(p) for p in photo_folder.rglob("*.png"))[0]
    row = library.store.photo(start)
    session = searcher.session("at night", n=5, photo=start)
    hits = _final_hits(session.stream(3))
    assert len(hits) == 5 and row.id not in {h.id for h in hits}
    photo_vec = library.store.vector(row.id, tiny_model.be.key)
    want = tiny_model.embed_texts(["at night"])[0] + photo_vec
    assert np.allclose(session._vector[0], want / np.linalg.norm(want), atol=1e-6)
    assert sum(h.rerank_score is not None for h in hits) == 3
    # a photo alone: nothing for the CE to read, so nothing is reranked
    alone = _final_hits(searcher.session("", n=4, photo=start).stream(5))
    assert len(alone) == 4 and all(h.rerank_score is None for h in alone)


# ----- what the user sees ------------------------------------------------------------------------------------
def test_min_score_hides_weak_hits_and_date_sort_puts_the_newest_first(tiny_model, dated_folder, library):
    from picsift.engine.index.indexer import index_folders
    from picsift.engine.search.searcher import Searcher, arrange

    root, paths = dated_folder
    list(index_folders(library, tiny_model, [str(root)]))
    hits = Searcher(library, tiny_model).search("a photo", n=10, k=4)
    assert all(h.match == (h.rerank_score if h.rerank_score is not None else h.score) for h in hits)
    cut = sorted(h.match for h in hits)[5]
    kept = arrange(hits, library, min_score=cut)
    assert [h.path for h in kept] == [h.path for h in hits if h.match >= cut] and len(kept) == 5
    assert [h.rank for h in kept] == [1, 2, 3, 4, 5]
    by_date = arrange(hits, library, sort="date")
    taken = library.store.taken([h.id for h in by_date])
    times = [taken[h.id] for h in by_date]
    assert times == sorted(times, reverse=True) and by_date[0].path == paths["turned"]


def test_the_terminal_search_takes_terms_filters_min_score_and_sort(tiny_model_dir, dated_folder, tmp_path,
                                                                    capsys, _isolated_home):
    from picsift.engine.cli import main

    root, paths = dated_folder
    lib = str(tmp_path / "lib")
    assert main(["index", str(root), "--library", lib, "--model", str(tiny_model_dir), "-q"]) == 0
    capsys.readouterr()
    assert main(["search", "a photo -dark", "--library", lib, "-n", "3", "-k", "2", "--date", "2019",
                 "--json"]) == 0
    hits = json.loads(capsys.readouterr().out)
    assert len(hits) == 3 and all("/old/l2019_" in h["path"] for h in hits)
    assert all(h["match"] == (h["rerank_score"] if h["rerank_score"] is not None else h["score"]) for h in hits)
    assert main(["search", "a photo", "--library", lib, "-n", "10", "-k", "0", "--orientation", "portrait",
                 "--sort", "date", "--json"]) == 0
    hits = json.loads(capsys.readouterr().out)
    assert [os.path.basename(h["path"]) for h in hits] == ["turned.jpg", "p2023_2.jpg", "p2023_1.jpg", "p2023_0.jpg"]
    assert main(["search", "a photo", "--library", lib, "-n", "10", "-k", "0", "--min-score", "2", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == []  # a cosine never reaches 2
    assert main(["search", "a photo", "--library", lib, "--date", "2024-13"]) == 1
    assert "not a real date" in capsys.readouterr().err
    assert main(["search", "-people -cars", "--library", lib]) == 1
    assert "nothing to search for" in capsys.readouterr().err
    assert main(["search", "at dusk", "--photo", paths["square"], "--library", lib, "-n", "2", "-k", "0",
                 "--json"]) == 0
    hits = json.loads(capsys.readouterr().out)
    assert len(hits) == 2 and paths["square"] not in {h["path"] for h in hits}


def test_recent_queries_are_kept_in_the_library_newest_first_and_can_be_cleared(tiny_model_dir, photo_folder,
                                                                               tmp_path, capsys, _isolated_home):
    from picsift.engine.cli import main
    from picsift.engine.library import Library

    lib = str(tmp_path / "lib")
    assert main(["index", str(photo_folder), "--library", lib, "--model", str(tiny_model_dir), "-q"]) == 0
    for q in ("a red square", "a  blue circle", "a red square", "dog -people"):
        assert main(["search", q, "--library", lib, "-k", "0", "-q"]) == 0
    assert main(["search", "secret", "--library", lib, "-k", "0", "--no-history", "-q"]) == 0
    capsys.readouterr()
    assert main(["recent", "--library", lib, "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == ["dog -people", "a red square", "a blue circle"]
    library = Library(tmp_path / "lib")
    for i in range(60):
        library.remember_query(f"q{i}")
    assert len(library.recent_queries()) == library.RECENT_LIMIT and library.recent_queries()[0] == "q59"
    library.close()
    assert main(["recent", "--library", lib, "--clear"]) == 0
    capsys.readouterr()
    assert main(["recent", "--library", lib]) == 0
    assert "No recent queries." in capsys.readouterr().out
