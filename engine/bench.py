"""`picsift bench`: measures this machine, one checked figure at a time.

Every figure is a record (name, value, unit, note) whose note says what it was
measured on: library size, rerank-cache hit rate, precision, photos. A figure is
yielded only after the work it times was checked to have happened (the library
holds exactly the photos given, every rerank produced a CE score for each of its
k hits, the caches hold the entries they should, FAISS returned k results);
anything else raises BenchError, because no figure is better than a wrong one.

What is measured:
- the machine: matrix-multiply GFLOP/s in fp32 and bf16 with the model's threads
  (`engine.machine`), and the model's arithmetic per photo, query and CE pair
  counted from its configuration, so that model timings can also be read as a
  share of what the machine can do (a figure that travels between machines);
- real photos from a folder, indexed into a real library: decoding, indexing,
  disk per photo, text and photo embedding, CE rerank from the cache and without;
- fp32 against bf16 for the vision encoder and the CE: speed and agreement;
- large libraries (10k to 1M photos): a FAISS index of synthetic clustered
  vectors plus the real photos' vectors, in which every synthetic id stands for
  one of the real photos, so that a text query's own top k hits are reranked end
  to end: from the rerank cache when its budget would hold that photo at that
  library size, through the vision encoder when it would not;
- `picsift search` as a user runs it: a fresh process, imports and model load;
- repeated queries against a rerank cache smaller than what they reach.
"""

from __future__ import annotations

import copy
import io
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np

from .errors import ImageError, PicsiftError
from .index.imaging import decode, is_supported, open_photo
from .models.random_blip import OUTLIER_SCALE
from .token_cache import DEFAULT_BUDGET_BYTES
from .search.vector_index import EXACT_LIMIT

K = 20  # hits reranked per query, as the app does by default
RECALL_QUERIES = 200
RECALL_SEED = 7  # not the seed VectorIndex.build calibrates with: recall is measured on held-out queries
# Weight spread x sqrt(fan-in) of a trained-like layer: the random base checkpoint of the test suite's kind
# (initializer_range 0.05 at width 768); above CHAOTIC_GAIN a random network amplifies every rounding.
TRAINED_GAIN = 1.4
CHAOTIC_GAIN = 3.0

# Distinct queries: the repeated-query workload asks each several times; the large-library figures use the first few.
QUERIES = [
    "a dog runs on the beach", "two children playing football in a park", "a man rides a bicycle down a city street",
    "a woman in a red dress", "snow on the mountains", "a black and white dog jumps over a log",
    "people sitting at a table in a restaurant", "a boy jumps into a swimming pool", "a group of people on a hill",
    "a brown horse in a green field", "a girl with a pink umbrella in the rain", "a surfer rides a big wave",
    "a crowd watching a concert at night", "a cat sleeping on a couch", "a man climbing a rock",
    "an old church tower", "a little girl eating cake", "two dogs playing with a ball in the snow",
    "a skier going down a snowy hill", "a bus on a busy street",
]


class BenchError(PicsiftError):
    """A measurement did not happen as it should; its figure would be meaningless."""


def _check(ok: bool, what: str) -> None:
    if not ok:
        raise BenchError(f"bench: {what}; no figure was reported for it.")


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


def _sig(x: float, digits: int = 4) -> float:
    """x to a few significant digits (tiny test models and BLIP base differ by five orders of magnitude)."""
    return float(f"{x:.{digits}g}")


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


# ----- synthetic inputs ------------------------------------------------------------
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
    """Up to `limit` photo files under folder as absolute paths (the bench links them into a temporary
    folder, where a relative target would dangle), one per content (a copy is indexed as the same photo)."""
    import hashlib

    root = os.path.abspath(os.path.expanduser(folder))
    if not os.path.isdir(root):
        raise BenchError(f"bench: {folder} is not a folder of photos.")
    found = []
    for dirpath, dirs, files in os.walk(root):
        dirs.sort()
        found += [os.path.join(dirpath, f) for f in sorted(files) if is_supported(f)]
    out, seen = [], set()
    for path in sorted(found):
        if len(out) >= limit:
            break
        try:
            with open(path, "rb") as fh:
                digest = hashlib.blake2b(fh.read(), digest_size=16).digest()
        except OSError:
            out.append(path)  # unreadable: indexing records why, and the bench stops on it
            continue
        if digest not in seen:
            seen.add(digest)
            out.append(path)
    return out


# ----- the model's arithmetic, counted from its configuration -------------------------------
def _layer_flops(tokens: int, width: int, mlp: int) -> float:
    """One transformer layer over `tokens` tokens: Q, K, V and output projections, the attention's two
    products, the MLP. Multiply-adds count as two operations."""
    return 8.0 * tokens * width * width + 4.0 * tokens * width * mlp + 4.0 * tokens * tokens * width


