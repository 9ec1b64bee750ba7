"""The window's parts that are not the results grid: indexing progress and the dropped-photo view."""

from __future__ import annotations

import os

from PySide6.QtCore import QSize, Qt, Signal
from PySide6.QtGui import QPixmap
from PySide6.QtWidgets import (
    QComboBox, QHBoxLayout, QLabel, QListView, QListWidget, QListWidgetItem, QProgressBar, QPushButton,
    QSplitter, QVBoxLayout, QWidget,
)


def format_eta(seconds: float | None) -> str:
    if seconds is None:
        return "estimating time left"
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds} s left"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s left"
    return f"{seconds // 3600} h {seconds // 60 % 60:02d} min left"


class IndexPanel(QWidget):
    """Progress of a running indexing job: count, rate, time left, current file, pause, cancel, skipped."""

    pauseToggled = Signal(bool)
    cancelRequested = Signal()

    def __init__(self, parent=None):
        super().__init__(parent)
        self.bar = QProgressBar()
        self.bar.setTextVisible(True)
        self.label = QLabel("")
        self.label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.pause = QPushButton("Pause")
        self.pause.setCheckable(True)
        self.pause.toggled.connect(self._on_pause)
        self.cancel = QPushButton("Cancel")
        self.cancel.setToolTip("Stop indexing (Esc); what is indexed so far is kept")
        self.cancel.clicked.connect(self.cancelRequested)
        self.skipped_button = QPushButton("Skipped: 0")
        self.skipped_button.setCheckable(True)
        self.skipped = QListWidget()
        self.skipped.setVisible(False)
        self.skipped.setMaximumHeight(140)
        self.skipped_button.toggled.connect(self.skipped.setVisible)
        row = QHBoxLayout()
        row.addWidget(self.bar, 1)
        row.addWidget(self.pause)
        row.addWidget(self.cancel)
        row.addWidget(self.skipped_button)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(6, 2, 6, 2)
        layout.addLayout(row)
        layout.addWidget(self.label)
        layout.addWidget(self.skipped)
        self._skipped = 0

    def _on_pause(self, paused: bool) -> None:
        self.pause.setText("Resume" if paused else "Pause")
        self.pauseToggled.emit(paused)

    def start(self) -> None:
        self._skipped = 0
        self.skipped.clear()
        self.skipped_button.setText("Skipped: 0")
        self.pause.setChecked(False)
        self.pause.setEnabled(True)
        self.cancel.setEnabled(True)
        self.bar.setRange(0, 0)  # busy until the scan has counted the work
        self.label.setText("Looking for photos…")
        self.setVisible(True)

    def update_progress(self, p) -> None:
        for path, reason in p.skipped_files:
            self._skipped += 1
            item = QListWidgetItem(f"{os.path.basename(path)} — {reason}")
            item.setToolTip(path)
            self.skipped.addItem(item)
        self.skipped_button.setText(f"Skipped: {self._skipped}")
        if p.phase == "scanning":
            return
        self.bar.setRange(0, max(1, p.total))
        self.bar.setValue(p.done)
        self.bar.setFormat(f"{p.done} of {p.total}")
        if p.phase == "late":
            self.label.setText(f"Preparing the late-interaction tokens of photos indexed before them: {p.done} of "
                               f"{p.total} · {format_eta(p.eta_s)}")
            return
        if p.phase == "caching":
            self.label.setText(f"Preparing the reranker's features of photos indexed before it: {p.done} of {p.total} "
                               f"· {format_eta(p.eta_s)}")
            return
        if p.phase == "indexing":
            name = os.path.basename(p.current) if p.current else ""
            rate = f"{p.rate:.1f} photos/s" if p.rate else "starting"
            state = "Paused — " if self.pause.isChecked() else ""
            self.label.setText(f"{state}Indexing {p.done} of {p.total} · {rate} · {format_eta(p.eta_s)}"
                               + (f" · {name}" if name else ""))
        else:
            self.label.setText(("Cancelled: " if p.phase == "cancelled" else "Done: ") + p.summary())

    def finish(self) -> None:
        self.pause.setEnabled(False)
        self.cancel.setEnabled(False)


class DropPanel(QWidget):
    """A dropped photo, the captions that describe it best, and the most similar photos."""

    importRequested = Signal()
    collectionChosen = Signal(str)

    def __init__(self, similar_model, parent=None):
        super().__init__(parent)
        self.preview = QLabel("")
        self.preview.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.preview.setMinimumSize(240, 200)
        self.path_label = QLabel("")
        self.path_label.setWordWrap(True)
        self.collection = QComboBox()
        self.collection.setToolTip("Caption collection to describe the photo with")
        self.collection.activated.connect(lambda _i: self.collectionChosen.emit(self.collection.currentText()))
        self.import_button = QPushButton("Import captions…")
        self.import_button.clicked.connect(self.importRequested)
        self.state = QLabel("")
        self.captions = QListWidget()
        self.captions.setWordWrap(True)
        self.similar = QListView()
        self.similar.setViewMode(QListView.ViewMode.IconMode)
        self.similar.setResizeMode(QListView.ResizeMode.Adjust)
        self.similar.setMovement(QListView.Movement.Static)
        self.similar.setIconSize(QSize(similar_model.tile, similar_model.tile))
        self.similar.setModel(similar_model)

        left = QWidget()
        lv = QVBoxLayout(left)
        lv.addWidget(self.preview, 1)
        lv.addWidget(self.path_label)
        right = QWidget()
        rv = QVBoxLayout(right)
        top = QHBoxLayout()
        top.addWidget(QLabel("Captions from"))
        top.addWidget(self.collection, 1)
        top.addWidget(self.import_button)
        rv.addLayout(top)
        rv.addWidget(self.state)
        rv.addWidget(self.captions, 1)
        upper = QSplitter(Qt.Orientation.Horizontal)
        upper.addWidget(left)
        upper.addWidget(right)
        upper.setStretchFactor(1, 2)
        outer = QSplitter(Qt.Orientation.Vertical)
        outer.addWidget(upper)
        bottom = QWidget()
        bv = QVBoxLayout(bottom)
        bv.addWidget(QLabel("Most similar photos in the library"))
        bv.addWidget(self.similar, 1)
        outer.addWidget(bottom)
        layout = QVBoxLayout(self)
        layout.addWidget(outer)

    def show_photo(self, path: str) -> None:
        pix = QPixmap(path)
        if not pix.isNull():
            pix = pix.scaled(320, 320, Qt.AspectRatioMode.KeepAspectRatio, Qt.TransformationMode.SmoothTransformation)
        self.preview.setPixmap(pix)
        self.path_label.setText(path)
        self.captions.clear()
        self.state.setText("Describing…")

    def set_collections(self, names: list[str], current: str | None) -> None:
        self.collection.clear()
        self.collection.addItems(names)
        if current in names:
            self.collection.setCurrentText(current)

    def show_captions(self, update) -> None:
        self.captions.clear()
        for h in update.hits:
            prob = "  —  " if h.rerank_score is None else f"{h.rerank_score:.2f}"
            item = QListWidgetItem(f"{prob}   {h.text}")
            item.setToolTip(f"BE score {h.score:.3f}" + ("" if h.rerank_score is None else
                                                         f", CE probability {h.rerank_score:.3f}"))
            self.captions.addItem(item)
        self.state.setText("" if update.done else f"Reranking {update.scored} of {update.to_score}…")
