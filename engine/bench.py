"""`picsift bench`: measures this machine, one figure at a time.

Each figure is a record (name, value, unit, note). Model figures use the given
checkpoint, or BLIP base's architecture with random weights (same cost); photo
figures use real photos from a folder; the large-collection figures use
synthetic clustered vectors of the model's dimension.
"""

from __future__ import annotations

import io
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from engine.imaging import decode, is_supported


@dataclass
class Figure:
    name: str
    value: float | str
    unit: str
    note: str = ""

    def to_json(self) -> dict:
        return {"name": self.name, "value": self.value, "unit": self.unit, "note": self.note}


def _ms(fn: Callable[[], object], repeat: int = 5, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1000)
    return statistics.median(times)


PROC_STATUS = Path("/proc/self/status")


def _rss_mb() -> float | None:
    """Resident memory now (Linux), else its peak (other Unix), else None: Windows has no `resource`."""
    try:
        for line in PROC_STATUS.read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    try:
        import resource
    except ImportError:
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # bytes on macOS, KiB elsewhere
    return peak / 1024 / (1024 if sys.platform == "darwin" else 1)


def clustered_vectors(n: int, dim: int, seed: int = 0, clusters: int = 2000) -> np.ndarray:
    """Unit vectors around cluster centres, as photo collections are (random uniform ones are not)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, dim)).astype(np.float32)
    out = np.empty((n, dim), np.float32)
    step = 100_000
    for i in range(0, n, step):
        m = min(step, n - i)
        out[i : i + m] = centres[rng.integers(0, clusters, m)] + rng.normal(scale=0.6, size=(m, dim)).astype(np.float32)
    out /= np.linalg.norm(out, axis=1, keepdims=True)
    return out


def far_queries(vectors: np.ndarray, count: int, seed: int = 1) -> np.ndarray:
    """Queries far from the photos, as text queries are (cosine 0.3 to 0.6 to their nearest)."""
    rng = np.random.default_rng(seed)
    q = vectors[rng.choice(len(vectors), count, replace=False)].copy()
    noise = rng.normal(size=q.shape).astype(np.float32)
    noise *= rng.uniform(1.2, 2.5, size=(count, 1)).astype(np.float32) / np.linalg.norm(noise, axis=1, keepdims=True)
    q += noise
    return q / np.linalg.norm(q, axis=1, keepdims=True)


def synthetic_jpeg(width: int = 4000, height: int = 3000) -> bytes:
    from PIL import Image

    rng = np.random.default_rng(0)
    small = rng.integers(0, 256, size=(height // 50, width // 50, 3), dtype=np.uint8)
    smooth = np.asarray(Image.fromarray(small, "RGB").resize((width, height), Image.Resampling.BICUBIC), np.int16)
    # Fine grain like a real photo's texture and sensor noise, so the file is a camera-sized 4-6 MB.
    grain = rng.normal(scale=10, size=(height, width, 1)).astype(np.int16)
    img = Image.fromarray(np.clip(smooth + grain, 0, 255).astype(np.uint8), "RGB")
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=90)
    return buf.getvalue()


def _photos(folder: str, limit: int) -> list[str]:
    found = []
    for root, _dirs, files in os.walk(folder):
        for f in sorted(files):
            if is_supported(f):
                found.append(os.path.join(root, f))
    return sorted(found)[:limit]


def run_bench(model, folder: str, photos: int = 48, sizes=(10_000, 100_000, 1_000_000),
              workdir: str | None = None, curve: list | None = None) -> Iterator[Figure]:
    """Yield figures as they are measured. curve, when given, receives (size, be_ms, be_plus_rerank_ms)."""
    import faiss
    import torch

    from engine.indexer import index_folders
    from engine.library import Library
    from engine.search import Searcher
    from engine.vector_index import VectorIndex

    yield Figure("device", model.describe_device(), "")
    yield Figure("threads", torch.get_num_threads(), "threads")
    yield Figure("precision", model.precision, "", "rerank cache: " + ("fp32" if model.exact else "int8"))

    # ----- decoding ------------------------------------------------------
    jpeg = synthetic_jpeg()
    size = getattr(model, "image_size", 384)
    yield Figure("decode_12mp_jpeg_ms", round(_ms(lambda: decode(jpeg, target_size=size), repeat=3), 1), "ms",
                 f"4000x3000 JPEG, draft decoding to at least {size} px")
    yield Figure("decode_12mp_jpeg_full_ms", round(_ms(lambda: decode(jpeg), repeat=3), 1), "ms", "full-size decode")

    # ----- indexing real photos, end to end --------------------------------
    paths = _photos(folder, photos)
    if not paths:
        raise FileNotFoundError(f"no photos found in {folder}")
    tmp = tempfile.TemporaryDirectory(dir=workdir, prefix="picsift-bench-")
    try:
        photo_dir = Path(tmp.name) / "photos"
        photo_dir.mkdir()
        for p in paths:
            os.symlink(p, photo_dir / os.path.basename(p))
        lib = Library(Path(tmp.name) / "library")
        empty = _library_bytes(lib)  # fixed cost of an empty library, not a photo's
        start = time.perf_counter()
        for _ in index_folders(lib, model, [str(photo_dir)]):
            pass
        elapsed = time.perf_counter() - start
        yield Figure("index_photos_per_s", round(len(paths) / elapsed, 2), "photos/s",
                     f"{len(paths)} photos: decode, BE vector, rerank cache, commit")

        lib.save_index()
        db, cache, faiss_bytes = (a - b for a, b in zip(_library_bytes(lib), empty))
        yield Figure("disk_bytes_per_photo", round((db + cache + faiss_bytes) / len(paths)), "bytes",
                     "database, FAISS index and rerank cache, beyond an empty library")
        yield Figure("disk_bytes_per_photo_no_cache", round((db + faiss_bytes) / len(paths)), "bytes",
                     "database and FAISS index")

        # ----- one query, one photo -------------------------------------------
        queries = ["a dog runs on the beach", "two children playing football in a park",
                   "a man rides a bicycle down a city street", "a woman in a red dress", "snow on the mountains"]
        it = iter(queries * 4)
        yield Figure("text_embed_ms", round(_ms(lambda: model.embed_texts([next(it)]), repeat=10), 1), "ms",
                     "BE vector of one query")
        image_bytes = Path(paths[0]).read_bytes()
        yield Figure("image_embed_ms", round(_ms(
            lambda: model.encode_images([decode(image_bytes, size).image]), repeat=3), 1), "ms",
            "one photo: decode, preprocess, vision encoder (BE vector and CE tokens)")

        # ----- rerank -------------------------------------------------------------
        searcher = Searcher(lib, model)
        k = min(20, len(paths))
        query = queries[0]
        candidates = searcher.retrieve(query, n=k)

        def rerank_times() -> tuple[float, float]:
            t = time.perf_counter()
            first = None
            for update in searcher.rerank_stream(query, candidates, k):
                if update.scored and first is None:
                    first = time.perf_counter() - t
            return (time.perf_counter() - t) * 1000, (first or 0) * 1000

        rerank_times()  # warm
        cached = [rerank_times() for _ in range(3)]
        total_c, first_c = statistics.median(c[0] for c in cached), statistics.median(c[1] for c in cached)
        yield Figure("rerank_ms_k20_cached", round(total_c), "ms", f"CE over {k} candidates from the rerank cache")
        yield Figure("rerank_first_update_ms_k20", round(first_c), "ms", "time to the first CE score")
        lib.tokens.clear()
        total_u, first_u = rerank_times()
        yield Figure("rerank_ms_k20_uncached", round(total_u), "ms", "vision encoder runs on each candidate")
        yield Figure("rerank_first_update_ms_k20_uncached", round(first_u), "ms", "")
        rerank_times()  # the uncached run stored the tokens again

        # ----- large collections: synthetic vectors ------------------------------
        dim = model.dim
        for n in sizes:
            vectors = clustered_vectors(n, dim)
            ids = np.arange(1, n + 1, dtype=np.int64)
            t = time.perf_counter()
            index = VectorIndex.build(ids, vectors, dim)
            build_s = time.perf_counter() - t
            q = far_queries(vectors, 200)
            exact = faiss.IndexFlatIP(dim)
            exact.add(vectors)
            _, truth = exact.search(q, 20)
            del exact
            _, got = index.search(q, 20)
            recall = float(np.mean([len(set(ids[t_][t_ >= 0]) & set(g[g >= 0])) / 20 for t_, g in zip(truth, got)]))
            single = iter(q)
            search_ms = _ms(lambda: index.search(next(single)[None, :], 20), repeat=50, warmup=5)
            label = _size_label(n)
            note = f"{index.kind}" + (f", nprobe {index.nprobe}" if index.kind == "ivf" else "") + f", built in {build_s:.0f} s"
            yield Figure(f"faiss_search_ms_{label}", round(search_ms, 2), "ms", note)
            yield Figure(f"faiss_recall20_{label}", round(recall, 3), "", "against exact search, 200 text-like queries")
            text_ms = _ms(lambda: model.embed_texts([queries[1]]), repeat=5)
            if curve is not None:
                curve.append((n, text_ms + search_ms, text_ms + search_ms + total_c))
            if n == max(sizes):
                def full_query() -> None:
                    vec = model.embed_texts([queries[2]])
                    index.search(vec, 20)
                    for _ in searcher.rerank_stream(queries[2], candidates, k):
                        pass

                yield Figure(f"query_ms_{label}_k20", round(_ms(full_query, repeat=3)), "ms",
                             "text query end to end: BE vector, FAISS top 20, CE over 20 cached candidates")
                rss = _rss_mb()
                if rss is not None:
                    yield Figure("rss_mb", round(rss), "MB", f"resident memory with the {label} index loaded")
            vectors = index = None  # free this size's arrays before the next, larger one
        lib.close()
    finally:
        tmp.cleanup()


def _library_bytes(lib) -> tuple[int, int, int]:
    """(database, rerank cache, FAISS file) sizes on disk, write-ahead logs folded in."""
    for conn in (lib.store.conn, lib.tokens.conn):
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    size = lambda p: os.path.getsize(p) if os.path.exists(p) else 0  # noqa: E731
    key = lib.store.be_key
    return size(lib.store.path), size(lib.tokens.path), size(lib.index_path(key)) if key else 0


def _size_label(n: int) -> str:
    if n >= 1_000_000 and n % 1_000_000 == 0:
        return f"{n // 1_000_000}m"
    if n >= 1000 and n % 1000 == 0:
        return f"{n // 1000}k"
    return str(n)


def plot_curve(curve: list, path: str) -> None:
    """Query latency against collection size, BE alone and BE plus rerank (needs matplotlib)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = [c[0] for c in curve]
    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    ax.plot(sizes, [c[1] for c in curve], "o-", label="BE: query vector + FAISS top 20")
    ax.plot(sizes, [c[2] for c in curve], "s-", label="BE + CE rerank of top 20 (cached)")
    ax.set_xscale("log")
    ax.set_xlabel("photos in the library")
    ax.set_ylabel("query latency (ms)")
    ax.set_title("picsift query latency, 2-core CPU")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
