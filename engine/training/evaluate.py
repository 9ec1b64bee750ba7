"""`picsift eval`: recall at k of every stage of the cascade, and what each costs a query on this machine.

The photos and captions go through the same code path as the product (the cascade `picsift index` and
`picsift search` load), so the BE row is exactly what search ranks. Rows: the BE alone; the CE alone
(every caption-photo pair cross-encoded); Coop at several k (the BE retrieves, the CE reranks its top k),
scored by the CE alone (the method's) or by the CE logit plus the BE cosine (BLIP's). With one jointly
trained model these are Joint+BE, Joint+CE and Joint+Coop; with a separate CE they are Sep rows. A model
with an LI head adds the late-interaction rows: LI alone (MaxSim over every photo), BE then LI (LI orders
the BE's top N), and BE then LI then CE (the CE reranks the LI order's top k), the product's cascade. Every
row states the bytes its stages store per photo.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np

from ..errors import PicsiftError
from .recall import KS, image_ranks, recall, recalls, rerank_top_k, text_ranks
from .twins import pair_accuracy, read_twins, twin_triples

MODES = ("be", "ce", "coop", "li", "be-li", "be-li-ce")
DEFAULT_MODES = ("be", "ce", "coop")  # and the LI rows when the model has an LI head
LI_MODES = ("li", "be-li", "be-li-ce")
COOP_KS = (5, 10, 20, 50)
SCORINGS = ("ce", "ce+be")
RECALL_KEYS = [f"{d}@{k}" for d in ("ir", "tr") for k in KS]


class EvalError(PicsiftError):
    """An evaluation cannot run as asked; the text says why and what to do."""


@dataclass
class EvalOptions:
    data: str
    model: str
    ce_model: str | None = None
    split: str | None = None  # None: "test" when the data has it, else everything
    modes: Sequence[str] | None = None  # None: be, ce, coop, and the LI rows when the model has an LI head
    ks: Sequence[int] = COOP_KS
    li_n: int = 200  # BE candidates the LI stage orders (be-li, be-li-ce)
    distractors: str | None = None  # a folder of photos or a dataset: more photos to search, no more queries
    ce_max_pairs: int = 500_000
    device: str = "auto"
    precision: str = "fp32"
    latency_queries: int = 20
    max_images: int | None = None


@dataclass
class EvalProgress:
    phase: str  # "loading" | "photos" | "captions" | "rerank" | "latency" | "done"
    done: int = 0
    total: int = 0
    message: str = ""
    result: dict | None = None


@dataclass
class Gallery:
    """Everything scored: the BE vectors of photos and captions, the CE features, and the pair scores."""
    images: list[Path]
    captions: list[str]
    caption_image: list[int]
    image_vectors: np.ndarray
    text_vectors: np.ndarray
    features: np.ndarray | None
    be: np.ndarray = field(init=False)  # (captions, photos) cosines
    ce: np.ndarray | None = None  # (captions, photos) CE logits; NaN where not computed
    late: np.ndarray | None = None  # (photos, M, width) LI tokens as the library stores them (int8, decoded)
    li: np.ndarray | None = None  # (captions, photos) LI scores
    twins: dict = field(default_factory=dict)  # kind -> (N, 3) (caption, own photo, twin) triples

    def __post_init__(self):
        self.be = self.text_vectors @ self.image_vectors.T


def _distractor_paths(source: str, exclude: set[Path]) -> list[Path]:
    from ..index.imaging import is_supported
    from .datasets import read_dataset

    p = Path(source).expanduser()
    if not p.exists():
        raise EvalError(f"The distractors '{source}' do not exist.")
    if p.is_dir() and not (p / "captions.csv").is_file() and not (p / "captions.tsv").is_file():
        found = sorted(q.resolve() for q in p.rglob("*") if q.is_file() and is_supported(q.name))
    else:
        found = [q.resolve() for q in read_dataset(p).images]
    return [q for q in found if q not in exclude]


class Evaluation:
    def __init__(self, options: EvalOptions, model=None):
        bad = [m for m in (options.modes or DEFAULT_MODES) if m not in MODES]
        if bad or (options.modes is not None and not options.modes):
            raise EvalError(f"--modes takes a comma-separated list of {', '.join(MODES)}; not {', '.join(bad)}.")
        if any(k < 1 for k in options.ks):
            raise EvalError("Every k of --ks must be at least 1.")
        self.o = options
        self.model = model  # a loaded cascade (tests); loaded from options otherwise
        self.gallery: Gallery | None = None
        self.result: dict | None = None  # the rows and their conditions, once run() is done

    # ----- scoring ------------------------------------------------------------------
    def run(self) -> Iterator[EvalProgress]:
        from ..models import load_model
        from .datasets import read_dataset

        o = self.o
        yield EvalProgress("loading", message="reading the dataset")
        split = o.split
        if split is None:
            split = "test" if "test" in read_dataset(o.data, check_images=False).split_names() else None
        data = read_dataset(o.data, split=split)
        if o.max_images:
            data = data.subset(range(min(o.max_images, len(data.images))))
        self.data, self.split = data, split
        paths = [Path(p) for p in data.images]
        distractors = _distractor_paths(o.distractors, set(paths)) if o.distractors else []
        if self.model is None:
            yield EvalProgress("loading", message=f"loading {o.model}")
            self.model = load_model(o.model, device=o.device, precision=o.precision, ce_model=o.ce_model)
        model = self.model
        if o.modes is None:
            self.modes = list(DEFAULT_MODES) + (list(LI_MODES) if model.li is not None else [])
        else:
            self.modes = list(o.modes)
        want_ce = any(m in ("ce", "coop", "be-li-ce") for m in self.modes)
        want_li = any(m in LI_MODES for m in self.modes)
        if want_ce and model.ce is None:
            raise EvalError(f"{o.model} has no cross-encoder: give --ce-model, or --modes be.")
        if want_li and model.li is None:
            raise EvalError(f"{o.model} has no late-interaction head: train one with 'picsift train --mode li', "
                            "or leave li, be-li and be-li-ce out of --modes.")
        gallery_paths = paths + distractors
        vectors, feats, late = [], [], []
        for a in range(0, len(gallery_paths), 32):
            images = self._open(gallery_paths[a:a + 32])
            enc = model.encode_images(images) if want_ce or want_li else model.encode_pixels(
                model.preprocess(images), images, features=False)
            vectors.append(enc.vectors)
            if want_ce:
                feats.append(enc.features[model.ce.key])
            if want_li:
                late.append(_as_stored(enc.features[model.li.key]))
            yield EvalProgress("photos", min(a + 32, len(gallery_paths)), len(gallery_paths))
        texts = []
        for a in range(0, len(data.captions), 256):
            texts.append(model.embed_texts(data.captions[a:a + 256]))
            yield EvalProgress("captions", min(a + 256, len(data.captions)), len(data.captions))
        g = Gallery(gallery_paths, list(data.captions), list(data.caption_image), np.concatenate(vectors),
                    np.concatenate(texts), np.concatenate(feats) if feats else None)
        g.twins = twin_triples(read_twins(o.data, paths), g.caption_image)
        self.gallery = g
        if want_li:
            from ..models.late import maxsim

            g.late = np.concatenate(late)
            self._li_queries = []
            rows_li = []
            for c, text in enumerate(g.captions):
                q = model.li.text_tokens(text)
                self._li_queries.append(q)
                rows_li.append(maxsim(q, g.late))
                if c % 64 == 63 or c == len(g.captions) - 1:
                    yield EvalProgress("late", c + 1, len(g.captions))
            g.li = np.stack(rows_li)
        if want_ce:
            yield from self._score_pairs(g)
        rows = self._rows(g)
        pairs = self._pair_accuracy(g)
        self._add_bytes(g, rows)
        yield from self._latency(g, rows)
        result = {"images": len(g.images), "queries": len(g.captions), "photos_with_captions": len(paths),
                  "distractors": len(distractors), "split": split, "model": model.source,
                  "ce_model": model.ce_source, "precision": model.precision, "device": model.describe_device(),
                  "li": None if model.li is None else {"tokens": model.li.feature_shape[0],
                                                       "width": model.li.feature_shape[1], "n": o.li_n},
                  "ce": None if model.ce is None else {"tokens": model.ce.feature_shape[0],
                                                       "pool": getattr(model.ce, "pool", 1),
                                                       "layout": getattr(model.ce, "layout", None)},
                  "skipped": dict(data.skipped), "rows": rows, "pair_accuracy": pairs,
                  "twin_triples": {k: len(v) for k, v in g.twins.items()}}
        self.result = result
        yield EvalProgress("done", message="done", result=result)

    def _open(self, paths: Sequence[Path]):
        from ..index.imaging import open_photo

        return [open_photo(str(p), self.model.image_size).image for p in paths]

    def _needed_pairs(self, g: Gallery) -> np.ndarray:
        """(captions, photos) bool: the pairs the asked rows read."""
        need = np.zeros(g.be.shape, bool)
        if "ce" in self.modes:
            need[:] = True
            return need
        firsts = []
        if "coop" in self.modes:
            firsts.append(g.be)
        if "be-li-ce" in self.modes:
            firsts.append(_first_stages(g.be, g.li, self.o.li_n))  # the LI order of the BE's top N
        for first in firsts:
            kmax = min(max(self.o.ks), first.shape[1])
            top_images = np.argpartition(-first, kmax - 1, axis=1)[:, :kmax]
            need[np.arange(len(need))[:, None], top_images] = True
            first_t = first if first is g.be else _first_stages(g.be.T, g.li.T, self.o.li_n).T
            kt = min(max(self.o.ks), first.shape[0])
            top_texts = np.argpartition(-first_t.T, kt - 1, axis=1)[:, :kt]
            need[top_texts, np.arange(g.be.shape[1])[:, None]] = True
        for t in g.twins.values():  # the pair-accuracy diagnostic reads each caption's own photo and its twin
            need[t[:, 0], t[:, 1]] = True
            need[t[:, 0], t[:, 2]] = True
        return need

    def estimate_ce_seconds(self, g: Gallery, pairs: int) -> float:
        n = min(64, len(g.images))
        t = time.perf_counter()
        self.model.ce.logits(g.captions[0], g.features[:n])
        return (time.perf_counter() - t) / n * pairs

    def _score_pairs(self, g: Gallery) -> Iterator[EvalProgress]:
        need = self._needed_pairs(g)
        pairs = int(need.sum())
        if "ce" in self.modes:
            seconds = self.estimate_ce_seconds(g, pairs)
            msg = (f"The CE alone cross-encodes {pairs:,} caption-photo pairs: about {_duration(seconds)} on "
                   f"this machine.")
            if pairs > self.o.ce_max_pairs:
                raise EvalError(f"{msg} That is above --ce-max-pairs {self.o.ce_max_pairs:,}: raise it to run "
                                "the CE-alone row anyway, or leave ce out of --modes.")
            yield EvalProgress("rerank", 0, pairs, message=msg)
        ce = np.full(g.be.shape, np.nan, np.float32)
        done = 0
        for c in range(len(g.captions)):
            cols = np.flatnonzero(need[c])
            if len(cols):
                ce[c, cols] = self.model.ce.logits(g.captions[c], g.features[cols])
                done += len(cols)
                yield EvalProgress("rerank", done, pairs)
        g.ce = ce

    # ----- rows -------------------------------------------------------------------
    def _rows(self, g: Gallery) -> list[dict]:
        rows = []
        modes = self.modes
        if "be" in modes:
            rows.append(_row("be", None, None, recalls(g.be, g.caption_image)))
        if "li" in modes:
            rows.append(_row("li", None, None, recalls(g.li, g.caption_image)))
        if "be-li" in modes:
            rows.append(_row("be-li", None, None, staged_recalls(g.be, [(g.li, self.o.li_n)], g.caption_image),
                             n=self.o.li_n))
        if "ce" in modes:
            rows.append(_row("ce", None, None, recalls(g.ce, g.caption_image)))
        if "coop" in modes:
            for k in sorted(set(self.o.ks)):
                for scoring in SCORINGS:
                    rows.append(_row("coop", k, scoring, coop_recalls(g.be, g.ce, g.caption_image, k, scoring)))
        if "be-li-ce" in modes:
            for k in sorted(set(self.o.ks)):
                r = staged_recalls(g.be, [(g.li, self.o.li_n), (g.ce, k)], g.caption_image)
                rows.append(_row("be-li-ce", k, "ce", r, n=self.o.li_n))
        return rows

    def _pair_accuracy(self, g: Gallery) -> dict[str, dict[str, float]]:
        """Each scorer's pair accuracy on the data's near-miss twins (engine.training.twins); {} without twins."""
        if not g.twins:
            return {}
        out = {"be": pair_accuracy(g.be, g.twins)}
        if g.li is not None:
            out["li"] = pair_accuracy(g.li, g.twins)
        if g.ce is not None:
            out["ce"] = pair_accuracy(g.ce, g.twins)
        return out

    def _add_bytes(self, g: Gallery, rows: list[dict]) -> None:
        """What each row's stages keep per photo: the BE vector (float32), the LI tokens (int8 and a scale per
        token), the CE's rerank cache entry (int8 tokens with their scales, picsift's default)."""
        from ..models.late import bytes_per_photo
        from ..token_cache import encode_tokens

        be = int(g.image_vectors.shape[1]) * 4
        li = bytes_per_photo(g.late.shape[1:]) if g.late is not None else 0
        ce = len(encode_tokens(g.features[0], "int8")) if g.features is not None and len(g.features) else 0
        per = {"be": be, "li": li, "be-li": be + li, "ce": ce, "coop": be + ce, "be-li-ce": be + li + ce}
        for row in rows:
            row["bytes_per_photo"] = per[row["mode"]]

    # ----- latency -----------------------------------------------------------------
    def query_ms(self, g: Gallery, mode: str, k: int | None, query: str, n_images: int | None = None) -> float:
        """One text query end to end on photos already embedded (and, for the CE, features in memory):
        embed the text, rank, rerank; ms."""
        n = n_images or len(g.images)
        t = time.perf_counter()
        if mode == "ce":
            self.model.ce.logits(query, g.features[:n])
        elif mode == "li":
            self.model.li.score(self.model.li.text_tokens(query), g.late[:n])
        elif mode in ("be-li", "be-li-ce"):
            vec = self.model.embed_texts([query])
            scores = (vec @ g.image_vectors[:n].T)[0]
            top = np.argsort(-scores)[: self.o.li_n]
            li = self.model.li.score(self.model.li.text_tokens(query), g.late[top])
            order = top[np.argsort(-li, kind="stable")]
            if mode == "be-li-ce":
                self.model.ce.logits(query, g.features[order[:k]])
        else:
            vec = self.model.embed_texts([query])
            scores = (vec @ g.image_vectors[:n].T)[0]
            top = np.argsort(-scores)[: max(10, k or 0)]
            if mode == "coop":
                self.model.ce.logits(query, g.features[top[:k]])
        return (time.perf_counter() - t) * 1000

    def _latency(self, g: Gallery, rows: list[dict]) -> Iterator[EvalProgress]:
        queries = g.captions[: max(1, self.o.latency_queries)]
        self.query_ms(g, "be", None, queries[0])  # warm-up
        cache: dict[tuple, float] = {}
        for i, row in enumerate(rows):
            key = (row["mode"], row["k"])
            if key not in cache:
                qs = queries[: 3] if row["mode"] == "ce" else queries
                cache[key] = statistics.mean(self.query_ms(g, row["mode"], row["k"], q) for q in qs)
            row["ms_per_query"] = round(cache[key], 2)
            yield EvalProgress("latency", i + 1, len(rows))

    def latency_curve(self, sizes: Sequence[int], k: int = 20, queries: int = 5) -> dict[str, list[float]]:
        """Mean query ms of BE, Coop k and the CE alone on the first `size` photos of the gallery."""
        g = self.gallery
        qs = g.captions[:queries]
        out: dict[str, list[float]] = {"be": [], f"coop k={k}": [], "ce": []}
        for n in sizes:
            out["be"].append(statistics.mean(self.query_ms(g, "be", None, q, n) for q in qs))
            if g.features is not None:
                out[f"coop k={k}"].append(statistics.mean(self.query_ms(g, "coop", k, q, n) for q in qs))
                out["ce"].append(statistics.mean(self.query_ms(g, "ce", None, q, n) for q in qs[:2]))
        return {m: v for m, v in out.items() if v}


def _as_stored(tokens: np.ndarray) -> np.ndarray:
    """LI tokens as a library holds them: through int8 and back."""
    from ..models.late import decode_tokens, encode_tokens

    return np.stack([decode_tokens(encode_tokens(t), t.shape) for t in tokens]) if len(tokens) else tokens


def _first_stages(be: np.ndarray, li: np.ndarray, n: int) -> np.ndarray:
    """Scores whose order is the LI order of each row's BE top n, then the rest in BE order."""
    return rerank_top_k(be, li, n, "ce")


