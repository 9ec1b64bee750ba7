"""Caption collections: reading files of every supported kind, storing, resolving and embedding them."""

from __future__ import annotations

import json

import numpy as np
import pytest

from picsift.engine.captions import (
    DEFAULT_COLLECTION,
    embed_collection,
    import_collection,
    read_captions,
    resolve_collection,
)
from picsift.engine.errors import CollectionError
from picsift.engine.paths import DEFAULT_COLLECTION_FILE


def _write(path, text: str, encoding: str = "utf-8"):
    path.write_text(text, encoding=encoding)
    return path


# ----- reading files -----------------------------------------------------------


def test_txt_one_caption_a_line_blank_and_duplicates_dropped_whitespace_normalised(tmp_path):
    f = _write(
        tmp_path / "caps.txt",
        "a dog runs on the beach\n"
        "\n"
        "   \n"
        "  two   children\tplay football  \r\n"
        "a dog runs on the beach\n"
        "a dog  runs on the   beach\n"  # the same caption once whitespace is normalised
        "a red car at night\n",
    )
    assert read_captions(f) == ["a dog runs on the beach", "two children play football", "a red car at night"]


def test_txt_accepts_a_path_string_and_a_byte_order_mark(tmp_path):
    f = tmp_path / "bom.txt"
    f.write_bytes("\ufeffa cat sleeps on a sofa\na bird on a wire\n".encode("utf-8"))
    assert read_captions(str(f)) == ["a cat sleeps on a sofa", "a bird on a wire"]


def test_csv_caption_column_with_quoted_commas(tmp_path):
    f = _write(
        tmp_path / "caps.csv",
        'id,caption,source\n'
        '1,"a dog, wet, on the beach",coco\n'
        '2,two  children play,coco\n'
        '3,,coco\n'
        '4,"a dog, wet, on the beach",flickr\n',
    )
    assert read_captions(f) == ["a dog, wet, on the beach", "two children play"]


def test_csv_header_is_case_insensitive(tmp_path):
    f = _write(tmp_path / "upper.csv", "Image,Caption\nimg1.jpg,A horse in a field\nimg2.jpg,a boat on a lake\n")
    assert read_captions(f) == ["A horse in a field", "a boat on a lake"]


def test_csv_with_a_text_column(tmp_path):
    f = _write(tmp_path / "texts.csv", "text,score\na man rides a bike,0.5\na woman reads a book,0.7\n")
    assert read_captions(f) == ["a man rides a bike", "a woman reads a book"]


def test_csv_header_with_byte_order_mark(tmp_path):
    f = tmp_path / "excel.csv"
    f.write_bytes("\ufeffcaption\na tram in the snow\n".encode("utf-8"))
    assert read_captions(f) == ["a tram in the snow"]


def test_tsv_caption_column(tmp_path):
    f = _write(tmp_path / "caps.tsv", "id\tcaption\n1\ta cat, asleep, on a bed\n2\ta kite in the sky\n")
    # Commas belong to the caption in a TSV file.
    assert read_captions(f) == ["a cat, asleep, on a bed", "a kite in the sky"]


def test_coco_captions_json(tmp_path):
    data = {
        "images": [{"id": 1, "file_name": "a.jpg"}, {"id": 2, "file_name": "b.jpg"}],
        "annotations": [
            {"image_id": 1, "id": 10, "caption": "A man riding a wave on a surfboard.\n"},
            {"image_id": 1, "id": 11, "caption": "a  surfer   in the ocean"},
            {"image_id": 2, "id": 12, "caption": "A man riding a wave on a surfboard."},
            {"image_id": 2, "id": 13},  # no caption: ignored
        ],
    }
    f = _write(tmp_path / "captions_val.json", json.dumps(data))
    assert read_captions(f) == ["A man riding a wave on a surfboard.", "a surfer in the ocean"]


