"""`picsift install-desktop-entry`: a freedesktop menu entry and icon for the window (Linux desktops), in the
user's data folder; `--remove` takes them away."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

from picsift.engine.paths import ASSETS_DIR

ENTRY_NAME = "picsift.desktop"
ICON_SIZE = "256x256"


def data_home() -> Path:
    return Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share")


def entry_text(python: str = sys.executable) -> str:
    """The .desktop file: the window started by this installation's Python (its virtual environment too)."""
    exec_line = " ".join(shlex.quote(p) for p in (python, "-m", "picsift", "gui")) + " %F"
    return "\n".join([
        "[Desktop Entry]",
        "Type=Application",
        "Version=1.5",
        "Name=picsift",
        "GenericName=Photo Search",
        "Comment=Find photos in your folders by what is in them",
        f"Exec={exec_line}",
        "Icon=picsift",
        "Terminal=false",
        "Categories=Graphics;Photography;Viewer;",
        "Keywords=photo;search;images;pictures;duplicates;",
        "StartupWMClass=picsift",
        "",
    ])


def paths(home: Path | None = None) -> tuple[Path, Path]:
    home = home or data_home()
    return home / "applications" / ENTRY_NAME, home / "icons" / "hicolor" / ICON_SIZE / "apps" / "picsift.png"


def install(home: Path | None = None) -> tuple[Path, Path]:
    entry, icon = paths(home)
    entry.parent.mkdir(parents=True, exist_ok=True)
    icon.parent.mkdir(parents=True, exist_ok=True)
    tmp = entry.with_suffix(".tmp")
    tmp.write_text(entry_text())
    os.replace(tmp, entry)
    shutil.copyfile(ASSETS_DIR / "icons" / "picsift.png", icon)
    _refresh(entry.parent)
    return entry, icon


def remove(home: Path | None = None) -> list[Path]:
    gone = []
    for p in paths(home):
        if p.exists():
            p.unlink()
            gone.append(p)
    return gone


def _refresh(applications: Path) -> None:
    """Let the menu see the entry now, where the desktop has the tool (it is optional)."""
    tool = shutil.which("update-desktop-database")
    if tool:
        subprocess.run([tool, str(applications)], capture_output=True, check=False, timeout=30)


def command(session) -> int:
    """The CLI handler (registered by picsift.launcher, like `gui`)."""
    if session.args.remove:
        gone = remove()
        print("Removed " + ", ".join(map(str, gone)) if gone else "No picsift menu entry was installed.")
        return 0
    entry, icon = install()
    print(f"Installed the menu entry {entry} and the icon {icon}; picsift appears in the desktop's menu "
          "(log out and in again if it does not yet).")
    return 0