def staged_recalls(be: np.ndarray, stages: Sequence[tuple[np.ndarray, int]], caption_image: Sequence[int]) -> dict:
    """Recall of a cascade: the BE ranks, then each stage (scores, depth) reorders the previous order's top
    depth by its own scores; per caption over photos (IR) and per photo over captions (TR)."""
    ir_scores, tr_scores = be, be.T
    for scores, depth in stages:
        ir_scores = rerank_top_k(ir_scores, scores, depth, "ce")
        tr_scores = rerank_top_k(tr_scores, scores.T, depth, "ce")
    ir = recall(image_ranks(ir_scores, caption_image))
    tr = recall(text_ranks(tr_scores.T, caption_image))
    out = {f"ir@{kk}": v for kk, v in ir.items()}
    out.update({f"tr@{kk}": v for kk, v in tr.items()})
    return out


def coop_recalls(be: np.ndarray, ce: np.ndarray, caption_image: Sequence[int], k: int, scoring: str) -> dict:
    """Recall when the CE reranks the BE's top k: per caption over photos (IR), per photo over captions (TR)."""
    ir = recall(image_ranks(rerank_top_k(be, ce, k, scoring), caption_image))
    tr = recall(text_ranks(rerank_top_k(be.T, ce.T, k, scoring).T, caption_image))
    out = {f"ir@{kk}": v for kk, v in ir.items()}
    out.update({f"tr@{kk}": v for kk, v in tr.items()})
    return out


