"""Search: retrieve fast with the BE and FAISS, rerank the top k with the CE, as a stream of updates."""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from typing import Iterator, Sequence

import numpy as np

from engine.captions import embed_collection, resolve_collection
from engine.errors import ImageError
from engine.imaging import open_photo
from engine.jobs import CancelToken
from engine.library import Library
from engine.token_cache import format_for


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

    def to_json(self) -> dict:
        out = {"rank": self.rank, "score": round(float(self.score), 6),
               "rerank_score": None if self.rerank_score is None else round(float(self.rerank_score), 6)}
        if self.path is not None:
            out["path"] = self.path
        if self.text is not None:
            out["text"] = self.text
        return out


@dataclass
class SearchUpdate:
    hits: list[Hit]  # the current order, best first
    scored: int  # CE scores received so far
    to_score: int  # CE scores this search will compute (min(k, candidates))
    done: bool


def order_hits(candidates: Sequence[Hit], k: int, probs: dict[int, float]) -> list[Hit]:
    """The live order: CE-scored top-k candidates by probability, then the unscored top k, then the rest (BE)."""
    top, rest = list(candidates[:k]), list(candidates[k:])
    scored = sorted((h for h in top if h.id in probs), key=lambda h: (-probs[h.id], h.be_rank))
    unscored = [h for h in top if h.id not in probs]
    ordered = scored + unscored + rest
    return [replace(h, rerank_score=probs.get(h.id), rank=i + 1) for i, h in enumerate(ordered)]


def _final_hits(stream: Iterator[SearchUpdate]) -> list[Hit]:
    """The order a stream of updates ends in."""
    update = None
    for update in stream:
        pass
    return update.hits if update else []


