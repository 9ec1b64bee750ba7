"""Search: retrieve fast with the BE and FAISS, rerank the top k with the CE, as a stream of updates."""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, replace
from typing import Iterator, Sequence

import numpy as np

from ..captions import DEFAULT_COLLECTION, embed_collection, read_captions, resolve_collection
from ..paths import DEFAULT_COLLECTION_FILE
from ..errors import ImageError
from .filters import Filters
from ..index.imaging import open_photo
from ..jobs import CancelToken
from ..library import Library
from .query import parse_query
from ..token_cache import format_for


def check_photo_file(path: str) -> None:
    """Raise ImageError at once when a photo named by the user does not exist."""
    if not os.path.isfile(os.path.abspath(os.path.expanduser(path))):
        raise ImageError(f"no such photo file: {path}")


@dataclass(frozen=True)
class Hit:
    id: int
    score: float  # BE cosine
    rerank_score: float | None = None  # CE match probability, None when not reranked
    path: str | None = None  # photo hits
    text: str | None = None  # caption hits
    rank: int = 0  # 1-based position in the current order
    be_rank: int = 0  # 1-based position in the BE order
    li_score: float | None = None  # LI (late interaction) score, when the model has an LI stage
    li_rank: int = 0  # 1-based position in the LI order of the BE's candidates; 0 without an LI stage
    text_matches: tuple[str, ...] | None = None  # the photo's own words that a query's text: terms matched

    @property
    def match(self) -> float:
        """How well it matches, as shown and cut off by a minimum: the CE's probability when reranked, else
        the BE cosine."""
        return self.rerank_score if self.rerank_score is not None else self.score

    @property
    def first_rank(self) -> int:
        """Its place before the CE: the LI order when there is one, else the BE order."""
        return self.li_rank or self.be_rank

    def to_json(self) -> dict:
        out = {"rank": self.rank, "score": round(float(self.score), 6),
               "rerank_score": None if self.rerank_score is None else round(float(self.rerank_score), 6),
               "match": round(float(self.match), 6)}
        if self.li_rank:
            out["li_score"] = None if self.li_score is None else round(float(self.li_score), 6)
        if self.path is not None:
            out["path"] = self.path
        if self.text is not None:
            out["text"] = self.text
        if self.text_matches is not None:
            out["text_matches"] = list(self.text_matches)
        return out


@dataclass
class SearchUpdate:
    hits: list[Hit]  # the current order, best first
    scored: int  # CE scores received so far
    to_score: int  # CE scores this search will compute (min(k, candidates))
    done: bool


def order_hits(candidates: Sequence[Hit], k: int, probs: dict[int, float]) -> list[Hit]:
    """The live order: CE-scored top-k candidates by probability, then the unscored top k, then the rest (in
    the order before the CE: LI's, else BE's)."""
    top, rest = list(candidates[:k]), list(candidates[k:])
    scored = sorted((h for h in top if h.id in probs), key=lambda h: (-probs[h.id], h.first_rank))
    unscored = [h for h in top if h.id not in probs]
    ordered = scored + unscored + rest
    in_top = {h.id for h in top}
    return [replace(h, rerank_score=probs.get(h.id) if h.id in in_top else None, rank=i + 1)
            for i, h in enumerate(ordered)]


SORTS = ("relevance", "date")


def arrange(hits: Sequence[Hit], library: Library, min_score: float | None = None,
            sort: str = "relevance") -> list[Hit]:
    """What a user sees of an order: hits whose match is below min_score hidden (the weak tail), then in
    relevance order (as given) or newest taken first; ranks numbered again."""
    if sort not in SORTS:
        raise ValueError(f"sort is one of {', '.join(SORTS)}, not '{sort}'")
    kept = [h for h in hits if min_score is None or h.match >= min_score]
    if sort == "date":
        taken = library.store.taken([h.id for h in kept])
        kept = sorted(kept, key=lambda h: (taken.get(h.id) is None, -(taken.get(h.id) or 0.0), h.rank))
    return [replace(h, rank=i + 1) for i, h in enumerate(kept)]


def _final_hits(stream: Iterator[SearchUpdate]) -> list[Hit]:
    """The order a stream of updates ends in."""
    update = None
    for update in stream:
        pass
    return update.hits if update else []


