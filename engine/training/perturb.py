"""Composition-aware text negatives (ARO's NegCLIP remedy): a caption with two of its parts exchanged.

"a red circle left of a blue square" becomes "a blue circle left of a red square" (colours), "a red square
left of a blue circle" (objects), "a red circle right of a blue square" (relation). Each keeps the words of
the caption and changes what it says, so a scorer that reads a caption as a bag of words cannot reject it:
only one that binds words to objects and places can. Used as the CE's text negatives in training
(`picsift train --text-negatives swap`).

Rule-based and for English captions of any data: colour words, size words, spatial words, and the nouns of
the caption's own objects (a list of common object nouns; shapes included). A caption with nothing to
exchange yields nothing, and `coverage` counts those. `replacements` changes one word instead, to another
of its kind ("red" to "green"): negatives that a scorer which reads every word but checks none of them
against the photo cannot reject either.
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


# ----- replacements: one word exchanged for another of its kind that the caption does not say -----------
# Swaps keep a caption's words, so they cannot teach a scorer to check a word the photo contradicts: "a small
# red circle" against a photo of a small green circle. A replacement says exactly that (the structured
# negatives of SVLC, Doveh et al. 2023): one colour, size or object word changed to another of its kind.
REPLACE_KINDS = ("colour-replace", "size-replace", "object-replace")
# Words that can name the same thing stand in one group, and a word is never replaced by one of its group.
_COLOUR_GROUPS = ["red", "green", "blue", "yellow gold golden", "purple violet", "orange", "pink",
                  "brown tan beige", "black", "white", "grey gray silver"]
_SIZE_GROUPS = ["small little tiny short", "large big huge tall long"]
# Only nouns that cannot name one another (a man is a person, a puppy a dog): shapes, animals, and men and
# women; the rest of NOUNS is left to the swaps.
_OBJECT_GROUPS = ["circle", "square", "triangle", "cross", "star", "rectangle", "dog dogs puppy", "cat", "horse",
                  "cow", "bird", "sheep", "man men guy boy boys", "woman women lady girl girls", "bike bicycle",
                  "car", "truck", "bus", "boat"]
_REPLACE_GROUPS = {"colour-replace": _COLOUR_GROUPS, "size-replace": _SIZE_GROUPS,
                   "object-replace": _OBJECT_GROUPS}


def _group_of(groups: list[str]) -> dict[str, int]:
    return {w: i for i, g in enumerate(groups) for w in g.split()}


def replacement_vocabulary(captions: Iterable[str]) -> dict[str, dict[str, int]]:
    """{kind: {word: group}} of the replaceable words the captions use: a replacement only brings in words the
    data has (a model whose vocabulary was built from the data knows them)."""
    seen = {m.group().lower() for c in captions for m in _WORD.finditer(c)}
    return {kind: {w: g for w, g in _group_of(groups).items() if w in seen}
            for kind, groups in _REPLACE_GROUPS.items()}


def replacements(caption: str, vocabulary: dict[str, dict[str, int]]) -> dict[str, list[str]]:
    """{kind: captions} with one replaceable word (one occurrence) exchanged for each word of the vocabulary
    (replacement_vocabulary) outside its group; kinds with nothing to replace are left out. "a small red
    circle" gives "a small green circle", "a small blue circle", ... and "a large red circle"."""
    out: dict[str, list[str]] = {}
    for kind, words in vocabulary.items():
        found = []
        for m in _WORD.finditer(caption):
            low = m.group().lower()
            if low in words:
                for other, group in words.items():
                    if group != words[low]:
                        new = other.capitalize() if m.group()[0].isupper() else other
                        found.append(caption[:m.start()] + new + caption[m.end():])
        if found:
            out[kind] = list(dict.fromkeys(found))
    return out


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
