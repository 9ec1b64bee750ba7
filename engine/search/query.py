"""A search query as people type it: words, negative terms, weights, and optionally a photo.

    beach at sunset -people          photos of the words, away from "people"
    2:sunset beach                   "sunset" counts twice as much as "beach"
    -"people walking" city           quotes keep several words as one term
    (a photo given beside the words)  this photo, but as the words say ("at night")
    text:"happy birthday" cake       photos whose own words (read at indexing) hold "happy birthday",
                                     ranked by the meaning of "cake"; -text:draft leaves out those saying "draft"

Plain words form the main phrase (together, in the order typed). A term with a sign or a weight is one word,
or one quoted phrase: `-people`, `-"people walking"`, `2:sunset`, `0.5:"blue sky"`, `-2:car`. The BE
searches with the weighted sum of the terms' vectors (negative terms subtracted) and of the photo's vector,
normalised (rclip's query arithmetic). The CE and the LI stage read the words: the positive ones in the
order typed, without signs and weights; negative terms only move the BE's candidates.

A `text:` term (one word or a quoted phrase; `text:` in any case) is not meaning but a condition: the photo's
text must contain it, as a substring in any case (`text:birth` finds "Happy Birthday"). A query of text
terms alone searches their words' meaning among the photos that pass.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np

from ..errors import PicsiftError

_TERM = re.compile(r'''(?P<sign>[-+]?)(?:(?P<field>[Tt][Ee][Xx][Tt]):|(?P<weight>\d+(?:\.\d+)?):)?'''
                   r'''(?:"(?P<quoted>[^"]*)"?|(?P<word>\S+))''')


@dataclass(frozen=True)
class Term:
    text: str
    weight: float = 1.0  # negative for terms to move away from


@dataclass
class Query:
    terms: list[Term] = field(default_factory=list)
    photo: str | None = None  # a photo the search starts from ("this photo, but ...")
    photo_weight: float = 1.0
    words: list[str] = field(default_factory=list)  # the positive words in the order typed
    text_terms: list[str] = field(default_factory=list)  # text the photo must contain (text:"...")
    text_excluded: list[str] = field(default_factory=list)  # text it must not contain (-text:"...")

    @property
    def has_text_terms(self) -> bool:
        return bool(self.text_terms or self.text_excluded)

    @property
    def positive_text(self) -> str:
        """What the CE and the LI stage read: the positive words as typed, without signs and weights."""
        return " ".join(self.words) if self.words else " ".join(t.text for t in self.terms if t.weight > 0)

    @property
    def negatives(self) -> list[str]:
        return [t.text for t in self.terms if t.weight < 0]

    @property
    def plain(self) -> bool:
        """One phrase of weight 1 and no photo: a query as before terms existed."""
        return self.photo is None and len(self.terms) == 1 and self.terms[0].weight == 1.0

    def describe(self) -> str:
        parts = []
        if self.photo:
            parts.append(f"the photo {self.photo}")
        parts += [f"text '{t}'" for t in self.text_terms] + [f"no text '{t}'" for t in self.text_excluded]
        for t in self.terms:
            if t.weight < 0:
                parts.append(f"not '{t.text}'" + (f" (x{-t.weight:g})" if t.weight != -1 else ""))
            else:
                parts.append(f"'{t.text}'" + (f" (x{t.weight:g})" if t.weight != 1 else ""))
        return ", ".join(parts)

    def combine(self, text_vectors: np.ndarray, photo_vector: np.ndarray | None = None) -> np.ndarray:
        """The BE query vector (1, d): the weighted sum of the terms' vectors (rows of text_vectors, in the
        order of `terms`) and of the photo's, L2-normalised."""
        weights = np.array([t.weight for t in self.terms], np.float32)
        vec = (weights[:, None] * text_vectors).sum(axis=0) if len(weights) else 0.0
        if photo_vector is not None:
            vec = vec + self.photo_weight * photo_vector
        vec = np.asarray(vec, np.float32).reshape(1, -1)
        norm = float(np.linalg.norm(vec))
        if norm == 0 or not np.isfinite(norm):
            raise QueryError("the query's terms cancel out: nothing is left to search for")
        return vec / norm


class QueryError(PicsiftError, ValueError):
    """A query that cannot be searched; the text says why."""


def parse_query(text: str, photo: str | None = None) -> Query:
    """Terms of a typed query (see the module's doc); raises QueryError when nothing positive is left."""
    main: list[str] = []
    words: list[str] = []
    terms: list[Term] = []
    text_terms: list[str] = []
    text_excluded: list[str] = []
    for m in _TERM.finditer(text or ""):
        body = m.group("quoted") if m.group("quoted") is not None else m.group("word")
        body = " ".join(body.split())
        sign, weight = m.group("sign"), m.group("weight")
        if m.group("field") is not None:
            if not body:
                raise QueryError('text: needs the words to look for, as in text:"happy birthday"')
            (text_excluded if sign == "-" else text_terms).append(body)
            continue
        if not body:
            continue
        if not sign and weight is None and m.group("quoted") is None:
            main.append(body)
            words.append(body)
            continue
        w = float(weight) if weight is not None else 1.0
        if w == 0:
            continue  # a weight of 0 leaves the term out
        terms.append(Term(body, -w if sign == "-" else w))
        if sign != "-":
            words.append(body)
    if main:
        terms.insert(0, Term(" ".join(main), 1.0))
    if text_terms and not any(t.weight > 0 for t in terms) and photo is None:
        # only text conditions: their words' meaning orders the photos that pass
        terms.insert(0, Term(" ".join(text_terms), 1.0))
        words = list(text_terms)
    q = Query(terms=terms, photo=photo, words=words, text_terms=text_terms, text_excluded=text_excluded)
    if not any(t.weight > 0 for t in terms) and photo is None:
        raise QueryError("the query has nothing to search for: give words (negative terms alone, such as "
                         "'-people' or -text:\"draft\", only move a search away from something)")
    return q