def test_json_list_of_strings(tmp_path):
    f = _write(tmp_path / "list.json", json.dumps(["a pizza on a plate", "  a pizza on a plate ", "", "a cup of tea"]))
    assert read_captions(f) == ["a pizza on a plate", "a cup of tea"]


def test_missing_file_is_a_collection_error(tmp_path):
    missing = tmp_path / "nowhere" / "caps.txt"
    with pytest.raises(CollectionError, match="not found") as info:
        read_captions(missing)
    assert str(missing) in str(info.value)


def test_csv_without_a_caption_column_is_a_collection_error(tmp_path):
    f = _write(tmp_path / "bad.csv", "id,label\n1,dog\n2,cat\n")
    with pytest.raises(CollectionError, match="no caption column"):
        read_captions(f)


def test_invalid_json_is_a_collection_error(tmp_path):
    f = _write(tmp_path / "broken.json", '{"annotations": [{"caption": "a dog"}')
    with pytest.raises(CollectionError, match="not valid JSON"):
        read_captions(f)


@pytest.mark.parametrize("payload", [{"images": []}, [1, 2, 3], "just a string"])
def test_json_of_another_shape_is_a_collection_error(tmp_path, payload):
    f = _write(tmp_path / "other.json", json.dumps(payload))
    with pytest.raises(CollectionError, match="not COCO captions JSON"):
        read_captions(f)


@pytest.mark.parametrize(
    "name, content",
    [("empty.txt", ""), ("blank.txt", "\n  \n\t\n"), ("empty.csv", "caption\n"), ("empty.json", "[]"),
     ("noann.json", '{"annotations": []}')],
)
def test_file_without_captions_is_a_collection_error(tmp_path, name, content):
    f = _write(tmp_path / name, content)
    with pytest.raises(CollectionError, match="no captions found"):
        read_captions(f)


def test_completely_empty_csv_is_a_collection_error(tmp_path):
    f = _write(tmp_path / "void.csv", "")
    with pytest.raises(CollectionError):
        read_captions(f)


def test_non_utf8_file_is_a_collection_error(tmp_path):
    f = tmp_path / "latin1.txt"
    f.write_bytes("un caf\xe9 au lait\n".encode("latin-1"))
    with pytest.raises(CollectionError, match="UTF-8"):
        read_captions(f)


# ----- the built-in collection ------------------------------------------------


def test_built_in_collection_has_at_least_2000_distinct_captions():
    assert DEFAULT_COLLECTION_FILE.is_file()
    lines = DEFAULT_COLLECTION_FILE.read_text(encoding="utf-8").splitlines()
    distinct = {" ".join(line.split()) for line in lines} - {""}
    assert len(distinct) >= 2000
    # read_captions keeps every one of them.
    assert len(read_captions(DEFAULT_COLLECTION_FILE)) == len(distinct)


# ----- storing and resolving ----------------------------------------------------


def _by_name(library) -> dict[str, dict]:
    return {c["name"]: c for c in library.store.collections()}


def test_import_collection_stores_the_captions(library, tmp_path):
    f = _write(tmp_path / "pets.txt", "a dog\na cat\na dog\na parrot\n")
    name, count = import_collection(library, f)
    assert (name, count) == ("pets", 3)  # the name defaults to the file name without its suffix
    cols = _by_name(library)
    assert list(cols) == ["pets"]
    assert cols["pets"]["captions"] == 3
    assert cols["pets"]["source"] == str(f.resolve())
    cid = library.store.collection_id("pets")
    assert sorted(t for _, t in library.store.captions_missing_vectors(cid, "any-model")) == ["a cat", "a dog", "a parrot"]


