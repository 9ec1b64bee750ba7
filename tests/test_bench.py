"""The benchmark: every figure it promises is measured on work that was checked to happen, its arithmetic
is right, and it stops with a clear error instead of reporting figures of nothing. Values are not timed here."""

from __future__ import annotations

import os

import numpy as np
import pytest

from conftest import make_photo
from picsift.engine.bench import (
    K,
    BenchError,
    blip_ce_flops,
    blip_text_flops,
    blip_vision_flops,
    clustered_vectors,
    run_bench,
    synthetic_jpeg,
    trained_like,
)

SIZES = (300, 1000)  # 300 is searched exactly, 1000 with an IVF index (exact_limit 500)
CACHED_PHOTOS = 300  # the large-library figures run under a rerank-cache budget of this many photos


def _token_bytes(fmt: str, tokens: int, width: int) -> int:
    """Bytes one photo's CE tokens take in the rerank cache, from the format's layout."""
    if fmt == "fp32":
        return tokens * width * 4
    return 4 * width + 4 * tokens + tokens * width  # int8: a scale per channel, one per token, a byte per value


@pytest.fixture(scope="module")
def bench_figures(tiny_model, tmp_path_factory):
    """One bench run of the tiny model over 24 photos, given a folder relative to the working directory (the
    bench once linked relative paths into its temporary folder, indexed nothing and reported figures anyway)."""
    from picsift.engine.token_cache import format_for

    root = tmp_path_factory.mktemp("bench")
    for i in range(24):
        make_photo(root / "photos" / f"{i:02d}.png", seed=i, size=(80, 60))
    shape = tiny_model.ce.feature_shape
    budget = CACHED_PHOTOS * _token_bytes(format_for(tiny_model), *shape)
    curve: list = []
    cwd = os.getcwd()
    os.chdir(root)
    try:
        figures = list(run_bench(tiny_model, "photos", photos=24, sizes=SIZES, curve=curve, workdir=str(root),
                                 queries=10, cache_budget_bytes=budget, repeat_queries=8, repeat_times=2,
                                 cli_runs=1, exact_limit=500))
    finally:
        os.chdir(cwd)
    return {f.name: f for f in figures}, curve, root


NAMES = [
    "device", "threads", "precision", "cpu", "machine_matmul_gflops_fp32", "machine_matmul_gflops_bf16",
    "decode_12mp_jpeg_ms", "decode_12mp_jpeg_full_ms", "index_photos_per_s", "disk_bytes_per_photo",
    "disk_bytes_per_photo_no_cache", "rerank_cache_bytes_per_photo", "text_embed_ms", "image_embed_ms",
    "vision_encoder_ms_per_photo", f"ce_score_ms_k{K}", "model_gflop_per_photo", "model_gflop_per_query",
    "model_gflop_per_ce_pair", "vision_encoder_share_of_matmul", "text_embed_share_of_matmul",
    f"ce_score_k{K}_share_of_matmul", f"rerank_ms_k{K}_cached", f"rerank_first_update_ms_k{K}",
    f"rerank_ms_k{K}_uncached", f"rerank_first_update_ms_k{K}_uncached", "vision_encoder_ms_per_photo_fp32",
    "vision_encoder_ms_per_photo_bf16", f"ce_ms_k{K}_fp32", f"ce_ms_k{K}_bf16", "bf16_ce_prob_max_abs_diff",
    "bf16_top5_overlap", "bf16_prob_spread", "vision_encoder_ms_per_photo_openvino_fp32",
    "vision_encoder_ms_per_photo_openvino_bf16", "vision_encoder_fp32_share_of_matmul",
    "vision_encoder_openvino_fp32_share_of_matmul", "openvino_fp32_top5_overlap", "openvino_bf16_top5_overlap", "rss_mb", "repeat_query_cache_hit_rate",
    "repeat_query_noevict_hit_rate", "repeat_query_ms", "search_cli_wall_ms_k0", f"search_cli_wall_ms_k{K}",
] + [f"{stem}_{label}" for label in ("300", "1k") for stem in (
    "faiss_search_ms", f"faiss_recall{K}", "query_cache_hit_rate", "query_first_score_ms", "query_be_ms")] \
  + [f"query_ms_{label}_k{K}{tail}" for label in ("300", "1k") for tail in ("", "_cached")]


def test_bench_reports_every_figure_with_its_conditions(bench_figures):
    figures, curve, root = bench_figures
    missing = [n for n in NAMES if n not in figures]
    assert not missing
    assert all(f.note for f in figures.values()), [f.name for f in figures.values() if not f.note]
    assert figures["index_photos_per_s"].note.startswith("24 photos")  # every photo given was indexed
    assert [c[0] for c in curve] == list(SIZES)
    assert [c[4] for c in curve] == pytest.approx([figures[f"query_cache_hit_rate_{n}"].value for n in ("300", "1k")])
    assert list(root.glob("picsift-bench-*")) == []  # its temporary library is gone


