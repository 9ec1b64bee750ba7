"""A cluster job's output: Parquet shards, one per batch of photos sent out, written where the cluster can write
(a local folder for a local cluster, any fsspec URL otherwise) and merged into the library afterwards.

A shard holds, a row per photo: the file's path, size and modification time as the job saw them, its content
hash, its size in pixels and date taken, the BE vector (float32 bytes), each reranker's and the LI stage's
features encoded as the library stores them, or the reason the photo could not be read. Its file name is the
hash of the photo list it was made from, so a retried task rewrites the same shard and a photo is never in two
of one job's shards. A shard is written to a temporary name and renamed, so a killed worker leaves none half
written under the final name.
"""

from __future__ import annotations

import hashlib
import io
import json
import uuid
from dataclasses import dataclass, field
from typing import Iterator

SUFFIX = ".parquet"
FORMAT = 1


@dataclass
class ShardRow:
    path: str
    size: int
    mtime_ns: int
    hash: str | None = None
    width: int | None = None
    height: int | None = None
    taken: float | None = None
    error: str | None = None
    vector: bytes | None = None  # float32, the BE's dimension
    # stage key -> (format, (n, h), bytes): engine.token_cache formats for rerankers, "li" for LI tokens
    features: dict = field(default_factory=dict)


def shard_name(be_key: str, entries: list[tuple[str, int, int]]) -> str:
    """The name of the shard made from these (path, size, mtime_ns) entries for this BE."""
    h = hashlib.blake2b(digest_size=12)
    h.update(be_key.encode())
    for path, size, mtime_ns in entries:
        h.update(f"\0{path}\0{size}\0{mtime_ns}".encode("utf-8", "surrogatepass"))
    return f"shard-{h.hexdigest()}{SUFFIX}"


def _schema(be_key: str):
    import pyarrow as pa

    feature = pa.struct([("stage", pa.string()), ("fmt", pa.string()), ("n", pa.int32()), ("h", pa.int32()),
                         ("data", pa.large_binary())])
    return pa.schema([("path", pa.string()), ("size", pa.int64()), ("mtime_ns", pa.int64()), ("hash", pa.string()),
                      ("width", pa.int32()), ("height", pa.int32()), ("taken", pa.float64()),
                      ("error", pa.string()), ("vector", pa.binary()), ("features", pa.list_(feature))],
                     metadata={"picsift": json.dumps({"format": FORMAT, "be_key": be_key})})


def _fs(url: str):
    import fsspec

    return fsspec.core.url_to_fs(url)


def join(url: str, name: str) -> str:
    return url.rstrip("/") + "/" + name


def write_shard(url: str, name: str, be_key: str, rows: list[ShardRow]) -> None:
    """Write one shard atomically into the folder `url`."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_pylist([{
        "path": r.path, "size": r.size, "mtime_ns": r.mtime_ns, "hash": r.hash, "width": r.width,
        "height": r.height, "taken": r.taken, "error": r.error, "vector": r.vector,
        "features": [{"stage": k, "fmt": f, "n": s[0], "h": s[1], "data": b} for k, (f, s, b) in r.features.items()],
    } for r in rows], schema=_schema(be_key))
    buf = io.BytesIO()
    pq.write_table(table, buf)
    fs, folder = _fs(url)
    fs.makedirs(folder, exist_ok=True)
    final = join(folder, name)
    tmp = join(folder, f".{name}.{uuid.uuid4().hex}.tmp")
    with fs.open(tmp, "wb") as f:
        f.write(buf.getvalue())
    fs.mv(tmp, final)


def list_shards(url: str) -> list[str]:
    """The shard names in the folder `url` (none when it does not exist), in name order."""
    fs, folder = _fs(url)
    if not fs.exists(folder):
        return []
    names = [p.rstrip("/").rsplit("/", 1)[-1] for p in fs.ls(folder, detail=False)]
    return sorted(n for n in names if n.startswith("shard-") and n.endswith(SUFFIX))


def read_shard(url: str, name: str) -> tuple[str, list[ShardRow]]:
    """(the BE key it was made for, its rows). Raises ValueError for a file that is not a shard of this format."""
    import pyarrow.parquet as pq

    fs, folder = _fs(url)
    with fs.open(join(folder, name), "rb") as f:
        try:
            table = pq.read_table(f)
        except Exception as exc:
            raise ValueError(f"{name} is not a readable shard: {exc}") from exc
    meta = json.loads((table.schema.metadata or {}).get(b"picsift", b"{}"))
    if meta.get("format") != FORMAT:
        raise ValueError(f"{name} is not a picsift shard of format {FORMAT}")
    rows = []
    for r in table.to_pylist():
        feats = {f["stage"]: (f["fmt"], (f["n"], f["h"]), f["data"]) for f in r.pop("features") or []}
        rows.append(ShardRow(**r, features=feats))
    return meta["be_key"], rows


def remove_shard(url: str, name: str) -> None:
    fs, folder = _fs(url)
    try:
        fs.rm(join(folder, name))
    except FileNotFoundError:
        pass


def iter_batches(rows: list[ShardRow], size: int) -> Iterator[list[ShardRow]]:
    for a in range(0, len(rows), size):
        yield rows[a:a + size]