def test_reimporting_the_same_name_replaces_the_collection(library, tmp_path):
    first = _write(tmp_path / "one.txt", "a dog\na cat\na parrot\n")
    second = _write(tmp_path / "two.csv", "caption\na horse\na cow\n")
    other = _write(tmp_path / "other.txt", "a tree\n")
    import_collection(library, first, "mine")
    import_collection(library, other, "other")
    assert import_collection(library, first, "mine") == ("mine", 3)
    assert _by_name(library)["mine"]["captions"] == 3  # same file again: no duplicates
    assert import_collection(library, second, "mine") == ("mine", 2)
    cols = _by_name(library)
    assert sorted(cols) == ["mine", "other"]
    assert cols["mine"]["captions"] == 2
    assert cols["other"]["captions"] == 1  # other collections are left alone
    cid = library.store.collection_id("mine")
    assert sorted(t for _, t in library.store.captions_missing_vectors(cid, "any-model")) == ["a cow", "a horse"]


def test_failed_import_leaves_the_existing_collection(library, tmp_path):
    good = _write(tmp_path / "good.txt", "a dog\na cat\n")
    bad = _write(tmp_path / "bad.csv", "id,label\n1,x\n")
    import_collection(library, good, "mine")
    with pytest.raises(CollectionError):
        import_collection(library, bad, "mine")
    assert _by_name(library)["mine"]["captions"] == 2


def test_resolve_none_imports_the_built_in_collection_on_first_use(library):
    assert library.store.collections() == []
    cid = resolve_collection(library, None)
    cols = _by_name(library)
    assert list(cols) == [DEFAULT_COLLECTION]
    assert cols[DEFAULT_COLLECTION]["id"] == cid
    assert cols[DEFAULT_COLLECTION]["captions"] == len(read_captions(DEFAULT_COLLECTION_FILE)) >= 2000
    # Later uses find it: no second import, same id.
    assert resolve_collection(library, None) == cid
    assert len(library.store.collections()) == 1


def test_resolve_none_is_the_built_in_collection_even_after_an_own_import(library, tmp_path):
    """The documented default ("default: the built-in one") holds when the user imported a collection first."""
    import_collection(library, _write(tmp_path / "mine.txt", "a dog\na cat\n"), "mine")
    cid = resolve_collection(library, None)
    cols = _by_name(library)
    assert sorted(cols) == sorted(["mine", DEFAULT_COLLECTION])
    assert cid == cols[DEFAULT_COLLECTION]["id"]
    assert resolve_collection(library, "mine") == cols["mine"]["id"]


def test_resolve_unknown_name_lists_the_known_ones(library, tmp_path):
    import_collection(library, _write(tmp_path / "a.txt", "a dog\n"), "alpha")
    import_collection(library, _write(tmp_path / "b.txt", "a cat\n"), "beta")
    with pytest.raises(CollectionError) as info:
        resolve_collection(library, "gamma")
    msg = str(info.value)
    assert "gamma" in msg and "alpha" in msg and "beta" in msg
    # Asking for a name never imports the built-in collection behind the user's back.
    assert sorted(_by_name(library)) == ["alpha", "beta"]


def test_resolve_unknown_name_in_an_empty_library(library):
    with pytest.raises(CollectionError, match="none"):
        resolve_collection(library, "gamma")


# ----- embedding --------------------------------------------------------------


def test_embed_collection_fills_normalised_vectors_once(library, tiny_model, tmp_path):
    texts = [f"{a} {b} on the beach" for a in ("a dog", "a cat", "two children", "a horse")
             for b in ("runs", "sleeps", "plays")]
    f = _write(tmp_path / "beach.txt", "\n".join(texts) + "\n")
    name, count = import_collection(library, f)
    assert count == 12
    cid = resolve_collection(library, name)

    steps = list(embed_collection(library, tiny_model, cid, batch=5))
    assert steps == [(5, 12), (10, 12), (12, 12)]

    ids, got_texts, vecs = library.store.caption_vectors(cid, tiny_model.be.key)
    assert len(ids) == len(got_texts) == 12
    assert sorted(got_texts) == sorted(texts)
    assert vecs.shape == (12, tiny_model.dim) and vecs.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-5)
    # Each stored vector is the model's embedding of its own caption, not a neighbour's.
    expected = tiny_model.embed_texts(got_texts)
    np.testing.assert_allclose(vecs, expected, atol=1e-5)
    assert library.store.captions_missing_vectors(cid, tiny_model.be.key) == []

    # Nothing left to embed: a second call yields nothing and changes nothing.
    assert list(embed_collection(library, tiny_model, cid)) == []
    ids2, texts2, vecs2 = library.store.caption_vectors(cid, tiny_model.be.key)
    assert list(ids2) == list(ids) and texts2 == got_texts
    np.testing.assert_array_equal(vecs2, vecs)


