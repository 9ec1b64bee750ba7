"""The words read in photos as the library keeps them: substring search through FTS5's trigram index, any
case, phrases across line breaks, exclusions, and what a hit shows of its match; and the text: syntax."""

from __future__ import annotations

import pytest


@pytest.fixture
def texts(library):
    """A library with five photo rows and the words read in four of them."""
    store = library.store
    ids = {}
    for i, name in enumerate(["birthday", "cafe", "sign", "blank", "unread"]):
        ids[name] = store.save_photo(f"/p/{name}.jpg", 10, 1, f"h{i}", 10, 10)
    library.text.put("tesseract test eng", [
        ("h0", "HAPPY\nBIRTHDAY Anna"),
        ("h1", "Grand Cafe\nsince 1921\n50% off_today"),
        ("h2", "No Parking\nMain Street"),
        ("h3", ""),  # read, no words
    ])
    return library, ids


def _names(ids, found):
    back = {v: k for k, v in ids.items()}
    return [back[i] for i in found]


def test_substrings_match_in_any_case_and_phrases_across_lines(texts):
    library, ids = texts
    assert library.text.fts, "this SQLite has the FTS5 trigram tokenizer"
    match = library.text.matching_ids
    assert _names(ids, match(["birth"])) == ["birthday"]  # part of a word
    assert _names(ids, match(["happy birthday"])) == ["birthday"]  # a phrase the photo has on two lines
    assert _names(ids, match(["HAPPY BIRTH", "anna"])) == ["birthday"]
    assert _names(ids, match(["street"])) == ["sign"]
    assert match(["birthday cafe"]) == []
    assert sorted(_names(ids, match(["a"]))) == ["birthday", "cafe", "sign"]  # short terms: a scan, same meaning
    assert _names(ids, match(["21"])) == ["cafe"]
    assert _names(ids, match(["50%"])) == ["cafe"] and _names(ids, match(["f_t"])) == ["cafe"]
    assert match(["5%"]) == [] and match(["f%t"]) == []  # LIKE's wildcards are literal characters
    assert sorted(_names(ids, match(["a"], excluded=["cafe"]))) == ["birthday", "sign"]


def test_readings_follow_the_photos(texts):
    library, ids = texts
    store = library.store
    assert library.text.count() == (4, 3)
    assert library.text.hashes_read("tesseract test eng") == {"h0", "h1", "h2", "h3"}
    assert library.text.hashes_read("tesseract test deu") == set()
    # read again: replaced, and the index follows
    library.text.put("tesseract test eng", [("h2", "Exit")])
    assert library.text.matching_ids(["parking"]) == [] and library.text.matching_ids(["exit"]) == [ids["sign"]]
    store.delete_photos([ids["cafe"]])
    assert library.text.sweep() == 1
    assert library.text.matching_ids(["cafe"]) == [] and library.text.count() == (3, 2)


def test_photo_info_carries_the_words(texts):
    library, _ = texts
    assert library.photo_info("/p/birthday.jpg")["text"] == "HAPPY\nBIRTHDAY Anna"
    assert library.photo_info("/p/blank.jpg")["text"] == ""
    assert library.photo_info("/p/unread.jpg")["text"] is None


def test_matched_stretches_are_given_as_the_photo_has_them():
    from picsift.engine.store.photo_text import matches

    text = "HAPPY\nBIRTHDAY Anna\nhappy birthday again"
    assert matches(text, ["happy birthday"]) == ["HAPPY\nBIRTHDAY", "happy birthday"]
    assert matches(text, ["birth", "anna"]) == ["BIRTH", "Anna", "birth"]
    assert matches(text, ["nowhere"]) == []


def test_text_terms_in_a_query():
    from picsift.engine.search.query import QueryError, Term, parse_query

    q = parse_query('text:"happy  birthday" cake -text:draft TEXT:anna')
    assert q.terms == [Term("cake")] and q.positive_text == "cake"
    assert q.text_terms == ["happy birthday", "anna"] and q.text_excluded == ["draft"]
    # text alone: its words' meaning orders the photos that have it
    q = parse_query("text:stop")
    assert q.text_terms == ["stop"] and q.positive_text == "stop" and q.terms == [Term("stop")]
    with pytest.raises(QueryError, match="nothing to search for"):
        parse_query("-text:draft")
    with pytest.raises(QueryError, match="text: needs"):
        parse_query('beach text:""')
    assert "text 'anna'" in parse_query("beach text:anna").describe()
