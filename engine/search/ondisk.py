"""An IVF index too large for memory: its inverted lists in a file beside it, memory-mapped, never read whole.

Built as FAISS's on-disk demo and autofaiss build one: the coarse quantizer (and the PQ codebooks) are trained
on a sample, each chunk of vectors is added to its own copy of the trained index and written out, and the
chunks' lists are merged into one ``.ivfdata`` file (``faiss.contrib.ondisk.merge_ondisk``). The merged index
is opened with ``IO_FLAG_ONDISK_SAME_DIR``: its lists stay on disk, mapped, so a search reads only the lists it
probes and a library of ten million photos does not need ten million vectors in memory, at build or search.

The candidates the codes find are re-scored with the exact vectors (`rescore`), kept beside the lists in float16
and mapped the same way: product-quantised codes alone rank a third of the true top 20 out of it on text-like
queries (docs/SCALE.md). The files of one build never change after it (``BASE.faiss``, ``BASE.ivfdata``,
``BASE.ids.npy``, ``BASE.f16``, where BASE names the build); the photos added or removed since are a small in-memory delta (`DeltaIndex`), saved beside
them by the caller, until the index is rebuilt.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator

import faiss
import numpy as np

QUANTIZER_EF = 128  # the HNSW graph of list centroids searches this wide (FAISS's default 16 finds the
# wrong lists: recall@20 0.86 against 0.96 on 200k clustered vectors, at the same nprobe)
KMEANS_ITERATIONS = 10  # of the coarse quantiser's training (FAISS's default 25 costs 2.5x for little at millions)
Chunks = Callable[[], Iterator[tuple[np.ndarray, np.ndarray]]]  # each call: (ids int64, vectors float32) chunks


@dataclass
class BaseFiles:
    """One build's files in `folder`: the index header, its lists, its ids (sorted, for membership) and its
    exact vectors."""

    folder: Path
    name: str

    def _file(self, suffix: str) -> Path:
        return self.folder / f"{self.name}{suffix}"

    index = property(lambda self: self._file(".faiss"))
    lists = property(lambda self: self._file(".ivfdata"))
    ids = property(lambda self: self._file(".ids.npy"))
    vectors = property(lambda self: self._file(".f16"))  # float16, one row per sorted id

    def paths(self) -> list[Path]:
        return [self.index, self.lists, self.ids, self.vectors]

    def remove(self) -> None:
        for p in self.paths():
            try:
                p.unlink()
            except FileNotFoundError:
                pass


def build(folder: str | os.PathLike, prefix: str, factory: str, dim: int, sample: np.ndarray, chunks: Chunks,
          ids: np.ndarray, on_chunk: Callable[[int], None] | None = None) -> BaseFiles:
    """Train `factory` (an IVF factory string, inner product) on `sample`, add every chunk, merge on disk.

    `ids` are all the ids the chunks hold, sorted: the exact vectors are written in their order. Chunk indexes
    are written to a temporary folder beside the result and removed after the merge; the result's files get a
    fresh name (`prefix` and a random token), so an index already in use is never overwritten.
    `on_chunk(n)` is told how many vectors each chunk added. Returns the files of the new build.
    """
    folder = Path(folder)
    files = BaseFiles(folder, f"{prefix}.{secrets.token_hex(4)}")
    trained = faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
    ivf = faiss.try_extract_index_ivf(trained)
    if ivf is None:
        raise ValueError(f"{factory} is not an IVF index: only IVF lists can live on disk")
    ivf.cp.niter = KMEANS_ITERATIONS
    trained.train(np.ascontiguousarray(sample, dtype=np.float32))
    set_quantizer_ef(trained, 1)  # each vector goes to its nearest list, found as carefully as a search's
    tmp = Path(tempfile.mkdtemp(dir=folder, prefix=f"{prefix}.build."))
    try:
        trained_path = tmp / "trained.faiss"
        faiss.write_index(trained, str(trained_path))
        ids = np.asarray(ids, np.int64)
        if len(ids) > 1 and (ids[1:] <= ids[:-1]).any():
            raise ValueError("ids must be sorted and unique")
        exact = np.lib.format.open_memmap(tmp / "vectors.npy", mode="w+", dtype=np.float16,
                                          shape=(len(ids), dim)) if len(ids) else None
        parts, seen = [], 0
        for i, (chunk_ids, vecs) in enumerate(chunks()):
            if len(chunk_ids) == 0:
                continue
            chunk_ids = np.ascontiguousarray(chunk_ids, np.int64)
            rows = np.searchsorted(ids, chunk_ids)
            if (rows >= len(ids)).any() or (ids[np.minimum(rows, len(ids) - 1)] != chunk_ids).any():
                raise ValueError("a chunk holds an id the id list does not")
            vecs = np.ascontiguousarray(vecs, dtype=np.float32)
            exact[rows] = vecs
            part = faiss.read_index(str(trained_path))
            part.add_with_ids(vecs, chunk_ids)
            path = tmp / f"part{i:05d}.faiss"
            faiss.write_index(part, str(path))
            del part
            parts.append(str(path))
            seen += len(chunk_ids)
            if on_chunk:
                on_chunk(len(chunk_ids))
        if seen != len(ids):
            raise ValueError(f"the chunks held {seen} vectors for {len(ids)} ids (an id twice, or one missing)")
        index = faiss.read_index(str(trained_path))
        if parts:
            from faiss.contrib.ondisk import merge_ondisk

            merge_ondisk(index, parts, str(tmp / "lists.ivfdata"))
        else:  # nothing to add: an empty on-disk list file, so the build opens like any other
            lists = faiss.OnDiskInvertedLists(faiss.extract_index_ivf(index).nlist, index.code_size,
                                              str(tmp / "lists.ivfdata"))
            faiss.extract_index_ivf(index).replace_invlists(lists, True)
        # The header names its lists file; opened with IO_FLAG_ONDISK_SAME_DIR only the base name counts.
        faiss.downcast_InvertedLists(faiss.extract_index_ivf(index).invlists).filename = files.lists.name
        faiss.write_index(index, str(tmp / "index.faiss"))
        del index
        np.save(tmp / "ids.npy", ids)
        if exact is not None:
            exact.flush()
            del exact
        else:
            np.save(tmp / "vectors.npy", np.zeros((0, dim), np.float16))
        for f in ("lists.ivfdata", "ids.npy", "vectors.npy", "index.faiss"):
            _fsync(tmp / f)
        os.replace(tmp / "lists.ivfdata", files.lists)
        os.replace(tmp / "ids.npy", files.ids)
        os.replace(tmp / "vectors.npy", files.vectors)
        os.replace(tmp / "index.faiss", files.index)  # the header last: it names the rest
    except BaseException:
        files.remove()
        raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return files


def remove_builds(folder: str | os.PathLike, prefix: str, keep: str | None = None) -> None:
    """Remove the files of every build of `prefix` in `folder` but `keep` (and build folders left by a crash).
    A process that still has an old build mapped keeps reading it: the files go when it lets go."""
    folder = Path(folder)
    for header in folder.glob(f"{prefix}.*.faiss"):
        name = header.name[: -len(".faiss")]
        if name != keep and name.count(".") == prefix.count(".") + 1:
            BaseFiles(folder, name).remove()
    for f in folder.glob(f"{prefix}.*.ivfdata"):  # lists whose header never got written
        name = f.name[: -len(".ivfdata")]
        if name != keep and not (folder / f"{name}.faiss").exists():
            BaseFiles(folder, name).remove()
    for tmp in folder.glob(f"{prefix}.build.*"):
        shutil.rmtree(tmp, ignore_errors=True)


def set_quantizer_ef(index: faiss.Index, nprobe: int) -> None:
    """Make an HNSW quantizer search wide enough for `nprobe` lists (a flat quantizer needs nothing)."""
    q = faiss.downcast_index(faiss.extract_index_ivf(index).quantizer)
    if isinstance(q, faiss.IndexHNSW):
        q.hnsw.efSearch = max(QUANTIZER_EF, 2 * nprobe)


def open_base(files: BaseFiles) -> tuple[faiss.Index, np.ndarray]:
    """The build's index with its lists mapped from disk, and its sorted ids (mapped too)."""
    if not files.lists.is_file():
        raise FileNotFoundError(f"{files.lists} is missing")
    index = faiss.read_index(str(files.index), faiss.IO_FLAG_ONDISK_SAME_DIR)
    ids = np.load(files.ids, mmap_mode="r")
    if index.ntotal != len(ids):
        raise ValueError(f"{files.index.name} holds {index.ntotal} vectors and its ids file {len(ids)}")
    return index, ids


