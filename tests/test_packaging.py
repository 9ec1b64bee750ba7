"""A clean install: one import name (picsift), the caption collection and icon as package data, a wheel that
works outside the repository, `python -m picsift`, and the desktop menu entry."""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from conftest import make_photo

REPO = Path(__file__).resolve().parents[1]


def test_the_desktop_entry_is_installed_in_the_users_data_folder_and_removed(_isolated_home, capsys):
    from picsift.launcher import main

    data = Path(os.environ["XDG_DATA_HOME"])
    assert main(["install-desktop-entry"]) == 0
    entry = data / "applications" / "picsift.desktop"
    icon = data / "icons" / "hicolor" / "256x256" / "apps" / "picsift.png"
    text = entry.read_text()
    assert text.startswith("[Desktop Entry]\n") and "\nType=Application\n" in text and "\nIcon=picsift\n" in text
    exec_line = next(line for line in text.splitlines() if line.startswith("Exec="))
    assert exec_line == f"Exec={sys.executable} -m picsift gui %F"
    assert icon.read_bytes() == (REPO / "assets" / "icons" / "picsift.png").read_bytes()
    assert "Installed the menu entry" in capsys.readouterr().out
    assert main(["install-desktop-entry", "--remove"]) == 0
    assert not entry.exists() and not icon.exists()


def test_python_m_picsift_runs_the_commands_outside_the_repository(tmp_path):
    out = subprocess.run([sys.executable, "-m", "picsift", "--version"], capture_output=True, text=True,
                         cwd=tmp_path, timeout=120)
    assert out.returncode == 0 and out.stdout.startswith("picsift ")
    # and the repository's folder names are not import names
    probe = subprocess.run([sys.executable, "-c", "import engine"], capture_output=True, text=True, cwd=tmp_path)
    assert probe.returncode != 0 and "No module named 'engine'" in probe.stderr


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    import shutil

    # built from a copy of the sources, so that the build leaves nothing in the work tree (build/, egg-info)
    src = tmp_path_factory.mktemp("src")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    for name in ("app", "engine", "assets"):
        shutil.copytree(REPO / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out),
                    str(src)], check=True, capture_output=True, timeout=600)
    (whl,) = out.glob("picsift-*.whl")
    return whl


def test_the_wheel_holds_one_package_with_its_data(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names if not n.startswith("picsift-")}
    assert tops == {"picsift"}
    for needed in ("picsift/__main__.py", "picsift/launcher.py", "picsift/engine/cli.py",
                   "picsift/engine/models/blip.py", "picsift/engine/training/train.py",
                   "picsift/assets/captions/everyday.txt", "picsift/assets/icons/picsift.png"):
        assert needed in names, needed


def test_the_installed_wheel_describes_a_photo_in_a_fresh_virtual_environment(wheel, tmp_path, tiny_model_dir):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    py = venv / "bin" / "python"
    site = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          check=True, capture_output=True, text=True).stdout.strip()
    # The dependencies (torch, transformers, ...) come from this environment's site-packages, read as a plain
    # path: its editable picsift is not activated there, so only the wheel provides picsift.
    (Path(site) / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([str(py), "-m", "pip", "install", "--no-deps", "--no-index", "-q", str(wheel)], check=True,
                   capture_output=True, timeout=300)
    env = {**os.environ, "PICSIFT_HOME": str(tmp_path / "home"), "XDG_CACHE_HOME": str(tmp_path / "cache"),
           "XDG_DATA_HOME": str(tmp_path / "data"), "PYTHONPATH": ""}
    where = subprocess.run([str(py), "-c", "import picsift.engine.paths as p; print(p.DEFAULT_COLLECTION_FILE)"],
                           check=True, capture_output=True, text=True, cwd=tmp_path, env=env).stdout.strip()
    assert where.startswith(site) and Path(where).is_file()
    photo = make_photo(tmp_path / "photos" / "photo.jpg", seed=3)
    make_photo(tmp_path / "photos" / "other.png", seed=4)
    picsift = str(venv / "bin" / "picsift")
    index = subprocess.run([picsift, "index", str(tmp_path / "photos"), "--model", str(tiny_model_dir), "-q"],
                           capture_output=True, text=True, cwd=tmp_path, env=env, timeout=600)
    assert index.returncode == 0, index.stderr
    out = subprocess.run([picsift, "captions", photo, "--model", str(tiny_model_dir), "-n", "3",
                          "-k", "0", "--json", "-q"], capture_output=True, text=True, cwd=tmp_path, env=env,
                         timeout=600)
    assert out.returncode == 0, out.stderr
    import json

    hits = json.loads(out.stdout)
    assert len(hits) == 3 and all(h["text"] for h in hits)
    builtin = set((REPO / "assets" / "captions" / "everyday.txt").read_text().splitlines())
    assert all(h["text"] in builtin for h in hits)  # the built-in collection, read from the package's data
