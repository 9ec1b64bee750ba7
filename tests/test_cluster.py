"""Indexing on a cluster: shards written by the encoder actor, merged idempotently and resumably into the library,
and (where Ray is installed: the cluster extra) a local Ray cluster's library equal to a locally indexed one."""

from __future__ import annotations

import json
import os
import shutil
from types import SimpleNamespace

import numpy as np
import pytest

pytest.importorskip("pyarrow", reason="shards need pyarrow and fsspec: the cluster extra (pip install -e '.[cluster]')")

from conftest import make_photo
from picsift.engine.cluster.indexer import ClusterIndexer
from picsift.engine.cluster.job import ClusterError, ClusterOptions, parse_cluster, shard_lists
from picsift.engine.cluster.shards import ShardRow, list_shards, read_shard, shard_name, write_shard
from picsift.engine.cluster.worker import CRASH_ENV, ShardEncoder
from picsift.engine.index.indexer import index_folders
from picsift.engine.index.scanner import FileEntry, scan
from picsift.engine.library import Library
from picsift.engine.search.searcher import Searcher
from picsift.engine.token_cache import format_for


def local_library(tmp_path, model, folder, name="local"):
    lib = Library(tmp_path / name)
    records = list(index_folders(lib, model, [str(folder)], text_reader=None))
    assert records[-1].phase == "done"
    return lib


def by_path(lib: Library) -> dict[str, np.ndarray]:
    ids, vecs = lib.store.vectors()
    paths = lib.store.paths(ids.tolist())
    return {paths[i]: v for i, v in zip(ids.tolist(), vecs)}


def write_job_shards(model_dir, model, folder, shards, size=5):
    """What the cluster's actors write for this folder, made here by the same actor object without Ray."""
    entries = scan(str(folder), frozenset()).files
    enc = ShardEncoder(str(model_dir), None, "fp32", format_for(model), str(shards), device="cpu")
    names = []
    for row in shard_lists(entries, model.be.key, size):
        rows = enc.encode([FileEntry(*e) for e in json.loads(row["entries"])])
        write_shard(str(shards), row["shard"], model.be.key, rows)
        names.append(row["shard"])
    return names


def test_shard_round_trip_and_names_follow_the_photo_list(tmp_path):
    rows = [ShardRow("/p/a.jpg", 10, 20, "h1", 4, 3, 1.5, None, np.arange(4, dtype=np.float32).tobytes(),
                     {"ce/x": ("int8", (2, 3), b"\x01\x02"), "li/y": ("li", (1, 2), b"\x03")}),
            ShardRow("/p/b.png", 11, 21, None, error="not an image")]
    write_shard(str(tmp_path), "shard-x.parquet", "be/key", rows)
    key, back = read_shard(str(tmp_path), "shard-x.parquet")
    assert key == "be/key" and back == rows
    assert list_shards(str(tmp_path)) == ["shard-x.parquet"]  # no temporary file is left beside it
    a = shard_name("be/key", [("/p/a.jpg", 10, 20)])
    assert a == shard_name("be/key", [("/p/a.jpg", 10, 20)])
    assert a != shard_name("be/key", [("/p/a.jpg", 10, 21)]) != shard_name("be/other", [("/p/a.jpg", 10, 20)])


def test_a_library_merged_from_shards_equals_a_locally_indexed_one(tmp_path, tiny_model_dir, tiny_model,
                                                                   photo_folder):
    local = local_library(tmp_path, tiny_model, photo_folder)
    lib = Library(tmp_path / "merged")
    shards = lib.folder / "job-shards"
    names = write_job_shards(tiny_model_dir, tiny_model, photo_folder, shards)
    assert len(names) == 3  # 12 photos, 5 a shard
    ix = ClusterIndexer(lib, tiny_model, ClusterOptions(shards=str(shards)), text_reader=None)
    last = list(ix.run([str(photo_folder)]))[-1]
    assert last.phase == "done" and last.unchanged == 12  # all merged before the walk: nothing sent out
    a, b = by_path(local), by_path(lib)
    assert set(a) == set(b) and len(b) == 12
    for p in a:
        assert float(a[p] @ b[p]) >= 0.9999
    assert list_shards(str(shards)) == []  # merged shards are removed
    assert lib.tokens.hashes() == local.tokens.hashes()  # the rerank cache filled as locally
    q = [h.path for h in Searcher(lib, tiny_model).search("a red square", n=12, k=4)]
    assert q == [h.path for h in Searcher(local, tiny_model).search("a red square", n=12, k=4)]
    local.close()
    lib.close()


