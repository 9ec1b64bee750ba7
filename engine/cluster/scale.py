"""`picsift bench-scale`: an archive of millions of photos, simulated through the library's merge and index path.

No machine here can encode ten million photos, but everything after the encoders can be measured at that size:
synthetic clustered unit vectors of the model's width, shard by shard as a cluster job returns them, go into a
real library's SQLite through the store's own writes (a photo row and a vector each, a transaction a batch, as
a shard merge commits them), then the library builds its search index the way it does for any library of that
size (past ONDISK_LIMIT: IVF-PQ streamed from SQLite, lists merged on disk, memory-mapped) and a fresh process
opens it and answers text-like queries. Reported: merge and build time, peak memory of each phase and of the
searching process, bytes on disk, query ms, and recall@20 against exact search over every vector.

Not simulated: decoding and encoding (the Ray job's cost, measured by `index --cluster` on real photos), and
the rerank cache's tokens (a shard row's features), whose size per photo is the model's (docs/SCALE.md).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np

MODEL_KEY = "synthetic-be"


@dataclass
class ScaleOptions:
    work: str
    photos: int = 10_000_000
    dim: int = 256  # BLIP's BE vectors
    shard_photos: int = 250_000
    clusters: int = 20_000
    queries: int = 1000
    seed: int = 0
    ondisk_limit: int | None = None  # default: the library's own (ONDISK_LIMIT)
    exact_limit: int | None = None


@dataclass
class ScaleEvent:
    phase: str
    done: int = 0
    total: int = 0
    message: str = ""
    result: dict | None = field(default=None)


def shard_vectors(o: ScaleOptions, shard: int) -> np.ndarray:
    """The unit vectors of one shard: around cluster centres shared by all shards, drawn from (seed, shard)."""
    centres = np.random.default_rng([o.seed, 1 << 20]).normal(size=(o.clusters, o.dim)).astype(np.float32)
    start = shard * o.shard_photos
    m = max(0, min(o.shard_photos, o.photos - start))
    rng = np.random.default_rng([o.seed, shard])
    x = centres[rng.integers(0, o.clusters, m)] + rng.normal(scale=0.6, size=(m, o.dim)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def peak_mb() -> float | None:
    """The process's peak resident memory since the last `reset_peak` (Linux), in MB."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def reset_peak() -> None:
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
    except OSError:
        pass


