"""Words in photos: Tesseract reads rendered text at several sizes and angles, a cheap check leaves photos
without text unread, indexing stores the words incrementally, text: searches find them with meaning and
filters, and a machine without Tesseract says so in one sentence and indexes the rest."""

from __future__ import annotations

import json
import os

import pytest

from conftest import make_photo
from text_photos import text_photo, texture


def _reader():
    from picsift.engine.index.ocr import TextReader, TextReadingUnavailable

    try:
        return TextReader.for_library("eng")[0] or TextReader("eng")
    except TextReadingUnavailable as exc:
        if os.environ.get("CI"):
            raise  # CI installs Tesseract: these tests must run there
        pytest.skip(str(exc))


@pytest.fixture(scope="module")
def reader():
    return _reader()


def _words(text: str) -> set[str]:
    return {w.strip(".,!:;()'\"").lower() for w in text.split()}


# What Tesseract reads in a photo: signs with letters 40 to 110 pixels high on a 1600-pixel photo, level or
# turned a few degrees, and white outlined letters straight on the photo when large; text turned 8 degrees
# or more is beyond it (README: Searching).
@pytest.mark.parametrize("words, font_px, angle, sign", [
    ("HAPPY BIRTHDAY", 64, 0, True),
    ("Grand Cafe\nSince 1921", 40, 0, True),
    ("No Parking", 110, 3, True),
    ("OPEN 24 HOURS", 110, -3, True),
    ("No Parking", 110, 0, False),
])
def test_rendered_text_is_read(reader, words, font_px, angle, sign):
    img = text_photo(words, size=(1600, 1200), font_px=font_px, angle=angle, seed=font_px, sign=sign)
    reading = reader.read(img)
    assert not reading.checked_only
    assert _words(words) <= _words(reading.text), reading.text


def test_photos_without_text_are_only_checked(reader):
    for seed in range(4):
        reading = reader.read(texture(1200, 900, seed))
        assert reading.checked_only and reading.text == ""


def test_words_tesseract_is_unsure_of_are_dropped(reader):
    # letters too small and blurred to read: whatever Tesseract guesses, nothing confident is kept
    img = text_photo("tiny words here", size=(1600, 1200), font_px=7, seed=3)
    assert reader.recognise(img.convert("L").resize((400, 300))) == ""


@pytest.fixture
def text_folder(tmp_path):
    root = tmp_path / "photos"
    root.mkdir()
    text_photo("HAPPY BIRTHDAY", size=(1200, 900), font_px=90).save(root / "party.jpg", quality=92)
    text_photo("No Parking", size=(1200, 900), font_px=90, seed=4).save(root / "sign.jpg", quality=92)
    text_photo("Grand Cafe", size=(1200, 900), font_px=90, seed=5).save(root / "cafe.png")
    for i in range(3):
        make_photo(root / f"plain{i}.jpg", i, size=(320, 240))
    return root


def test_indexing_reads_the_words_and_text_searches_find_them(reader, tiny_model, library, text_folder):
    from picsift.engine.index.indexer import index_folders
    from picsift.engine.search.filters import Filters
    from picsift.engine.search.searcher import Searcher, _final_hits

    list(index_folders(library, tiny_model, [str(text_folder)]))
    assert library.text.count() == (6, 3)
    info = library.photo_info(str(text_folder / "party.jpg"))
    assert {"happy", "birthday"} <= _words(info["text"])
    assert library.photo_info(str(text_folder / "plain0.jpg"))["text"] == ""

    searcher = Searcher(library, tiny_model)

    def found(query, **kw):
        hits = _final_hits(searcher.session(query, n=10, **kw).stream(k=3))
        return [os.path.basename(h.path) for h in hits], hits

    names, hits = found("text:birth")
    assert names == ["party.jpg"]
    assert [m.lower() for m in hits[0].text_matches] == ["birth"]
    assert hits[0].to_json()["text_matches"] == list(hits[0].text_matches)
    names, _ = found('a photo text:"no parking"')
    assert names == ["sign.jpg"]
    names, _ = found("a photo -text:parking")
    assert "sign.jpg" not in names and len(names) == 5
    assert found("text:birthday", filters=Filters(types=("png",)))[0] == []
    assert found("text:cafe", filters=Filters(types=("png",)))[0] == ["cafe.png"]
    assert found("text:nothing-like-this")[0] == []


