"""Pair accuracy on near-miss twins: does a scorer rank a caption's own photo above the photo's twin?

The shapes set gives every dev and test scene a colour-swap and a relation-swap twin (twins.csv: image,
twin, kind). For each (caption, photo, twin) triple, with the caption of either photo of the pair, a scorer
is right when it scores the caption's own photo above the other one; a tie counts half. A scorer that reads
text and photo as bags of words is at 50%: a colour swap's captions have the very same words, and a
relation swap's are told in both orders.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Sequence

import numpy as np


def read_twins(data: str | Path, images: Sequence[Path]) -> list[tuple[int, int, str]]:
    """(photo, twin, kind) index triples into `images` from the twins.csv beside a dataset's captions; pairs
    with a photo outside `images` are left out, and a dataset without twins.csv has none."""
    source = Path(data).expanduser()
    folder = source if source.is_dir() else source.parent
    path = folder / "twins.csv"
    if not path.is_file():
        return []
    index = {Path(p).resolve(): i for i, p in enumerate(images)}
    out = []
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            a, b = (index.get((folder / row[k]).resolve()) for k in ("image", "twin"))
            if a is not None and b is not None:
                out.append((a, b, row["kind"]))
    return out


def twin_triples(twins: Sequence[tuple[int, int, str]], caption_image: Sequence[int]) -> dict[str, np.ndarray]:
    """{kind: (N, 3) int array of (caption, own photo, twin photo)}: each pair read from both sides."""
    by_image: dict[int, list[int]] = {}
    for c, i in enumerate(caption_image):
        by_image.setdefault(int(i), []).append(c)
    out: dict[str, list[tuple[int, int, int]]] = {}
    for a, b, kind in twins:
        for own, other in ((a, b), (b, a)):
            out.setdefault(kind, []).extend((c, own, other) for c in by_image.get(own, []))
    return {k: np.asarray(v, dtype=np.int64).reshape(-1, 3) for k, v in out.items()}


def pair_accuracy(scores: np.ndarray, triples: dict[str, np.ndarray]) -> dict[str, float]:
    """{kind: share of triples whose own photo scores above the twin (ties half), "all": over every triple}.
    scores is (captions, photos); it needs values only at the triples' pairs."""
    out = {}
    every = []
    for kind, t in triples.items():
        if not len(t):
            continue
        own, twin = scores[t[:, 0], t[:, 1]], scores[t[:, 0], t[:, 2]]
        right = (own > twin) + 0.5 * (own == twin)
        out[kind] = float(right.mean())
        every.append(right)
    if every:
        out["all"] = float(np.concatenate(every).mean())
    return out
