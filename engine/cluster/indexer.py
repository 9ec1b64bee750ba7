"""`picsift index --cluster`: the local indexer's walk, incremental rules and bookkeeping, with the decoding and
encoding done by a Ray job (engine.cluster.job) and its shards merged into the library as they arrive.

Merging is idempotent and resumable: each shard's rows go in through the same commit as local indexing (a photo
the library has already, unchanged, stays as it is; a copy reuses its vectors), the shard is recorded as merged
and then removed. A run that was stopped leaves its written shards in the shards folder; the next run merges
them before it walks the folders, so only what is still missing goes out again.
"""

from __future__ import annotations

import os
import time
from contextlib import nullcontext
from typing import Iterator

import numpy as np

from ..index.indexer import Indexer, IndexProgress, _Prepared
from ..index.scanner import FileEntry
from .job import ClusterOptions, RayJob, shard_lists
from .shards import ShardRow, iter_batches, list_shards, read_shard, remove_shard

SHARDS_DIR = "shards"
# A job of more photos than this merges without keeping the search index up to date shard by shard (its
# in-memory changes would outgrow the machine at millions); the index is rebuilt once, after the merge.
BULK_MERGE = 50_000


class ClusterIndexer(Indexer):
    def __init__(self, library, model, cluster: ClusterOptions, cancel=None, **options):
        super().__init__(library, model, cancel=cancel, **options)
        self.cluster = cluster
        self.shards = cluster.shards or str(library.folder / SHARDS_DIR / model.be.key.replace("/", "_")[:64])

    # ----- merging ------------------------------------------------------------
    def _before_scan(self, progress: IndexProgress) -> Iterator[IndexProgress]:
        """Shards a stopped run left behind, merged before the walk (a merge killed half way finishes here)."""
        names = list_shards(self.shards)
        if not names:
            return
        progress.messages.append(f"Merging {len(names)} shard(s) a stopped cluster job left in {self.shards}.")
        for name in names:
            if self.cancel.cancelled:
                return
            self.merge_shard(name, progress)
            yield progress.snapshot()
            progress.messages, progress.skipped_files = [], []

    def merge_shard(self, name: str, progress: IndexProgress) -> int:
        """Bring one shard into the library; returns how many of its photos it looked at (0: merged before, or
        not this model's)."""
        store = self.store
        if name in store.shards_merged([name]):
            remove_shard(self.shards, name)
            return 0
        try:
            be_key, rows = read_shard(self.shards, name)
        except (ValueError, OSError) as exc:
            progress.messages.append(f"Skipped the shard {name}: {exc}")
            return 0
        if be_key != self.key:
            progress.messages.append(f"Left the shard {name} alone: it was made by another model.")
            return 0
        stale = 0
        for chunk in iter_batches(rows, self.batch_size):
            batch = []
            have = store.hashes_with_vectors(self.key, [r.hash for r in chunk if r.error is None])
            for r in chunk:
                p = self._prepared(r, have)
                if p is None:
                    stale += 1
                else:
                    batch.append(p)
            if batch:
                self._commit(batch, progress)
        if stale:
            progress.messages.append(f"{stale} photo(s) of {name} changed or vanished after the job read them: "
                                     "the next index run reads them again.")
        store.mark_shard_merged(name, len(rows))
        remove_shard(self.shards, name)
        return len(rows)

    def _prepared(self, r: ShardRow, have: set[str]) -> _Prepared | None:
        """A shard row as the commit takes it, with the same rules as local indexing (`have`: the content hashes
        of its batch that have vectors already); None when the file is no longer what the job read (it is left
        for the next walk)."""
        try:
            st = os.stat(r.path)
        except OSError:
            return None
        if st.st_size != r.size or st.st_mtime_ns != r.mtime_ns:
            return None
        p = _Prepared(FileEntry(r.path, r.size, r.mtime_ns), content_hash=r.hash, width=r.width, height=r.height,
                      taken=r.taken, error=r.error)
        if r.error is not None:
            return p
        known = self.store.photo(r.path, self.key)
        if known is not None and known.has_vector and known.hash == r.hash:
            p.same_content = True
        elif r.hash in have:
            p.known_content = True
        else:
            p.vector = np.frombuffer(r.vector, np.float32)
            p.features = r.features
        return p

    # ----- the job ----------------------------------------------------------------
    def _embed(self, work: list[FileEntry], known: dict, progress: IndexProgress) -> Iterator[IndexProgress]:
        if not work:
            return False
        rows = shard_lists(work, self.key, self.cluster.shard_photos)
        model = self.model
        start = time.monotonic()
        bulk = len(work) > BULK_MERGE
        with (self.library.deferring_index(self.key) if bulk else nullcontext()), RayJob(self.cluster) as job:
            cpus, gpus = job.resources()
            progress.messages.append(f"Sending {len(work):,} photo(s) in {len(rows):,} shard(s) to the Ray cluster "
                                     f"({cpus:g} CPUs, {gpus:g} GPUs); shards in {self.shards}.")
            yield progress.snapshot()
            progress.messages = []
            for done in job.run(rows, model.source, model.ce_source, model.precision, self.token_format,
                                self.shards, decode_size=self.decode_size()):
                if self.cancel.cancelled:
                    return True
                self.merge_shard(done["shard"], progress)
                self._advance(progress, done["photos"], None, start)
                yield progress.snapshot()
                progress.messages, progress.skipped_files = [], []
            if bulk:
                progress.messages.append(f"Building the search index of {self.store.count_photos(self.key):,} "
                                         "photos from the library database.")
                yield progress.snapshot()
                progress.messages = []
        return False
