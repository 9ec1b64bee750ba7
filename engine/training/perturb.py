"""Composition-aware text negatives (ARO's NegCLIP remedy): a caption with two of its parts exchanged.

"a red circle left of a blue square" becomes "a blue circle left of a red square" (colours), "a red square
left of a blue circle" (objects), "a red circle right of a blue square" (relation). Each keeps the words of
the caption and changes what it says, so a scorer that reads a caption as a bag of words cannot reject it:
only one that binds words to objects and places can. Used as the CE's text negatives in training
(`picsift train --text-negatives swap`).

Rule-based and for English captions of any data: colour words, size words, spatial words, and the nouns of
the caption's own objects (a list of common object nouns; shapes included). A caption with nothing to
exchange yields nothing, and `coverage` counts those.
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Iterable

KINDS = ("colour", "size", "object", "relation")

COLOURS = frozenset("""red green blue yellow purple orange pink brown black white grey gray silver gold golden
tan beige violet""".split())
SIZES = frozenset("small large big little tiny huge tall short long".split())
# Nouns of things a photo shows; a swap exchanges two different ones of the same caption.
NOUNS = frozenset("""circle square triangle cross star rectangle ball box
man woman boy girl child children kid baby person people men women boys girls lady guy player dog dogs puppy
cat horse cow bird sheep bike bicycle car truck bus boat shirt hat jacket dress frisbee stick rock tree water
wall fence building street road grass snow sand beach ocean field table chair bench door window toy rope""".split())
# A spatial phrase and its inverse; longer phrases first so "to the left of" is not read as "left".
_RELATIONS = [("to the left of", "to the right of"), ("on top of", "under"), ("in front of", "behind"),
              ("left of", "right of"), ("above", "below"), ("over", "under"), ("beneath", "above"),
              ("underneath", "on top of")]
_INVERSE: dict[str, str] = {}
for _a, _b in _RELATIONS:
    _INVERSE.setdefault(_a, _b)
    _INVERSE.setdefault(_b, _a)
_RELATION_RE = re.compile(r"\b(" + "|".join(sorted(map(re.escape, _INVERSE), key=len, reverse=True)) + r")\b",
                          re.IGNORECASE)
_WORD = re.compile(r"[A-Za-z]+")


def _swap_words(text: str, vocabulary: frozenset[str]) -> str | None:
    """The caption with its first two different words of `vocabulary` exchanged everywhere, or None when it
    has fewer than two different ones."""
    found = []
    for m in _WORD.finditer(text):
        w = m.group().lower()
        if w in vocabulary and w not in found:
            found.append(w)
            if len(found) == 2:
                break
    if len(found) < 2:
        return None
    a, b = found

    def exchange(m: re.Match) -> str:
        w = m.group()
        low = w.lower()
        if low not in (a, b):
            return w
        new = b if low == a else a
        return new.capitalize() if w[0].isupper() else new

    return _WORD.sub(exchange, text)


def _flip_relations(text: str) -> str | None:
    """The caption with every spatial phrase replaced by its inverse, or None when it has none."""
    if not _RELATION_RE.search(text):
        return None
    return _RELATION_RE.sub(lambda m: _INVERSE[m.group().lower()], text)


def perturb(caption: str) -> dict[str, str]:
    """{kind: perturbed caption} for each kind of exchange the caption allows (KINDS order); each differs from
    the caption in what it says, not only in its letters."""
    out = {}
    for kind, new in (("colour", _swap_words(caption, COLOURS)), ("size", _swap_words(caption, SIZES)),
                      ("object", _swap_words(caption, NOUNS)), ("relation", _flip_relations(caption))):
        if new is not None and new.lower() != caption.lower():
            out[kind] = new
    return out


def coverage(captions: Iterable[str]) -> dict[str, int]:
    """How many captions each kind of exchange applies to, and how many allow none ("none")."""
    counts: Counter[str] = Counter()
    total = 0
    for c in captions:
        total += 1
        kinds = perturb(c)
        counts.update(kinds.keys())
        if not kinds:
            counts["none"] += 1
    return {"captions": total, **{k: counts.get(k, 0) for k in KINDS}, "none": counts.get("none", 0)}


# Mirroring a photo changes what its spatial words say along the mirrored axis only: left and right swap
# under a horizontal flip, above and below under a vertical one; depth ("in front of") stays.
_HORIZONTAL = {"to the left of": "to the right of", "to the right of": "to the left of", "left of": "right of",
               "right of": "left of"}
_VERTICAL = {"on top of": "under", "under": "on top of", "above": "below", "below": "above", "over": "under",
             "beneath": "above", "underneath": "on top of"}
MIRROR_AXES = ("horizontal", "vertical")


def mirror(caption: str) -> tuple[str, str] | None:
    """(axis, caption) for the photo flipped along the axis its spatial words name: "a red circle left of a blue
    square" gives ("horizontal", "a red circle right of a blue square"), which the mirrored photo shows and
    the original does not. None when the caption names no left/right or above/below relation, or both kinds
    (mirroring along one axis would keep the other's words true and a flip of both is a rotation)."""
    found = {m.group().lower() for m in _RELATION_RE.finditer(caption)}
    horizontal, vertical = found & _HORIZONTAL.keys(), found & _VERTICAL.keys()
    if bool(horizontal) == bool(vertical):
        return None
    axis, table = ("horizontal", _HORIZONTAL) if horizontal else ("vertical", _VERTICAL)
    return axis, _RELATION_RE.sub(lambda m: table.get(m.group().lower(), m.group()), caption)
