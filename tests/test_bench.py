"""The benchmark reports every figure the performance page lists (values are not timed here)."""

from __future__ import annotations

from conftest import make_photo
from engine.bench import clustered_vectors, far_queries, run_bench, synthetic_jpeg


def test_bench_reports_each_figure(tiny_model, tmp_path):
    folder = tmp_path / "photos"
    for i in range(6):
        make_photo(folder / f"{i}.png", seed=i, size=(80, 60))
    curve = []
    figures = {f.name: f for f in run_bench(tiny_model, str(folder), photos=6, sizes=(500, 2000), curve=curve,
                                           workdir=str(tmp_path))}
    for name in ("index_photos_per_s", "decode_12mp_jpeg_ms", "text_embed_ms", "image_embed_ms",
                 "faiss_search_ms_2k", "faiss_recall20_2k", "rerank_ms_k20_cached", "rerank_first_update_ms_k20",
                 "rerank_ms_k20_uncached", "query_ms_2k_k20", "disk_bytes_per_photo",
                 "disk_bytes_per_photo_no_cache", "rss_mb", "device", "threads", "precision"):
        assert name in figures, name
    assert 0.95 <= figures["faiss_recall20_2k"].value <= 1.0  # exact search at this size
    assert figures["disk_bytes_per_photo"].value > figures["disk_bytes_per_photo_no_cache"].value > 0
    assert figures["rerank_first_update_ms_k20"].value <= figures["rerank_ms_k20_cached"].value
    assert [c[0] for c in curve] == [500, 2000] and all(c[2] >= c[1] for c in curve)
    assert list(tmp_path.glob("picsift-bench-*")) == []  # its temporary library is gone


def test_synthetic_inputs_look_like_real_ones():
    import numpy as np

    from engine.imaging import decode

    jpeg = synthetic_jpeg(800, 600)
    assert decode(jpeg).width == 800
    v = clustered_vectors(5000, 32)
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    q = far_queries(v, 50)
    nearest = (q @ v.T).max(axis=1)
    assert 0.2 < nearest.mean() < 0.9  # text-like: well away from every photo vector


def test_bench_runs_where_there_is_no_resource_module(tiny_model_dir, tmp_path, monkeypatch, capsys):
    """Windows has neither `resource` nor /proc: the command still runs and leaves memory out."""
    import importlib
    import json
    import sys

    from engine.cli import main

    monkeypatch.setitem(sys.modules, "resource", None)  # `import resource` now fails, as on Windows
    monkeypatch.delitem(sys.modules, "engine.bench", raising=False)
    bench = importlib.import_module("engine.bench")  # the command's own import, done afresh
    monkeypatch.setattr(bench, "PROC_STATUS", tmp_path / "no-proc" / "status")
    assert bench._rss_mb() is None

    folder = tmp_path / "photos"
    for i in range(3):
        make_photo(folder / f"{i}.png", seed=i, size=(80, 60))
    rc = main(["bench", str(folder), "--photos", "3", "--sizes", "300", "--model", str(tiny_model_dir), "--json"])
    out, err = capsys.readouterr()
    assert rc == 0, err
    names = [f["name"] for f in json.loads(out)]
    assert "index_photos_per_s" in names and "query_ms_300_k20" in names
    assert "rss_mb" not in names
