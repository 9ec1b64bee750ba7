"""Starting the window: the library opens at once, the model loads in the background."""

from __future__ import annotations

import argparse
import os
import sys

from PySide6.QtCore import QSettings, QTimer
from PySide6.QtWidgets import QApplication

from picsift.controller import Controller
from picsift.preferences import APP, ORG, Preferences
from picsift.window import MainWindow
from picsift.engine.errors import PicsiftError
from picsift.engine.library import Library
from picsift.engine.paths import cache_dir, library_dir


def create_window(args: argparse.Namespace, settings: QSettings | None = None) -> MainWindow:
    """Build the window over a library; the model starts loading when the event loop runs."""
    settings = settings or QSettings(ORG, APP)
    prefs = Preferences.load(settings)
    library = Library(library_dir(getattr(args, "library", None)))
    model_id = getattr(args, "model", None) or prefs.model or None
    device = getattr(args, "device", None) if getattr(args, "device", "auto") != "auto" else prefs.device
    controller = Controller(library, model_id, device=device or "auto",
                            precision=getattr(args, "precision", "auto") or "auto")
    window = MainWindow(controller, settings, str(cache_dir() / "thumbnails"))
    folders = list(getattr(args, "folders", []) or [])
    if folders:
        window.start_indexing(folders)
    QTimer.singleShot(0, controller.load_model)
    return window


def no_display_reason() -> str | None:
    """Why a window cannot open here (Linux without a display), or None."""
    if sys.platform.startswith("linux") and not (
            os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY") or os.environ.get("QT_QPA_PLATFORM")):
        return ("picsift gui needs a desktop session, and this one has no display (DISPLAY and WAYLAND_DISPLAY "
                "are unset); the same work is available from the terminal: picsift index, search, captions, similar.")
    return None


def run_gui(args: argparse.Namespace) -> int:
    reason = no_display_reason()
    if reason:
        print(f"picsift: {reason}", file=sys.stderr)
        return 1
    app = QApplication.instance() or QApplication(sys.argv[:1])
    app.setApplicationName("picsift")
    app.setOrganizationName(ORG)
    try:
        window = create_window(args)
    except PicsiftError as exc:
        from PySide6.QtWidgets import QMessageBox

        QMessageBox.critical(None, "picsift", str(exc))
        return 1
    window.show()
    code = app.exec()
    window.controller.library.close()
    return code