def _row(mode: str, k: int | None, scoring: str | None, r: dict, n: int | None = None) -> dict:
    row = {"mode": mode, "k": k, "scoring": scoring}
    if n is not None:
        row["n"] = n
    row.update({key: round(r[key], 4) for key in RECALL_KEYS})
    return row


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


# ----- reports ---------------------------------------------------------------------------------
def row_name(row: dict, separate: bool, shrunk: bool = False) -> str:
    """A row's name in the method's terms; shrunk: the CE is a shrunk CE (it reads a pooled grid)."""
    prefix = "Sep" if separate else "Joint"
    ce = "shrunk CE" if shrunk else "CE"
    if row["mode"] == "li":
        return "LI"
    if row["mode"] == "be-li":
        return f"BE→LI (N={row['n']})"
    if row["mode"] == "be-li-ce":
        return f"BE→LI (N={row['n']})→{ce} k={row['k']}"
    if row["mode"] == "be":
        return f"{prefix}+BE" if separate is not None else "BE"
    if row["mode"] == "ce":
        return f"{prefix}+{ce}"
    return f"{prefix}+Coop k={row['k']} ({ce if row['scoring'] == 'ce' else ce + '+BE'})"


def shrunk(result: dict) -> bool:
    """Whether an evaluation's CE was a shrunk CE (it read a pooled grid)."""
    return (result.get("ce") or {}).get("pool", 1) > 1


