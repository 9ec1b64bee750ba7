"""The index past ONDISK_LIMIT: IVF-PQ built chunk by chunk, lists merged on disk and memory-mapped, candidates
re-scored with the exact vectors, changes kept in a delta, saved and loaded with checks."""

from __future__ import annotations

import faiss
import numpy as np
import pytest

from picsift.engine.bench import clustered_vectors
from picsift.engine.search import ondisk
from picsift.engine.search.vector_index import VectorIndex, modality_gap_queries, recall_at


def chunked(ids, x, size, order_seed=0):
    """A `chunks` callable: the vectors in a shuffled order of chunks, as a cluster's shards arrive."""
    starts = np.arange(0, len(ids), size)
    np.random.default_rng(order_seed).shuffle(starts)

    def chunks():
        for s in starts:
            yield ids[s:s + size], x[s:s + size]
    return chunks


def build(tmp_path, n=20_000, dim=32, seed=0, chunk=3_000, **kw):
    x = clustered_vectors(n, dim, seed=seed, clusters=100)
    ids = (np.arange(n, dtype=np.int64) * 3 + 5)[np.random.default_rng(seed).permutation(n)]
    vi = VectorIndex.build_ondisk(tmp_path, "index-test", chunked(ids, x, chunk), n, dim, exact_limit=1_000, **kw)
    return vi, ids, x


def exact_top(x, ids, q, k):
    return ids[np.argsort(-(x @ q))[:k]]


def test_ivfpq_on_200k_vectors_keeps_recall_against_exact_search(tmp_path):
    n, dim = 200_000, 64
    x = clustered_vectors(n, dim, seed=4, clusters=2000)
    ids = np.arange(n, dtype=np.int64)
    vi = VectorIndex.build_ondisk(tmp_path, "index-big", chunked(ids, x, 50_000), n, dim, exact_limit=1_000)
    assert vi.kind == "ivfpq" and vi.ondisk and vi.factory.startswith("IVF") and "_HNSW32,PQ16x8" in vi.factory
    lists = faiss.downcast_InvertedLists(faiss.extract_index_ivf(vi.index).invlists)
    assert isinstance(lists, faiss.OnDiskInvertedLists)  # the lists are mapped from the file, not in memory
    assert vi.base.lists.stat().st_size >= n * (16 + 8)  # codes and ids of every vector are in it
    held_out = modality_gap_queries(x, 500, seed=99)
    r = recall_at(vi, x, ids, held_out, k=20)
    assert r >= 0.95, r
    # What the exact re-scoring adds: the codes alone, at the same nprobe, miss far more of the true top 20.
    _, codes_only = vi.index.search(held_out, 20)
    truth = np.stack([exact_top(x, ids, q, 20) for q in held_out[:200]])
    codes_recall = np.mean([len(np.intersect1d(t, g)) / 20 for t, g in zip(truth, codes_only[:200])])
    assert codes_recall < r - 0.1, (codes_recall, r)


def test_scores_are_exact_inner_products_and_results_match_exact_order(tmp_path):
    vi, ids, x = build(tmp_path)
    q = modality_gap_queries(x, 50, seed=7)
    scores, got = vi.search(q, 10)
    by_id = dict(zip(ids.tolist(), range(len(ids))))
    for qi in range(len(q)):
        exact = x[[by_id[i] for i in got[qi]]] @ q[qi]
        assert np.allclose(scores[qi], exact, atol=2e-3)  # float16 vectors on disk
        assert list(scores[qi]) == sorted(scores[qi], reverse=True)


def test_added_removed_and_changed_vectors_through_the_delta(tmp_path):
    vi, ids, x = build(tmp_path)
    n0 = vi.ntotal
    target = x[0]
    removed = ids[0]
    vi.remove([removed])
    _, got = vi.search(target[None], 5)
    assert removed not in got[0] and vi.ntotal == n0 - 1
    new_id = int(ids.max()) + 1
    vi.add(np.array([new_id]), target[None])
    scores, got = vi.search(target[None], 1)
    assert got[0, 0] == new_id and scores[0, 0] == pytest.approx(1.0, abs=1e-5)
    # A photo whose vector changed comes back under its own id with the new vector, once.
    changed = ids[1]
    other = -x[1]
    vi.add(np.array([changed]), other[None])
    scores, got = vi.search(other[None], 3)
    assert got[0, 0] == changed and scores[0, 0] == pytest.approx(1.0, abs=1e-5) and list(got[0]).count(changed) == 1
    _, got = vi.search(x[1][None], 20)
    assert changed not in got[0]  # the old vector no longer finds it
    assert vi.ntotal == n0  # one removed, one added, one replaced
    # A scope is honoured across the build and the delta.
    scores, got = vi.search(target[None], 3, allowed_ids=[new_id, ids[5], removed])
    assert set(got[0][got[0] >= 0].tolist()) == {new_id, int(ids[5])}