def test_merging_a_shard_twice_changes_nothing_and_a_killed_merge_finishes_next_run(tmp_path, tiny_model_dir,
                                                                                   tiny_model, photo_folder):
    lib = Library(tmp_path / "lib")
    shards = tmp_path / "shards"
    names = write_job_shards(tiny_model_dir, tiny_model, photo_folder, shards)
    keep = tmp_path / "copy"
    shutil.copytree(shards, keep)
    ix = ClusterIndexer(lib, tiny_model, ClusterOptions(shards=str(shards)), text_reader=None)
    lib.attach_model(tiny_model)
    from picsift.engine.index.indexer import IndexProgress

    progress = IndexProgress("indexing")
    assert ix.merge_shard(names[0], progress) == 5  # the run is killed after its first shard
    lib.close()

    lib = Library(tmp_path / "lib")
    assert lib.store.count_photos() == 5
    ix = ClusterIndexer(lib, tiny_model, ClusterOptions(shards=str(shards)), text_reader=None)
    last = list(ix.run([str(photo_folder)]))[-1]
    assert last.phase == "done" and last.embedded == 7 and lib.store.count_photos() == 12
    before = (by_path(lib), lib.store.generation(), lib.tokens.count())
    # the same shards once more: recorded as merged, so nothing happens
    for n in names:
        shutil.copy(keep / n, shards / n)
    assert [ix.merge_shard(n, IndexProgress("indexing")) for n in names] == [0, 0, 0]
    # and with the record gone, the merge's own rules keep every photo once, as it is
    lib.store._exec("DELETE FROM merged_shards")
    for n in names:
        shutil.copy(keep / n, shards / n)
    progress = IndexProgress("indexing")
    assert [ix.merge_shard(n, progress) for n in names] == [5, 5, 2]
    assert progress.embedded == 0 and progress.unchanged == 12
    after = by_path(lib)
    assert set(after) == set(before[0]) and all(np.array_equal(after[p], before[0][p]) for p in after)
    assert lib.tokens.count() == before[2]
    ids, _ = lib.store.vectors()
    assert len(ids) == 12 and lib.index.index.ntotal == 12
    lib.close()


def test_bad_photos_come_back_with_their_reasons_and_a_changed_file_is_left_for_the_walk(
        tmp_path, tiny_model_dir, tiny_model, photo_folder):
    bad = photo_folder / "bad"
    bad.mkdir()
    (bad / "zero.jpg").write_bytes(b"")
    (bad / "notes.png").write_text("this is not a picture\n")
    lib = Library(tmp_path / "lib")
    shards = tmp_path / "shards"
    write_job_shards(tiny_model_dir, tiny_model, photo_folder, shards, size=20)
    changed = sorted(str(p) for p in photo_folder.glob("home/*.png"))[0]
    make_photo(changed, seed=99, size=(60, 44))  # after the job read it: its shard row no longer holds
    ix = ClusterIndexer(lib, tiny_model, ClusterOptions(shards=str(shards)), text_reader=None)
    from picsift.engine.index.indexer import IndexProgress

    lib.attach_model(tiny_model)
    progress = IndexProgress("indexing")
    ix.merge_shard(list_shards(str(shards))[0], progress)
    reasons = {os.path.basename(e["path"]): e["reason"] for e in lib.store.errors()}
    assert "empty" in reasons["zero.jpg"] and "not an image" in reasons["notes.png"]
    assert any("changed or vanished" in m for m in progress.messages)
    assert changed not in by_path(lib) and len(by_path(lib)) == 11
    lib.close()


def test_cluster_addresses_are_checked():
    assert parse_cluster("ray") is None
    assert parse_cluster("ray://head:10001") == "ray://head:10001"
    for bad in ("spark", "ray://", "ray:/x"):
        with pytest.raises(ClusterError, match="--cluster takes ray"):
            parse_cluster(bad)


ray = pytest.importorskip("ray", reason="the cluster extra (pip install -e '.[cluster]') is not installed")


@pytest.fixture
def local_ray():  # shut down after its test, so that the unreachable-cluster test below can connect
    os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield
    ray.shutdown()


