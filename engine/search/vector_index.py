"""FAISS over the photo vectors: a derived cache of SQLite, keyed by photo row ids.

Vectors are float32 and L2-normalised, so inner product is cosine. Small
libraries get exact search ("IDMap2,Flat"); above a size threshold an
"IVF{nlist},Flat" index, whose nprobe is calibrated at build time so that
recall@20 against exact search reaches a target on text-like queries. Past
ONDISK_LIMIT, "IVF{nlist},PQ{m}x8" with its lists in a file that is memory-mapped,
not read (engine.search.ondisk), built from the vectors in chunks, never all in
memory; its candidates are re-scored with the exact vectors, kept on disk too.

The saved index is a cache: `save` writes the index bytes and a small JSON
description (generation, model key, checksum of the exact bytes, build
facts) atomically, and `load` refuses with ValueError anything that does not
check out, so the caller rebuilds from SQLite instead of searching garbage.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
import threading
from pathlib import Path

import faiss
import numpy as np

EXACT_LIMIT = 50_000
ONDISK_LIMIT = 1_000_000  # above: product-quantised lists on disk, memory-mapped, built chunk by chunk
ONDISK_MIN = 10_000  # fewer vectors cannot train 8-bit codes well (256 centroids a sub-quantiser): never on disk
DELTA_SHARE = 0.1  # an on-disk index is rebuilt when the changes since its build pass this share of it
PQ_PROBE_MAX = 256  # the widest probe a product-quantised index's calibration tries
PQ_SHARE = 0.98  # ... and the share of the recall it reaches there that the calibrated nprobe must reach
REFINE = 8  # a product-quantised index's search re-scores REFINE x n candidates with the exact vectors
RECALL_TARGET = 0.97
RECALL_K = 20
# An IVF whose library grew past this many times the size its centroids were trained at is rebuilt:
# its lists get long and unbalanced, so searches slow down and the calibrated nprobe no longer holds.
GROWTH_FACTOR = 4
CALIBRATION_QUERIES = 1000  # 500 left held-out recall 0.3 points under target in trials; 1000 met it
# The shared direction of synthetic "text" queries: fixed so that builds are reproducible.
GAP_SEED = 1729
META_FORMAT = 2
_MIN_POINTS_PER_LIST = 39  # fewer training points per centroid than this and k-means is unreliable (FAISS warns)


class VectorIndex:
    """A FAISS index over photo vectors whose ids are SQLite row ids.

    Attributes: ``index`` (the FAISS index), ``dim``, ``kind`` ("flat", "ivf" or "ivfpq"), ``nprobe`` (IVF
    lists probed per search; 0 for flat), ``trained_n`` (library size the IVF was trained at; 0 for flat),
    ``exact_limit`` (the size threshold it was built with), ``calibration`` (how nprobe was chosen, or
    None: a dict with ``queries`` "text" or "synthetic", ``count``, ``k``, ``target``, ``recall``),
    ``factory`` (the FAISS factory string), and for an index whose lists are on disk ("ivfpq") ``base``
    (the build's files, `ondisk.BaseFiles`), ``delta`` (the changes since, `ondisk.DeltaIndex`) and
    ``exact`` (the build's vectors, mapped from disk); None otherwise.
    Writes (add, remove, save) are serialised by ``lock``; searches take it too, as FAISS writes are not
    safe beside searches.
    """

    def __init__(self, index: faiss.Index, dim: int, kind: str, nprobe: int = 0, *, trained_n: int = 0,
                 exact_limit: int = EXACT_LIMIT, calibration: dict | None = None, factory: str | None = None,
                 base=None, delta=None, exact=None):
        self.index = index
        self.dim = dim
        self.kind = kind
        self.nprobe = nprobe
        self.trained_n = int(trained_n)
        self.exact_limit = int(exact_limit)
        self.calibration = calibration
        self.factory = factory or ("IDMap2,Flat" if kind == "flat" else None)
        self.base = base
        self.delta = delta
        self.exact = exact  # the build's vectors on disk, float16, one row per sorted base id
        self.lock = threading.RLock()
        if kind != "flat":
            faiss.extract_index_ivf(index).nprobe = nprobe

    @property
    def ondisk(self) -> bool:
        return self.base is not None

    # ----- building ------------------------------------------------------
    @classmethod
    def empty(cls, dim: int, exact_limit: int = EXACT_LIMIT) -> "VectorIndex":
        """An exact index with no vectors."""
        return cls(_flat(dim), dim, "flat", exact_limit=exact_limit)

    @classmethod
    def build(cls, ids: np.ndarray, vectors: np.ndarray, dim: int, exact_limit: int = EXACT_LIMIT,
              recall_target: float = RECALL_TARGET, seed: int = 0,
              calibration_queries: np.ndarray | None = None) -> "VectorIndex":
        """Index `vectors` (n x dim, L2-normalised) under `ids` (SQLite row ids), in memory.

        Up to `exact_limit` vectors: exact search. Above: IVF, with nprobe the smallest whose recall@20
        against exact search reaches `recall_target` (with a margin for the sampling error) on calibration
        queries. Pass `calibration_queries` (m x dim, for example
        the model's text embeddings of a caption collection) to calibrate on real text queries; without
        them, queries are synthesised from the library with `modality_gap_queries`. At most
        CALIBRATION_QUERIES of them are used.
        """
        vectors = np.ascontiguousarray(vectors, dtype=np.float32).reshape(-1, dim)
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        if len(ids) != len(vectors):
            raise ValueError(f"{len(ids)} ids for {len(vectors)} vectors")
        n = len(ids)
        if n <= exact_limit:
            vi = cls.empty(dim, exact_limit=exact_limit)
            vi.add(ids, vectors)
            return vi
        rng = np.random.default_rng(seed)
        queries, query_kind = _calibration_set(calibration_queries, dim, rng,
                                               lambda count: modality_gap_queries(vectors, count, seed=seed), n)
        factory = f"IVF{ivf_nlist(n)},Flat"
        index = faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
        index.train(vectors[np.sort(rng.choice(n, size=min(n, training_size(index)), replace=False))])
        index.add_with_ids(vectors, ids)
        vi = cls(index, dim, "ivf", nprobe=1, trained_n=n, exact_limit=exact_limit, factory=factory)
        vi._calibrate_for(queries, query_kind, _exact_ids(vectors, ids, queries, RECALL_K), recall_target)
        return vi

    @classmethod
    def build_ondisk(cls, folder, prefix: str, chunks, n: int, dim: int, exact_limit: int = EXACT_LIMIT,
                     recall_target: float = RECALL_TARGET, seed: int = 0,
                     calibration_queries: np.ndarray | None = None, on_chunk=None) -> "VectorIndex":
        """Index `n` vectors that `chunks()` yields as (ids, vectors) chunks in any order of ids, as IVF-PQ
        with its lists and the exact vectors (float16, for re-scoring the candidates) on disk in `folder`
        (files named from `prefix`), never holding more than a chunk and the training sample in memory.
        `chunks` is called three times: for the training sample, to add, and for the exact answers the
        calibration measures recall against. Otherwise as `build`."""
        from . import ondisk

        if n < ONDISK_MIN:
            raise ValueError(f"{n:,} vectors are too few for an on-disk index (at least {ONDISK_MIN:,})")
        rng = np.random.default_rng(seed)
        factory = pq_factory(n, dim)
        trained = faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
        want = min(n, training_size(trained))
        sample, all_ids = _sample_chunks(chunks, n, want, rng, dim)
        if len(all_ids) != n:
            raise ValueError(f"the chunks held {len(all_ids)} vectors, not {n}")
        queries, query_kind = _calibration_set(
            calibration_queries, dim, rng, lambda count: modality_gap_queries(sample, count, seed=seed), n)
        base = ondisk.build(folder, prefix, factory, dim, sample, chunks, all_ids, on_chunk=on_chunk)
        del all_ids
        del sample
        index, base_ids = ondisk.open_base(base)
        vi = cls(index, dim, "ivfpq", nprobe=1, trained_n=n, exact_limit=exact_limit, factory=factory, base=base,
                 delta=ondisk.DeltaIndex(dim, base_ids), exact=ondisk.open_vectors(base, dim))
        vi._calibrate_for(queries, query_kind, _exact_ids_chunks(chunks, queries, RECALL_K), recall_target)
        return vi

    def _calibrate_for(self, queries: np.ndarray, query_kind: str, truth: np.ndarray, target: float) -> None:
        nprobe, recalls, reachable = self._calibrate(queries, truth, target)
        self.nprobe = nprobe
        faiss.extract_index_ivf(self.index).nprobe = nprobe
        self.calibration = {"queries": query_kind, "count": int(len(queries)), "k": RECALL_K,
                            "target": float(target), "recall": round(float(recalls.mean()), 4)}
        if reachable is not None:
            self.calibration["reachable"] = round(float(reachable), 4)

    def _calibrate(self, queries: np.ndarray, truth: np.ndarray,
                   target: float) -> tuple[int, np.ndarray, float | None]:
        """Smallest nprobe whose recall on `queries` reaches target, the per-query recalls there, and for
        product-quantised codes the recall they reach at PQ_PROBE_MAX lists (None for exact codes).

        Recall only grows with nprobe (more lists, a superset of candidates), so double until it is
        enough, then bisect. "Enough" is the mean minus two standard errors, so that other queries of
        the same kind, not only these, reach the target. Quantised codes rank some true neighbours below
        others however many lists are probed, so for them the target is at most PQ_SHARE of what they reach
        at PQ_PROBE_MAX lists.
        """
        ivf = faiss.extract_index_ivf(self.index)

        def recalls_at(nprobe: int) -> np.ndarray:
            _, got = self._search(queries, RECALL_K, nprobe=nprobe)
            return _recalls(truth, got)

        reachable = None
        if self.kind == "ivfpq":
            reachable = float(recalls_at(min(ivf.nlist, PQ_PROBE_MAX)).mean())
            target = min(target, PQ_SHARE * reachable)

        def enough(r: np.ndarray) -> bool:
            return r.mean() - 2 * r.std() / math.sqrt(len(r)) >= target

        lo, hi = 0, 1  # lo fails (0 = nothing probed), hi is the candidate
        r = recalls_at(hi)
        while not enough(r) and hi < ivf.nlist:
            lo, hi = hi, min(ivf.nlist, hi * 2)
            r = recalls_at(hi)
        best = r
        while hi - lo > 1:
            mid = (lo + hi) // 2
            r = recalls_at(mid)
            if enough(r):
                hi, best = mid, r
            else:
                lo = mid
        return hi, best, reachable

    def needs_rebuild(self, ntotal: int | None = None, exact_limit: int | None = None,
                      ondisk_limit: int | None = None) -> bool:
        """Whether a library of `ntotal` photos (default: the index's own count) wants a fresh build."""
        return self.rebuild_reason(ntotal, exact_limit, ondisk_limit) is not None

    def rebuild_reason(self, ntotal: int | None = None, exact_limit: int | None = None,
                       ondisk_limit: int | None = None) -> str | None:
        """Why the index no longer fits a library of `ntotal` photos, or None when it still does.

        Flat: grown past `exact_limit`. IVF: grown past GROWTH_FACTOR times `trained_n`, or shrunk below
        half of `exact_limit` (exact search is then fast and better). Past `ondisk_limit` (when given) an
        index in memory is rebuilt on disk, and one on disk below half of it in memory; one on disk is also
        rebuilt when its delta passes DELTA_SHARE of its build. `exact_limit` defaults to the one the index
        was built with.
        """
        n = self.ntotal if ntotal is None else int(ntotal)
        limit = self.exact_limit if exact_limit is None else int(exact_limit)
        if self.kind == "flat":
            if n > limit:
                return f"the library grew to {n:,} photos, past the {limit:,} searched exactly"
            return None
        if n < limit // 2:
            return f"the library shrank to {n:,} photos, few enough to search exactly"
        if ondisk_limit is not None and not self.ondisk and n > ondisk_limit:
            return f"the library grew to {n:,} photos, past the {ondisk_limit:,} kept in memory"
        if ondisk_limit is not None and self.ondisk and n < ondisk_limit // 2:
            return f"the library shrank to {n:,} photos, few enough to keep the index in memory"
        if self.ondisk and self.delta.size > DELTA_SHARE * max(1, len(self.delta.base_ids)):
            return (f"{self.delta.size:,} photos were added, changed or removed since the index was built "
                    f"for {len(self.delta.base_ids):,}")
        if n > GROWTH_FACTOR * max(1, self.trained_n):
            return f"the library grew from {self.trained_n:,} photos to {n:,} since the index was trained"
        return None

    # ----- updates and search -------------------------------------------
    @property
    def ntotal(self) -> int:
        if self.ondisk:
            return self.delta.live_base + int(self.delta.added.ntotal)
        return int(self.index.ntotal)

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        if len(ids) == 0:
            return
        vectors = np.ascontiguousarray(vectors, dtype=np.float32).reshape(-1, self.dim)
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        with self.lock:
            if self.ondisk:  # the build's files never change: the delta holds it until the next build
                self.delta.add(ids, vectors)
            else:
                self.index.add_with_ids(vectors, ids)

    def remove(self, ids) -> None:
        ids = np.asarray(list(ids), dtype=np.int64)
        if len(ids) == 0:
            return
        with self.lock:
            if self.ondisk:
                self.delta.remove(ids)
            else:
                self.index.remove_ids(faiss.IDSelectorBatch(ids))

    def search(self, queries: np.ndarray, n: int, allowed_ids=None) -> tuple[np.ndarray, np.ndarray]:
        """Top n (scores, ids) per query; ids of -1 mean no result. allowed_ids restricts the search."""
        q = np.ascontiguousarray(queries, dtype=np.float32).reshape(-1, self.dim)
        n = max(1, min(n, max(1, self.ntotal)))
        with self.lock:
            return self._search(q, n, allowed_ids=allowed_ids)

    def _search(self, q: np.ndarray, n: int, nprobe: int | None = None, allowed_ids=None):
        """Search with `nprobe` lists (default: the index's own)."""
        if self.ondisk:
            from . import ondisk

            nprobe = faiss.extract_index_ivf(self.index).nprobe if nprobe is None else nprobe
            return ondisk.search(self.index, self.delta.base_ids, self.exact, self.delta, q, n, nprobe, REFINE,
                                 allowed_ids=allowed_ids)
        if allowed_ids is not None:
            sel = faiss.IDSelectorBatch(np.asarray(list(allowed_ids), dtype=np.int64))
            if self.kind == "ivf":
                # A narrow scope leaves few candidates per list: probe every list, still only scoring allowed ids.
                params = faiss.SearchParametersIVF(sel=sel, nprobe=faiss.extract_index_ivf(self.index).nlist)
            else:
                params = faiss.SearchParameters(sel=sel)
        else:
            params = faiss.SearchParametersIVF(nprobe=nprobe) if self.kind != "flat" and nprobe else None
        return self.index.search(q, n, params=params)

    # ----- persistence ---------------------------------------------------
    def describe(self) -> dict:
        """What the index is, as saved beside it (without generation, model key and checksum)."""
        out = {"kind": self.kind, "dim": self.dim, "ntotal": self.ntotal, "nprobe": self.nprobe,
               "nlist": int(faiss.extract_index_ivf(self.index).nlist) if self.kind != "flat" else 0,
               "trained_n": self.trained_n, "exact_limit": self.exact_limit, "calibration": self.calibration,
               "factory": self.factory}
        if self.ondisk:
            out.update({"base": self.base.name, "base_ntotal": len(self.delta.base_ids),
                        "delta": self.delta.size, "refine": REFINE})
        return out

    def save(self, path: str | os.PathLike, generation: int, model_key: str) -> dict:
        """Write the index to `path` and its description to `path` with suffix ".json"; returns the description.

        Each file is replaced atomically (a crash leaves the old file or the new one, never half of one),
        and the description holds the sha256 of the exact index bytes, so a torn pair (new index, old
        description, or the reverse) fails `load` instead of being used. The description holds
        "generation" and "model_key" (also as "model_id", the name earlier readers used).

        An index with its lists on disk writes only its delta to `path`; the description names the build's
        files (beside `path`, written once by `build_ondisk`) with the checksum of their header, and builds
        of `path` it no longer names are removed.
        """
        path = Path(path)
        from . import ondisk

        with self.lock:
            if self.ondisk:
                data = np.frombuffer(self.delta.to_bytes(), np.uint8)
            else:
                data = faiss.serialize_index(self.index)
            meta = self.describe()
        meta.update({"format": META_FORMAT, "generation": generation, "model_key": model_key, "model_id": model_key,
                     "size": int(data.nbytes), "checksum": "sha256:" + hashlib.sha256(data).hexdigest()})
        if self.ondisk:
            if self.base.folder.resolve() != path.parent.resolve() or not self.base.name.startswith(path.stem + "."):
                raise ValueError(f"an on-disk index is saved beside its build: {self.base.index} is not beside {path}")
            meta["base_checksum"] = ondisk.header_checksum(self.base)
        _write_atomic(path, memoryview(data))
        del data
        _write_atomic(_meta_path(path), json.dumps(meta, indent=1).encode())
        ondisk.remove_builds(path.parent, path.stem, keep=self.base.name if self.ondisk else None)
        return meta

    @classmethod
    def load(cls, path: str | os.PathLike) -> tuple["VectorIndex", dict]:
        """Read an index written by `save`; returns it and its description.

        Raises OSError when a file is missing or unreadable, and ValueError when the description is not
        ours, the index bytes do not have the checksum the description names (flipped, truncated, or from
        another save), or the index does not match its description.
        """
        path = Path(path)
        try:
            meta = json.loads(_meta_path(path).read_bytes())
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ValueError(f"index description is not readable: {exc}") from exc
        if not isinstance(meta, dict) or meta.get("format") != META_FORMAT:
            raise ValueError("index description is of another format")
        try:
            algo, _, expected = str(meta["checksum"]).partition(":")
            dim, ntotal, kind = int(meta["dim"]), int(meta["ntotal"]), str(meta["kind"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"index description is incomplete: {exc}") from exc
        if algo != "sha256":
            raise ValueError(f"unknown checksum {algo!r}")
        data = np.fromfile(path, dtype=np.uint8)  # the bytes that are hashed are the bytes that are used
        if data.nbytes != meta.get("size") or hashlib.sha256(data).hexdigest() != expected:
            raise ValueError("index file does not have the checksum of its description: damaged or from another save")
        common = dict(trained_n=int(meta.get("trained_n", 0)), exact_limit=int(meta.get("exact_limit", EXACT_LIMIT)),
                      calibration=meta.get("calibration"), factory=meta.get("factory"))
        if kind == "ivfpq":
            vi = cls._load_ondisk(path, meta, data.tobytes(), dim, common)
        else:
            try:
                index = faiss.deserialize_index(data)
            except RuntimeError as exc:
                raise ValueError(str(exc)) from exc
            is_ivf = faiss.try_extract_index_ivf(index) is not None
            if index.d != dim or kind != ("ivf" if is_ivf else "flat") or index.metric_type != faiss.METRIC_INNER_PRODUCT:
                raise ValueError("index file does not match its description")
            vi = cls(index, dim, kind, int(meta.get("nprobe", 0)), **common)
        del data
        if vi.ntotal != ntotal:
            raise ValueError("index file does not match its description")
        return vi, meta

    @classmethod
    def _load_ondisk(cls, path: Path, meta: dict, delta_bytes: bytes, dim: int, common: dict) -> "VectorIndex":
        from . import ondisk

        base = ondisk.BaseFiles(path.parent, str(meta.get("base", "")))
        if not base.name.startswith(path.stem + ".") or not base.index.is_file():
            raise ValueError(f"the index's build {base.name or '(none)'} is missing")
        if ondisk.header_checksum(base) != meta.get("base_checksum"):
            raise ValueError(f"the index's build {base.name} does not have the checksum of its description")
        try:
            index, base_ids = ondisk.open_base(base)
            exact = ondisk.open_vectors(base, dim)
        except RuntimeError as exc:
            raise ValueError(str(exc)) from exc
        if index.d != dim or index.metric_type != faiss.METRIC_INNER_PRODUCT or len(exact) != len(base_ids):
            raise ValueError("the index's build does not match its description")
        delta = ondisk.DeltaIndex.from_bytes(delta_bytes, dim, base_ids)
        return cls(index, dim, "ivfpq", int(meta.get("nprobe", 0)), base=base, delta=delta, exact=exact, **common)


def ivf_nlist(n: int) -> int:
    """Number of IVF lists for n vectors: about 4 sqrt(n), at least 64, and few enough to train well."""
    nlist = int(min(65536, max(64, 4 * math.sqrt(n))))
    return max(1, min(nlist, n // _MIN_POINTS_PER_LIST))


def pq_factory(n: int, dim: int) -> str:
    """The on-disk index's factory string for n vectors: IVF lists as `ivf_nlist`, found through an HNSW graph
    of their centroids (tens of thousands of centroids at millions of vectors: assigning each vector by exact
    search would cost as much as the training), and codes of a quarter of the float32 vector's bytes (dim / 4
    sub-quantisers of 8 bits), re-scored with the exact vectors at search. autofaiss picks this family too."""
    m = max(1, dim // 4)
    while dim % m:
        m -= 1
    return f"IVF{ivf_nlist(n)}_HNSW32,PQ{m}x8"


def training_size(index: faiss.Index) -> int:
    """How many vectors to train an IVF index on: 64 a list (FAISS's own advice is 39 to 256)."""
    return 64 * faiss.extract_index_ivf(index).nlist


def _calibration_set(queries, dim: int, rng, synthesize, n: int) -> tuple[np.ndarray, str]:
    if queries is not None:
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        if queries.ndim != 2 or queries.shape[1] != dim or len(queries) == 0:
            raise ValueError(f"calibration queries must be a non-empty m x {dim} array, not {queries.shape}")
        if len(queries) > CALIBRATION_QUERIES:
            queries = queries[rng.choice(len(queries), CALIBRATION_QUERIES, replace=False)]
        return _normalized(queries), "text"
    return synthesize(min(n, CALIBRATION_QUERIES)), "synthetic"


def _sample_chunks(chunks, n: int, want: int, rng, dim: int) -> tuple[np.ndarray, np.ndarray]:
    """A uniform sample of `want` of the chunks' `n` vectors (drawn by position, in one pass), and every id,
    sorted."""
    pick = np.sort(rng.choice(n, size=want, replace=False)) if want < n else np.arange(n)
    out, ids, seen = [], [], 0
    for chunk_ids, vecs in chunks():
        m = len(chunk_ids)
        lo, hi = np.searchsorted(pick, [seen, seen + m])
        if hi > lo:
            out.append(np.asarray(vecs, np.float32)[pick[lo:hi] - seen])
        ids.append(np.asarray(chunk_ids, np.int64))
        seen += m
    all_ids = np.sort(np.concatenate(ids)) if ids else np.zeros(0, np.int64)
    return (np.concatenate(out) if out else np.zeros((0, dim), np.float32)), all_ids


def _exact_ids_chunks(chunks, queries: np.ndarray, k: int) -> np.ndarray:
    """The ids of the exact top k per query over every chunk, keeping only the running top k in memory."""
    best_d = np.full((len(queries), k), -np.inf, np.float32)
    best_i = np.full((len(queries), k), -1, np.int64)
    for ids, vecs in chunks():
        if len(ids) == 0:
            continue
        d, pos = faiss.knn(queries, np.ascontiguousarray(vecs, np.float32), min(k, len(ids)),
                           metric=faiss.METRIC_INNER_PRODUCT)
        i = np.where(pos >= 0, np.asarray(ids, np.int64)[np.maximum(pos, 0)], -1)
        d = np.where(pos >= 0, d, -np.inf)
        d, i = np.concatenate([best_d, d], 1), np.concatenate([best_i, i], 1)
        order = np.argsort(-d, axis=1, kind="stable")[:, :k]
        best_d, best_i = np.take_along_axis(d, order, 1), np.take_along_axis(i, order, 1)
    return best_i


def modality_gap_queries(vectors: np.ndarray, count: int, *, seed: int = 0, cosine: tuple[float, float] = (0.2, 0.5),
                         gap_share: float = 0.5, gap_seed: int = GAP_SEED) -> np.ndarray:
    """Synthetic text-like queries: library vectors moved across the modality gap.

    A text embedding of a photo's content is not near the photo: BLIP's text-image cosines for a
    matching pair are about 0.2 to 0.5, and text embeddings as a whole sit off to one side of the image
    embeddings. So each query is a library vector plus a common offset (a fixed random direction, drawn
    from `gap_seed`) plus its own random noise, normalised; the offset's length makes up `gap_share` of
    the displacement at the top of `cosine`, and the noise brings each query's cosine to its source
    vector to a value drawn uniformly from `cosine`. Queries of different `seed` and the same
    `gap_seed` are held-out queries of the same kind.
    """
    vectors = np.asarray(vectors, dtype=np.float32)
    n, dim = vectors.shape
    rng = np.random.default_rng(seed)
    v = vectors[rng.choice(n, size=count, replace=count > n)].astype(np.float64)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    gap = np.random.default_rng(gap_seed).normal(size=dim)
    lo, hi = cosine
    gap *= math.sqrt(gap_share * (1.0 / hi**2 - 1.0)) / np.linalg.norm(gap)
    target = rng.uniform(lo, hi, size=count)
    moved = v + gap
    # Noise orthogonal to both the source and the moved point, of the length that makes
    # cos(query, source) = <v, moved> / sqrt(|moved|^2 + b^2) come out at the drawn target.
    noise = rng.normal(size=(count, dim))
    for basis in (v, moved - (moved * v).sum(1, keepdims=True) * v):
        basis = basis / np.maximum(np.linalg.norm(basis, axis=1, keepdims=True), 1e-12)
        noise -= (noise * basis).sum(1, keepdims=True) * basis
    noise /= np.linalg.norm(noise, axis=1, keepdims=True)
    along = (moved * v).sum(1)
    b2 = (along / target) ** 2 - (moved * moved).sum(1)
    q = moved + np.sqrt(np.maximum(b2, 0.0))[:, None] * noise
    return _normalized(q)


def recall_at(index: "VectorIndex | faiss.Index", vectors: np.ndarray, ids: np.ndarray, queries: np.ndarray,
              k: int = RECALL_K) -> float:
    """Mean recall@k of `index` against exact inner-product search over `vectors` (with `ids`)."""
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    queries = np.ascontiguousarray(queries, dtype=np.float32).reshape(-1, vectors.shape[1])
    truth = _exact_ids(vectors, np.asarray(ids, dtype=np.int64), queries, k)
    _, got = index.search(queries, k)
    return float(_recalls(truth, got).mean())


def _flat(dim: int) -> faiss.Index:
    return faiss.index_factory(dim, "IDMap2,Flat", faiss.METRIC_INNER_PRODUCT)


def _normalized(x: np.ndarray) -> np.ndarray:
    x = np.ascontiguousarray(x, dtype=np.float32).copy()
    faiss.normalize_L2(x)
    return x


def _exact_ids(vectors: np.ndarray, ids: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    """The ids of the exact top k per query (-1 where there are fewer than k vectors)."""
    _, pos = faiss.knn(queries, vectors, min(k, len(vectors)), metric=faiss.METRIC_INNER_PRODUCT)
    return np.where(pos >= 0, ids[np.maximum(pos, 0)], -1)


def _recalls(truth_ids: np.ndarray, got_ids: np.ndarray) -> np.ndarray:
    """Per query: the share of the exact top ids that were found."""
    out = np.empty(len(truth_ids))
    for i, (t, g) in enumerate(zip(truth_ids, got_ids)):
        t = t[t >= 0]
        out[i] = len(np.intersect1d(t, g[g >= 0])) / len(t) if len(t) else 1.0
    return out


def _meta_path(path: Path) -> Path:
    return path.with_suffix(".json")


def _write_atomic(path: Path, data) -> None:
    """Write to a temporary file beside `path`, flush it to disk, then rename it over `path`."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
