"""FAISS index: exact for small libraries, calibrated IVF above a threshold, checked atomic saves."""

from __future__ import annotations

import json
import shutil

import faiss
import numpy as np
import pytest

from picsift.engine.bench import clustered_vectors
from picsift.engine.search.vector_index import (
    GROWTH_FACTOR,
    VectorIndex,
    modality_gap_queries,
    recall_at,
)


def clustered(n, dim=64, clusters=200, seed=0, noise=0.5):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, dim))
    x = centres[rng.integers(0, clusters, n)] + rng.normal(scale=noise, size=(n, dim))
    x = x.astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_exact_search_returns_true_neighbours_with_row_ids():
    x = clustered(500)
    ids = np.arange(500, dtype=np.int64) * 7 + 3
    vi = VectorIndex.build(ids, x, 64)
    assert vi.kind == "flat"
    scores, got = vi.search(x[10:11], 5)
    assert got[0, 0] == ids[10] and scores[0, 0] == pytest.approx(1.0, abs=1e-5)
    truth = np.argsort(-(x @ x[10]))[:5]
    assert list(got[0]) == list(ids[truth])


def test_approximate_index_above_threshold_keeps_recall():
    x = clustered(40_000, seed=1)
    ids = np.arange(40_000, dtype=np.int64) + 1
    approx = VectorIndex.build(ids, x, 64, exact_limit=10_000)
    exact = VectorIndex.build(ids, x, 64, exact_limit=10**9)
    assert approx.kind == "ivf" and exact.kind == "flat"
    rng = np.random.default_rng(5)
    q = x[rng.choice(len(x), 300, replace=False)] + rng.normal(scale=0.3, size=(300, 64)).astype(np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    _, a = approx.search(q, 20)
    _, e = exact.search(q, 20)
    recall = np.mean([len(set(i) & set(j)) / 20 for i, j in zip(a, e)])
    assert recall >= 0.95, recall


def test_remove_and_scoped_search():
    x = clustered(300)
    ids = np.arange(300, dtype=np.int64) + 1
    for limit in (10**9, 100):  # flat and IVF alike
        vi = VectorIndex.build(ids, x, 64, exact_limit=limit)
        vi.remove([ids[0], ids[1]])
        assert vi.ntotal == 298
        _, got = vi.search(x[0:1], 10)
        assert ids[0] not in got[0] and ids[1] not in got[0]
        allowed = ids[100:110]
        _, got = vi.search(x[0:1], 5, allowed_ids=allowed)
        assert set(got[0][got[0] >= 0]) <= set(allowed)
        assert (got[0] >= 0).sum() == 5


def test_empty_index_searches_to_nothing():
    vi = VectorIndex.empty(16)
    scores, ids = vi.search(np.ones((1, 16), np.float32) / 4, 5)
    assert (ids == -1).all()


def test_save_is_atomic_and_load_checks_description(tmp_path):
    x = clustered(100, dim=16)
    vi = VectorIndex.build(np.arange(100) + 1, x, 16)
    path = tmp_path / "photos.faiss"
    vi.save(path, generation=7, model_key="m")
    assert not list(tmp_path.glob("*.tmp"))
    loaded, meta = VectorIndex.load(path)
    assert meta["generation"] == 7 and loaded.ntotal == 100
    assert meta["model_key"] == meta["model_id"] == "m"
    path.write_bytes(b"garbage")
    with pytest.raises(ValueError):
        VectorIndex.load(path)


def test_indexes_come_from_the_factory_with_inner_product():
    x = clustered(2000, dim=32)
    ids = np.arange(2000, dtype=np.int64) + 1
    flat = VectorIndex.build(ids, x, 32)
    ivf = VectorIndex.build(ids, x, 32, exact_limit=100)
    assert isinstance(flat.index, faiss.IndexIDMap2) and flat.index.metric_type == faiss.METRIC_INNER_PRODUCT
    assert isinstance(ivf.index, faiss.IndexIVFFlat) and ivf.index.metric_type == faiss.METRIC_INNER_PRODUCT
    # Scores are cosines: a library vector finds itself, under its row id, with score 1.
    for vi in (flat, ivf):
        scores, got = vi.search(x[5:6], 3)
        assert got[0, 0] == ids[5] and scores[0, 0] == pytest.approx(1.0, abs=1e-5)


# ----- integrity of saved files ------------------------------------------

def _saved(tmp_path, name="photos.faiss", seed=0, generation=1):
    x = clustered(100, dim=16, seed=seed)
    vi = VectorIndex.build(np.arange(100) + 1, x, 16)
    path = tmp_path / name
    vi.save(path, generation, "model-a")
    return path


def test_load_rejects_bytes_flipped_in_the_middle(tmp_path):
    path = _saved(tmp_path)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    data[len(data) // 2 + 1] ^= 0xFF
    path.write_bytes(bytes(data))
    # FAISS alone reads the damaged vectors without complaint; only the checksum catches them.
    assert faiss.deserialize_index(np.frombuffer(bytes(data), dtype=np.uint8)).ntotal == 100
    with pytest.raises(ValueError, match="checksum"):
        VectorIndex.load(path)


def test_load_rejects_a_truncated_index(tmp_path):
    path = _saved(tmp_path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) * 2 // 3])
    with pytest.raises(ValueError):
        VectorIndex.load(path)


def test_load_rejects_a_description_from_another_save(tmp_path):
    path = _saved(tmp_path, generation=1)
    other = _saved(tmp_path, name="other.faiss", seed=1, generation=2)
    original = path.with_suffix(".json").read_bytes()
    # The other save's description beside this index, as a crash between the two renames leaves them.
    shutil.copyfile(other.with_suffix(".json"), path.with_suffix(".json"))
    with pytest.raises(ValueError, match="another save"):
        VectorIndex.load(path)
    # And the other save's index beside this description.
    path.with_suffix(".json").write_bytes(original)
    VectorIndex.load(path)
    shutil.copyfile(other, path)
    with pytest.raises(ValueError, match="another save"):
        VectorIndex.load(path)


def test_load_rejects_a_description_without_checksum(tmp_path):
    path = _saved(tmp_path)
    meta = json.loads(path.with_suffix(".json").read_text())
    del meta["checksum"]
    path.with_suffix(".json").write_text(json.dumps(meta))
    with pytest.raises(ValueError):
        VectorIndex.load(path)
    path.with_suffix(".json").write_text("{not json")
    with pytest.raises(ValueError):
        VectorIndex.load(path)


def test_saved_ivf_keeps_its_build_facts_and_results(tmp_path):
    x = clustered(3000, dim=32, seed=2)
    ids = np.arange(3000, dtype=np.int64) * 5 + 2
    vi = VectorIndex.build(ids, x, 32, exact_limit=500)
    saved = vi.save(tmp_path / "photos.faiss", 3, "model-a")
    loaded, meta = VectorIndex.load(tmp_path / "photos.faiss")
    assert meta == saved
    assert (loaded.kind, loaded.nprobe, loaded.trained_n, loaded.exact_limit) == ("ivf", vi.nprobe, 3000, 500)
    assert loaded.calibration == vi.calibration and meta["calibration"]["queries"] == "synthetic"
    assert faiss.extract_index_ivf(loaded.index).nprobe == vi.nprobe
    q = modality_gap_queries(x, 50, seed=9)
    assert np.array_equal(loaded.search(q, 20)[1], vi.search(q, 20)[1])


# ----- calibration on text-like queries ----------------------------------

def test_modality_gap_queries_sit_at_text_image_cosines_off_to_one_side():
    x = clustered_vectors(5000, 64, seed=4, clusters=100)
    q = modality_gap_queries(x, 2000, seed=3)
    source = x[np.random.default_rng(3).choice(len(x), 2000, replace=False)]
    cos = (q * source).sum(1)
    assert cos.min() >= 0.2 - 1e-4 and cos.max() <= 0.5 + 1e-4 and np.ptp(cos) > 0.25
    assert np.allclose(np.linalg.norm(q, axis=1), 1.0, atol=1e-5)
    # The shared offset: queries resemble each other more than their source photos do each other.
    assert (q[:1000] @ q[1000:].T).mean() > (source[:1000] @ source[1000:].T).mean() + 0.1
    # Another seed draws other queries with the same offset; another gap_seed moves them elsewhere.
    assert (q.mean(0) @ modality_gap_queries(x, 2000, seed=8).mean(0)) > 0.1
    assert abs(q.mean(0) @ modality_gap_queries(x, 2000, seed=8, gap_seed=5).mean(0)) < 0.1


def test_recall_at_counts_true_neighbours_found():
    x = clustered(400, dim=16)
    ids = np.arange(400, dtype=np.int64) + 10
    half = VectorIndex.build(ids[::2], x[::2], 16)
    # Each library vector's exact nearest is itself; the index holds only every other one.
    assert recall_at(half, x, ids, x, k=1) == pytest.approx(0.5)
    assert recall_at(VectorIndex.build(ids, x, 16), x, ids, modality_gap_queries(x, 50), k=20) == 1.0


def test_calibrated_ivf_reaches_target_on_held_out_text_like_queries():
    x = clustered_vectors(20_000, 64, seed=3, clusters=200)
    ids = np.arange(20_000, dtype=np.int64) * 2 + 1
    vi = VectorIndex.build(ids, x, 64, exact_limit=1000, recall_target=0.97)
    assert vi.kind == "ivf" and vi.calibration["queries"] == "synthetic" and vi.calibration["recall"] >= 0.97
    nlist = faiss.extract_index_ivf(vi.index).nlist
    assert 1 < vi.nprobe < nlist  # calibration chose, rather than probing everything
    held_out = modality_gap_queries(x, 1000, seed=12345)  # other photos, other noise, the same gap
    assert recall_at(vi, x, ids, held_out) >= 0.97
    # The nprobe is not wastefully large either: a quarter of it misses the target on these queries.
    faiss.extract_index_ivf(vi.index).nprobe = max(1, vi.nprobe // 4)
    assert recall_at(vi, x, ids, held_out) < 0.97


def test_given_calibration_queries_drive_nprobe_and_reported_recall():
    x = clustered_vectors(20_000, 64, seed=3, clusters=200)
    ids = np.arange(20_000, dtype=np.int64) + 1
    synthetic = VectorIndex.build(ids, x, 64, exact_limit=1000)
    # "Text" queries much closer to the photos than the synthetic ones are easier: fewer lists suffice.
    text = modality_gap_queries(x, 600, seed=77, cosine=(0.8, 0.95), gap_seed=4)
    vi = VectorIndex.build(ids, x, 64, exact_limit=1000, calibration_queries=text)
    cal = vi.calibration
    assert cal["queries"] == "text" and cal["count"] == 600 and cal["k"] == 20
    assert cal["recall"] == pytest.approx(recall_at(vi, x, ids, text), abs=1e-4)
    assert vi.nprobe < synthetic.nprobe
    with pytest.raises(ValueError):
        VectorIndex.build(ids, x, 64, exact_limit=1000, calibration_queries=text[:, :32])


# ----- rebuild when the library outgrows the index -----------------------

def test_flat_index_needs_rebuild_past_exact_limit():
    x = clustered(300, dim=16)
    vi = VectorIndex.build(np.arange(300) + 1, x, 16, exact_limit=1000)
    assert vi.kind == "flat" and not vi.needs_rebuild()
    assert not vi.needs_rebuild(1000)
    assert vi.needs_rebuild(1001) and "1,001" in vi.rebuild_reason(1001)
    assert vi.needs_rebuild(301, exact_limit=300)  # the caller's limit wins when given


def test_ivf_needs_rebuild_when_grown_far_past_training_or_shrunk():
    x = clustered(4000, dim=16)
    vi = VectorIndex.build(np.arange(4000) + 1, x, 16, exact_limit=1000)
    assert vi.kind == "ivf" and vi.trained_n == 4000
    assert not vi.needs_rebuild()
    assert not vi.needs_rebuild(GROWTH_FACTOR * 4000)
    assert vi.needs_rebuild(GROWTH_FACTOR * 4000 + 1)
    assert "grew" in vi.rebuild_reason(GROWTH_FACTOR * 4000 + 1)
    assert not vi.needs_rebuild(500)  # half of exact_limit is still fine
    assert vi.needs_rebuild(499) and "shrank" in vi.rebuild_reason(499)
    # Adds count: the index's own total is the default.
    more = clustered(GROWTH_FACTOR * 4000, dim=16, seed=1)
    vi.add(np.arange(len(more)) + 10_000, more)
    assert vi.needs_rebuild()
