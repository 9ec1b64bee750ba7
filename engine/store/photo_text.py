"""The words read in photos, searchable by substring.

Rows are keyed by content hash, like vectors: copies of a photo share one reading, and a changed photo is read
again. `reader` names what read them (engine and languages), so a library whose languages change reads its
photos again. The searchable copy of the text (whitespace folded, so a phrase broken over two lines still
matches) sits in an FTS5 table with the trigram tokenizer: any substring of three or more characters is found
through the index, in any case (the partial-word matching photo-search users ask for); shorter terms fall
back to a scan of the same column. An SQLite without FTS5 or the trigram tokenizer scans too, and says so.
"""

from __future__ import annotations

import re
import sqlite3
import time
from typing import Iterable, Sequence

from .database import OK, Store, _chunks

_WS = re.compile(r"\s+")


def flatten(text: str) -> str:
    """The searchable form of a text: every run of whitespace one space."""
    return _WS.sub(" ", text).strip()


class PhotoText:
    """The library's table of words read in photos, on the library's own Store (same connections, same
    transactions)."""

    def __init__(self, store: Store):
        self.store = store
        self.notices: list[str] = []
        self.fts = False
        if store.read_only:
            self.fts = self._has("photo_text_fts")
            return
        store._exec("CREATE TABLE IF NOT EXISTS photo_text (id INTEGER PRIMARY KEY, hash TEXT NOT NULL UNIQUE, "
                    "reader TEXT NOT NULL, text TEXT NOT NULL, flat TEXT NOT NULL, read_at REAL)")
        try:
            store.conn.execute("CREATE VIRTUAL TABLE IF NOT EXISTS photo_text_fts USING fts5(flat, "
                               "content='photo_text', content_rowid='id', tokenize='trigram')")
        except sqlite3.OperationalError as exc:
            self.notices.append(f"Text in photos is searched without an index: this SQLite ({sqlite3.sqlite_version}) "
                                f"has no FTS5 trigram tokenizer ({exc}); searches by text are slower.")
            return
        self.fts = True
        # The external-content FTS table follows photo_text through triggers (SQLite's documented pattern).
        for sql in (
            "CREATE TRIGGER IF NOT EXISTS photo_text_ai AFTER INSERT ON photo_text BEGIN "
            "INSERT INTO photo_text_fts(rowid, flat) VALUES (new.id, new.flat); END",
            "CREATE TRIGGER IF NOT EXISTS photo_text_ad AFTER DELETE ON photo_text BEGIN "
            "INSERT INTO photo_text_fts(photo_text_fts, rowid, flat) VALUES ('delete', old.id, old.flat); END",
            "CREATE TRIGGER IF NOT EXISTS photo_text_au AFTER UPDATE ON photo_text BEGIN "
            "INSERT INTO photo_text_fts(photo_text_fts, rowid, flat) VALUES ('delete', old.id, old.flat); "
            "INSERT INTO photo_text_fts(rowid, flat) VALUES (new.id, new.flat); END",
        ):
            store._exec(sql)

    def _has(self, table: str) -> bool:
        return bool(self.store._rows("SELECT 1 FROM sqlite_master WHERE name = ?", (table,)))

    @property
    def exists(self) -> bool:
        return not self.store.read_only or self._has("photo_text")

    # ----- writing -------------------------------------------------------------
    def put(self, reader: str, items: Iterable[tuple[str, str]]) -> None:
        """(content hash, text read) pairs; an empty text records that the photo was read and has no words."""
        rows = [(h, reader, t, flatten(t), time.time()) for h, t in items if h]
        if not rows:
            return
        with self.store.batch():
            self.store._many("INSERT INTO photo_text(hash, reader, text, flat, read_at) VALUES (?, ?, ?, ?, ?) "
                             "ON CONFLICT(hash) DO UPDATE SET reader = excluded.reader, text = excluded.text, "
                             "flat = excluded.flat, read_at = excluded.read_at", rows)

    def sweep(self) -> int:
        """Drop the readings of content no photo has any more; returns how many went."""
        if not self.exists:
            return 0
        with self.store.batch():
            return self.store._exec("DELETE FROM photo_text WHERE hash NOT IN "
                                    "(SELECT hash FROM photos WHERE hash IS NOT NULL)").rowcount

    # ----- reading -------------------------------------------------------------
    def hashes_read(self, reader: str) -> set[str]:
        """Content hashes this reader has read (with or without words found)."""
        if not self.exists:
            return set()
        return {r[0] for r in self.store._rows("SELECT hash FROM photo_text WHERE reader = ?", (reader,))}

    def reading(self, content_hash: str) -> str | None:
        """The text read in one content ("" when it has no words), None when it was not read."""
        if not self.exists:
            return None
        rows = self.store._rows("SELECT text FROM photo_text WHERE hash = ?", (content_hash,))
        return rows[0][0] if rows else None

    def texts(self, hashes: Iterable[str]) -> dict[str, str]:
        """The text read in each content hash that has words."""
        if not self.exists:
            return {}
        out: dict[str, str] = {}
        for chunk in _chunks([h for h in hashes if h], 500):
            out.update(self.store._rows(f"SELECT hash, text FROM photo_text WHERE text != '' AND hash IN "
                                        f"({','.join('?' * len(chunk))})", chunk))
        return out

    def count(self) -> tuple[int, int]:
        """(photos read, photos with words)."""
        if not self.exists:
            return 0, 0
        n, with_words = self.store._rows("SELECT count(*), coalesce(sum(text != ''), 0) FROM photo_text")[0]
        return int(n), int(with_words)

    def matching_ids(self, terms: Sequence[str], excluded: Sequence[str] = ()) -> list[int]:
        """Ids of readable photos whose text contains every term (as a substring, any case) and none of the
        excluded ones, best match first (FTS5's bm25 over the first term)."""
        if not self.exists:
            return []
        terms = [flatten(t) for t in terms if flatten(t)]
        excluded = [flatten(t) for t in excluded if flatten(t)]
        where, args = ["t.text != ''"], []
        for term in terms:
            sql, arg = self._contains(term)
            where.append(sql)
            args.append(arg)
        for term in excluded:
            sql, arg = self._contains(term)
            where.append("NOT " + sql)
            args.append(arg)
        order = "t.id"
        if terms and self.fts and len(terms[0]) >= 3:
            order = "(SELECT rank FROM photo_text_fts WHERE photo_text_fts MATCH ? AND rowid = t.id)"
            args.append(_phrase(terms[0]))
        rows = self.store._rows(
            f"SELECT p.id FROM photo_text t JOIN photos p ON p.hash = t.hash WHERE p.status = '{OK}' AND "
            f"{' AND '.join(where)} ORDER BY {order}, p.id", args)
        return [r[0] for r in rows]  # one row a photo: a photo has one hash, a hash one reading

    def _contains(self, term: str) -> tuple[str, str]:
        """SQL (on photo_text t) true when t's text holds `term`, and its argument."""
        if self.fts and len(term) >= 3:
            return "t.id IN (SELECT rowid FROM photo_text_fts WHERE photo_text_fts MATCH ?)", _phrase(term)
        escaped = term.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        return "t.flat LIKE ? ESCAPE '\\'", f"%{escaped}%"


def _phrase(term: str) -> str:
    """An FTS5 query that is the term as one literal string (with the trigram tokenizer: a substring)."""
    return '"' + term.replace('"', '""') + '"'


def matches(text: str, terms: Sequence[str]) -> list[str]:
    """The stretches of `text` that the terms matched, as the photo has them (case, line breaks), in the
    order they appear: what a hit shows and the preview highlights."""
    found: list[tuple[int, int]] = []
    for term in terms:
        words = flatten(term).split(" ")
        if not words or not words[0]:
            continue
        pattern = r"\s+".join(re.escape(w) for w in words)
        found += [(m.start(), m.end()) for m in re.finditer(pattern, text, re.IGNORECASE)]
    found.sort()
    out, end = [], -1
    for a, b in found:
        if a >= end:
            out.append(text[a:b])
            end = b
    return out