def test_embed_collection_touches_only_its_own_collection(library, tiny_model, tmp_path):
    import_collection(library, _write(tmp_path / "a.txt", "a dog\na cat\n"), "a")
    import_collection(library, _write(tmp_path / "b.txt", "a tree\na car\na boat\n"), "b")
    ca, cb = library.store.collection_id("a"), library.store.collection_id("b")
    assert list(embed_collection(library, tiny_model, ca)) == [(2, 2)]
    assert len(library.store.caption_vectors(ca, tiny_model.be.key)[0]) == 2
    assert len(library.store.caption_vectors(cb, tiny_model.be.key)[0]) == 0
    assert len(library.store.captions_missing_vectors(cb, tiny_model.be.key)) == 3


def test_caption_vectors_belong_to_the_model_that_made_them(library, tiny_model, tmp_path, photo_folder):
    """Captions prepared with one model (before any photo was indexed) are never read by another."""
    from picsift.engine.index.indexer import index_folders
    from picsift.engine.models import load_model
    from picsift.engine.models.random_blip import build_random_blip
    from picsift.engine.search.searcher import Searcher

    other = load_model(str(build_random_blip(tmp_path / "other", "tiny", seed=3)), device="cpu")
    f = _write(tmp_path / "pets.txt", "a dog on the beach\na cat on a sofa\na red car in the snow\n")
    import_collection(library, f, "pets")
    cid = library.store.collection_id("pets")
    assert list(embed_collection(library, other, cid)) == [(3, 3)]
    for _ in index_folders(library, tiny_model, [str(photo_folder)]):
        pass
    # The library's model has none of its own yet: the other model's vectors do not count.
    assert len(library.store.captions_missing_vectors(cid, tiny_model.be.key)) == 3
    photo = str(photo_folder / "home" / "photo_02.png")
    hits = Searcher(library, tiny_model).captions(photo, n=3, k=0, collection="pets")
    _, texts, vecs = library.store.caption_vectors(cid, tiny_model.be.key)
    np.testing.assert_allclose(vecs, tiny_model.embed_texts(texts), atol=1e-5)
    vec = library.store.vector(library.store.photo(photo).id)
    assert [h.score for h in hits] == pytest.approx(sorted((vecs @ vec).tolist(), reverse=True), abs=1e-5)
    _, _, other_vecs = library.store.caption_vectors(cid, other.be.key)  # still there, still its own
    np.testing.assert_allclose(other_vecs, other.embed_texts(texts), atol=1e-5)


def test_a_reimported_collection_is_not_answered_from_the_old_one(library, tiny_model, tmp_path, photo_folder):
    """A searcher keeps prepared caption vectors; a collection imported again under the same name is new."""
    from picsift.engine.index.indexer import index_folders
    from picsift.engine.search.searcher import Searcher

    for _ in index_folders(library, tiny_model, [str(photo_folder)]):
        pass
    searcher = Searcher(library, tiny_model)
    photo = str(photo_folder / "home" / "photo_02.png")
    import_collection(library, _write(tmp_path / "a.txt", "a dog on the beach\na cat on a sofa\n"), "mine")
    assert {h.text for h in searcher.captions(photo, n=5, k=0, collection="mine")} == {"a dog on the beach",
                                                                                       "a cat on a sofa"}
    import_collection(library, _write(tmp_path / "b.txt", "a red car\na horse in the snow\n"), "mine")
    assert {h.text for h in searcher.captions(photo, n=5, k=0, collection="mine")} == {"a red car",
                                                                                       "a horse in the snow"}