def test_text_is_read_incrementally_and_again_in_other_languages(reader, tiny_model, library, text_folder):
    from picsift.engine.index.indexer import index_folders

    list(index_folders(library, tiny_model, [str(text_folder)]))
    key = reader.key
    assert len(library.text.hashes_read(key)) == 6
    # a changed photo is read again, a copy shares the reading, a deleted one leaves
    text_photo("EXIT", size=(1200, 900), font_px=120, seed=9).save(text_folder / "sign.jpg", quality=92)
    (text_folder / "party copy.jpg").write_bytes((text_folder / "party.jpg").read_bytes())
    os.remove(text_folder / "cafe.png")
    list(index_folders(library, tiny_model, [str(text_folder)]))
    assert library.text.matching_ids(["parking"]) == []
    assert len(library.text.matching_ids(["exit"])) == 1
    assert len(library.text.matching_ids(["birthday"])) == 2
    # five contents now (the copy shares the party's): the old sign's and the cafe's readings are gone
    assert library.text.matching_ids(["cafe"]) == [] and library.text.count() == (5, 2)

    # photos indexed while reading was off are read by the next run (nothing embedded again)
    library.store._exec("DELETE FROM photo_text")
    phases = [p.phase for p in index_folders(library, tiny_model, [str(text_folder)])]
    assert "reading" in phases and library.text.count() == (5, 2)
    library.set_text_languages(None)
    last = list(index_folders(library, tiny_model, [str(text_folder)]))[-1]
    assert last.embedded == 0 and library.status()["text_in_photos"]["languages"] is None


def test_without_tesseract_one_sentence_says_so_and_the_rest_is_indexed(tiny_model, library, text_folder,
                                                                         monkeypatch, tmp_path):
    from picsift.engine.index import ocr
    from picsift.engine.index.indexer import index_folders

    monkeypatch.setattr(ocr, "_SHARED", {})
    monkeypatch.setattr(ocr, "TESSDATA_DIRS", (str(tmp_path / "none"),))
    monkeypatch.delenv("TESSDATA_PREFIX", raising=False)
    records = list(index_folders(library, tiny_model, [str(text_folder)]))
    notes = {m for r in records for m in r.messages if "Text in photos" in m}
    assert len(notes) == 1 and notes.pop().startswith("Text in photos is off: install tesseract-ocr")
    assert records[-1].embedded == 6 and library.text.count() == (0, 0)


def test_cli_text_search_json_and_status(reader, tiny_model_dir, text_folder, tmp_path, capsys):
    from picsift.engine.cli import main

    lib = str(tmp_path / "lib")
    assert main(["index", str(text_folder), "--library", lib, "--model", str(tiny_model_dir), "-q"]) == 0
    capsys.readouterr()
    assert main(["search", "text:parking", "--library", lib, "--model", str(tiny_model_dir), "--json", "-k", "0"]) == 0
    hits = json.loads(capsys.readouterr().out)
    assert [os.path.basename(h["path"]) for h in hits] == ["sign.jpg"]
    assert [m.lower() for m in hits[0]["text_matches"]] == ["parking"]
    assert main(["search", "text:parking", "--library", lib, "--model", str(tiny_model_dir), "-k", "0"]) == 0
    out = capsys.readouterr().out
    assert "sign.jpg" in out and "text: Parking" in out
    assert main(["status", "--library", lib, "--model", str(tiny_model_dir)]) == 0
    assert "Text:        3 of 6 photos read have words (languages eng)" in capsys.readouterr().out
    assert main(["index", "--library", lib, "--model", str(tiny_model_dir), "--text-languages", "eng;rm -rf"]) != 0
    assert "--text-languages takes" in capsys.readouterr().err