def test_large_library_hit_rates_follow_the_cache_budget(bench_figures, tiny_model):
    from picsift.engine.token_cache import format_for

    figures, _, _ = bench_figures
    entry = _token_bytes(format_for(tiny_model), *tiny_model.ce.feature_shape)
    assert figures["rerank_cache_bytes_per_photo"].value == entry
    for n, label in zip(SIZES, ("300", "1k")):
        expected = min(1.0, CACHED_PHOTOS / n)
        rate = figures[f"query_cache_hit_rate_{label}"].value
        assert 0.0 <= rate <= 1.0
        # 10 queries x 20 hits; hits of different queries overlap, so allow for fewer independent draws
        assert abs(rate - expected) <= 0.15, (label, rate, expected)
    assert figures["query_cache_hit_rate_300"].value == 1.0
    for name in ("repeat_query_cache_hit_rate", "repeat_query_noevict_hit_rate"):
        assert 0.0 <= figures[name].value <= 1.0
    # Asked twice each, a query's second ask can hit; an empty cache can never hit every lookup.
    assert 0.0 < figures["repeat_query_cache_hit_rate"].value < 1.0


def test_faiss_recall_is_measured_on_text_like_queries(bench_figures):
    figures, _, _ = bench_figures
    assert figures[f"faiss_recall{K}_300"].value == 1.0  # exact search: any id mix-up would show here
    assert "flat" in figures[f"faiss_recall{K}_300"].note and "ivf" in figures[f"faiss_recall{K}_1k"].note
    assert 0.5 < figures[f"faiss_recall{K}_1k"].value <= 1.0


def test_bf16_agreement_figures(bench_figures):
    figures, _, _ = bench_figures
    assert 0.0 <= figures["bf16_ce_prob_max_abs_diff"].value <= 1.0
    assert 0.0 <= figures["bf16_top5_overlap"].value <= 1.0
    assert figures["bf16_prob_spread"].value > 0.01  # the trained-like copy's scores spread: agreement means something
    assert "fp32" in figures["bf16_ce_prob_max_abs_diff"].note


def test_openvino_path_agrees_with_torch(bench_figures):
    """OpenVINO's fp32 vision encoder feeds the CE the tokens torch's does: same top 5, probabilities and BE
    vectors equal to rounding (bf16 is only held to a loose bound: the tiny model's tokens are small)."""
    figures, _, _ = bench_figures
    assert figures["openvino_fp32_ce_prob_max_abs_diff"].value < 1e-3
    assert figures["openvino_fp32_top5_overlap"].value == 1.0
    assert figures["openvino_fp32_be_cos_min"].value > 0.9999
    assert figures["openvino_bf16_be_cos_min"].value > 0.99
    assert figures["vision_encoder_ms_per_photo_openvino_fp32"].value > 0


