"""What runs on the cluster: an actor that loads the library's model once and turns each shard's photo list into
a shard (engine.cluster.shards). Ray Data calls it through `map_batches`; it imports nothing of Ray itself, so it
is tested as a plain object too."""

from __future__ import annotations

import json
import os

import numpy as np

from ..index.imaging import read_file
from ..index.indexer import _Prepared, content_hash, decode_for_model, photo_error
from ..index.scanner import FileEntry
from .shards import ShardRow, write_shard

# A test (tests/test_cluster.py) names a file here: the worker that meets it exits its process at once, once,
# as a killed worker would; the marker file beside it says it happened.
CRASH_ENV = "PICSIFT_CLUSTER_TEST_CRASH_ON"


class ShardEncoder:
    """Loads the cascade once (device: this actor's GPU when Ray gave it one, else the CPU) and encodes shards."""

    def __init__(self, model: str, ce_model: str | None, precision: str, token_format: str, shards: str,
                 device: str | None = None, decode_size: int | None = None):
        from ..models import load_model

        if device is None:
            device = "cuda" if _ray_gpus() else "cpu"
        self.model = load_model(model, device=device, precision=precision, ce_model=ce_model)
        self.token_format = token_format
        self.shards = shards
        self.separate = bool(getattr(self.model, "ce_source", None))
        self.batch_size = getattr(self.model, "image_batch_size", 8)
        # the library's decode size (Indexer.decode_size): the same photo must give the same pixels as locally
        self.decode_size = decode_size or self.model.image_size

    def __call__(self, batch: dict) -> dict:
        names, photos, errors = [], [], []
        for name, entries in zip(batch["shard"], batch["entries"]):
            rows = self.encode([FileEntry(*e) for e in json.loads(entries)])
            write_shard(self.shards, str(name), self.model.be.key, rows)
            names.append(str(name))
            photos.append(len(rows))
            errors.append(sum(r.error is not None for r in rows))
        return {"shard": np.asarray(names), "photos": np.asarray(photos), "errors": np.asarray(errors)}

    def encode(self, entries: list[FileEntry]) -> list[ShardRow]:
        """One row per entry: its vector and features, or the reason it could not be read."""
        import torch

        from ..models.late import encode_tokens as encode_late
        from ..token_cache import encode_tokens

        rows, ready = [], []
        for e in entries:
            _crash_if_asked(e.path)
            row, prep = ShardRow(e.path, e.size, e.mtime_ns), _Prepared(e)
            try:
                data = read_file(e.path)
                row.hash = content_hash(data)
                decode_for_model(prep, data, self.model, self.decode_size, self.separate)
                row.width, row.height, row.taken = prep.width, prep.height, prep.taken
                ready.append((row, prep))
            except Exception as exc:  # recorded with its reason, as the local indexer does
                row.error = photo_error(exc)
            rows.append(row)
        li = getattr(self.model, "li", None)
        for a in range(0, len(ready), self.batch_size):
            chunk = ready[a:a + self.batch_size]
            images = [p.image for _, p in chunk] if self.separate else None
            enc = self.model.encode_pixels(torch.stack([p.pixels for _, p in chunk]), images)
            for i, (row, _) in enumerate(chunk):
                row.vector = np.ascontiguousarray(enc.vectors[i], np.float32).tobytes()
                for key, feats in enc.features.items():
                    f = np.asarray(feats[i], np.float32)
                    if li is not None and key == li.key:
                        row.features[key] = ("li", f.shape, encode_late(f))
                    else:
                        row.features[key] = (self.token_format, f.shape, encode_tokens(f, self.token_format))
        return rows


def _ray_gpus() -> list:
    try:
        import ray

        return ray.get_gpu_ids()
    except Exception:
        return []


def _crash_if_asked(path: str) -> None:
    target = os.environ.get(CRASH_ENV)
    if target and os.path.basename(path) == os.path.basename(target):
        marker = target + ".crashed"
        if not os.path.exists(marker):
            open(marker, "w").close()
            os._exit(1)
