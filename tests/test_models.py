"""The decomposed BE/CE fast path equals BLIP's own forward pass, and loading fails clearly."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import make_photo
from picsift.engine.errors import ModelNotFoundError
from picsift.engine.models import load_model
from picsift.engine.models.blip_ce import itm_logits
from picsift.engine.models.blip_vision import vision_tokens

QUERIES = ["a dog runs on the beach", "two children play football in the park", "a red car on the street at night"]


@pytest.fixture(scope="module")
def reference(tiny_model_dir):
    from transformers import AutoProcessor, BlipForImageTextRetrieval

    model = BlipForImageTextRetrieval.from_pretrained(str(tiny_model_dir)).eval()
    return model, AutoProcessor.from_pretrained(str(tiny_model_dir))


@pytest.fixture(scope="module")
def png_photos(tmp_path_factory):
    folder = tmp_path_factory.mktemp("png")
    return [make_photo(folder / f"p{i}.png", seed=100 + i, size=(64 + 8 * i, 48)) for i in range(4)]


def _reference(reference, image, text) -> dict:
    """Everything BlipForImageTextRetrieval's own forward computes for one (image, text) pair."""
    model, processor = reference
    inputs = processor(images=image, text=text, return_tensors="pt")
    with torch.no_grad():
        be = model(**inputs, use_itm_head=False)
        ce = model(**inputs, use_itm_head=True)
        image_vec = torch.nn.functional.normalize(model.vision_proj(be.last_hidden_state[:, 0, :]), dim=-1)
        text_vec = torch.nn.functional.normalize(model.text_proj(be.question_embeds[:, 0, :]), dim=-1)
    return dict(
        inputs=inputs,
        cos=be.itm_score[0, 0].item(),
        tokens=be.last_hidden_state[0].numpy(),
        image_vec=image_vec[0].numpy(),
        text_vec=text_vec[0].numpy(),
        logits=ce.itm_score[0].numpy(),
        itm=torch.softmax(ce.itm_score, dim=-1)[0, 1].item(),
    )


def test_tokenizer_knows_real_words(tiny_model):
    tokens = tiny_model.be.ckpt.processor.tokenizer.tokenize("A dog runs on the beach")
    assert tokens == ["a", "dog", "runs", "on", "the", "beach"]


def test_test_model_has_random_biases_and_layer_norms(reference):
    """Zero biases and identity LayerNorms would let a fast path that drops either pass every test below."""
    model, _ = reference
    biases = [m.bias for m in model.modules() if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))]
    norms = [m for m in model.modules() if isinstance(m, torch.nn.LayerNorm)]
    assert len(biases) > 20 and len(norms) > 10
    assert all(bool((b != 0).all()) for b in biases)
    assert all(bool((n.weight != 1).all() and (n.bias != 0).all()) for n in norms)
    assert torch.cat(biases).std() > 0.05 and torch.cat([n.weight - 1 for n in norms]).std() > 0.05


def test_be_and_ce_equal_reference_forward(tiny_model, reference, png_photos):
    """Image tokens, both vectors, both ITM logits and the final scores, each against the reference."""
    images = [Image.open(p).convert("RGB") for p in png_photos]
    enc = tiny_model.encode_images(images)
    text_vecs = tiny_model.embed_texts(QUERIES)
    assert enc.vectors.dtype == np.float32 and text_vecs.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(enc.vectors, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(text_vecs, axis=1), 1.0, atol=1e-5)
    spread, logits_seen = [], []
    for qi, query in enumerate(QUERIES):
        probs = tiny_model.match_probs(query, enc.features[tiny_model.ce.key])
        for pi, image in enumerate(images):
            ref = _reference(reference, image, query)
            np.testing.assert_allclose(enc.features[tiny_model.ce.key][pi], ref["tokens"], atol=1e-4)
            np.testing.assert_allclose(enc.vectors[pi], ref["image_vec"], atol=1e-5)
            np.testing.assert_allclose(text_vecs[qi], ref["text_vec"], atol=1e-5)
            with torch.no_grad():
                logits = itm_logits(tiny_model.be.ckpt.model, ref["inputs"]["input_ids"], ref["inputs"]["attention_mask"],
                                    torch.as_tensor(enc.features[tiny_model.ce.key][pi : pi + 1]))[0].numpy()
            np.testing.assert_allclose(logits, ref["logits"], atol=1e-4)
            assert float(text_vecs[qi] @ enc.vectors[pi]) == pytest.approx(ref["cos"], abs=1e-4)
            assert float(probs[pi]) == pytest.approx(ref["itm"], abs=1e-4)
            spread.append(ref["itm"])
            logits_seen.append(ref["logits"])
    # The random model must tell pairs apart, or the comparison above proves little.
    assert max(spread) - min(spread) > 0.05
    logits_seen = np.array(logits_seen)
    assert (logits_seen.max(axis=0) - logits_seen.min(axis=0) > 0.1).all()  # both columns vary, not only their difference