class Searcher:
    """Queries against one library with the cascade its photos were embedded by."""

    first_batch = 1  # the first CE score comes alone, so a window can start reordering at once
    ce_chunk = 4

    def __init__(self, library: Library, model, li_candidates: int = 200):
        library.check_model(model)
        self.library = library
        self.model = model
        self.key = model.be.key
        self.li_candidates = li_candidates  # BE candidates the LI stage orders (0: no LI stage)
        self._captions: dict[str, tuple] = {}  # prepared collections: (ids, texts, BE vectors)

    # ----- text -> photos --------------------------------------------------
    def session(self, query: str, n: int = 20, scope: str | None = None, filters: Filters | None = None,
                photo: str | None = None) -> "SearchSession":
        """A query's session: words with optional terms (engine.search.query), filters, and a photo to start from."""
        return SearchSession(self, query, n, scope, filters, photo)

    def retrieve(self, query: str, n: int = 20, scope: str | None = None) -> list[Hit]:
        """BE stage only: the top n photos by cosine."""
        return self._photos_by_vector(self.model.embed_texts([query]), n, scope)

    def scope_ids(self, scope: str | None, filters: Filters | None = None,
                  text: tuple[Sequence[str], Sequence[str]] | None = None) -> list[int] | None:
        """The photos a search may return (None: all): under scope, passing the filters, and with text
        (terms, excluded terms) whose own words hold every term and none of the excluded."""
        from ..paths import normalize_path

        allowed = None
        if text is not None and (text[0] or text[1]):
            if text[0]:
                allowed = self.library.text.matching_ids(text[0], text[1])
            else:  # only exclusions: every photo but those
                banned = set(self.library.text.matching_ids(text[1]))
                allowed = sorted(self.library.store.photo_ids(self.key) - banned)
        if scope:
            under = self.library.store.ids_under(normalize_path(scope))
            allowed = under if allowed is None else sorted(set(allowed) & set(under))
        if filters is not None and not filters.empty:
            if filters.folder:
                filters = replace(filters, folder=normalize_path(filters.folder))
            passing = self.library.store.filter_ids(filters)
            allowed = passing if allowed is None else sorted(set(allowed) & set(passing))
        return allowed

    def _photos_by_vector(self, vec: np.ndarray, n: int, scope: str | None = None,
                          exclude: int | None = None, filters: Filters | None = None,
                          text: tuple[Sequence[str], Sequence[str]] | None = None) -> list[Hit]:
        lib = self.library
        if not lib.store.model_dim(self.key):
            return []  # nothing indexed with this model yet
        allowed = self.scope_ids(scope, filters, text)
        if allowed is not None and not allowed:
            return []
        want = n + (1 if exclude is not None else 0)
        scores, ids = lib.index_for(self.key).search(vec, want, allowed_ids=allowed)
        pairs = [(int(i), float(s)) for i, s in zip(ids[0], scores[0]) if i >= 0 and i != exclude][:n]
        paths = lib.store.paths([i for i, _ in pairs])
        hits = [Hit(id=i, score=s, path=paths[i]) for i, s in pairs if i in paths]
        return [replace(h, rank=r + 1, be_rank=r + 1) for r, h in enumerate(hits)]

    def search_stream(self, query: str, n: int = 20, k: int = 20, scope: str | None = None,
                      cancel: CancelToken | None = None) -> Iterator[SearchUpdate]:
        """BE hits first, then one update per CE batch until the top k are reranked."""
        return self.session(query, n, scope).stream(k, cancel)

    def search(self, query: str, n: int = 20, k: int = 20, scope: str | None = None) -> list[Hit]:
        return _final_hits(self.search_stream(query, n, k, scope))

    def rerank_stream(self, query: str, candidates: Sequence[Hit], k: int,
                      cancel: CancelToken | None = None) -> Iterator[SearchUpdate]:
        """CE over the first k of candidates (in BE order), reusing the rerank cache."""
        return self._rerank(candidates, k, lambda chunk: self.score_photos(query, chunk), cancel, {})

    def score_photos(self, query: str, chunk: Sequence[Hit]) -> dict[int, float]:
        ce = self.model.ce
        if ce is None:
            return {}
        tokens = self.photo_tokens([h.id for h in chunk], {h.id: h.path for h in chunk})
        ready = [h for h in chunk if h.id in tokens]  # a photo gone since indexing stays unscored
        if not ready:
            return {}
        p = ce.score(query, np.stack([tokens[h.id] for h in ready]))
        return {h.id: float(v) for h, v in zip(ready, p)}

    def _rerank(self, candidates: Sequence[Hit], k: int, score, cancel: CancelToken | None,
                probs: dict[int, float]) -> Iterator[SearchUpdate]:
        """Yield the current order, then one update per CE chunk until the top k are scored (the first chunk
        is one item). Scores already in `probs` are kept, not computed again."""
        candidates = sorted(candidates, key=lambda h: h.first_rank)
        k = max(0, min(k, len(candidates))) if self.model.ce is not None or probs else 0
        todo = [h for h in candidates[:k] if h.id not in probs]
        scored = k - len(todo)
        yield SearchUpdate(order_hits(candidates, k, probs), scored, k, done=not todo)
        size = self.first_batch
        while todo:
            if cancel is not None and cancel.cancelled:
                return
            chunk, todo = todo[:size], todo[size:]
            probs.update(score(chunk))
            scored += len(chunk)
            size = self.ce_chunk
            yield SearchUpdate(order_hits(candidates, k, probs), scored, k, done=not todo)

    def photo_tokens(self, ids: Sequence[int], paths: dict[int, str]) -> dict[int, np.ndarray]:
        """The CE's features of photos from the rerank cache; photos not there are encoded now and cached
        (the least recently used entries make room when the cache is full)."""
        ce = self.model.ce
        hashes = self.library.store.hashes(ids)
        cached = self.library.tokens.get_many(ce.key, hashes.values())
        found = {i: cached[h] for i, h in hashes.items() if h in cached}
        images, ok = [], []
        for i in ids:
            if i in found:
                continue
            try:
                images.append(open_photo(paths[i], getattr(self.model, "image_size", None)).image)
                ok.append(i)
            except ImageError:
                continue  # the file changed or vanished since indexing: it stays unscored
        if images:
            feats = self.model.reranker_features(ce, images)
            fresh = dict(zip(ok, feats))
            self.library.tokens.put_many(ce.key, [(hashes[i], f) for i, f in fresh.items() if i in hashes],
                                         format_for(self.model), evict=True)
            found.update(fresh)
        return found

    # ----- the LI stage ------------------------------------------------------
    @property
    def late(self):
        """The model's LI stage when this search uses it (an LI head, and candidates to order), else None."""
        li = getattr(self.model, "li", None)
        return li if li is not None and self.li_candidates > 0 else None

    def late_order(self, query_tokens: np.ndarray, hits: Sequence[Hit]) -> list[Hit]:
        """The BE's candidates in LI order, each with its li_score; photos without stored LI tokens (indexed
        since the head was added, not yet filled in) follow in BE order."""
        from ..models.late import decode_many

        li = self.late
        hashes = self.library.store.hashes([h.id for h in hits])
        blobs = self.library.store.late_tokens(li.key, hashes.values())
        have = [h for h in hits if hashes.get(h.id) in blobs]
        rest = [h for h in hits if hashes.get(h.id) not in blobs]
        scores = li.score(query_tokens, decode_many([blobs[hashes[h.id]] for h in have], li.feature_shape))
        order = sorted(range(len(have)), key=lambda j: (-scores[j], have[j].be_rank))
        ordered = [replace(have[j], li_score=float(scores[j])) for j in order] + rest
        return [replace(h, rank=i + 1, li_rank=i + 1) for i, h in enumerate(ordered)]

    # ----- photo -> photos and captions -------------------------------------
    def encode_photo(self, path: str) -> tuple[np.ndarray, np.ndarray | None, int | None]:
        """(BE vector, CE features, library id or None) of any photo file; raises ImageError."""
        from ..paths import normalize_path

        apath = normalize_path(path)
        ce = self.model.ce
        row = self.library.store.photo(apath, self.key)
        if row is not None and row.has_vector:
            vec = self.library.store.vector(row.id, self.key)
            cached = self.library.tokens.get_many(ce.key, [row.hash]) if ce is not None else {}
            if ce is None or row.hash in cached:
                return vec, cached.get(row.hash), row.id
        check_photo_file(path)
        try:
            photo = open_photo(apath, getattr(self.model, "image_size", None))
        except ImageError as exc:
            raise ImageError(f"{path}: {exc}") from None
        enc = self.model.encode_images([photo.image])
        feats = enc.features.get(ce.key)[0] if ce is not None else None
        return enc.vectors[0], feats, (row.id if row is not None and row.has_vector else None)

    def similar(self, path: str, n: int = 20) -> list[Hit]:
        vec, _, own_id = self.encode_photo(path)
        return self._photos_by_vector(vec[None, :], n, exclude=own_id)

    def captions_stream(self, path: str, n: int = 20, k: int = 20, collection: str | None = None,
                        cancel: CancelToken | None = None) -> Iterator[SearchUpdate]:
        vec, tokens, _ = self.encode_photo(path)
        for _ in self.prepare_captions(collection):  # nothing to do once prepared
            pass
        ids, texts, vecs = self._captions[self._collection_key(collection)]
        n = max(n, k)
        scores = vecs @ vec
        top = np.argsort(-scores, kind="stable")[:n]
        candidates = [Hit(id=int(ids[j]), score=float(scores[j]), text=texts[j], rank=r + 1, be_rank=r + 1)
                      for r, j in enumerate(top)]

        def score(chunk: list[Hit]) -> dict[int, float]:
            p = self.model.ce.score([h.text for h in chunk], np.repeat(tokens[None], len(chunk), axis=0))
            return {h.id: float(v) for h, v in zip(chunk, p)}

        return self._rerank(candidates, k, score, cancel, {})

    def prepare_captions(self, collection: str | None = None, batch: int = 64) -> Iterator[tuple[int, int]]:
        """Embed a caption collection's captions that have no vector yet (its first use), yielding
        (done, total); nothing when it is ready. Callers show this as progress. On a read-only library the
        vectors are kept in memory for this searcher (and the built-in collection read from its file)."""
        key = self._collection_key(collection)
        if key in self._captions:
            return
        lib = self.library
        if not lib.read_only:
            cid = key[1]
            yield from embed_collection(lib, self.model, cid, batch)
            self._captions[key] = lib.store.caption_vectors(cid, self.key)
            return
        name = key[1]
        cid = lib.store.collection_id(name)
        if cid is None and collection is None:
            texts = read_captions(DEFAULT_COLLECTION_FILE)
            ids = np.arange(-1, -len(texts) - 1, -1, dtype=np.int64)
            have = (np.zeros(0, np.int64), [], np.zeros((0, self.model.dim), np.float32))
        else:
            cid = resolve_collection(lib, collection)  # raises when it does not exist
            have = lib.store.caption_vectors(cid, self.key)
            missing = lib.store.captions_missing_vectors(cid, self.key)
            ids = np.array([i for i, _ in missing], dtype=np.int64)
            texts = [t for _, t in missing]
        parts = []
        for i in range(0, len(texts), batch):
            parts.append(self.model.embed_texts(texts[i : i + batch]))
            yield min(len(texts), i + batch), len(texts)
        fresh = np.concatenate(parts) if parts else np.zeros((0, self.model.dim), np.float32)
        self._captions[key] = (np.concatenate([have[0], ids]), list(have[1]) + texts,
                                np.concatenate([have[2], fresh]).astype(np.float32))

    def _collection_key(self, collection: str | None) -> tuple:
        """What prepared caption vectors are kept under: the collection's row and its creation time (a
        re-import makes a new one), or on a read-only library its name."""
        if self.library.read_only:
            return ("read-only", collection or DEFAULT_COLLECTION)
        cid = resolve_collection(self.library, collection)
        # The row id and when it was made: a collection imported again may get the same id back.
        return ("library", cid, self.library.store.collection_created(cid))

    def captions(self, path: str, n: int = 20, k: int = 20, collection: str | None = None) -> list[Hit]:
        return _final_hits(self.captions_stream(path, n, k, collection))