def markdown_table(result: dict, title: str | None = None) -> str:
    separate = result.get("ce_model") is not None
    lines = []
    if title:
        lines += [f"**{title}**", ""]
    lines += ["| rows | IR@1 | IR@5 | IR@10 | TR@1 | TR@5 | TR@10 | mean | ms/query | bytes/photo |",
              "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for row in result["rows"]:
        vals = [row[k] * 100 for k in RECALL_KEYS]
        size = row.get("bytes_per_photo")
        lines.append(f"| {row_name(row, separate, shrunk(result))} | " + " | ".join(f"{v:.1f}" for v in vals)
                     + f" | {statistics.mean(vals):.1f} | {row['ms_per_query']:.1f} | "
                     + (f"{size:,}" if size is not None else "–") + " |")
    return "\n".join(lines)


def pair_table(result: dict) -> str:
    """The twins diagnostic as a table: each scorer's pair accuracy per kind of twin ("" without twins)."""
    pairs = result.get("pair_accuracy") or {}
    if not pairs:
        return ""
    kinds = sorted(result.get("twin_triples") or next(iter(pairs.values())))
    kinds = [k for k in kinds if k != "all"]
    counts = result.get("twin_triples") or {}
    lines = ["| scorer | " + " | ".join(f"{k} ({counts.get(k, 0):,} triples)" for k in kinds) + " | all |",
             "| --- | " + " | ".join("---:" for _ in kinds) + " | ---: |"]
    names = {"be": "BE", "ce": "shrunk CE" if shrunk(result) else "CE", "li": "LI"}
    for scorer, acc in pairs.items():
        lines.append(f"| {names[scorer]} | " + " | ".join(f"{100 * acc.get(k, float('nan')):.1f}" for k in kinds)
                     + f" | {100 * acc['all']:.1f} |")
    return "\n".join(lines)


def plot_recall_vs_k(results: dict[str, dict], path: str | Path) -> Path:
    """R@1 (IR) of Coop against k, one line per model, with the BE and CE rows as flat references."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4), dpi=110)
    for name, res in results.items():
        coop = sorted((r["k"], r["ir@1"] * 100) for r in res["rows"] if r["mode"] == "coop" and r["scoring"] == "ce")
        if coop:
            line, = ax.plot([c[0] for c in coop], [c[1] for c in coop], marker="o", label=f"{name} Coop")
            for r in res["rows"]:
                if r["mode"] in ("be", "ce"):
                    ax.axhline(r["ir@1"] * 100, color=line.get_color(), ls="--" if r["mode"] == "be" else ":",
                               lw=1, label=f"{name} {r['mode'].upper()} alone")
    ax.set_xscale("log")
    ks = sorted({r["k"] for res in results.values() for r in res["rows"] if r["mode"] == "coop"})
    ax.set_xticks(ks, [str(k) for k in ks])
    ax.minorticks_off()
    ax.set_xlabel("k (photos the CE reranks)")
    ax.set_ylabel("image retrieval R@1 (%)")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return Path(path)


def plot_latency(sizes: Sequence[int], curves: dict[str, list[float]], path: str | Path, note: str = "") -> Path:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4), dpi=110)
    for name, ms in curves.items():
        ax.plot(sizes[: len(ms)], ms, marker="o", label=name)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xticks(list(sizes), [f"{n:,}" for n in sizes])
    ax.minorticks_off()
    ax.set_xlabel("photos searched")
    ax.set_ylabel("ms per query")
    if note:
        ax.set_title(note, fontsize=8)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return Path(path)


def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise EvalError("Plots need matplotlib: pip install -e '.[bench]'.") from None
    return plt


def write_reports(evaluation: Evaluation, result: dict, folder: str | Path) -> list[Path]:
    """eval.json (the contract), eval.md (the table) and, with matplotlib, the two plots."""
    import json

    out = Path(folder).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    written = [out / "eval.json", out / "eval.md"]
    written[0].write_text(json.dumps(result, indent=1))
    written[1].write_text(markdown_table(result) + "\n" + (f"\nPair accuracy on twins (%):\n\n{pair_table(result)}\n"
                                                            if result.get("pair_accuracy") else ""))
    try:
        _pyplot()
    except EvalError:
        return written
    written.append(plot_recall_vs_k({Path(result["model"]).name: result}, out / "recall_vs_k.png"))
    n = len(evaluation.gallery.images)
    sizes = sorted({max(1, n // 8), max(1, n // 4), max(1, n // 2), n})
    curves = evaluation.latency_curve(sizes)
    result["latency_curve"] = {"sizes": sizes, **{m: [round(v, 2) for v in ms] for m, ms in curves.items()}}
    written[0].write_text(json.dumps(result, indent=1))
    written.append(plot_latency(sizes, curves, out / "latency.png", note=f"{result['precision']}, {result['device']}"))
    return written