def open_vectors(files: BaseFiles, dim: int) -> np.ndarray:
    """The build's exact vectors (float16, one row per sorted id), mapped from disk."""
    v = np.load(files.vectors, mmap_mode="r")
    if v.ndim != 2 or v.shape[1] != dim:
        raise ValueError(f"{files.vectors.name} holds vectors of shape {v.shape}, not n x {dim}")
    return v


def rescore(queries: np.ndarray, cand: np.ndarray, base_ids: np.ndarray, exact: np.ndarray, delta: "DeltaIndex",
            n: int) -> tuple[np.ndarray, np.ndarray]:
    """The top n of each query's candidate ids by exact inner product: base vectors from `exact` (the rows of
    their sorted ids), the delta's from its own flat index."""
    out_d = np.full((len(queries), n), -3.4e38, np.float32)
    out_i = np.full((len(queries), n), -1, np.int64)
    for qi, q in enumerate(queries):
        c = np.unique(cand[qi][cand[qi] >= 0])
        if len(c) == 0:
            continue
        in_base = delta.in_base(c) & np.array([int(i) not in delta.removed for i in c], bool)
        scores = np.empty(len(c), np.float32)
        if in_base.any():
            rows = np.searchsorted(base_ids, c[in_base])
            order = np.argsort(rows)  # read the mapped file in order
            v = np.asarray(exact[rows[order]], dtype=np.float32)
            s = np.empty(len(rows), np.float32)
            s[order] = v @ q
            scores[in_base] = s
        if (~in_base).any():
            scores[~in_base] = delta.added_vectors(c[~in_base]) @ q
        top = np.argsort(-scores, kind="stable")[:n]
        out_d[qi, :len(top)] = scores[top]
        out_i[qi, :len(top)] = c[top]
    return out_d, out_i


