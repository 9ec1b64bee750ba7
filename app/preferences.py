"""Persisted preferences (QSettings holds only window state and preferences) and their dialog."""

from __future__ import annotations

from dataclasses import dataclass

from PySide6.QtCore import QSettings
from PySide6.QtWidgets import (
    QComboBox, QDialog, QDialogButtonBox, QDoubleSpinBox, QFileDialog, QFormLayout, QHBoxLayout, QLineEdit,
    QPushButton, QSpinBox, QWidget,
)

ORG, APP = "picsift", "picsift"


@dataclass
class Preferences:
    model: str = ""  # empty: the library's model, else the default checkpoint
    device: str = "auto"
    k: int = 20
    n: int = 40

    @classmethod
    def load(cls, settings: QSettings) -> "Preferences":
        p = cls()
        p.model = str(settings.value("model", p.model) or "")
        p.device = str(settings.value("device", p.device) or "auto")
        p.k = int(settings.value("k", p.k))
        p.n = int(settings.value("n", p.n))
        return p

    def save(self, settings: QSettings) -> None:
        for key in ("model", "device", "k", "n"):
            settings.setValue(key, getattr(self, key))
        settings.sync()


class PreferencesDialog(QDialog):
    def __init__(self, prefs: Preferences, parent=None, cache_budget_gb: float = 4.0):
        super().__init__(parent)
        self.setWindowTitle("Preferences")
        self.model = QLineEdit(prefs.model)
        self.model.setPlaceholderText("Salesforce/blip-itm-base-coco (or the library's model)")
        browse = QPushButton("Folder…")
        browse.clicked.connect(self._browse)
        row = QWidget()
        h = QHBoxLayout(row)
        h.setContentsMargins(0, 0, 0, 0)
        h.addWidget(self.model, 1)
        h.addWidget(browse)
        self.device = QComboBox()
        self.device.addItems(["auto", "cuda", "mps", "cpu"])
        self.device.setCurrentText(prefs.device)
        self.k = QSpinBox()
        self.k.setRange(0, 200)
        self.k.setValue(prefs.k)
        self.n = QSpinBox()
        self.n.setRange(1, 1000)
        self.n.setValue(prefs.n)
        self.cache = QDoubleSpinBox()
        self.cache.setRange(0, 10_000)
        self.cache.setDecimals(1)
        self.cache.setSuffix(" GB")
        self.cache.setValue(cache_budget_gb)
        self.cache.setToolTip("Disk the rerank cache may use (about 0.45 MB a photo); photos beyond it are "
                              "encoded again when a search reranks them. Kept with the library.")
        form = QFormLayout(self)
        form.addRow("Model (hub id or folder)", row)
        form.addRow("Device", self.device)
        form.addRow("Rerank top k (0 = off)", self.k)
        form.addRow("Results shown", self.n)
        form.addRow("Rerank cache budget", self.cache)
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Ok | QDialogButtonBox.StandardButton.Cancel)
        buttons.accepted.connect(self.accept)
        buttons.rejected.connect(self.reject)
        form.addRow(buttons)

    def _browse(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Model folder")
        if folder:
            self.model.setText(folder)

    def cache_budget_bytes(self) -> int:
        return int(self.cache.value() * 1024**3)

    def value(self) -> Preferences:
        return Preferences(self.model.text().strip(), self.device.currentText(), self.k.value(), self.n.value())
