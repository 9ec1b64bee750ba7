"""`picsift bench-scale`: synthetic vectors through a real library's merge, its on-disk index, a fresh process."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest


def test_bench_scale_builds_an_on_disk_index_and_measures_it_from_a_fresh_process(tmp_path):
    work = tmp_path / "scale"
    out = subprocess.run([sys.executable, "-m", "picsift.engine.cli", "bench-scale", str(work), "--photos", "12000",
                          "--shard-photos", "5000", "--dim", "32", "--queries", "100", "--ondisk-limit", "10000",
                          "--json", "-q"], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    r = json.loads(out.stdout.strip().splitlines()[-1])
    assert r["photos"] == 12000 and r["index"]["kind"] == "ivfpq" and r["index"]["ntotal"] == 12000
    assert r["index"]["factory"].endswith(",PQ8x8") and r["index"]["base_ntotal"] == 12000
    # codes and ids of every photo, and its float16 vector, are on disk
    assert r["index_bytes"]["lists (codes and ids)"] >= 12000 * (8 + 8)
    assert r["index_bytes"]["exact vectors (float16)"] >= 12000 * 32 * 2
    assert r["database_bytes"] > 12000 * 32 * 4
    assert 0.5 < r["recall_at_20"] <= 1.0 and r["query_ms_median"] > 0
    assert r["search_peak_mb"] > 0 and r["machine"]["matmul_gflops_fp32"] > 0
    assert json.loads((work / "scale.json").read_text())["recall_at_20"] == r["recall_at_20"]
    # A folder that holds a library already is refused, not added to
    again = subprocess.run([sys.executable, "-m", "picsift.engine.cli", "bench-scale", str(work), "--photos", "100"],
                           capture_output=True, text=True, timeout=120)
    assert again.returncode != 0 and "holds a library already" in again.stderr
