"""Recall at k for image-text retrieval, from score matrices.

Image retrieval (IR): each caption is a query; its photo is the one relevant item.
Text retrieval (TR): each photo is a query; any of its captions counts.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

KS = (1, 5, 10)


def image_ranks(scores: np.ndarray, caption_image: Sequence[int]) -> np.ndarray:
    """0-based rank of each caption's photo among all photos; scores is (captions, photos). Ties count
    against the query (a photo tied with the target is ranked before it), so a constant scorer is never
    lucky."""
    scores = np.asarray(scores)
    target = scores[np.arange(len(scores)), np.asarray(caption_image)]
    return (scores >= target[:, None]).sum(axis=1) - 1


def text_ranks(scores: np.ndarray, caption_image: Sequence[int]) -> np.ndarray:
    """0-based rank of each photo's best-ranked caption among all captions; scores is (captions, photos).
    Photos with no caption (distractors) are left out: the result has one entry per photo that has one."""
    scores = np.asarray(scores)
    owner = np.asarray(caption_image)
    ranks = []
    for img in np.unique(owner):
        col = scores[:, img]
        best = col[owner == img].max()
        ranks.append(int((col > best).sum() + (col[owner != img] == best).sum()))
    return np.asarray(ranks)


def recall(ranks: np.ndarray, ks: Sequence[int] = KS) -> dict[int, float]:
    ranks = np.asarray(ranks)
    return {k: float((ranks < k).mean()) if len(ranks) else 0.0 for k in ks}


def recalls(scores: np.ndarray, caption_image: Sequence[int], ks: Sequence[int] = KS) -> dict[str, float]:
    """{"ir@1": .., "ir@5": .., "ir@10": .., "tr@1": .., ...} as fractions."""
    ir = recall(image_ranks(scores, caption_image), ks)
    tr = recall(text_ranks(scores, caption_image), ks)
    out = {f"ir@{k}": ir[k] for k in ks}
    out.update({f"tr@{k}": tr[k] for k in ks})
    return out


def mean_recall(r: dict[str, float]) -> float:
    """The mean of every recall in r (IR and TR at each k): the single figure a dev set is judged by."""
    vals = [v for key, v in r.items() if "@" in key]
    return float(np.mean(vals)) if vals else 0.0


def rerank_top_k(be: np.ndarray, ce: np.ndarray, k: int, scoring: str = "ce") -> np.ndarray:
    """Scores after the CE reranks each row's BE top k: within the top k the CE score (or the CE logit plus
    the BE cosine, BLIP's scoring: "ce+be"); every other item stays below them in BE order. be and ce are
    (queries, items); ce needs to hold valid values only inside each row's BE top k."""
    be = np.asarray(be, np.float64)
    out = be - (be.max() - be.min() + 1.0) * 2 - 1e6  # below any reranked score, BE order kept
    k = min(k, be.shape[1])
    if k <= 0:
        return be
    top = np.argpartition(-be, k - 1, axis=1)[:, :k]
    rows = np.arange(be.shape[0])[:, None]
    new = ce[rows, top] + (be[rows, top] if scoring == "ce+be" else 0.0)
    out[rows, top] = new
    return out