class Searcher:
    """Queries against one library with the model its photos were embedded by."""

    first_batch = 1  # the first CE score comes alone, so a window can start reordering at once
    ce_chunk = 4

    def __init__(self, library: Library, model):
        library.check_model(model)
        self.library = library
        self.model = model

    # ----- text -> photos --------------------------------------------------
    def retrieve(self, query: str, n: int = 20, scope: str | None = None) -> list[Hit]:
        """BE stage only: the top n photos by cosine."""
        vec = self.model.embed_texts([query])
        return self._photos_by_vector(vec, n, scope)

    def _photos_by_vector(self, vec: np.ndarray, n: int, scope: str | None = None,
                          exclude: int | None = None) -> list[Hit]:
        lib = self.library
        if not lib.store.dim:
            return []  # nothing indexed yet: no model has been bound to this library
        allowed = None
        if scope:
            allowed = lib.store.ids_under(os.path.abspath(os.path.expanduser(scope)))
            if not allowed:
                return []
        want = n + (1 if exclude is not None else 0)
        scores, ids = lib.index.search(vec, want, allowed_ids=allowed)
        pairs = [(int(i), float(s)) for i, s in zip(ids[0], scores[0]) if i >= 0 and i != exclude][:n]
        paths = lib.store.paths([i for i, _ in pairs])
        hits = [Hit(id=i, score=s, path=paths[i]) for i, s in pairs if i in paths]
        return [replace(h, rank=r + 1, be_rank=r + 1) for r, h in enumerate(hits)]

    def search_stream(self, query: str, n: int = 20, k: int = 20, scope: str | None = None,
                      cancel: CancelToken | None = None) -> Iterator[SearchUpdate]:
        """BE hits first, then one update per CE batch until the top k are reranked."""
        n = max(n, k)
        candidates = self.retrieve(query, n, scope)
        yield from self.rerank_stream(query, candidates, k, cancel)

    def search(self, query: str, n: int = 20, k: int = 20, scope: str | None = None) -> list[Hit]:
        return _final_hits(self.search_stream(query, n, k, scope))

    def rerank_stream(self, query: str, candidates: Sequence[Hit], k: int,
                      cancel: CancelToken | None = None) -> Iterator[SearchUpdate]:
        """CE over the first k of candidates (in BE order), reusing the rerank cache."""

        def score(chunk: list[Hit]) -> dict[int, float]:
            tokens = self.photo_tokens([h.id for h in chunk], {h.id: h.path for h in chunk})
            ready = [h for h in chunk if h.id in tokens]  # a photo gone since indexing stays unscored
            if not ready:
                return {}
            p = self.model.match_probs(query, np.stack([tokens[h.id] for h in ready]))
            return {h.id: float(v) for h, v in zip(ready, p)}

        return self._rerank(candidates, k, score, cancel)

    def _rerank(self, candidates: Sequence[Hit], k: int, score, cancel: CancelToken | None) -> Iterator[SearchUpdate]:
        """Yield the BE order, then one update per CE chunk over the top k (the first chunk is one item)."""
        candidates = sorted(candidates, key=lambda h: h.be_rank)
        k = max(0, min(k, len(candidates)))
        probs: dict[int, float] = {}
        yield SearchUpdate(order_hits(candidates, k, probs), 0, k, done=k == 0)
        start, size = 0, self.first_batch
        while start < k:
            if cancel is not None and cancel.cancelled:
                return
            chunk = list(candidates[start : min(k, start + size)])
            probs.update(score(chunk))
            start += len(chunk)
            size = self.ce_chunk
            yield SearchUpdate(order_hits(candidates, k, probs), start, k, done=start >= k)

    def photo_tokens(self, ids: Sequence[int], paths: dict[int, str]) -> dict[int, np.ndarray]:
        """CE image tokens from the rerank cache; photos not there are encoded now (and cached if room)."""
        found = self.library.tokens.get_many(ids)
        missing = [i for i in ids if i not in found]
        images, ok = [], []
        for i in missing:
            try:
                images.append(open_photo(paths[i], getattr(self.model, "image_size", None)).image)
                ok.append(i)
            except ImageError:
                continue  # the file changed or vanished since indexing: it stays unscored
        if images:
            enc = self.model.encode_images(images)
            fresh = dict(zip(ok, enc.tokens))
            self.library.tokens.put_many(fresh.items(), format_for(self.model))
            found.update(fresh)
        return found

    # ----- photo -> photos and captions -------------------------------------
    def encode_photo(self, path: str) -> tuple[np.ndarray, np.ndarray, int | None]:
        """(BE vector, CE tokens, library id or None) of any photo file; raises ImageError."""
        apath = os.path.abspath(os.path.expanduser(path))
        row = self.library.store.photo(apath)
        if row is not None and row.has_vector:
            vec = self.library.store.vector(row.id)
            cached = self.library.tokens.get_many([row.id])
            if row.id in cached:
                return vec, cached[row.id], row.id
        check_photo_file(path)
        try:
            photo = open_photo(apath, getattr(self.model, "image_size", None))
        except ImageError as exc:
            raise ImageError(f"{path}: {exc}") from None
        enc = self.model.encode_images([photo.image])
        return enc.vectors[0], enc.tokens[0], (row.id if row is not None and row.has_vector else None)

    def similar(self, path: str, n: int = 20) -> list[Hit]:
        vec, _, own_id = self.encode_photo(path)
        return self._photos_by_vector(vec[None, :], n, exclude=own_id)

    def captions_stream(self, path: str, n: int = 20, k: int = 20, collection: str | None = None,
                        cancel: CancelToken | None = None) -> Iterator[SearchUpdate]:
        vec, tokens, _ = self.encode_photo(path)
        cid = resolve_collection(self.library, collection)
        for _ in embed_collection(self.library, self.model, cid):  # nothing to do once prepared
            pass
        ids, texts, vecs = self.library.store.caption_vectors(cid)
        n = max(n, k)
        scores = vecs @ vec
        top = np.argsort(-scores, kind="stable")[:n]
        candidates = [Hit(id=int(ids[j]), score=float(scores[j]), text=texts[j], rank=r + 1, be_rank=r + 1)
                      for r, j in enumerate(top)]

        def score(chunk: list[Hit]) -> dict[int, float]:
            p = self.model.match_probs([h.text for h in chunk], np.repeat(tokens[None], len(chunk), axis=0))
            return {h.id: float(v) for h, v in zip(chunk, p)}

        return self._rerank(candidates, k, score, cancel)

    def prepare_captions(self, collection: str | None = None, batch: int = 64) -> Iterator[tuple[int, int]]:
        """Embed a caption collection's captions that have no vector yet (its first use), yielding
        (done, total); nothing when it is ready. Callers show this as progress."""
        yield from embed_collection(self.library, self.model, resolve_collection(self.library, collection), batch)

    def captions(self, path: str, n: int = 20, k: int = 20, collection: str | None = None) -> list[Hit]:
        return _final_hits(self.captions_stream(path, n, k, collection))
