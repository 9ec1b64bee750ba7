"""The duplicates view: groups of exact copies and near-duplicates with what a user picks by (size,
resolution, date, folder); the checked photos go to the system trash after a confirmation, never deleted."""

from __future__ import annotations

import os
import time

from PySide6.QtCore import QSize, Qt
from PySide6.QtGui import QIcon, QImage, QPixmap
from PySide6.QtWidgets import (
    QDialog, QDialogButtonBox, QHBoxLayout, QLabel, QMessageBox, QPushButton, QTreeWidget, QTreeWidgetItem,
    QVBoxLayout,
)

from picsift.engine.cli import format_size

PathRole = Qt.ItemDataRole.UserRole + 1
ICON = 72


class DuplicatesDialog(QDialog):
    """Library ▸ Find Duplicates: the engine's groups, largest first; the first of each is the suggested keep."""

    def __init__(self, controller, loader, parent=None):
        super().__init__(parent)
        self.controller = controller
        self.loader = loader
        self.setWindowTitle("Duplicates")
        self.resize(900, 620)
        self.state = QLabel("Looking for duplicates…")
        self.tree = QTreeWidget()
        self.tree.setColumnCount(5)
        self.tree.setHeaderLabels(["Photo", "Size", "Resolution", "Taken", "Folder"])
        self.tree.setIconSize(QSize(ICON, ICON))
        self.tree.setUniformRowHeights(False)
        self.tree.itemChanged.connect(lambda *_: self._count_checked())
        self.mark = QPushButton("Check All but the First of Each Group")
        self.mark.clicked.connect(self.check_all_but_first)
        self.clear = QPushButton("Uncheck All")
        self.clear.clicked.connect(lambda: self._check_all(False))
        self.trash_button = QPushButton("Move Checked to Trash…")
        self.trash_button.setEnabled(False)
        self.trash_button.clicked.connect(self.trash_checked)
        close = QDialogButtonBox(QDialogButtonBox.StandardButton.Close)
        close.rejected.connect(self.reject)
        buttons = QHBoxLayout()
        for b in (self.mark, self.clear, self.trash_button):
            buttons.addWidget(b)
        buttons.addStretch(1)
        buttons.addWidget(close)
        layout = QVBoxLayout(self)
        layout.addWidget(self.state)
        layout.addWidget(self.tree, 1)
        layout.addLayout(buttons)
        self._items: dict[str, QTreeWidgetItem] = {}
        self._note = ""  # what the last move to the trash did, shown with the groups found after it
        loader.loaded.connect(self._on_thumb)
        controller.duplicatesReady.connect(self.show_groups)
        controller.duplicatesFailed.connect(lambda msg: self.state.setText(f"Could not look for duplicates: {msg}"))
        controller.trashed.connect(self._on_trashed)
        controller.find_duplicates()

    def show_groups(self, groups) -> None:
        self.tree.blockSignals(True)
        self.tree.clear()
        self._items.clear()
        for n, g in enumerate(groups, 1):
            head = QTreeWidgetItem([f"{n}. {'Exact copies' if g.exact else 'Near-duplicates'} · {len(g.members)} photos"])
            self.tree.addTopLevelItem(head)
            head.setFirstColumnSpanned(True)  # only takes effect once the item is in the tree
            for i, m in enumerate(g.members):
                name = os.path.basename(m.path) + ("  (keep?)" if i == 0 else "")
                res = f"{m.width} × {m.height}" if m.width and m.height else "unknown"
                when = time.strftime("%Y-%m-%d %H:%M", time.localtime(m.taken)) if m.taken else "unknown"
                item = QTreeWidgetItem([name, format_size(m.size), res, when, os.path.dirname(m.path)])
                item.setData(0, PathRole, m.path)
                item.setFlags(item.flags() | Qt.ItemFlag.ItemIsUserCheckable)
                item.setCheckState(0, Qt.CheckState.Unchecked)
                item.setToolTip(0, m.path + ("\nSuggested to keep: the most pixels, then the largest file, then the oldest."
                                             if i == 0 else ""))
                head.addChild(item)
                self._items[m.path] = item
                self.loader.request(m.path)
            head.setExpanded(True)
        self.tree.blockSignals(False)
        self.tree.setColumnWidth(0, 380)  # the thumbnail and the file name
        for c in range(1, 5):
            self.tree.resizeColumnToContents(c)
        extra = sum(len(g.members) - 1 for g in groups)
        found = (f"{len(groups)} groups; {extra} photos beyond the first of each. Check the ones to move to the "
                 "trash." if groups else "No duplicates found.")
        self.state.setText(f"{self._note} {found}" if self._note else found)
        self._note = ""
        self._count_checked()

    def _on_thumb(self, path: str, image: QImage) -> None:
        item = self._items.get(path)
        if item is not None:
            item.setIcon(0, QIcon(QPixmap.fromImage(image).scaled(ICON, ICON, Qt.AspectRatioMode.KeepAspectRatio,
                                                                  Qt.TransformationMode.SmoothTransformation)))

    def _check_all(self, on: bool) -> None:
        for item in self._items.values():
            item.setCheckState(0, Qt.CheckState.Checked if on else Qt.CheckState.Unchecked)

    def check_all_but_first(self) -> None:
        for g in range(self.tree.topLevelItemCount()):
            head = self.tree.topLevelItem(g)
            for i in range(head.childCount()):
                head.child(i).setCheckState(0, Qt.CheckState.Checked if i else Qt.CheckState.Unchecked)

    def checked(self) -> list[str]:
        return [p for p, item in self._items.items() if item.checkState(0) == Qt.CheckState.Checked]

    def _count_checked(self) -> None:
        n = len(self.checked())
        self.trash_button.setEnabled(n > 0)
        self.trash_button.setText(f"Move {n} Checked to Trash…" if n else "Move Checked to Trash…")

    def confirm(self, paths: list[str]) -> bool:
        box = QMessageBox(QMessageBox.Icon.Question, "Move to Trash",
                          f"Move {len(paths)} photo(s) to the trash and out of the library? They can be "
                          "restored from the trash.", QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.No,
                          self)
        box.setDefaultButton(QMessageBox.StandardButton.No)
        return box.exec() == QMessageBox.StandardButton.Yes

    def trash_checked(self) -> None:
        paths = self.checked()
        if paths and self.confirm(paths):
            self.state.setText(f"Moving {len(paths)} photo(s) to the trash…")
            self.trash_button.setEnabled(False)
            self.controller.trash(paths)

    def _on_trashed(self, result) -> None:
        msg = f"{len(result.moved)} photo(s) moved to the trash."
        if result.failed:
            msg += " Not moved: " + "; ".join(f"{os.path.basename(p)} ({why})" for p, why in result.failed)
        self._note = msg
        self.state.setText(msg)
        self.controller.find_duplicates()  # the groups as they are now