def test_index_through_a_local_ray_cluster_equals_local_indexing_even_when_a_worker_dies(
        tmp_path, tiny_model_dir, photo_folder, local_ray, monkeypatch):
    from picsift.engine.models import load_model

    model = load_model(str(tiny_model_dir), device="cpu", precision="fp32")
    local = local_library(tmp_path, model, photo_folder)
    victim = sorted(photo_folder.rglob("*.png"))[5]
    monkeypatch.setenv(CRASH_ENV, str(tmp_path / victim.name))  # the worker meeting it exits, once
    lib = Library(tmp_path / "ray")
    ix = ClusterIndexer(lib, model, ClusterOptions(actors=2, shard_photos=3), text_reader=None)
    records = list(ix.run([str(photo_folder)]))
    assert (tmp_path / (victim.name + ".crashed")).exists()  # a worker did die mid-job
    last = records[-1]
    assert last.phase == "done" and last.embedded == 12 and last.skipped == 0
    a, b = by_path(local), by_path(lib)
    assert set(a) == set(b)
    assert min(float(a[p] @ b[p]) for p in a) >= 0.9999
    ids, _ = lib.store.vectors()
    assert len(ids) == 12 and lib.index.index.ntotal == 12  # nothing lost, nothing doubled
    hits = lambda library: [h.path for h in Searcher(library, model).search("a blue circle", n=12, k=5)]
    assert hits(lib) == hits(local)
    again = list(ClusterIndexer(lib, model, ClusterOptions(), text_reader=None).run([str(photo_folder)]))[-1]
    assert again.unchanged == 12 and again.embedded == 0  # incremental: nothing went out again
    local.close()
    lib.close()


def test_an_unreachable_cluster_is_one_sentence(tmp_path, tiny_model, photo_folder):
    from picsift.engine.cluster.job import RayJob

    if ray.is_initialized():
        pytest.skip("a Ray connection is open in this process")
    with pytest.raises(ClusterError, match="Could not reach the Ray cluster at ray://127.0.0.1:9"):
        with RayJob(ClusterOptions(address="ray://127.0.0.1:9")):
            pass


class _Reader:
    """Reads no words, but is on: the indexer then decodes at the text check's size (CHECK_SIDE)."""

    key = "text/none"

    def read(self, image, larger=None):
        return SimpleNamespace(text="")


class _LocalJob:
    """RayJob's interface, run here: the actor class itself encodes each shard, with the arguments it is sent."""

    sent: dict = {}

    def __init__(self, options):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def resources(self):
        return 2.0, 0.0

    def run(self, rows, model, ce_model, precision, token_format, shards, decode_size=None):
        _LocalJob.sent = {"decode_size": decode_size}
        enc = ShardEncoder(model, ce_model, precision, token_format, shards, device="cpu", decode_size=decode_size)
        for row in rows:
            out = enc.encode([FileEntry(*e) for e in json.loads(row["entries"])])
            write_shard(shards, row["shard"], enc.model.be.key, out)
            yield {"shard": row["shard"], "photos": len(out), "errors": 0}


def test_the_job_decodes_photos_at_the_librarys_size_so_large_photos_get_the_same_vectors(
        tmp_path, tiny_model_dir, tiny_model, monkeypatch):
    """A library that reads words decodes photos at the text check's size, and the model's pixels are resized
    from that decode: the job must decode at the same size, or a large JPEG's vector differs from the local one."""
    from PIL import Image

    from picsift.engine.cluster import indexer as cluster_indexer
    from picsift.engine.index.ocr import CHECK_SIDE

    folder = tmp_path / "large"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):  # detail at every scale, so that decoding at another size gives other pixels
        small = rng.integers(0, 255, (60, 80, 3), dtype=np.uint8)
        big = np.asarray(Image.fromarray(small).resize((1600, 1200), Image.NEAREST)).astype(np.int16)
        big = np.clip(big + rng.integers(-40, 40, big.shape), 0, 255).astype(np.uint8)
        Image.fromarray(big).save(folder / f"{i}.jpg", quality=90)
    local = Library(tmp_path / "local")
    assert list(index_folders(local, tiny_model, [str(folder)], text_reader=_Reader()))[-1].phase == "done"
    monkeypatch.setattr(cluster_indexer, "RayJob", _LocalJob)
    results = {}
    for name, reader in (("same", _Reader()), ("model-size", None)):
        lib = Library(tmp_path / name)
        ix = ClusterIndexer(lib, tiny_model, ClusterOptions(), text_reader=reader)
        assert list(ix.run([str(folder)]))[-1].embedded == 3
        results[name] = (by_path(lib), _LocalJob.sent["decode_size"])
        lib.close()
    a = by_path(local)
    vectors, size = results["same"]
    assert size == max(CHECK_SIDE, tiny_model.image_size)
    assert min(float(a[p] @ vectors[p]) for p in a) >= 0.9999
    # The check is sensitive: decoded at the model's size instead, the vectors differ
    vectors, size = results["model-size"]
    assert size == tiny_model.image_size and min(float(a[p] @ vectors[p]) for p in a) < 0.9999
    local.close()
