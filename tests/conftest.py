"""Shared fixtures: a small random-weight BLIP built once per session, photos made on the fly,
and a library folder of each test's own (no test touches the user's real data folder)."""

from __future__ import annotations

import os
import threading

import numpy as np
import pytest
from PIL import Image

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never wait on a network
# torch's vision encoder unless a test asks for OpenVINO (tests/test_openvino_vision.py): converting the tiny
# model per test would only slow the suite, and the reference figures are torch's
os.environ["PICSIFT_VISION_BACKEND"] = "torch"


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path, monkeypatch):
    """Every test gets its own PICSIFT_HOME and data folders, never the user's."""
    home = tmp_path / "picsift-home"
    monkeypatch.setenv("PICSIFT_HOME", str(home))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg-data"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))
    return home


@pytest.fixture(autouse=True)
def _no_thread_left_running():
    before = set(threading.enumerate())
    yield
    left = [t for t in threading.enumerate() if t not in before and t.is_alive() and not t.daemon]
    for t in left:
        t.join(timeout=5)
    still = [t.name for t in left if t.is_alive()]
    assert not still, f"threads left running after the test: {still}"


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    from picsift.engine.models.random_blip import build_random_blip

    return build_random_blip(tmp_path_factory.mktemp("tiny-blip"), "tiny", seed=0)


@pytest.fixture(scope="session")
def tiny_model(tiny_model_dir):
    from picsift.engine.models import load_model

    return load_model(str(tiny_model_dir), device="cpu", precision="fp32")


@pytest.fixture
def library(tmp_path):
    from picsift.engine.library import Library

    lib = Library(tmp_path / "library")
    yield lib
    lib.close()


def make_photo(path, seed: int, size=(48, 40), fmt=None) -> str:
    """A distinct synthetic photo: blocks of colour that differ with the seed."""
    rng = np.random.default_rng(seed)
    w, h = size
    base = rng.integers(0, 256, size=(4, 4, 3), dtype=np.uint8)
    arr = np.kron(base, np.ones((h // 4 + 1, w // 4 + 1, 1), dtype=np.uint8))[:h, :w]
    img = Image.fromarray(arr, "RGB")
    path = str(path)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    img.save(path, format=fmt)
    return path


@pytest.fixture(scope="session")
def small_shapes(tmp_path_factory):
    """A small shapes set (120 training photos of 32 px, 2 captions each, 3 dev and 12 test scenes): what
    the training tests train and evaluate on."""
    from picsift.engine.training.shapes import generate_shapes

    folder = tmp_path_factory.mktemp("shapes") / "set"
    generate_shapes(folder, seed=3, train=120, dev_groups=3, test_groups=12, image_size=32, captions_per_image=2)
    return folder


def train_run(**options) -> list:
    """Every progress event of a short CPU training run (batch 16, seed 2, no evaluation unless asked)."""
    from picsift.engine.training.train import TrainOptions, make_trainer

    base = dict(batch_size=16, eval_every=1000, seed=2, device="cpu")
    base.update(options)
    return list(make_trainer(TrainOptions(**base)).run())


def pair_agreement(a: np.ndarray, b: np.ndarray) -> float:
    """Of each row's item pairs that both (captions x photos) score matrices order, the share ordered alike
    (chance: 0.5)."""
    da = np.sign(a[:, :, None] - a[:, None, :])
    db = np.sign(b[:, :, None] - b[:, None, :])
    both = (da != 0) & (db != 0)
    return float((da == db)[both].mean())


@pytest.fixture
def photo_folder(tmp_path):
    """A folder of 12 distinct PNG and JPEG photos in two subfolders."""
    root = tmp_path / "photos"
    for i in range(12):
        sub = "trips" if i % 2 else "home"
        ext = "png" if i % 3 else "jpg"
        make_photo(root / sub / f"photo_{i:02d}.{ext}", seed=i)
    return root