def header_checksum(files: BaseFiles) -> str:
    """sha256 of the header file (small: the trained quantizer and the lists' offsets, not their contents)."""
    return "sha256:" + hashlib.sha256(files.index.read_bytes()).hexdigest()


class DeltaIndex:
    """The changes since a build: vectors added (exactly searched) and base ids removed (filtered out)."""

    def __init__(self, dim: int, base_ids: np.ndarray):
        self.dim = dim
        self.base_ids = base_ids
        self.added = faiss.index_factory(dim, "IDMap2,Flat", faiss.METRIC_INNER_PRODUCT)
        self.removed: set[int] = set()  # base ids no longer live
        self._not_removed = None  # the selector of live base ids, kept until the removed set changes

    def in_base(self, ids: np.ndarray) -> np.ndarray:
        ids = np.asarray(ids, np.int64)
        if len(self.base_ids) == 0:
            return np.zeros(len(ids), bool)
        pos = np.searchsorted(self.base_ids, ids)
        return (pos < len(self.base_ids)) & (np.asarray(self.base_ids[np.minimum(pos, len(self.base_ids) - 1)]) == ids)

    @property
    def live_base(self) -> int:
        return len(self.base_ids) - len(self.removed)

    def _remove_from_base(self, ids: np.ndarray) -> None:
        gone = ids[self.in_base(ids)]
        if len(gone):
            self.removed.update(int(i) for i in gone)
            self._not_removed = None

    def live_selector(self):
        """A FAISS selector of the base ids still live, or None when none was removed."""
        if not self.removed:
            return None
        if self._not_removed is None:
            self._not_removed = faiss.IDSelectorNot(faiss.IDSelectorBatch(np.array(sorted(self.removed), np.int64)))
        return self._not_removed

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        ids = np.asarray(ids, np.int64)
        # A photo whose vector changed is removed and added under its id: the base copy stops counting.
        self._remove_from_base(ids)
        self.added.remove_ids(faiss.IDSelectorBatch(ids))
        self.added.add_with_ids(np.ascontiguousarray(vectors, dtype=np.float32).reshape(-1, self.dim), ids)

    def remove(self, ids: np.ndarray) -> None:
        ids = np.asarray(ids, np.int64)
        self._remove_from_base(ids)
        self.added.remove_ids(faiss.IDSelectorBatch(ids))

    def added_vectors(self, ids: np.ndarray) -> np.ndarray:
        """The delta's vectors of `ids` (each must have been added)."""
        return np.stack([self.added.reconstruct(int(i)) for i in ids]).astype(np.float32)

    @property
    def size(self) -> int:
        """How many changes the delta holds (added vectors and removed base ids)."""
        return int(self.added.ntotal) + len(self.removed)

    def to_bytes(self) -> bytes:
        removed = np.array(sorted(self.removed), np.int64)
        added = faiss.serialize_index(self.added)
        return (np.array([len(removed), added.nbytes], np.int64).tobytes() + removed.tobytes() + added.tobytes())

    @classmethod
    def from_bytes(cls, data: bytes, dim: int, base_ids: np.ndarray) -> "DeltaIndex":
        head = np.frombuffer(data[:16], np.int64)
        n_removed, n_added = int(head[0]), int(head[1])
        if 16 + 8 * n_removed + n_added != len(data):
            raise ValueError("the index's delta file is truncated")
        d = cls(dim, base_ids)
        d.removed = set(np.frombuffer(data[16:16 + 8 * n_removed], np.int64).tolist())
        d.added = faiss.deserialize_index(np.frombuffer(data[16 + 8 * n_removed:], np.uint8))
        if d.added.d != dim:
            raise ValueError("the index's delta file is of another dimension")
        return d


