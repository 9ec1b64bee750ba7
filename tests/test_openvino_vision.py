"""The vision encoder through OpenVINO gives torch's tokens, is converted once per checkpoint, and a failure
falls back to torch with a notice."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import make_photo
from picsift.engine.index.indexer import index_folders
from picsift.engine.models import load_model
from picsift.engine.models import openvino_vision as ovv
from picsift.engine.models.blip_vision import vision_tokens

pytestmark = pytest.mark.skipif(not ovv.available(), reason="OpenVINO is not installed")


@pytest.fixture
def ov_model(tiny_model_dir, monkeypatch):
    monkeypatch.setenv(ovv.ENV_BACKEND, "openvino")
    return load_model(str(tiny_model_dir), device="cpu", precision="fp32")


@pytest.fixture(scope="module")
def pixels(tmp_path_factory, tiny_model):
    from PIL import Image

    folder = tmp_path_factory.mktemp("ov")
    images = [Image.open(make_photo(folder / f"p{i}.png", seed=300 + i, size=(64 + 8 * i, 48))) for i in range(5)]
    return tiny_model._be_backbone.preprocess(images)


def test_backend_choice(monkeypatch):
    monkeypatch.setenv(ovv.ENV_BACKEND, "auto")
    assert ovv.choose_backend("cpu")[0] == "openvino"
    assert ovv.choose_backend("cuda:0")[0] == "torch"  # OpenVINO runs on the CPU only
    monkeypatch.setenv(ovv.ENV_BACKEND, "torch")
    assert ovv.choose_backend("cpu")[0] == "torch"
    monkeypatch.setenv(ovv.ENV_BACKEND, "tensorrt")
    with pytest.raises(ValueError, match="auto, torch, openvino"):
        ovv.choose_backend("cpu")
    monkeypatch.setenv(ovv.ENV_BACKEND, "openvino")
    monkeypatch.setattr(ovv, "available", lambda: False)
    backend, why = ovv.choose_backend("cpu")
    assert backend == "torch" and "pip install openvino" in why


def test_openvino_tokens_equal_torch_and_the_ir_is_reused(tiny_model, pixels, tmp_path):
    vm = tiny_model._be_backbone.model.vision_model
    with torch.inference_mode():
        want = vision_tokens(vm, pixels).numpy()
    first = ovv.OpenVinoVision(vm, tiny_model._be_backbone.image_size, "blip:test", "fp32", 1, folder=tmp_path)
    assert first.converted and first.path.is_file() and first.path.with_suffix(".bin").is_file()
    got = first(pixels.numpy())
    assert got.shape == want.shape
    assert np.abs(got - want).max() < 1e-4 * max(1.0, np.abs(want).max())
    assert np.abs(first(pixels[:1].numpy()) - want[:1]).max() < 1e-4 * max(1.0, np.abs(want).max())  # any batch
    second = ovv.OpenVinoVision(vm, tiny_model._be_backbone.image_size, "blip:test", "fp32", 1, folder=tmp_path)
    assert not second.converted  # read from the saved IR
    np.testing.assert_array_equal(second(pixels.numpy()), got)
    first.path.write_text("not an IR file")  # damaged: converted again, same tokens
    third = ovv.OpenVinoVision(vm, tiny_model._be_backbone.image_size, "blip:test", "fp32", 1, folder=tmp_path)
    assert third.converted
    np.testing.assert_allclose(third(pixels.numpy()), got, atol=1e-6)


def test_a_library_indexed_through_openvino_holds_torch_vectors_and_tokens(tiny_model, ov_model, photo_folder,
                                                                            tmp_path):
    from picsift.engine.library import Library

    assert ov_model._be_backbone.backend == "openvino" and tiny_model._be_backbone.backend == "torch"
    libs = {}
    for name, model in (("torch", tiny_model), ("openvino", ov_model)):
        lib = Library(tmp_path / name)
        list(index_folders(lib, model, [str(photo_folder)]))
        libs[name] = lib
    assert ov_model._be_backbone._openvino is not None and "OpenVINO" in ov_model.describe_device()
    ids_t, vec_t = libs["torch"].store.vectors(tiny_model.be.key)
    ids_o, vec_o = libs["openvino"].store.vectors(ov_model.be.key)
    paths_t = libs["torch"].store.paths(ids_t.tolist())
    paths_o = libs["openvino"].store.paths(ids_o.tolist())
    by_path = {paths_o[i]: v for i, v in zip(ids_o.tolist(), vec_o)}
    assert len(by_path) == len(ids_t) >= 3
    cos = [float(v @ by_path[paths_t[i]]) for i, v in zip(ids_t.tolist(), vec_t)]
    assert min(cos) > 0.9999
    hashes = sorted(libs["torch"].store.all_hashes())
    tok_t = libs["torch"].tokens.get_many(tiny_model.ce.key, hashes)
    tok_o = libs["openvino"].tokens.get_many(ov_model.ce.key, hashes)
    assert set(tok_t) == set(tok_o) == set(hashes)
    for h in hashes:
        scale = np.abs(tok_t[h]).max()
        assert np.abs(tok_t[h] - tok_o[h]).max() < 0.02 * scale  # int8 cache: a step of the scale at most
    for lib in libs.values():
        lib.close()


def test_a_failed_conversion_falls_back_to_torch_with_a_notice(ov_model, pixels, monkeypatch):
    def broken(*a, **k):
        raise RuntimeError("converter says no")

    monkeypatch.setattr(ovv, "OpenVinoVision", broken)
    enc = ov_model._be_backbone.encode_pixels(pixels, want=[ov_model.ce.key])
    with torch.inference_mode():
        want = vision_tokens(ov_model._be_backbone.model.vision_model, pixels).numpy()
    np.testing.assert_allclose(enc.features[ov_model.ce.key], want, atol=1e-5)
    assert ov_model._be_backbone.backend == "torch"
    assert any("converter says no" in n and "using torch" in n for n in ov_model.notices)


def test_openvino_loads_without_its_usage_reporting(tiny_model_dir, tmp_path):
    """`import openvino` turns on Intel's usage reporting by default; picsift's import blocks it, so converting
    and running the encoder sends nothing and starts no reporting thread."""
    import subprocess
    import sys

    script = (
        "import sys, threading\n"
        "from picsift.engine.models import load_model\n"
        f"m = load_model({str(tiny_model_dir)!r}, device='cpu', precision='fp32')\n"
        "bb = m._be_backbone\n"
        "import torch\n"
        "bb.vision_tokens(torch.zeros(1, 3, bb.image_size, bb.image_size))\n"
        "assert bb._openvino is not None\n"
        "import openvino.tools.ovc.telemetry_utils as tu\n"
        "print(sys.modules.get('openvino_telemetry'), tu.tm.__name__, threading.active_count())\n"
    )
    env = {**__import__("os").environ, ovv.ENV_BACKEND: "openvino", "CI": "false",
           "PICSIFT_HOME": str(tmp_path / "home"), "HOME": str(tmp_path)}
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["None", "openvino.tools.ovc.telemetry_stub", "1"]


def test_a_misspelt_backend_is_said_and_torch_runs(tiny_model_dir, monkeypatch):
    monkeypatch.setenv(ovv.ENV_BACKEND, "openvinno")
    model = load_model(str(tiny_model_dir), device="cpu", precision="fp32")
    assert model._be_backbone.backend == "torch"
    assert any("openvinno" in n and "auto, torch, openvino" in n for n in model.notices)