def test_arithmetic_matches_torch_flop_counter(tiny_model):
    """The analytic count of the model's operations equals torch's count of the same forward passes."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from picsift.engine.models.blip_ce import itm_logits

    ckpt = tiny_model.ce.ckpt
    model, cfg = ckpt.model, ckpt.model.config
    inputs = ckpt.text_inputs(["a dog runs on the beach"])
    tokens = int(inputs["input_ids"].shape[1])
    px = torch.zeros(1, 3, cfg.vision_config.image_size, cfg.vision_config.image_size)
    with torch.inference_mode():
        with FlopCounterMode(display=False) as vision:  # the reference forward: its attention is plain matmuls
            model.vision_proj(model.vision_model(pixel_values=px).last_hidden_state[:, 0])
        with FlopCounterMode(display=False) as text:
            hidden = model.text_encoder(**inputs).last_hidden_state
            model.text_proj(hidden[:, 0])
        image = torch.zeros(1, *ckpt.token_shape)
        with FlopCounterMode(display=False) as ce:
            itm_logits(model, inputs["input_ids"], inputs["attention_mask"], image)
    assert blip_vision_flops(cfg) == vision.get_total_flops()
    assert blip_text_flops(cfg, tokens) == text.get_total_flops()
    assert blip_ce_flops(cfg, tokens) == ce.get_total_flops()


def test_bench_fails_when_no_photos(tiny_model, tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(BenchError, match="no photos found"):
        list(run_bench(tiny_model, str(tmp_path / "empty"), sizes=SIZES, workdir=str(tmp_path)))
    with pytest.raises(BenchError, match="not a folder"):
        list(run_bench(tiny_model, str(tmp_path / "missing"), sizes=SIZES, workdir=str(tmp_path)))


@pytest.mark.parametrize("good", [0, 21])
def test_bench_fails_when_photos_do_not_index(tiny_model, tmp_path, good):
    """Broken files (garbage, a dangling link) are not indexed; the bench says so instead of timing nothing."""
    folder = tmp_path / "photos"
    for i in range(good):
        make_photo(folder / f"good_{i:02d}.png", seed=i)
    folder.mkdir(exist_ok=True)
    for i in range(22 - good):
        (folder / f"broken_{i:02d}.jpg").write_bytes(b"not a jpeg %d" % i)
    os.symlink(tmp_path / "nowhere.jpg", folder / "dangling.jpg")
    with pytest.raises(BenchError, match=rf"indexing embedded {good} of the 23 photos.*broken_00.jpg"):
        list(run_bench(tiny_model, str(folder), photos=48, sizes=SIZES, workdir=str(tmp_path)))
    assert list(tmp_path.glob("picsift-bench-*")) == []


def test_bench_command_exits_with_the_error(tiny_model_dir, tmp_path, capsys):
    from picsift.engine.cli import EXIT_ERROR, main

    (tmp_path / "empty").mkdir()
    assert main(["bench", str(tmp_path / "empty"), "--model", str(tiny_model_dir), "--device", "cpu"]) == EXIT_ERROR
    assert "no photos found" in capsys.readouterr().err


def test_trained_like_keeps_weights_that_already_look_trained(tiny_model):
    module = tiny_model.ce.ckpt.model  # random biases and LayerNorms, a moderate gain: used as it is
    same, how = trained_like(module)
    assert same is module and how.startswith("the weights as loaded")


def test_trained_like_fixes_a_copy_of_a_fresh_chaotic_random_network(tiny_model):
    """Weights drawn far too wide, identity LayerNorms, zero biases: in such a network any rounding gives
    another answer, which says nothing about a trained model. The copy gets a trained gain, random norms and
    biases, and outlier channels; the model handed in is left alone."""
    import copy

    import torch

    from picsift.engine.bench import TRAINED_GAIN, _gain

    fresh = copy.deepcopy(tiny_model.ce.ckpt.model)
    with torch.no_grad():
        for m in fresh.modules():
            if isinstance(m, torch.nn.LayerNorm):
                m.weight.fill_(1.0)
                m.bias.zero_()
            elif isinstance(m, (torch.nn.Linear, torch.nn.Conv2d)):
                m.weight.mul_(5.0)
                if m.bias is not None:
                    m.bias.zero_()
    before = {k: v.clone() for k, v in fresh.state_dict().items()}
    tamed, how = trained_like(fresh)
    assert tamed is not fresh and "gain" in how and "LayerNorms" in how and "channel" in how
    assert all(torch.equal(before[k], v) for k, v in fresh.state_dict().items())
    gains = [_gain(m) for m in tamed.modules() if isinstance(m, torch.nn.Linear)]
    assert max(abs(g - TRAINED_GAIN) for g in gains) < 0.05 * TRAINED_GAIN  # outlier readers move a little
    norm = tamed.vision_model.post_layernorm.weight
    assert norm.abs().max() > 10 * norm.abs().median()  # outlier channels
    assert not torch.all(tamed.text_encoder.encoder.layer[0].output.LayerNorm.weight == 1)


def test_cpu_description_reads_the_flags(tmp_path, monkeypatch):
    import picsift.engine.machine as machine

    info = tmp_path / "cpuinfo"
    info.write_text("model name\t: Test CPU\nflags\t\t: fpu sse avx2 fma avx512f avx512_bf16\n")
    monkeypatch.setattr(machine, "CPUINFO", info)
    assert machine.has_bf16_instructions()
    assert machine.describe_cpu() == "Test CPU; avx2, fma, avx512f, avx512_bf16"
    info.write_text("model name\t: Old CPU\nflags\t\t: fpu sse avx2\n")
    assert not machine.has_bf16_instructions()


def test_synthetic_inputs_look_like_real_ones():
    from picsift.engine.index.imaging import decode

    jpeg = synthetic_jpeg(800, 600)
    assert decode(jpeg).width == 800
    v = clustered_vectors(5000, 32)
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)


def test_bench_imports_where_there_is_no_resource_module(tmp_path, monkeypatch):
    """Windows has neither `resource` nor /proc: the module imports and leaves memory out (no rss_mb figure)."""
    import importlib
    import sys

    monkeypatch.setitem(sys.modules, "resource", None)  # `import resource` now fails, as on Windows
    monkeypatch.delitem(sys.modules, "picsift.engine.bench", raising=False)
    bench = importlib.import_module("picsift.engine.bench")
    monkeypatch.setattr(bench, "PROC_STATUS", tmp_path / "no-proc" / "status")
    assert bench._rss_mb() is None


def test_bench_reports_the_li_stage_and_the_pooled_ce(bench_figures):
    figures = bench_figures[0]
    # the tiny model has no LI head: the default shape, 32 tokens of width 128 in int8 with a scale each
    assert figures["li_bytes_per_photo"].value == 32 * 128 + 32 * 4
    assert "no LI head" in figures["li_score_ms_200"].note
    assert 0 < figures["li_score_ms_200"].value < figures["li_score_ms_1000"].value
    # the tiny model's 4x4 patch grid pooled 2x2: 17 -> 5 tokens
    assert "reading 5 tokens (patch grid pooled 2x2) instead of 17" in figures[f"ce_score_ms_k{K}_pooled2x2"].note
    # one photo's rerank cache entry: 17 tokens of 32 in int8, a scale per channel and one per token
    assert figures["ce_cache_bytes_per_photo"].value == 17 * 32 + 32 * 4 + 17 * 4