def blip_vision_flops(config) -> float:
    """Operations of BLIP's vision encoder and BE projection for one photo (patch embedding, every layer)."""
    vc = config.vision_config
    patches = (vc.image_size // vc.patch_size) ** 2
    d = vc.hidden_size
    embed = 2.0 * patches * d * 3 * vc.patch_size**2
    return embed + vc.num_hidden_layers * _layer_flops(patches + 1, d, vc.intermediate_size) \
        + 2.0 * d * config.image_text_hidden_size


def blip_text_flops(config, tokens: int) -> float:
    """Operations of the BE text encoder (self-attention only) and its projection for one query."""
    tc = config.text_config
    return tc.num_hidden_layers * _layer_flops(tokens, tc.hidden_size, tc.intermediate_size) \
        + 2.0 * tc.hidden_size * config.image_text_hidden_size


def blip_ce_flops(config, tokens: int) -> float:
    """Operations of one (query, photo) CE pair as engine.models.blip_ce computes it: queries projected into
    the image-token space (never the image tokens into keys and values), the last layer on [CLS] only."""
    tc, vc = config.text_config, config.vision_config
    d, m, heads, L = tc.hidden_size, tc.intermediate_size, tc.num_attention_heads, tokens
    w, n = vc.hidden_size, (vc.image_size // vc.patch_size) ** 2 + 1

    def cross(rows: int) -> float:  # query and output projections, Q Wk and (A X) Wv, the two products over X
        return 4.0 * rows * d * d + 4.0 * rows * d * w + 4.0 * heads * rows * w * n

    full = 8.0 * L * d * d + 4.0 * L * L * d + cross(L) + 4.0 * L * d * m
    last = 4.0 * d * d + 4.0 * L * d * d + 4.0 * L * d + cross(1) + 4.0 * d * m  # keys and values of all rows
    return (tc.num_hidden_layers - 1) * full + last + 2.0 * d * 2


def _blip_checkpoint(stage):
    ckpt = getattr(stage, "ckpt", None)
    if ckpt is None or not hasattr(getattr(ckpt, "model", None), "vision_model"):
        raise BenchError("bench: the arithmetic and bf16 figures know BLIP checkpoints only.")
    return ckpt


# ----- fp32 against bf16 --------------------------------------------------------------
def _looks_untrained(module) -> bool:
    """Every LayerNorm is the identity and every bias zero: weights as a fresh Hugging Face model has them."""
    import torch

    for m in module.modules():
        if isinstance(m, torch.nn.LayerNorm) and m.weight is not None and m.bias is not None:
            if not (bool(torch.all(m.weight == 1)) and bool(torch.all(m.bias == 0))):
                return False
    return True


def _gain(linear) -> float:
    """A layer's weight spread times the square root of its fan-in: about 1 keeps activations in scale."""
    w = linear.weight.detach()
    return float(w.std()) * math.sqrt(w[0].numel())


def _has_outlier_channels(module) -> bool:
    """Whether a few vision token channels are far larger than the rest (the final LayerNorm's gains)."""
    gains = module.vision_model.post_layernorm.weight.detach().abs()
    return bool(gains.max() > OUTLIER_SCALE / 5 * gains.median())


def trained_like(module, seed: int = 0):
    """(module, how) for the bf16 agreement figures: the model itself when its weights look trained, else a
    copy made to look so.

    Random checkpoints differ from trained ones in ways that decide how rounding shows. Weights drawn with
    a wide initializer_range (the base preset's 0.3, a gain of about 8) multiply the activations' scale
    layer after layer, and such a chaotic network turns any rounding into another answer: their spread
    is brought to TRAINED_GAIN. Identity LayerNorms and zero biases hide the large activations rounding
    hurts: they get random values. And trained ViTs carry a few vision token channels far larger than
    the rest: a random model without them gets some (`engine.models.random_blip`'s own helpers)."""
    import torch

    from .models.random_blip import inject_outlier_channels, randomise_biases_and_norms

    layers = [m for m in module.modules() if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))]
    chaotic = statistics.median(_gain(m) for m in layers) > CHAOTIC_GAIN
    untrained = _looks_untrained(module)
    if not chaotic and not untrained:
        return module, "the weights as loaded (they already spread like trained ones)"
    module = copy.deepcopy(module)
    done = []
    with torch.no_grad():
        if chaotic:
            for m in module.modules():
                if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d)):
                    m.weight.mul_(TRAINED_GAIN / _gain(m))
            done.append(f"weights scaled to gain {TRAINED_GAIN:g}")
        if untrained:
            randomise_biases_and_norms(module, seed)
            done.append("random biases and LayerNorms")
        if not _has_outlier_channels(module):
            count = max(1, module.vision_model.post_layernorm.weight.shape[0] // 192)
            inject_outlier_channels(module, count, seed, scale=OUTLIER_SCALE)
            done.append(f"{count} vision token channel(s) x{OUTLIER_SCALE:g}")
    return module, "random weights made trained-like: " + "; ".join(done)


PATHS = ("fp32", "bf16", "openvino_fp32", "openvino_bf16")


def compare_paths(ckpt, images, queries: Sequence[str], folder: Path, paths: Sequence[str] = PATHS) -> dict:
    """The vision encoder and CE by each path on a trained-like copy: torch in the model's fp32, torch under
    bf16 autocast, and OpenVINO's vision encoder in fp32 and bf16 (the CE then in torch, at the same
    precision, as the product runs it). Per path: ms per photo, ms per query over len(images) candidates,
    the CE probabilities (queries x images) and the BE vectors. OpenVINO's paths are left out when it is not
    installed; its IR goes to `folder`."""
    import torch
    import torch.nn.functional as F

    from .models import openvino_vision as ovv
    from .models.blip_ce import itm_logits
    from .models.blip_vision import vision_tokens

    module, how = trained_like(ckpt.model)
    px = ckpt.preprocess(images).to(ckpt.device, torch.float32)
    out: dict = {"how": how}
    step = ckpt.image_batch_size
    for mode in paths:
        bf16 = mode.endswith("bf16")
        if mode.startswith("openvino"):
            if not ovv.available():
                continue
            enc = ovv.OpenVinoVision(module.vision_model, ckpt.image_size, "bench-trained-like",
                                     "bf16" if bf16 else "fp32", torch.get_num_threads(), folder=folder)

            def encode(x, enc=enc):
                return torch.from_numpy(enc(x.numpy()))
        else:
            def encode(x):
                return vision_tokens(module.vision_model, x)
        ctx = torch.autocast(ckpt.device.split(":")[0], dtype=torch.bfloat16) if bf16 else nullcontext()
        with torch.inference_mode(), ctx:
            encode(px[:step])  # warm-up: first calls pick kernels
            t = time.perf_counter()
            tokens = torch.cat([encode(px[i : i + step]) for i in range(0, len(px), step)])
            vision_ms = (time.perf_counter() - t) * 1000 / len(px)
            vectors = F.normalize(module.vision_proj(tokens[:, 0, :]).float(), dim=-1).cpu().numpy()
            probs, times = [], []
            for q in [queries[0], *queries]:  # the first is a warm-up
                inputs = ckpt.text_inputs([q])
                ids = inputs["input_ids"].expand(len(tokens), -1).to(ckpt.device)
                mask = inputs["attention_mask"].expand(len(tokens), -1).to(ckpt.device)
                t = time.perf_counter()
                k = ckpt.ce_batch_size
                logits = torch.cat([itm_logits(module, ids[i : i + k], mask[i : i + k], tokens[i : i + k])
                                    for i in range(0, len(tokens), k)])
                p = torch.softmax(logits.float(), dim=-1)[:, 1].cpu().numpy()
                times.append((time.perf_counter() - t) * 1000)
                probs.append(p)
        out[mode] = {"vision_ms": vision_ms, "ce_ms": statistics.median(times[1:]), "probs": np.stack(probs[1:]),
                     "vectors": vectors}
    return out


def top_overlap(a: np.ndarray, b: np.ndarray, n: int = 5) -> float:
    """Mean share of each row's top n (by a) that is also in its top n by b."""
    return float(np.mean([len(set(np.argsort(-x, kind="stable")[:n]) & set(np.argsort(-y, kind="stable")[:n])) / n
                          for x, y in zip(a, b)]))


# ----- large libraries: a real library's photos behind a large index ------------------------------
@dataclass
class _QueryRun:
    total_ms: float
    be_ms: float  # text embedding and FAISS
    first_ms: float  # to the first CE score
    hits: int
    cached: int  # hits whose features came from the rerank cache


class LargeLibrary:
    """A FAISS index of `size` vectors over a real library's photos.

    The real photos' vectors plus synthetic clustered ones; every vector has a virtual photo id, a random
    permutation of 0..size-1 (the order photos were indexed in), and every synthetic id stands for the real
    photo `id mod n_real`, so each hit of the large index is a real file the vision encoder can read. The
    rerank cache is taken to hold the first `cached_photos` photos indexed (as indexing fills it while it
    has room): a hit's features come from the cache only when its id is below that, so a random hit is
    cached with probability min(1, cached_photos / size), whichever vectors a query lands on.
    """

    def __init__(self, lib, model, size: int, exact_limit: int = EXACT_LIMIT, seed: int = 0):
        from .search.vector_index import VectorIndex

        key = model.be.key
        real_ids, real_vecs = lib.store.vectors(key)
        n_real = len(real_ids)
        _check(0 < n_real <= size, f"a library of {size:,} photos cannot hold the {n_real} real ones")
        paths, hashes = lib.store.paths(real_ids.tolist()), lib.store.hashes(real_ids.tolist())
        self.paths = [paths[int(i)] for i in real_ids]
        self.hashes = [hashes[int(i)] for i in real_ids]
        self.vectors = np.concatenate([real_vecs.astype(np.float32),
                                       clustered_vectors(size - n_real, model.dim, seed=seed)])
        self.ids = np.random.default_rng(size + seed).permutation(size).astype(np.int64)
        self.photo_of = (np.arange(size) % n_real).astype(np.int64)
        self.photo_of[self.ids[:n_real]] = np.arange(n_real)
        t = time.perf_counter()
        self.index = VectorIndex.build(self.ids, self.vectors, model.dim, exact_limit=exact_limit)
        self.build_s = time.perf_counter() - t
        self.size = size
        self.lib, self.model = lib, model

    def describe(self) -> str:
        vi = self.index
        return vi.kind + (f", nprobe {vi.nprobe}" if vi.kind == "ivf" else "") + f", built in {self.build_s:.1f} s"

    def top_ids(self, text: str, k: int = K) -> list[int]:
        """The photo ids of a text query's top k (BE stage only)."""
        _, found = self.index.search(self.model.embed_texts([text]), k)
        return [int(v) for v in found[0] if v >= 0]

    def query(self, text: str, cached_photos: int = 0, lru=None, k: int = K) -> _QueryRun:
        """One text query end to end, as Searcher runs it: BE vector, FAISS top k, then the CE over the k hits
        in the app's chunks, each hit's features from the rerank cache when it holds them, else encoded from
        the photo file and stored (evicting, as a query's rerank does).

        Without `lru`, the cache is the real library's, taken to hold the photos with ids below
        `cached_photos`. With `lru` (a TokenCache), that cache is used as the app uses its own: features
        stored under each photo's id, found there or not, least recently used entries evicted."""
        from .search.searcher import Searcher
        from .token_cache import format_for

        model, lib, ce = self.model, self.lib, self.model.ce
        fmt = format_for(model)
        t0 = time.perf_counter()
        vec = model.embed_texts([text])
        _, found = self.index.search(vec, k)
        t_be = time.perf_counter()
        vids = [int(v) for v in found[0] if v >= 0]
        _check(len(vids) == min(k, self.size), f"FAISS returned {len(vids)} hits of {k} in a library of {self.size:,}")
        probs: list[float] = []
        first = None
        cached = 0
        pos, size = 0, Searcher.first_batch
        while pos < len(vids):
            chunk, pos, size = vids[pos : pos + size], pos + size, Searcher.ce_chunk
            photos = [int(self.photo_of[v]) for v in chunk]
            if lru is not None:
                keys = [f"photo-{v}" for v in chunk]
                got = lru.get_many(ce.key, keys)
                feats = [got.get(key) for key in keys]
                cache, store_keys = lru, keys
            else:
                want = {i: self.hashes[p] for i, (v, p) in enumerate(zip(chunk, photos)) if v < cached_photos}
                got = lib.tokens.get_many(ce.key, want.values()) if want else {}
                _check(all(h in got for h in want.values()), "a hit the rerank cache should hold was not in it")
                feats = [got[want[i]] if i in want else None for i in range(len(chunk))]
                cache, store_keys = lib.tokens, [self.hashes[p] for p in photos]
            rest = [i for i, f in enumerate(feats) if f is None]
            cached += len(chunk) - len(rest)
            if rest:
                try:
                    images = [open_photo(self.paths[photos[i]], model.image_size).image for i in rest]
                except ImageError as exc:
                    raise BenchError(f"bench: a photo indexed moments ago could not be read: {exc}") from None
                fresh = model.reranker_features(ce, images)
                cache.put_many(ce.key, [(store_keys[i], f) for i, f in zip(rest, fresh)], fmt, evict=True)
                for i, f in zip(rest, fresh):
                    feats[i] = f
            probs.extend(ce.score(text, np.stack(feats)).tolist())
            if first is None:
                first = time.perf_counter()
        end = time.perf_counter()
        p = np.asarray(probs)
        _check(len(p) == len(vids) and bool(np.all(np.isfinite(p))) and bool(np.all((p >= 0) & (p <= 1))),
               f"the CE gave {len(p)} valid scores for {len(vids)} hits")
        return _QueryRun((end - t0) * 1000, (t_be - t0) * 1000, (first - t0) * 1000, len(vids), cached)


def repeated_queries(big: LargeLibrary, cache_path: str | os.PathLike, entry_bytes: int, queries: Sequence[str],
                     times: int, seed: int = 0) -> dict:
    """Each query asked `times` times in shuffled order against an LRU rerank cache (a real TokenCache, empty
    at first) that holds half the photos the queries' top K reach: more than one query's hits, fewer than
    all of them. Returns the cache's hit rate, the rate a cache of the same size that never evicts (filled
    as indexing fills it) would have had, and the latencies."""
    from .token_cache import TokenCache

    reached = {q: big.top_ids(q) for q in queries}
    union = set().union(*reached.values())
    holds = len(union) // 2
    _check(holds > K, f"the {len(queries)} queries reach {len(union)} photos, too few for a rerank cache larger than "
                      f"one query's {K} hits and smaller than all of them")
    order = [q for q in queries for _ in range(times)]
    np.random.default_rng(seed).shuffle(order)
    lru = TokenCache(cache_path, budget_bytes=holds * entry_bytes)
    try:
        runs = [big.query(q, lru=lru) for q in order]
        lookups = lru.hits + lru.misses
        _check(lookups == len(order) * K, f"the rerank cache saw {lookups} lookups for {len(order) * K} hits")
        _check(sum(r.cached for r in runs) == lru.hits, "the queries' cache hits do not match the cache's count")
        _check(lru.count() == holds and lru.size_bytes <= lru.budget_bytes,
               f"the rerank cache holds {lru.count()} photos, its budget {holds}")
        kept: set[int] = set()  # a cache that fills while it has room and never evicts
        noevict = 0
        for q in order:
            for v in reached[q]:
                if v in kept:
                    noevict += 1
                elif len(kept) < holds:
                    kept.add(v)
        return {"hit_rate": lru.hits / lookups, "noevict_hit_rate": noevict / lookups, "holds": holds,
                "reached": len(union), "asks": len(order), "ms": [r.total_ms for r in runs]}
    finally:
        lru.close()


def _size_label(n: int) -> str:
    if n >= 1_000_000 and n % 1_000_000 == 0:
        return f"{n // 1_000_000}m"
    if n >= 1000 and n % 1000 == 0:
        return f"{n // 1000}k"
    return str(n)


# ----- `picsift search` in a fresh process --------------------------------------------
def cli_search(library: str | os.PathLike, model, query: str, k: int, n: int = K) -> tuple[float, list[dict]]:
    """(wall ms, hits) of `picsift search` run as a user runs it: a new Python process that imports the
    engine, loads the model and the library, searches and prints. The child runs this interpreter, so it
    imports the same installation of picsift (an editable install: this work tree)."""
    env = dict(os.environ)
    device = "cuda" if model.device.startswith("cuda") else model.device
    precision = "fp32" if model.exact else "auto"
    cmd = [sys.executable, "-m", "picsift.engine.cli", "search", query, "--library", str(library), "--model", model.source,
           "-n", str(n), "-k", str(k), "--device", device, "--precision", precision, "--json", "-q"]
    t = time.perf_counter()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    wall = (time.perf_counter() - t) * 1000
    _check(done.returncode == 0, f"`picsift search` exited with {done.returncode}: {done.stderr.strip()[-500:]}")
    try:
        hits = json.loads(done.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        raise BenchError(f"bench: `picsift search` printed no results: {done.stdout[-300:]!r}") from None
    return wall, hits


# ----- the bench ------------------------------------------------------------------------
LI_DEFAULT_SHAPE = (32, 128)  # tokens a photo and width of an LI head shrunk to 32 tokens (the default width)
LI_QUERY_TOKENS = 12 + 32  # a short query's tokens plus 32 codes


def late_figures(model, workdir: Path, cond: str, sizes: Sequence[int] = (200, 1000)) -> Iterator[Figure]:
    """The LI stage's cost: reading N candidates' stored LI tokens from a library database, decoding the int8
    and scoring MaxSim, at N = 200 and 1,000; with the model's LI head (its shape and its query tokens) when it
    has one, else at the default shape with random tokens (the arithmetic does not depend on the weights)."""
    from .models.late import bytes_per_photo, decode_many, encode_tokens, maxsim
    from .store.database import Store

    li = getattr(model, "li", None)
    shape = li.feature_shape if li is not None else LI_DEFAULT_SHAPE
    rng = np.random.default_rng(0)
    if li is not None:
        query = li.text_tokens(QUERIES[0])
        text_ms = _ms(lambda: li.text_tokens(QUERIES[1]), repeat=5)
        yield Figure("li_text_tokens_ms", round(text_ms, 1), "ms", f"one query's LI tokens (text encoder with the "
                     f"head's codes, projection); {cond}")
        what = f"the model's LI head: {shape[0]} tokens of width {shape[1]}, query of {len(query)} tokens"
    else:
        query = rng.normal(size=(LI_QUERY_TOKENS, shape[1])).astype(np.float32)
        query /= np.linalg.norm(query, axis=1, keepdims=True)
        what = (f"no LI head in this model: the default shape ({shape[0]} tokens of width {shape[1]}), random "
                f"tokens, a query of {LI_QUERY_TOKENS} tokens")
    n = max(sizes)
    store = Store(workdir / "late-bench.db")
    try:
        toks = rng.normal(size=(n, *shape)).astype(np.float32)
        toks /= np.linalg.norm(toks, axis=2, keepdims=True)
        hashes = [f"h{i:06d}" for i in range(n)]
        store.put_late_tokens("bench/li", zip(hashes, (encode_tokens(t) for t in toks)))
        yield Figure("li_bytes_per_photo", bytes_per_photo(shape), "bytes",
                     f"int8 LI tokens and a float32 scale per token, stored for every photo; {what}")
        for size in sizes:
            want = hashes[:size]

            def stage() -> np.ndarray:
                blobs = store.late_tokens("bench/li", want)
                return maxsim(query, decode_many([blobs[h] for h in want], shape))

            scores = stage()
            _check(scores.shape == (size,) and bool(np.isfinite(scores).all()), "the LI stage scored nothing")
            yield Figure(f"li_score_ms_{size}", round(_ms(stage, repeat=5), 2), "ms",
                         f"LI over {size:,} candidates: read their tokens from the library database, decode, "
                         f"MaxSim; {what}; NumPy, {cond}")
    finally:
        store.close()


def run_bench(model, folder: str, photos: int = 48, sizes=(10_000, 100_000, 1_000_000),
              workdir: str | None = None, curve: list | None = None, *, queries: int = 5,
              cache_budget_bytes: int = DEFAULT_BUDGET_BYTES, repeat_queries: int = 20, repeat_times: int = 3,
              cli_runs: int = 3, exact_limit: int = EXACT_LIMIT) -> Iterator[Figure]:
    """Yield figures as they are measured; raise BenchError when a measurement did not happen.

    photos: real photos to index from `folder` (at least K). sizes: library sizes of the large-library
    figures. queries: text queries per size. cache_budget_bytes: the rerank-cache budget the large
    libraries are measured under. repeat_queries x repeat_times: the repeated-query workload. cli_runs:
    runs of `picsift search` per figure. exact_limit: the FAISS exact-search threshold (tests lower it).
    curve, when given, receives (size, be_ms, query_ms, query_ms_all_cached, hit_rate) per size.
    """
    import torch

    from .index.indexer import index_folders
    from .library import Library
    from .machine import describe_cpu, has_bf16_instructions, matmul_gflops
    from .search.searcher import Searcher
    from .token_cache import format_for
    from .search.vector_index import modality_gap_queries, recall_at

    paths = _photos(folder, photos)
    if not paths:
        raise BenchError(f"bench: no photos found in {folder}.")
    if photos < K or len(paths) < K:
        raise BenchError(f"bench: it needs at least {K} distinct photos to rerank {K}; {folder} has {len(paths)} "
                         f"(of the {photos} asked for).")
    if not (1 <= queries <= len(QUERIES) and 2 <= repeat_queries <= len(QUERIES) and repeat_times >= 1):
        raise BenchError(f"bench: it has {len(QUERIES)} queries: --queries takes 1 to {len(QUERIES)}, "
                         f"--repeat-queries 2 to {len(QUERIES)}.")
    if not sizes or min(sizes) < len(paths):
        raise BenchError(f"bench: each library size must hold the {len(paths)} real photos; --sizes has "
                         f"{', '.join(map(str, sizes)) or 'none'}.")
    ce = model.ce
    _check(ce is not None, "the model has no cross-encoder to rerank with")
    threads = torch.get_num_threads()
    cache_fmt = format_for(model)
    backend = getattr(getattr(model.be, "ckpt", None), "backend", "torch")
    cond = f"{model.precision}, {threads} threads, vision encoder in {'OpenVINO' if backend == 'openvino' else 'torch'}"

    # ----- the machine -------------------------------------------------------
    yield Figure("device", model.describe_device(), "", "where the model runs")
    yield Figure("threads", threads, "threads", "torch threads, used by the model and the matmul figures")
    yield Figure("precision", model.precision, "", f"compute; rerank cache {cache_fmt}")
    yield Figure("cpu", describe_cpu(), "", "processor and its matrix instruction sets")
    tmp = tempfile.TemporaryDirectory(dir=workdir, prefix="picsift-bench-")
    lib = None
    try:
        # ----- indexing real photos, end to end --------------------------------
        photo_dir = Path(tmp.name) / "photos"
        photo_dir.mkdir()
        for i, p in enumerate(paths):
            link = photo_dir / f"{i:05d}_{os.path.basename(p)}"
            try:
                os.symlink(p, link)
            except OSError:  # no symbolic links here (Windows without the privilege): a copy, in the temp folder
                shutil.copyfile(p, link)
        lib = Library(Path(tmp.name) / "library")
        empty = _library_bytes(lib)  # fixed cost of an empty library, not a photo's
        progress = None
        start = time.perf_counter()
        for progress in index_folders(lib, model, [str(photo_dir)]):
            pass
        elapsed = time.perf_counter() - start
        key = model.be.key
        n_real = lib.store.count_photos(key)
        embedded = progress.embedded if progress is not None else 0
        if embedded != len(paths) or n_real != len(paths):
            reasons = "; ".join(f"{os.path.basename(e['path'])[6:]}: {e['reason']}" for e in lib.store.errors()[:5])
            raise BenchError(f"bench: indexing embedded {embedded} of the {len(paths)} photos given from {folder} "
                             f"(the library has {n_real})" + (f"; {reasons}" if reasons else "")
                             + ". It needs a folder of readable photos.")
        cached_real = lib.tokens.count(ce.key)
        _check(cached_real > 0 and lib.tokens.size_bytes % cached_real == 0,
               f"the rerank cache holds {cached_real} entries of {lib.tokens.size_bytes} bytes after indexing")
        entry_bytes = lib.tokens.size_bytes // cached_real
        _check(cached_real == min(n_real, lib.tokens.budget_bytes // entry_bytes),
               f"the rerank cache holds {cached_real} of {n_real} photos, its budget allows more")
        yield Figure("index_photos_per_s", round(n_real / elapsed, 2), "photos/s",
                     f"{n_real} photos: decode, BE vector, rerank cache, commit; {cond}")
        lib.save_index()
        db, cache, faiss_bytes = (a - b for a, b in zip(_library_bytes(lib), empty))
        yield Figure("disk_bytes_per_photo", round((db + cache + faiss_bytes) / n_real), "bytes",
                     f"database, FAISS index and rerank cache, beyond an empty library; {n_real} photos")
        yield Figure("disk_bytes_per_photo_no_cache", round((db + faiss_bytes) / n_real), "bytes",
                     f"database and FAISS index; {n_real} photos")
        yield Figure("rerank_cache_bytes_per_photo", entry_bytes, "bytes",
                     f"{cache_fmt} tokens {ce.feature_shape[0]}x{ce.feature_shape[1]}; a 4 GiB budget holds "
                     f"{DEFAULT_BUDGET_BYTES // entry_bytes:,} photos")

        mm_device = model.device if model.device.startswith("cuda") else "cpu"
        gflops32 = matmul_gflops(torch.float32, device=mm_device)
        gflops16 = matmul_gflops(torch.bfloat16, device=mm_device)
        _check(gflops32 > 0 and gflops16 > 0, "the matrix multiplies did not run")
        mm_note = f"torch.matmul 1024x1024, best of 5 rounds, {threads} threads on {mm_device}"
        yield Figure("machine_matmul_gflops_fp32", round(gflops32, 1), "GFLOP/s", mm_note)
        yield Figure("machine_matmul_gflops_bf16", round(gflops16, 1), "GFLOP/s", mm_note + (
            "" if mm_device != "cpu" else "; native bf16 instructions" if has_bf16_instructions()
            else "; no native bf16 instructions (emulated)"))

        # ----- decoding ------------------------------------------------------
        jpeg = synthetic_jpeg()
        size = getattr(model, "image_size", 384)
        yield Figure("decode_12mp_jpeg_ms", round(_ms(lambda: decode(jpeg, target_size=size), repeat=3), 1), "ms",
                     f"4000x3000 JPEG, draft decoding to at least {size} px")
        yield Figure("decode_12mp_jpeg_full_ms", round(_ms(lambda: decode(jpeg), repeat=3), 1), "ms",
                     "the same JPEG, full-size decode")

        # ----- one query, one photo, and their arithmetic ---------------------------------
        it = iter(QUERIES * 4)
        vec = model.embed_texts([QUERIES[0]])
        _check(vec.shape == (1, model.dim) and bool(np.isfinite(vec).all()), "the text embedding failed")
        text_ms = _ms(lambda: model.embed_texts([next(it)]), repeat=10)
        yield Figure("text_embed_ms", round(text_ms, 1), "ms", f"BE vector of one query; {cond}")
        image_bytes = Path(paths[0]).read_bytes()
        yield Figure("image_embed_ms", round(_ms(
            lambda: model.encode_images([decode(image_bytes, size).image]), repeat=3), 1), "ms",
            f"one photo: decode, preprocess, vision encoder (BE vector and CE tokens); {cond}")
        images = [open_photo(p, size).image for p in paths[:K]]
        batch = images[: max(1, model.image_batch_size)]
        pixels = model.preprocess(batch)
        enc = model.encode_pixels(pixels, batch)
        _check(enc.vectors.shape == (len(batch), model.dim) and enc.features[ce.key].shape[0] == len(batch),
               "the vision encoder did not encode the photos")
        vision_ms = _ms(lambda: model.encode_pixels(pixels, batch), repeat=3) / len(batch)
        yield Figure("vision_encoder_ms_per_photo", round(vision_ms, 1), "ms",
                     f"pixels to BE vector and CE tokens, batches of {len(batch)} as indexing runs; {cond}")
        feats = lib.tokens.get_many(ce.key, lib.store.hashes(sorted(lib.store.photo_ids(key))[:K]).values())
        _check(len(feats) == K, f"the rerank cache gave {len(feats)} of {K} photos' features")
        stack = np.stack(list(feats.values()))
        probs = ce.score(QUERIES[0], stack)
        _check(probs.shape == (K,) and bool(np.isfinite(probs).all()), "the CE did not score the candidates")
        ce_ms = _ms(lambda: ce.score(QUERIES[1], stack), repeat=3)
        shrunk = getattr(ce, "pool", 1) > 1
        what = f"the shrunk CE, {ce.layout}" if shrunk else f"CE, {stack.shape[1]} image tokens a photo"
        yield Figure(f"ce_score_ms_k{K}", round(ce_ms, 1), "ms",
                     f"{what} over {K} cached photos' tokens, no I/O; {cond}")
        from .token_cache import encode_tokens

        yield Figure("ce_cache_bytes_per_photo", len(encode_tokens(stack[0], "int8")), "B",
                     f"one photo's rerank cache entry (int8 with its scales), {what}")
        try:
            from .models.blip_ce import pool_grid

            pooled = None if shrunk else pool_grid(stack, 2)
        except ValueError:
            pooled = None
        if pooled is not None:
            pooled_ms = _ms(lambda: ce.score(QUERIES[1], pooled), repeat=3)
            yield Figure(f"ce_score_ms_k{K}_pooled2x2", round(pooled_ms, 1), "ms",
                         f"the same CE reading {pooled.shape[1]} tokens (patch grid pooled 2x2) instead of "
                         f"{stack.shape[1]}: the compute of a shrunk CE (picsift train --mode shrink-ce); {cond}")

        yield from late_figures(model, Path(tmp.name), cond)

        be_ckpt, ce_ckpt = _blip_checkpoint(model.be), _blip_checkpoint(ce)
        tokens_q = int(be_ckpt.text_inputs([QUERIES[1]])["input_ids"].shape[1])
        work = {"photo": blip_vision_flops(be_ckpt.model.config),
                "query": blip_text_flops(be_ckpt.model.config, tokens_q),
                "ce_pair": blip_ce_flops(ce_ckpt.model.config, tokens_q)}
        yield Figure("model_gflop_per_photo", _sig(work["photo"] / 1e9), "GFLOP",
                     "vision encoder and BE projection, counted from the model's configuration")
        yield Figure("model_gflop_per_query", _sig(work["query"] / 1e9), "GFLOP",
                     f"BE text encoder and projection, {tokens_q} tokens")
        yield Figure("model_gflop_per_ce_pair", _sig(work["ce_pair"] / 1e9), "GFLOP",
                     f"CE over one photo's tokens, {tokens_q} text tokens, as engine.models.blip_ce computes it")
        for name, flops, ms in (("vision_encoder", work["photo"], vision_ms), ("text_embed", work["query"], text_ms),
                                (f"ce_score_k{K}", K * work["ce_pair"], ce_ms)):
            achieved = flops / (ms / 1000) / 1e9
            yield Figure(f"{name}_share_of_matmul", round(achieved / gflops32, 3), "",
                         f"{achieved:.1f} GFLOP/s achieved over the machine's {gflops32:.1f} fp32 matmul GFLOP/s")

        # ----- rerank in the real library ----------------------------------------------------
        searcher = Searcher(lib, model)
        query = QUERIES[0]
        candidates = searcher.retrieve(query, n=K)
        _check(len(candidates) == K, f"the library search returned {len(candidates)} of {K} candidates")

        def rerank_times() -> tuple[float, float]:
            t = time.perf_counter()
            first, last = None, None
            for last in searcher.rerank_stream(query, candidates, K):
                if last.scored and first is None:
                    first = time.perf_counter() - t
            total = (time.perf_counter() - t) * 1000
            scored = sum(h.rerank_score is not None for h in last.hits) if last else 0
            _check(last is not None and last.done and last.scored == K and scored == K,
                   f"the rerank scored {scored} of {K} candidates")
            return total, first * 1000

        rerank_times()  # warm
        cached = [rerank_times() for _ in range(3)]
        total_c, first_c = statistics.median(c[0] for c in cached), statistics.median(c[1] for c in cached)
        note = f"library of {n_real} real photos, every candidate in the rerank cache; {cond}"
        yield Figure(f"rerank_ms_k{K}_cached", round(total_c), "ms", f"CE over {K} candidates; " + note)
        yield Figure(f"rerank_first_update_ms_k{K}", round(first_c), "ms", "time to the first CE score; " + note)
        cand_hashes = set(lib.store.hashes([h.id for h in candidates]).values())
        lib.tokens.keep_only(lib.store.all_hashes() - cand_hashes)
        _check(lib.tokens.count(ce.key) == n_real - K, "the candidates' features did not leave the rerank cache")
        total_u, first_u = rerank_times()
        _check(lib.tokens.count(ce.key) == n_real, "the uncached rerank did not store the candidates' features")
        note = f"library of {n_real} real photos, no candidate in the rerank cache (vision encoder on each); {cond}"
        yield Figure(f"rerank_ms_k{K}_uncached", round(total_u), "ms", note)
        yield Figure(f"rerank_first_update_ms_k{K}_uncached", round(first_u), "ms", note)

        # ----- the vision encoder and CE by each path: torch fp32 / bf16, OpenVINO fp32 / bf16 ------------------
        if model.device != "cpu":
            yield Figure("paths", "not measured", "", f"the model runs on {model.device}; the comparison is of "
                         "the CPU's paths")
        else:
            cmp = compare_paths(ce_ckpt, images, QUERIES[:queries], Path(tmp.name) / "openvino")
            ref = cmp["fp32"]
            note = f"{K} real photos, {queries} queries, {cmp['how']}; {threads} threads"
            for mode in PATHS:
                if mode not in cmp:
                    yield Figure(f"vision_encoder_ms_per_photo_{mode}", "not measured", "", "OpenVINO is not installed")
                    continue
                got = cmp[mode]
                _check(got["probs"].shape == (queries, K) and bool(np.isfinite(got["probs"]).all()),
                       f"the {mode} comparison did not score every pair")
                how = mode.replace("_", " ") + (" (torch)" if "openvino" not in mode else " vision encoder")
                yield Figure(f"vision_encoder_ms_per_photo_{mode}", round(got["vision_ms"], 1), "ms",
                             f"{how}, batches of {ce_ckpt.image_batch_size}; " + note)
                if not mode.endswith("bf16"):
                    achieved = work["photo"] / (got["vision_ms"] / 1000) / 1e9
                    yield Figure(f"vision_encoder_{mode}_share_of_matmul", round(achieved / gflops32, 3), "",
                                 f"{achieved:.1f} GFLOP/s over the machine's {gflops32:.1f} fp32 matmul GFLOP/s; "
                                 + note)
                yield Figure(f"ce_ms_k{K}_{mode}", round(got["ce_ms"], 1), "ms", f"{how}; " + note)
                if mode == "fp32":
                    continue
                diff = np.abs(ref["probs"] - got["probs"])
                prefix = "bf16" if mode == "bf16" else mode
                yield Figure(f"{prefix}_ce_prob_max_abs_diff", round(float(diff.max()), 4), "",
                             f"CE probabilities, {how} against torch fp32; " + note)
                yield Figure(f"{prefix}_ce_prob_mean_abs_diff", round(float(diff.mean()), 5), "",
                             f"CE probabilities, {how} against torch fp32; " + note)
                yield Figure(f"{prefix}_top5_overlap", round(top_overlap(ref["probs"], got["probs"]), 3), "",
                             f"share of each query's torch fp32 top 5 (of {K}) also in its {how} top 5; " + note)
                cos = (ref["vectors"] * got["vectors"]).sum(axis=1)
                yield Figure(f"{prefix}_be_cos_min", round(float(cos.min()), 5), "",
                             f"least cosine of a photo's BE vector against torch fp32's; " + note)
            yield Figure("bf16_prob_spread", round(float(ref["probs"].std()), 4), "",
                         "std of the fp32 CE probabilities: near 0 the agreement figures say little; " + note)

        # ----- large libraries ----------------------------------------------------------------
        cached_photos = cache_budget_bytes // entry_bytes
        qs = QUERIES[:queries]
        for n in sizes:
            big = LargeLibrary(lib, model, n, exact_limit=exact_limit)
            label = _size_label(n)
            recall_q = modality_gap_queries(big.vectors, RECALL_QUERIES, seed=RECALL_SEED)
            _, got = big.index.search(recall_q, K)
            _check(bool(((got >= 0).sum(axis=1) == min(K, n)).all()), f"FAISS returned fewer than {K} results")
            recall = recall_at(big.index, big.vectors, big.ids, recall_q, K)
            single = iter(np.concatenate([recall_q] * 2))
            search_ms = _ms(lambda: big.index.search(next(single)[None, :], K), repeat=50, warmup=5)
            yield Figure(f"faiss_search_ms_{label}", round(search_ms, 3), "ms", f"top {K} of {n:,}; {big.describe()}")
            yield Figure(f"faiss_recall{K}_{label}", round(recall, 3), "",
                         f"against exact search, {RECALL_QUERIES} text-like (modality-gap) queries; {big.describe()}")

            big.query(QUERIES[-1], n)  # warm-up
            runs = [big.query(q, cached_photos) for q in qs]
            full = [big.query(q, n) for q in qs]
            hits = sum(r.hits for r in runs)
            rate = sum(r.cached for r in runs) / hits
            expected = min(1.0, cached_photos / n)
            _check(all(r.cached == r.hits for r in full), "a fully cached query read a photo's features elsewhere")
            _check(expected < 1 or rate == 1.0, f"every hit should have been cached, {rate:.3f} were")
            query_ms = statistics.median(r.total_ms for r in runs)
            cached_ms = statistics.median(r.total_ms for r in full)
            be_ms = statistics.median(r.be_ms for r in full)
            where = (f"{n:,} photos ({n_real} real, the rest synthetic vectors standing for them), {len(qs)} queries, "
                     f"median; {cond}")
            budget = (f"rerank cache budget {cache_budget_bytes / 2**30:g} GiB holds {cached_photos:,} photos of "
                      f"{entry_bytes:,} B, expected hit rate {expected:.3f}")
            yield Figure(f"query_ms_{label}_k{K}", round(query_ms, 1), "ms",
                         f"text query end to end: BE vector, FAISS top {K}, CE over those {K} hits at hit rate "
                         f"{rate:.3f} (misses through the vision encoder); {budget}; {where}")
            yield Figure(f"query_cache_hit_rate_{label}", round(rate, 4), "",
                         f"measured over {hits} hits; {budget}")
            yield Figure(f"query_first_score_ms_{label}", round(statistics.median(r.first_ms for r in runs), 1), "ms",
                         f"to the first CE score, hit rate {rate:.3f}; {where}")
            yield Figure(f"query_ms_{label}_k{K}_cached", round(cached_ms, 1), "ms",
                         f"the same queries with every hit in the rerank cache; {where}")
            yield Figure(f"query_be_ms_{label}", round(be_ms, 2), "ms",
                         f"BE vector and FAISS top {K}, no rerank; {where}")
            if curve is not None:
                curve.append((n, be_ms, query_ms, cached_ms, rate))
            if n == max(sizes):
                rss = _rss_mb()
                if rss is not None:
                    yield Figure("rss_mb", round(rss), "MB", f"resident memory with the {label} index loaded "
                                 f"(and its {n:,} x {model.dim} vectors kept for recall)")
                # ----- repeated queries against a small cache: the LRU at work -----
                rep = repeated_queries(big, Path(tmp.name) / "repeat_cache.db", entry_bytes,
                                       QUERIES[:repeat_queries], repeat_times)
                note = (f"{repeat_queries} queries asked {repeat_times} times each in shuffled order, the top {K} "
                        f"of {n:,} photos reranked, rerank cache empty at first and holding {rep['holds']} of the "
                        f"{rep['reached']} photos the queries reach; {cond}")
                yield Figure("repeat_query_cache_hit_rate", round(rep["hit_rate"], 4), "",
                             "TokenCache hits / lookups, least recently used evicted; " + note)
                yield Figure("repeat_query_noevict_hit_rate", round(rep["noevict_hit_rate"], 4), "",
                             "the hit rate a cache of that size would have had that fills and never evicts "
                             "(computed from the same hits); " + note)
                yield Figure("repeat_query_ms", round(statistics.median(rep["ms"]), 1), "ms",
                             f"median of {rep['asks']} asks, end to end; " + note)
            big = None  # free this size's arrays before the next, larger one

        # ----- `picsift search` as a terminal user runs it --------------------------------------
        _check(lib.tokens.count(ce.key) == n_real, "the rerank cache lost real photos during the large-library runs")
        lib.save_index()
        for k in (0, K):
            walls = []
            for _ in range(max(1, cli_runs)):
                wall, hits = cli_search(lib.folder, model, QUERIES[2], k)
                reranked = sum(h.get("rerank_score") is not None for h in hits)
                _check(len(hits) == K and reranked == k,
                       f"`picsift search -k {k}` gave {len(hits)} hits, {reranked} reranked")
                walls.append(wall)
            yield Figure(f"search_cli_wall_ms_k{k}", round(statistics.median(walls)), "ms",
                         f"`picsift search -n {K} -k {k}` in a fresh process (imports, model load, library, query), "
                         f"median of {len(walls)}; library of {n_real} real photos"
                         + (", all in the rerank cache" if k else ", no rerank") + f"; {model.precision}")

    finally:
        if lib is not None:
            lib.close()
        tmp.cleanup()


def _library_bytes(lib) -> tuple[int, int, int]:
    """(database, rerank cache, FAISS file) sizes on disk, write-ahead logs folded in."""
    for conn in (lib.store.conn, lib.tokens.conn):
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    size = lambda p: os.path.getsize(p) if os.path.exists(p) else 0  # noqa: E731
    key = lib.store.be_key
    return size(lib.store.path), size(lib.tokens.path), size(lib.index_path(key)) if key else 0


def plot_curve(curve: list, path: str, title: str = "picsift query latency") -> None:
    """Query latency against library size: BE alone, end to end at the cache's hit rate, and all cached
    (needs matplotlib)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = [c[0] for c in curve]
    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    ax.plot(sizes, [c[1] for c in curve], "o-", label=f"BE: query vector + FAISS top {K}")
    ax.plot(sizes, [c[2] for c in curve], "s-", label=f"+ CE over the {K} hits, cache budget's hit rate")
    ax.plot(sizes, [c[3] for c in curve], "^--", label=f"+ CE over the {K} hits, all cached")
    for c in curve:
        ax.annotate(f"{c[4]:.0%} cached", (c[0], c[2]), textcoords="offset points", xytext=(4, 6), fontsize=7)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("photos in the library")
    ax.set_ylabel("query latency (ms)")
    ax.set_title(title, fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
