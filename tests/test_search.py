"""Search: BE results at once, then CE updates that end in CE order; captions and similar photos."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from picsift.engine.captions import import_collection
from picsift.engine.index.indexer import index_folders
from picsift.engine.search.searcher import Searcher, order_hits, Hit


@pytest.fixture
def indexed(library, tiny_model, photo_folder):
    for _ in index_folders(library, tiny_model, [str(photo_folder)]):
        pass
    return library


def test_stream_starts_with_be_order_and_ends_in_ce_order(indexed, tiny_model):
    searcher = Searcher(indexed, tiny_model)
    updates = list(searcher.search_stream("a dog runs on the beach", n=10, k=6))
    first, last = updates[0], updates[-1]
    assert first.scored == 0 and not first.done
    assert [h.rerank_score for h in first.hits] == [None] * 10
    be_scores = [h.score for h in first.hits]
    assert be_scores == sorted(be_scores, reverse=True)
    assert [u.scored for u in updates] == [0, 1, 5, 6]  # one alone first, then chunks
    assert last.done and last.to_score == 6
    top = last.hits[:6]
    probs = [h.rerank_score for h in top]
    assert all(p is not None for p in probs) and probs == sorted(probs, reverse=True)
    assert [h.rerank_score for h in last.hits[6:]] == [None] * 4
    assert [h.id for h in last.hits[6:]] == [h.id for h in first.hits[6:]]
    assert {h.id for h in top} == {h.id for h in first.hits[:6]}
    assert [h.rank for h in last.hits] == list(range(1, 11))
    # the CE really reordered something, or this test proves little
    assert [h.id for h in top] != [h.id for h in first.hits[:6]]


def test_rerank_score_equals_reference_forward(indexed, tiny_model, tiny_model_dir):
    from transformers import AutoProcessor, BlipForImageTextRetrieval

    query = "two children play football in the park"
    hits = Searcher(indexed, tiny_model).search(query, n=12, k=12)
    ref = BlipForImageTextRetrieval.from_pretrained(str(tiny_model_dir)).eval()
    proc = AutoProcessor.from_pretrained(str(tiny_model_dir))
    checked = 0
    for h in hits:
        if not h.path.endswith(".png"):
            continue  # JPEGs decode in draft mode; PNGs are decoded exactly as the reference does
        inputs = proc(images=Image.open(h.path).convert("RGB"), text=query, return_tensors="pt")
        with torch.no_grad():
            itm = torch.softmax(ref(**inputs).itm_score, -1)[0, 1].item()
            cos = ref(**inputs, use_itm_head=False).itm_score[0, 0].item()
        assert h.rerank_score == pytest.approx(itm, abs=1e-4)
        assert h.score == pytest.approx(cos, abs=1e-4)
        checked += 1
    assert checked >= 6


def test_cached_candidates_never_rerun_the_vision_encoder(indexed, tiny_model, monkeypatch):
    def boom(*a, **k):
        raise AssertionError("vision encoder ran for a cached photo")

    monkeypatch.setattr(tiny_model, "encode_images", boom)
    monkeypatch.setattr(tiny_model, "encode_pixels", boom)
    hits = Searcher(indexed, tiny_model).search("a cat", n=12, k=12)
    assert all(h.rerank_score is not None for h in hits)


def test_uncached_candidates_are_encoded_on_demand(indexed, tiny_model):
    searcher = Searcher(indexed, tiny_model)
    cached = searcher.search("a red car", n=8, k=8)
    indexed.tokens.clear()
    fresh = searcher.search("a red car", n=8, k=8)
    assert [h.id for h in fresh] == [h.id for h in cached]
    for a, b in zip(fresh, cached):
        assert a.rerank_score == pytest.approx(b.rerank_score, abs=1e-5)
    assert indexed.tokens.count() == 8  # stored for next time


def test_k_zero_is_be_only_and_k_above_n_widens(indexed, tiny_model):
    searcher = Searcher(indexed, tiny_model)
    plain = searcher.search("snow", n=5, k=0)
    assert len(plain) == 5 and all(h.rerank_score is None for h in plain)
    assert [h.score for h in plain] == sorted((h.score for h in plain), reverse=True)
    wide = searcher.search("snow", n=3, k=7)
    assert len(wide) == 7 and all(h.rerank_score is not None for h in wide)


def test_scope_limits_results_to_a_folder(indexed, tiny_model, photo_folder):
    hits = Searcher(indexed, tiny_model).search("a dog", n=20, k=3, scope=str(photo_folder / "trips"))
    assert len(hits) == 6
    assert all("/trips/" in h.path for h in hits)


def test_cancel_stops_the_rerank(indexed, tiny_model):
    from picsift.engine.jobs import CancelToken

    token = CancelToken()
    updates = []
    for u in Searcher(indexed, tiny_model).search_stream("a boat", n=12, k=12, cancel=token):
        updates.append(u)
        token.cancel()
    assert len(updates) == 1


def test_order_hits_puts_scored_first():
    cands = [Hit(id=i, score=1 - i / 10, be_rank=i + 1) for i in range(5)]
    out = order_hits(cands, 3, {2: 0.9, 0: 0.1})
    assert [h.id for h in out] == [2, 0, 1, 3, 4]
    assert [h.rank for h in out] == [1, 2, 3, 4, 5]
    assert out[2].rerank_score is None


def test_similar_excludes_the_photo_itself(indexed, tiny_model, photo_folder):
    query = str(photo_folder / "home" / "photo_00.jpg")
    hits = Searcher(indexed, tiny_model).similar(query, n=5)
    assert len(hits) == 5 and query not in [h.path for h in hits]
    scores = [h.score for h in hits]
    assert scores == sorted(scores, reverse=True)


def test_similar_for_a_photo_outside_the_library_finds_its_copy(indexed, tiny_model, photo_folder, tmp_path):
    import shutil

    copy = tmp_path / "elsewhere.png"
    shutil.copy(photo_folder / "trips" / "photo_01.png", copy)
    hits = Searcher(indexed, tiny_model).similar(str(copy), n=3)
    assert hits[0].path == str(photo_folder / "trips" / "photo_01.png")
    assert hits[0].score == pytest.approx(1.0, abs=1e-4)


def test_captions_are_reranked_by_the_ce(indexed, tiny_model, photo_folder, tmp_path):
    captions = ["a dog runs on the beach", "a red car on the street", "two children play football",
                "a cat sits on a chair", "a man rides a bike", "snow on the mountains", "a boat on the lake",
                "people at a market"]
    f = tmp_path / "mine.txt"
    f.write_text("\n".join(captions))
    import_collection(indexed, f, "mine")
    photo = str(photo_folder / "home" / "photo_02.png")
    searcher = Searcher(indexed, tiny_model)
    updates = list(searcher.captions_stream(photo, n=8, k=5, collection="mine"))
    last = updates[-1]
    assert updates[0].scored == 0 and last.done and last.scored == 5
    top = last.hits[:5]
    assert [h.rerank_score for h in top] == sorted((h.rerank_score for h in top), reverse=True)
    tokens = tiny_model.encode_images([Image.open(photo).convert("RGB")]).features[tiny_model.ce.key]
    direct = tiny_model.match_probs([h.text for h in top], np.repeat(tokens, 5, axis=0))
    np.testing.assert_allclose([h.rerank_score for h in top], direct, atol=1e-4)


def test_search_with_another_model_is_refused(indexed, tmp_path):
    from picsift.engine.errors import ModelMismatchError
    from picsift.engine.models import load_model
    from picsift.engine.models.random_blip import build_random_blip

    other = load_model(str(build_random_blip(tmp_path / "other", "tiny", seed=3)), device="cpu")
    with pytest.raises(ModelMismatchError):
        Searcher(indexed, other)


def test_an_empty_library_answers_with_no_hits(library, tiny_model, photo_folder):
    searcher = Searcher(library, tiny_model)
    assert searcher.search("a dog", n=5, k=5) == []
    assert searcher.similar(str(photo_folder / "home" / "photo_00.jpg"), n=3) == []
    assert len(searcher.captions(str(photo_folder / "home" / "photo_00.jpg"), n=3, k=3)) == 3


def test_session_reranks_deeper_without_a_new_be_search_and_keeps_its_scope(indexed, tiny_model, photo_folder,
                                                                           monkeypatch):
    searcher = Searcher(indexed, tiny_model)
    calls = {"text": 0, "faiss": 0, "ce": 0}
    real_text, real_faiss, real_ce = tiny_model.be.embed_texts, searcher._photos_by_vector, tiny_model.ce.score

    def count(name, fn):
        def wrapped(*a, **k):
            calls[name] += len(a[1]) if name == "ce" else 1
            return fn(*a, **k)
        return wrapped

    monkeypatch.setattr(tiny_model.be, "embed_texts", count("text", real_text))
    monkeypatch.setattr(searcher, "_photos_by_vector", count("faiss", real_faiss))
    monkeypatch.setattr(tiny_model.ce, "score", count("ce", real_ce))
    trips = str(photo_folder / "trips")
    session = searcher.session("a dog on the beach", n=3, scope=trips)
    assert len(list(session.stream(2))[-1].hits) == 3 and calls == {"text": 1, "faiss": 1, "ce": 2}
    last = list(session.rerank(3))[-1]
    assert calls == {"text": 1, "faiss": 1, "ce": 3}  # only the one not scored yet
    assert all(h.rerank_score is not None for h in last.hits)
    last = list(session.rerank(5))[-1]  # deeper than the candidates: widened, in the same folder
    assert calls == {"text": 1, "faiss": 2, "ce": 5}
    assert len(last.hits) == 5 and all(h.path.startswith(trips + "/") for h in last.hits)
    last = list(session.rerank(50))[-1]  # the folder has 6: the BE is asked once more, then knows
    list(session.rerank(60))
    assert calls["faiss"] == 3 and len(last.hits) == 6 and calls["ce"] == 6
    fresh = Searcher(indexed, tiny_model).search("a dog on the beach", n=6, k=6, scope=trips)
    assert [h.id for h in last.hits] == [h.id for h in fresh]
