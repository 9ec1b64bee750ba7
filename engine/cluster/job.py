"""The Ray side of `picsift index --cluster`: the photo list becomes a Ray Data dataset (a row per shard's photo
list), an actor pool of ShardEncoders (engine.cluster.worker) turns each row into a Parquet shard, and the driver
hears of each shard as it is written, so the library merges it while the others are still being encoded.

Ray is an optional extra (pip install 'picsift[cluster]'), imported only here and only when asked for.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Iterator

from ..errors import PicsiftError
from ..index.scanner import FileEntry
from .shards import shard_name

SHARD_PHOTOS = 256  # photos a shard: a few MB of vectors and tokens, and a retry redoes at most this many


class ClusterError(PicsiftError):
    pass


@dataclass
class ClusterOptions:
    address: str | None = None  # None: a local cluster started for the job; else "ray://host:port" or "auto"
    shards: str | None = None  # where shards are written (a folder or an fsspec URL); default the library's
    actors: int | None = None  # encoder actors (default: one per GPU, else one per 2 CPUs of the cluster)
    shard_photos: int = SHARD_PHOTOS
    num_cpus: int | None = None  # a local cluster's CPUs (default: the machine's)


def parse_cluster(value: str) -> str | None:
    """--cluster ray (a local cluster, None) or ray://ADDRESS (an existing one); anything else is an error."""
    if value == "ray":
        return None
    if value.startswith("ray://") and len(value) > len("ray://"):
        return value
    raise ClusterError(f"--cluster takes ray (a local Ray cluster started for the job) or ray://ADDRESS "
                       f"(an existing one), not '{value}'")


def import_ray():
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError as exc:
        raise ClusterError(f"Indexing on a cluster needs Ray: pip install 'picsift[cluster]' ({exc})") from exc
    return ray


def shard_lists(entries: list[FileEntry], be_key: str, size: int) -> list[dict]:
    """The dataset's rows: each shard's name and photo list (path, size, mtime_ns), in the walk's order."""
    rows = []
    for a in range(0, len(entries), size):
        chunk = [(e.path, e.size, e.mtime_ns) for e in entries[a:a + size]]
        rows.append({"shard": shard_name(be_key, chunk), "entries": json.dumps(chunk)})
    return rows


class RayJob:
    """One cluster connection for an indexing run: started (or joined) on enter, shut down on exit."""

    def __init__(self, options: ClusterOptions):
        self.o = options
        self.ray = import_ray()
        self._started = False

    def __enter__(self) -> "RayJob":
        ray = self.ray
        if ray.is_initialized():
            return self
        try:
            if self.o.address is None:
                ray.init(num_cpus=self.o.num_cpus, include_dashboard=False, log_to_driver=False,
                         configure_logging=False)
            else:
                ray.init(address=self.o.address, log_to_driver=False, configure_logging=False)
        except Exception as exc:  # ConnectionError, a timeout, a version mismatch: one sentence
            where = "start a local Ray cluster" if self.o.address is None else f"reach the Ray cluster at {self.o.address}"
            raise ClusterError(f"Could not {where}: {str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__}") from exc
        self._started = True
        return self

    def __exit__(self, *exc) -> None:
        if self._started:
            self.ray.shutdown()

    def resources(self) -> tuple[float, float]:
        r = self.ray.cluster_resources()
        return float(r.get("CPU", 0)), float(r.get("GPU", 0))

    def run(self, rows: list[dict], model: str, ce_model: str | None, precision: str, token_format: str,
            shards: str, decode_size: int | None = None) -> Iterator[dict]:
        """Encode every shard of `rows`, decoding each photo at `decode_size` (default the model's input size);
        yields {"shard", "photos", "errors"} as each is written."""
        import ray.data

        from .worker import ShardEncoder

        if not rows:
            return
        cpus, gpus = self.resources()
        actors = self.o.actors or (int(gpus) if gpus >= 1 else max(1, int(cpus) // 2))
        actors = max(1, min(actors, len(rows)))
        per_actor = {"num_gpus": 1} if gpus >= 1 else {"num_cpus": max(1, int(cpus) // actors) if cpus else 1}
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False
        ctx.verbose_progress = False
        if hasattr(ctx, "actor_task_retry_on_errors"):
            ctx.actor_task_retry_on_errors = False  # a photo's error is data; a dead worker is retried by Ray
        env = {k: v for k, v in os.environ.items() if k.startswith(("PICSIFT_", "HF_", "TRANSFORMERS_"))}
        ds = ray.data.from_items(rows, override_num_blocks=len(rows))
        out = ds.map_batches(
            ShardEncoder, batch_size=1, batch_format="numpy", concurrency=actors,
            fn_constructor_kwargs={"model": model, "ce_model": ce_model, "precision": precision,
                                   "token_format": token_format, "shards": shards, "decode_size": decode_size},
            runtime_env={"env_vars": env} if env else None, **per_actor)  # Ray Data's actors: restarted,
        # their tasks retried, when a worker dies (max_restarts and max_task_retries -1 by default)
        for row in out.iter_rows():
            yield {"shard": str(row["shard"]), "photos": int(row["photos"]), "errors": int(row["errors"])}