class SearchSession:
    """One text query's state: its scope, the BE candidates and the CE scores so far.

    `stream(k)` yields the current order, then reranks the top k; a later `stream(k2)` with a deeper k
    scores only the candidates not scored yet, and widens the BE candidates (same query, same scope)
    only when k2 asks for more than it has. The window keeps a session per query and shows what it yields.
    """

    def __init__(self, searcher: Searcher, query: str, n: int = 20, scope: str | None = None,
                 filters: Filters | None = None, photo: str | None = None):
        self.searcher = searcher
        self.parsed = parse_query(query, photo)  # raises QueryError for a query with nothing to look for
        self.query = self.parsed.positive_text  # what the CE and the LI stage read ("" for a photo alone)
        self.scope = scope
        self.filters = filters
        self._exclude: int | None = None  # the photo the query starts from, when it is in the library
        self.n = max(0, n)
        self.candidates: list[Hit] = []
        self.probs: dict[int, float] = {}
        self._vector: np.ndarray | None = None
        self._late_query: np.ndarray | None = None
        self._retrieved_n = -1
        self._exhausted = False  # the BE gave fewer than asked: there are no more photos in scope
        self._lock = threading.Lock()
        q = self.parsed
        self._text = (q.text_terms, q.text_excluded) if q.has_text_terms else None

    def _with_text_matches(self, hits: list[Hit]) -> list[Hit]:
        """Hits with the stretches of their photo's text that the query's text: terms matched."""
        from ..store.photo_text import matches

        store = self.searcher.library.store
        hashes = store.hashes([h.id for h in hits])
        texts = self.searcher.library.text.texts(hashes.values())
        return [replace(h, text_matches=tuple(matches(texts.get(hashes.get(h.id), ""), self.parsed.text_terms)))
                for h in hits]

    def retrieve(self, n: int) -> list[Hit]:
        """The BE candidates, at least n of them when the scope has that many (BE runs only when needed)."""
        with self._lock:
            searcher = self.searcher
            if self._vector is None:
                self._vector = self._query_vector()
            late = searcher.late if self.query else None
            if late is not None and self._late_query is None:
                self._late_query = late.text_tokens(self.query)
                self._retrieved_n = -1  # a session that began on a text-only model: order its candidates now
            if n > self._retrieved_n and not (self._exhausted and self._retrieved_n >= 0):
                # BE top N for the LI stage to order, of which the first n are kept
                want = max(n, searcher.li_candidates) if late is not None else n
                hits = searcher._photos_by_vector(self._vector, want, self.scope, self._exclude, self.filters,
                                                  self._text)
                self._exhausted = len(hits) < want
                if self.parsed.text_terms:
                    hits = self._with_text_matches(hits)
                if late is not None:
                    hits = searcher.late_order(self._late_query, hits)
                self.candidates = hits[:n]
                self._retrieved_n = n
            return self.candidates

    def _query_vector(self) -> np.ndarray:
        """The BE vector of the query: its text's, or the weighted sum of its terms' and its photo's."""
        q, model = self.parsed, self.searcher.model
        if q.plain:
            return model.embed_texts([q.terms[0].text])
        texts = [t.text for t in q.terms]
        vecs = model.embed_texts(texts) if texts else np.zeros((0, model.dim), np.float32)
        photo_vec = None
        if q.photo is not None:
            photo_vec, _, self._exclude = self.searcher.encode_photo(q.photo)
        return q.combine(vecs, photo_vec)

    def stream(self, k: int, cancel: CancelToken | None = None) -> Iterator[SearchUpdate]:
        if not self.query:
            k = 0  # a photo without words: nothing for the CE to read
        self.n = max(self.n, k)
        candidates = self.retrieve(self.n)
        return self.searcher._rerank(candidates, k, lambda chunk: self.searcher.score_photos(self.query, chunk),
                                     cancel, self.probs)

    def rerank(self, k: int, cancel: CancelToken | None = None) -> Iterator[SearchUpdate]:
        """Rerank to depth k on the same candidates (widened if k needs more): no new BE search."""
        return self.stream(k, cancel)