def test_saved_and_loaded_with_its_delta_and_old_builds_removed(tmp_path):
    vi, ids, x = build(tmp_path)
    vi.remove(ids[:10])
    vi.add(np.array([10**9]), x[:1])
    path = tmp_path / "index-test.faiss"
    meta = vi.save(path, 3, "be")
    assert meta["kind"] == "ivfpq" and meta["delta"] == 11
    q = modality_gap_queries(x, 20, seed=1)
    before = vi.search(q, 10)
    back, meta2 = VectorIndex.load(path)
    assert back.ondisk and back.ntotal == vi.ntotal and back.nprobe == vi.nprobe
    after = back.search(q, 10)
    assert np.array_equal(before[1], after[1]) and np.allclose(before[0], after[0])
    # A new build saved under the same path takes the old build's files away.
    old = vi.base
    vi2, _, _ = build(tmp_path, seed=1)
    vi2.save(path, 4, "be")
    assert not any(p.exists() for p in old.paths()) and all(p.exists() for p in vi2.base.paths())
    assert not list(tmp_path.glob("*.build.*"))


def test_a_damaged_or_missing_build_is_refused(tmp_path):
    vi, ids, x = build(tmp_path)
    path = tmp_path / "index-test.faiss"
    vi.save(path, 1, "be")
    header = vi.base.index.read_bytes()
    vi.base.index.write_bytes(header[:-1] + bytes([header[-1] ^ 1]))
    with pytest.raises(ValueError, match="checksum"):
        VectorIndex.load(path)
    vi.base.index.write_bytes(header)
    VectorIndex.load(path)
    vi.base.lists.unlink()
    with pytest.raises((OSError, ValueError)):
        VectorIndex.load(path)


def test_chunks_must_hold_each_id_once(tmp_path):
    x = clustered_vectors(10_000, 16, seed=0, clusters=20)
    ids = np.arange(10_000, dtype=np.int64)
    ids[10] = ids[11]  # one id twice, one missing

    def chunks():
        yield ids, x
    with pytest.raises(ValueError):
        VectorIndex.build_ondisk(tmp_path, "index-dup", chunks, 10_000, 16, exact_limit=100)
    assert not list(tmp_path.iterdir())  # nothing half-built left behind


def test_too_many_changes_ask_for_a_rebuild(tmp_path):
    vi, ids, x = build(tmp_path, n=10_000, dim=16)
    assert vi.rebuild_reason() is None
    vi.remove(ids[:1100])
    assert "since the index was built" in vi.rebuild_reason()
    assert ondisk.DeltaIndex.from_bytes(vi.delta.to_bytes(), 16, vi.delta.base_ids).size == 1100


def test_a_library_past_its_ondisk_limit_streams_its_index_to_disk_and_keeps_it_current(tmp_path):
    from picsift.engine.library import Library

    n, dim = 12_000, 16
    x = clustered_vectors(n, dim, seed=2, clusters=50)
    with Library(tmp_path / "lib", exact_limit=500, ondisk_limit=10_000) as lib:
        store = lib.store
        store.register_model("be", "be", "test", dim)
        store.set_active("be", None, "test", None)
        ids = []

        def batch(start):
            with lib.changing("be") as live:
                got = [store.save_photo(f"/photos/{i}.jpg", 1, 1, f"h{i}", 10, 10) for i in range(start, start + 3_000)]
                store.put_vectors("be", [(f"h{i}", x[i]) for i in range(start, start + 3_000)])
                live.add(np.array(got), x[start:start + 3_000])
                ids.extend(got)

        batch(0)  # an ordinary batch: the index in memory follows it
        before = lib.index
        assert before.ntotal == 3_000 and not before.ondisk
        with lib.deferring_index("be"):  # a cluster job's bulk merge: batches go in, the index waits
            for start in range(3_000, n, 3_000):
                batch(start)
                # searches meanwhile get the index as it was, neither rebuilt nor changed at each batch
                assert lib.index is before and before.ntotal == 3_000
        ids = np.array(ids)
        vi = lib._indexes["be"]  # built once, after the merge, and saved
        assert vi.ondisk and vi.ntotal == n and vi.base.index.parent == lib.folder
        assert lib.index_path("be").is_file() and vi.saved_generation == store.generation()
        _, got = vi.search(x[7][None], 1)
        assert got[0, 0] == ids[7]
        with lib.changing("be") as live:  # a photo removed, as an indexing run does it
            store.delete_photos([int(ids[7])])
            live.remove([int(ids[7])])
        lib.save_index("be")
    with Library(tmp_path / "lib", exact_limit=500, ondisk_limit=10_000) as lib:
        vi = lib.index
        assert vi.ondisk and vi.ntotal == n - 1 and not lib.notices  # loaded from its files, not rebuilt
        _, got = vi.search(x[7][None], 5)
        assert ids[7] not in got[0]
