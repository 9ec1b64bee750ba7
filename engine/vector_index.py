"""FAISS over the photo vectors: a derived cache of SQLite, keyed by photo row ids.

Vectors are float32 and L2-normalised, so inner product is cosine. Small
libraries get exact search (IndexIDMap2 over IndexFlatIP); above a size
threshold an IVF index whose nprobe is calibrated at build time to keep
recall@20 against exact search above a target.
"""

from __future__ import annotations

import json
import math
import os
import threading
from pathlib import Path

import faiss
import numpy as np

EXACT_LIMIT = 50_000
RECALL_TARGET = 0.97


class VectorIndex:
    def __init__(self, index: faiss.Index, dim: int, kind: str, nprobe: int = 0):
        self.index = index
        self.dim = dim
        self.kind = kind
        self.nprobe = nprobe
        self.lock = threading.RLock()  # FAISS writes are not safe beside searches
        if kind == "ivf":
            faiss.extract_index_ivf(index).nprobe = nprobe

    # ----- building ------------------------------------------------------
    @classmethod
    def empty(cls, dim: int) -> "VectorIndex":
        return cls(faiss.IndexIDMap2(faiss.IndexFlatIP(dim)), dim, "flat")

    @classmethod
    def build(cls, ids: np.ndarray, vectors: np.ndarray, dim: int, exact_limit: int = EXACT_LIMIT,
              recall_target: float = RECALL_TARGET, seed: int = 0) -> "VectorIndex":
        vectors = np.ascontiguousarray(vectors, dtype=np.float32).reshape(-1, dim)
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        if len(ids) <= exact_limit:
            vi = cls.empty(dim)
            vi.add(ids, vectors)
            return vi
        n = len(ids)
        nlist = int(min(65536, max(64, 4 * math.sqrt(n))))
        quantizer = faiss.IndexFlatIP(dim)
        ivf = faiss.IndexIVFFlat(quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT)
        rng = np.random.default_rng(seed)
        sample = vectors[rng.choice(n, size=min(n, nlist * 64), replace=False)]
        ivf.train(sample)
        ivf.add_with_ids(vectors, ids)
        vi = cls(ivf, dim, "ivf", nprobe=1)
        vi.nprobe = vi._calibrate(ids, vectors, recall_target, rng)
        ivf.nprobe = vi.nprobe
        return vi

    def _calibrate(self, ids: np.ndarray, vectors: np.ndarray, target: float, rng: np.random.Generator,
                   queries: int = 200) -> int:
        """Smallest nprobe (doubling) whose recall@20 on perturbed library vectors reaches target."""
        ivf = faiss.extract_index_ivf(self.index)
        q = vectors[rng.choice(len(vectors), size=min(queries, len(vectors)), replace=False)].copy()
        # Text queries sit far from photo vectors (cosine 0.2-0.5 for BLIP), so calibrate on queries
        # pushed well away from the data: noise of norm 1 to 3 per query (cosine 0.3 to 0.7 to the source).
        noise = rng.normal(size=q.shape).astype(np.float32)
        noise *= (rng.uniform(1.0, 3.0, size=(len(q), 1)) / np.linalg.norm(noise, axis=1, keepdims=True))
        q += noise
        faiss.normalize_L2(q)
        exact = faiss.IndexFlatIP(self.dim)
        exact.add(vectors)
        _, truth_pos = exact.search(q, 20)
        nprobe = 8
        while True:
            ivf.nprobe = nprobe
            _, got = self.index.search(q, 20)
            recall = _recall(truth_pos, got, ids)
            if recall >= target or nprobe >= ivf.nlist:
                return nprobe
            nprobe = min(ivf.nlist, nprobe * 2)

    # ----- updates and search -------------------------------------------
    @property
    def ntotal(self) -> int:
        return int(self.index.ntotal)

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        if len(ids) == 0:
            return
        with self.lock:
            self.index.add_with_ids(np.ascontiguousarray(vectors, dtype=np.float32).reshape(-1, self.dim),
                                    np.ascontiguousarray(ids, dtype=np.int64))

    def remove(self, ids) -> None:
        ids = np.asarray(list(ids), dtype=np.int64)
        if len(ids) == 0:
            return
        with self.lock:
            self.index.remove_ids(faiss.IDSelectorBatch(ids))

    def search(self, queries: np.ndarray, n: int, allowed_ids=None) -> tuple[np.ndarray, np.ndarray]:
        """Top n (scores, ids) per query; ids of -1 mean no result. allowed_ids restricts the search."""
        q = np.ascontiguousarray(queries, dtype=np.float32).reshape(-1, self.dim)
        n = max(1, min(n, max(1, self.ntotal)))
        params = None
        if allowed_ids is not None:
            sel = faiss.IDSelectorBatch(np.asarray(list(allowed_ids), dtype=np.int64))
            if self.kind == "ivf":
                # A narrow scope leaves few candidates per list: probe every list, still only scoring allowed ids.
                params = faiss.SearchParametersIVF(sel=sel, nprobe=faiss.extract_index_ivf(self.index).nlist)
            else:
                params = faiss.SearchParameters(sel=sel)
        with self.lock:
            return self.index.search(q, n, params=params)

    # ----- persistence ---------------------------------------------------
    def save(self, path: str | os.PathLike, generation: int, model_id: str) -> None:
        """Write atomically: a crash leaves the old file or the new one, never half of one."""
        path = Path(path)
        tmp = path.with_name(path.name + ".tmp")
        with self.lock:
            faiss.write_index(self.index, str(tmp))
        meta = {"generation": generation, "model_id": model_id, "kind": self.kind, "nprobe": self.nprobe,
                "dim": self.dim, "ntotal": self.ntotal}
        os.replace(tmp, path)
        _write_atomic(path.with_suffix(".json"), json.dumps(meta))

    @classmethod
    def load(cls, path: str | os.PathLike) -> tuple["VectorIndex", dict]:
        """Raises OSError or ValueError when the file is missing, unreadable or not ours."""
        path = Path(path)
        meta = json.loads(path.with_suffix(".json").read_text())
        try:
            index = faiss.read_index(str(path))
        except RuntimeError as exc:
            raise ValueError(str(exc)) from exc
        if index.d != meta["dim"] or index.ntotal != meta["ntotal"]:
            raise ValueError("index file does not match its description")
        return cls(index, int(meta["dim"]), meta["kind"], int(meta.get("nprobe", 0))), meta


def _recall(truth_pos: np.ndarray, got_ids: np.ndarray, ids_in_order: np.ndarray) -> float:
    hits = 0
    for t, g in zip(truth_pos, got_ids):
        hits += len(set(ids_in_order[t[t >= 0]].tolist()) & set(g[g >= 0].tolist()))
    return hits / max(1, truth_pos[truth_pos >= 0].size)


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