def test_vision_tokens_equal_the_reference_vision_model(reference, png_photos):
    """The fused-attention vision encoder against BlipVisionModel on the same pixels, batch of four."""
    model, processor = reference
    pixels = processor(images=[Image.open(p).convert("RGB") for p in png_photos], return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        expected = model.vision_model(pixel_values=pixels).last_hidden_state
        got = vision_tokens(model.vision_model, pixels)
    assert got.shape == expected.shape
    np.testing.assert_allclose(got.numpy(), expected.numpy(), atol=1e-4)


def test_ce_pairs_of_different_texts(tiny_model, reference, png_photos):
    image = Image.open(png_photos[0]).convert("RGB")
    tokens = tiny_model.encode_images([image]).features[tiny_model.ce.key]
    probs = tiny_model.match_probs(QUERIES, np.repeat(tokens, len(QUERIES), axis=0))
    for q, p in zip(QUERIES, probs):
        assert float(p) == pytest.approx(_reference(reference, image, q)["itm"], abs=1e-4)


def test_batching_does_not_change_results(tiny_model, png_photos):
    images = [Image.open(p).convert("RGB") for p in png_photos]
    together = tiny_model.encode_images(images)
    alone = [tiny_model.encode_images([im]) for im in images]
    for i, a in enumerate(alone):
        np.testing.assert_allclose(together.vectors[i], a.vectors[0], atol=1e-5)
        np.testing.assert_allclose(together.features[tiny_model.ce.key][i], a.features[tiny_model.ce.key][0], atol=1e-4)


def test_token_shape_and_dim(tiny_model):
    enc = tiny_model.encode_images([Image.new("RGB", (50, 30), "red")])
    assert enc.vectors.shape == (1, tiny_model.dim)
    assert enc.features[tiny_model.ce.key].shape[1:] == tiny_model.ce.feature_shape


def test_missing_local_folder_is_a_clear_error(tmp_path):
    with pytest.raises(ModelNotFoundError) as info:
        load_model(str(tmp_path / "nowhere"))
    assert "nowhere" in str(info.value) and "--model" in str(info.value)
    assert "\n" not in str(info.value)


def test_folder_without_checkpoint_is_a_clear_error(tmp_path):
    (tmp_path / "empty-model").mkdir()
    with pytest.raises(ModelNotFoundError) as info:
        load_model(str(tmp_path / "empty-model"))
    assert "does not hold" in str(info.value)


def test_unreachable_hub_fails_fast(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.monotonic()
    with pytest.raises(ModelNotFoundError) as info:
        load_model("some-org/not-cached-model")
    assert time.monotonic() - start < 20
    assert "some-org/not-cached-model" in str(info.value)


def test_out_of_memory_halves_batch_then_falls_back_to_cpu(tiny_model, monkeypatch):
    """Simulated GPU: the first calls raise out-of-memory; the work still completes."""
    model = tiny_model.be.ckpt  # the checkpoint both stages run on
    calls = []
    real_device = model.device

    def flaky(a, b):
        calls.append(b - a)
        if model.device != "cpu":
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return [np.full((b - a, 1), 1.0, np.float32)]

    monkeypatch.setattr(model, "device", "cuda")
    monkeypatch.setattr(model, "fall_back_to_cpu", lambda: setattr(model, "device", "cpu"))
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: None)
    (out,) = model.batched(8, 8, flaky)
    assert out.shape == (8, 1)
    assert calls[:4] == [8, 4, 2, 1]  # halved down to one, then the CPU took over
    assert model.device == "cpu" == real_device


def test_first_run_downloads_with_byte_progress(tiny_model_dir, tmp_path, monkeypatch):
    """The hub is simulated at its API: the repo listing serves the tiny checkpoint's files (plus
    ones a PyTorch load never reads), and each file's fetch feeds the progress bar it is given as
    a real download does; huggingface_hub's own snapshot_download runs in between."""
    import os
    import shutil
    from types import SimpleNamespace

    import huggingface_hub
    import huggingface_hub._snapshot_download as hub_snapshot
    from huggingface_hub import constants
    from huggingface_hub.hf_api import RepoFile

    import picsift.engine.models.registry as registry

    files = sorted(p.name for p in tiny_model_dir.iterdir())
    assert "model.safetensors" in files
    sizes = {f: os.path.getsize(tiny_model_dir / f) for f in files}
    unwanted = {"tf_model.h5": 999, "README.md": 5, ".gitattributes": 3, "pytorch_model.bin": 777,
                "onnx/model.onnx": 55}
    commit = "c0ffee" * 6 + "c0ff"
    cache = tmp_path / "hub-cache"
    fetched = []

    def repo_info(self, repo_id, **kw):
        assert repo_id == "org/tiny-blip"
        return SimpleNamespace(sha=commit)

    def list_repo_tree(self, repo_id, path_in_repo=None, *, recursive=False, **kw):
        assert repo_id == "org/tiny-blip" and recursive
        for name, size in {**sizes, **unwanted}.items():
            yield RepoFile(path=name, size=size, oid=f"oid-{name}")

    def hf_hub_download(repo_id, filename, *, revision=None, cache_dir=None, tqdm_class=None, **kw):
        fetched.append(filename)
        size = sizes[filename]
        bar = tqdm_class(total=size, initial=0, desc=filename)  # as a download over HTTP does
        sent = 0
        while sent < size:
            chunk = min(max(1, size // 3), size - sent)
            bar.update(chunk)
            sent += chunk
        bar.close()
        snapshot = cache / "models--org--tiny-blip" / "snapshots" / revision
        snapshot.mkdir(parents=True, exist_ok=True)
        shutil.copy(tiny_model_dir / filename, snapshot / filename)
        return str(snapshot / filename)

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(huggingface_hub.HfApi, "repo_info", repo_info)
    monkeypatch.setattr(huggingface_hub.HfApi, "list_repo_tree", list_repo_tree)
    monkeypatch.setattr(hub_snapshot, "hf_hub_download", hf_hub_download)
    monkeypatch.setattr(registry, "hub_reachable", lambda timeout=3.0: True)
    progress = []
    model = load_model("org/tiny-blip", device="cpu", on_download=lambda d, t, n: progress.append((d, t, n)))
    assert sorted(fetched) == files  # other frameworks' weights, docs and the .bin twin are not fetched
    total = sum(sizes.values())
    assert progress[-1] == (total, total, "org/tiny-blip")
    done = [d for d, _, _ in progress]
    assert done == sorted(done) and len(set(done)) > len(files)  # progress within files, not only per file
    assert all(d <= t for d, t, _ in progress)
    assert model.model_id == "org/tiny-blip" and model.dim == 16


def test_download_takes_bin_weights_only_where_there_are_no_safetensors(monkeypatch):
    import huggingface_hub
    from huggingface_hub.utils import filter_repo_objects

    from picsift.engine.models.download import download

    listings = {"org/both": ["config.json", "model.safetensors", "pytorch_model.bin", "tf_model.h5", "README.md"],
                "org/bin-only": ["config.json", "pytorch_model.bin", "flax_model.msgpack", "onnx/model.onnx",
                                 "vocab.txt"]}
    asked = {}
    monkeypatch.setattr(huggingface_hub.HfApi, "list_repo_files", lambda self, repo_id, **kw: listings[repo_id])
    monkeypatch.setattr(huggingface_hub, "snapshot_download",
                        lambda repo_id, **kw: asked.setdefault(repo_id, kw) and f"/cache/{repo_id}")
    fetched = {}
    for repo, names in listings.items():
        assert download(repo) == f"/cache/{repo}"
        fetched[repo] = sorted(filter_repo_objects(names, ignore_patterns=asked[repo]["ignore_patterns"]))
    assert fetched == {"org/both": ["config.json", "model.safetensors"],
                       "org/bin-only": ["config.json", "pytorch_model.bin", "vocab.txt"]}


def test_text_only_load_embeds_queries_as_the_full_model_does(tiny_model, tiny_model_dir):
    """`search -k 0` loads only the BE's text side, in NumPy (no torch, no transformers): the same query vectors
    as BlipForImageTextRetrieval's, batches with padding included; no vision encoder, no CE. The tiny model's
    biases and LayerNorm parameters are random, so a dropped bias or a misplaced LayerNorm would show."""
    import sys

    text = load_model(str(tiny_model_dir), device="cpu", precision="fp32", text_only=True)
    assert text.be.key == tiny_model.be.key  # the same model: its vectors are the library's
    assert text.ce is None and text.rerankers == []
    texts = QUERIES + ["a dog", "two brown dogs play with a stick on a wide sandy beach near the water"]
    np.testing.assert_allclose(text.embed_texts(texts), tiny_model.embed_texts(texts), atol=1e-5)
    np.testing.assert_allclose(text.embed_texts(texts[:1]), tiny_model.embed_texts(texts[:1]), atol=1e-5)
    full = sum(p.numel() for p in tiny_model.be.ckpt.model.parameters())
    assert text.be.parameter_count() < 0.6 * full
    with pytest.raises(RuntimeError, match="text queries only"):
        text.encode_images([Image.new("RGB", (40, 40))])
    assert "picsift.engine.models.blip_text" in sys.modules


def test_search_without_rerank_loads_the_text_side_only(tiny_model_dir, tmp_path, monkeypatch, capsys):
    import json

    import picsift.engine.models.registry as registry
    from picsift.engine.cli import main

    photos = tmp_path / "p"
    for i in range(4):
        make_photo(photos / f"{i}.png", seed=i)
    lib = tmp_path / "lib"
    assert main(["index", str(photos), "--library", str(lib), "--model", str(tiny_model_dir), "-q"]) == 0
    capsys.readouterr()
    loads = []
    real, real_text = registry.load_stages, registry._load_text_side
    monkeypatch.setattr(registry, "load_stages", lambda *a, **k: loads.append("whole") or real(*a, **k))
    monkeypatch.setattr(registry, "_load_text_side", lambda *a, **k: loads.append("text") or real_text(*a, **k))
    assert main(["search", "a dog", "-k", "0", "--library", str(lib), "--json"]) == 0
    k0 = json.loads(capsys.readouterr().out)
    assert loads == ["text"]
    assert main(["search", "a dog", "-k", "2", "--library", str(lib), "--json"]) == 0
    k2 = json.loads(capsys.readouterr().out)
    assert loads == ["text"]  # -k 2 over a cached library: the text side and the CE in NumPy, no whole model
    assert [h["score"] for h in k0] == pytest.approx(sorted((h["score"] for h in k2), reverse=True), abs=1e-5)
    assert all(h["rerank_score"] is None for h in k0) and k2[0]["rerank_score"] is not None
    # the same rerank as the whole model gives (torch, transformers)
    from picsift.engine.library import Library
    from picsift.engine.search.searcher import Searcher

    with Library(lib) as opened:
        whole = {h.path: h.rerank_score for h in Searcher(opened, load_model(str(tiny_model_dir), device="cpu",
                                                                              precision="fp32")).search("a dog", 4, 2)}
    assert {h["path"]: h["rerank_score"] for h in k2} == pytest.approx(whole, abs=1e-5)
    # candidates missing from the rerank cache: the vision encoder loads for them, and the scores are the
    # whole model's on freshly encoded tokens (not the cache's int8 ones)
    with Library(lib) as opened:
        opened.tokens.clear()
        whole = {h.path: h.rerank_score for h in Searcher(opened, load_model(str(tiny_model_dir), device="cpu",
                                                                              precision="fp32")).search("a dog", 4, 2)}
        opened.tokens.clear()
    loads.clear()
    assert main(["search", "a dog", "-k", "2", "--library", str(lib), "--json", "--precision", "fp32"]) == 0
    assert loads == ["whole"]
    uncached = json.loads(capsys.readouterr().out)
    assert {h["path"]: h["rerank_score"] for h in uncached} == pytest.approx(whole, abs=1e-5)
    import subprocess
    import sys

    code = ("import sys; from engine.cli import main; rc = main(['search', 'a dog', '-k', '0', '--library', "
            f"{str(lib)!r}, '--json']); print('torch' in sys.modules, 'transformers' in sys.modules, rc)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120).stdout
    assert out.strip().splitlines()[-1] == "False False 0"  # the terminal's search imported neither
    out = subprocess.run([sys.executable, "-c", code.replace("'-k', '0'", "'-k', '2'")], capture_output=True,
                         text=True, timeout=120).stdout
    assert out.strip().splitlines()[-1] == "False False 0"  # nor does its rerank of cached photos


def test_the_numpy_ce_scores_as_the_torch_ce_does(tiny_model, tiny_model_dir):
    """The terminal's rerank (`load_model(light=True)`): the text side and the CE in NumPy give the torch CE's
    log-odds and probabilities on the same image tokens, one text for all or one each; the vision encoder
    loads only when a photo must be encoded, and then gives the full model's tokens."""
    light = load_model(str(tiny_model_dir), device="cpu", precision="fp32", light=True)
    assert light.ce.key == tiny_model.ce.key and light.be.key == tiny_model.be.key
    images = [Image.fromarray(np.random.default_rng(i).integers(0, 256, (40, 48, 3), dtype=np.uint8))
              for i in range(5)]
    tokens = tiny_model.encode_images(images).features[tiny_model.ce.key]
    texts = QUERIES[:3] + ["a dog", "two brown dogs play with a stick on a wide sandy beach near the water"]
    np.testing.assert_allclose(light.ce.logits(texts, tokens), tiny_model.ce.logits(texts, tokens), atol=1e-4)
    np.testing.assert_allclose(light.ce.score("a dog", tokens), tiny_model.ce.score("a dog", tokens), atol=1e-5)
    assert light.ce.logits("a dog", tokens[:0]).shape == (0,)
    with pytest.raises(ValueError, match="one text per image"):
        light.ce.logits(texts[:2], tokens)
    assert not light._be_backbone.loaded
    np.testing.assert_allclose(light.reranker_features(light.ce, images), tokens, atol=1e-6)
    assert light._be_backbone.loaded


def test_loads_on_three_threads_at_once_all_succeed(tiny_model_dir):
    """Loads at once (a window's start and a preference change) in a fresh process, where transformers is not
    imported yet: its lazy imports are not thread-safe, and without the load lock this failed every time
    ("cannot import name 'AutoProcessor'")."""
    import subprocess
    import sys

    code = f"""
import threading
from picsift.engine.models import load_model
keys, errors = [], []
def go():
    try:
        keys.append(load_model({str(tiny_model_dir)!r}, device="cpu").be.key)
    except Exception as exc:
        errors.append(repr(exc))
threads = [threading.Thread(target=go) for _ in range(3)]
for t in threads: t.start()
for t in threads: t.join()
print(len(keys), len(set(keys)), errors)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=180)
    assert out.stdout.strip().splitlines()[-1] == "3 1 []", out.stdout + out.stderr
