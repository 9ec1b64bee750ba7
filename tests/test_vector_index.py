"""FAISS index: exact for small libraries, calibrated IVF above a threshold, atomic saves."""

from __future__ import annotations

import numpy as np
import pytest

from engine.vector_index import VectorIndex


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
    vi.save(path, generation=7, model_id="m")
    assert not list(tmp_path.glob("*.tmp"))
    loaded, meta = VectorIndex.load(path)
    assert meta["generation"] == 7 and loaded.ntotal == 100
    path.write_bytes(b"garbage")
    with pytest.raises(ValueError):
        VectorIndex.load(path)