def search(base: faiss.Index, base_ids: np.ndarray, exact: np.ndarray, delta: DeltaIndex, queries: np.ndarray,
           n: int, nprobe: int, refine: int, allowed_ids=None) -> tuple[np.ndarray, np.ndarray]:
    """Top n over the build's live vectors and the delta's: the codes' top `refine` x n and the delta's top n,
    re-scored exactly (-1 ids pad missing results). `allowed_ids` restricts both (every list is probed)."""
    ivf = faiss.extract_index_ivf(base)
    if allowed_ids is not None:
        allowed = np.asarray(list(allowed_ids), np.int64)
        live = np.array([i for i in allowed.tolist() if i not in delta.removed], np.int64)
        params = faiss.SearchParametersIVF(sel=faiss.IDSelectorBatch(live), nprobe=ivf.nlist)
        delta_params = faiss.SearchParameters(sel=faiss.IDSelectorBatch(allowed))
    else:
        sel = delta.live_selector()
        params = faiss.SearchParametersIVF(sel=sel, nprobe=nprobe) if sel is not None else \
            faiss.SearchParametersIVF(nprobe=nprobe)
        delta_params = None
    set_quantizer_ef(base, params.nprobe)
    _, cand = base.search(queries, max(n, refine * n), params=params)
    if delta.added.ntotal:
        _, more = delta.added.search(queries, min(n, int(delta.added.ntotal)), params=delta_params)
        cand = np.concatenate([cand, more], axis=1)
    return rescore(queries, cand, base_ids, exact, delta, n)


def _fsync(path: Path) -> None:
    with open(path, "rb+") as f:
        os.fsync(f.fileno())