def run_scale(o: ScaleOptions) -> Iterator[ScaleEvent]:
    from ..library import Library
    from ..search.vector_index import modality_gap_queries, _exact_ids_chunks, _recalls

    work = Path(o.work).expanduser().resolve()
    lib_dir = work / "library"
    if (lib_dir / Library.DB_NAME).exists():
        raise ValueError(f"{lib_dir} holds a library already: give bench-scale an empty folder")
    work.mkdir(parents=True, exist_ok=True)
    kw = {}
    if o.ondisk_limit is not None:
        kw["ondisk_limit"] = o.ondisk_limit
    if o.exact_limit is not None:
        kw["exact_limit"] = o.exact_limit
    result: dict = {"photos": o.photos, "dim": o.dim, "shard_photos": o.shard_photos, "clusters": o.clusters,
                    "seed": o.seed}
    shards = (o.photos + o.shard_photos - 1) // o.shard_photos
    # Text-like queries: photos of the archive moved across the modality gap (as `bench` makes them)
    sample = np.concatenate([shard_vectors(o, s)[:max(1, o.queries // shards + 1)] for s in range(shards)])
    queries = modality_gap_queries(sample, o.queries, seed=o.seed + 1)
    del sample

    with Library(lib_dir, **kw) as lib:
        store = lib.store
        store.register_model(MODEL_KEY, "be", "synthetic vectors", o.dim)
        store.set_active(MODEL_KEY, None, "synthetic", None)
        reset_peak()
        t = time.perf_counter()
        done = 0
        for s in range(shards):
            x = shard_vectors(o, s)
            with store.batch():  # one shard's commit, as ClusterIndexer.merge_shard makes it
                for i in range(len(x)):
                    n = done + i
                    store.save_photo(f"/archive/{n // 10_000:05d}/{n:08d}.jpg", 1_000_000 + n, n, f"h{n:08d}",
                                     4000, 3000)
                store.put_vectors(MODEL_KEY, ((f"h{done + i:08d}", x[i]) for i in range(len(x))))
                store.bump_generation()
            done += len(x)
            yield ScaleEvent("merge", done, o.photos, f"shard {s + 1}/{shards}")
        result["merge_s"] = round(time.perf_counter() - t, 1)
        result["merge_photos_per_s"] = round(o.photos / result["merge_s"])
        result["merge_peak_mb"] = peak_mb()

        yield ScaleEvent("build", 0, 1, "building the search index from the library database")
        reset_peak()
        t = time.perf_counter()
        vi = lib.index
        result["build_s"] = round(time.perf_counter() - t, 1)
        result["build_peak_mb"] = peak_mb()
        result["index"] = {k: v for k, v in vi.describe().items() if k != "dim"}
        path = lib.index_path(MODEL_KEY)
        files = {"index file (the delta when on disk)": path, "description": path.with_suffix(".json")}
        if vi.ondisk:
            files.update({"header (quantiser, list offsets)": vi.base.index, "lists (codes and ids)": vi.base.lists,
                          "ids": vi.base.ids, "exact vectors (float16)": vi.base.vectors})
        result["index_bytes"] = {k: p.stat().st_size for k, p in files.items() if p.exists()}
        result["database_bytes"] = sum(p.stat().st_size for p in lib_dir.glob(Library.DB_NAME + "*"))

        yield ScaleEvent("truth", 0, 1, f"exact top 20 of {o.queries} queries over {o.photos:,} vectors")
        t = time.perf_counter()
        truth = _exact_ids_chunks(lambda: store.iter_vectors(MODEL_KEY), queries, 20)
        result["exact_search_s"] = round(time.perf_counter() - t, 1)

    np.save(work / "queries.npy", queries)
    np.save(work / "truth.npy", truth)
    yield ScaleEvent("search", 0, 1, "a fresh process opens the library and searches")
    out = subprocess.run([sys.executable, "-m", "picsift.engine.cluster.scale", str(lib_dir), str(work)],
                         capture_output=True, text=True, env={**os.environ, **({} if not kw else {
                             "PICSIFT_SCALE_LIMITS": json.dumps(kw)})})
    if out.returncode:
        raise RuntimeError(f"the searching process failed: {out.stderr.strip()[-2000:]}")
    searched = json.loads(out.stdout.strip().splitlines()[-1])
    got = np.load(work / "got.npy")
    recalls = _recalls(truth, got)
    result.update(searched)
    result["recall_at_20"] = round(float(recalls.mean()), 4)
    result["queries"] = int(len(queries))
    if not result["recall_at_20"] > 0 or not result.get("query_ms_median"):
        raise RuntimeError(f"bench-scale measured nothing: {result}")
    (work / "scale.json").write_text(json.dumps(result, indent=1))
    yield ScaleEvent("done", 1, 1, f"figures in {work / 'scale.json'}", result)


def _search_process(lib_dir: str, work: str) -> None:
    """In a fresh process: open the library, load its index, answer every query one at a time."""
    from ..library import Library

    kw = json.loads(os.environ.get("PICSIFT_SCALE_LIMITS", "{}"))
    reset_peak()
    t = time.perf_counter()
    with Library(lib_dir, create=False, **kw) as lib:
        vi = lib.index
        load_s = time.perf_counter() - t
        if lib.notices:
            raise RuntimeError(f"the index was not loaded as saved: {lib.notices}")
        queries = np.load(Path(work) / "queries.npy")
        times, got = [], []
        for q in queries:
            t = time.perf_counter()
            _, ids = vi.search(q[None], 20)
            times.append((time.perf_counter() - t) * 1000)
            got.append(ids[0])
        np.save(Path(work) / "got.npy", np.stack(got))
        print(json.dumps({"open_s": round(load_s, 2), "search_peak_mb": peak_mb(),
                          "query_ms_median": round(statistics.median(times), 2),
                          "query_ms_p95": round(float(np.percentile(times, 95)), 2),
                          "search_threads": _threads()}))


def _threads() -> int:
    import faiss

    return int(faiss.omp_get_max_threads())


if __name__ == "__main__":
    _search_process(sys.argv[1], sys.argv[2])
