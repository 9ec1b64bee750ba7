"""The window's parts that are not the results grid: the filter bar, indexing progress and the dropped-photo
view."""

from __future__ import annotations

import os

from PySide6.QtCore import QSize, Qt, Signal
from PySide6.QtGui import QPixmap
from PySide6.QtWidgets import (
    QComboBox, QDialog, QDialogButtonBox, QDoubleSpinBox, QFileDialog, QHBoxLayout, QLabel, QListView, QListWidget, QListWidgetItem, QProgressBar,
    QPushButton, QSplitter, QToolButton, QVBoxLayout, QWidget,
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


class FilterBar(QWidget):
    """Filters that combine with the query (date taken, file type, orientation), the photo a search starts
    from, the minimum match shown and the order. Changing a filter or the photo asks for the search again
    (filtersChanged); the minimum and the order only re-arrange what was found (viewChanged)."""

    filtersChanged = Signal()
    viewChanged = Signal()

    DATES = (("Any time", None), ("Today", "today"), ("This week", "this week"), ("This month", "this month"),
             ("Last month", "last month"), ("Last 30 days", "last 30 days"), ("This year", "this year"),
             ("Last year", "last year"), ("Dates…", "custom"))
    TYPES = (("Any type", None), ("JPEG", "jpg"), ("PNG", "png"), ("HEIC", "heic"), ("WebP", "webp"),
             ("TIFF", "tif"), ("GIF", "gif"))
    SHAPES = (("Any shape", None), ("Landscape", "landscape"), ("Portrait", "portrait"), ("Square", "square"))
    SORTS = (("Best match first", "relevance"), ("Newest first", "date"))

    def __init__(self, parent=None):
        super().__init__(parent)
        self.photo: str | None = None
        self.photo_button = QToolButton()
        self.photo_button.setToolTip("The search starts from this photo; the words say how the results should "
                                     "differ. Click to stop using it.")
        self.photo_button.setVisible(False)
        self.photo_button.clicked.connect(lambda: self.set_photo(None))
        self.date = self._combo(self.DATES, "When the photo was taken (EXIF date, else the file's)")
        self.type = self._combo(self.TYPES, "File type")
        self.shape = self._combo(self.SHAPES, "Orientation as shown")
        self.min_match = QDoubleSpinBox()
        self.min_match.setRange(0.0, 1.0)
        self.min_match.setSingleStep(0.05)
        self.min_match.setDecimals(2)
        self.min_match.setPrefix("match ≥ ")
        self.min_match.setSpecialValueText("all matches")
        self.min_match.setToolTip("Hide weak matches: the cross-encoder's probability when reranked, else the "
                                  "bi-encoder's score")
        self.min_match.valueChanged.connect(lambda _v: self.viewChanged.emit())
        self.sort = QComboBox()
        for name, value in self.SORTS:
            self.sort.addItem(name, value)
        self.sort.setToolTip("Order of the results")
        self.sort.currentIndexChanged.connect(lambda _i: self.viewChanged.emit())
        self.custom_range = ""  # what "Dates…" holds: 2023-06..2024-02, 2019, …
        self.ask_range = None  # a function asking the user for a range (the window sets it)
        self.date.activated.connect(self._on_date_activated)
        for combo in (self.date, self.type, self.shape):
            combo.currentIndexChanged.connect(lambda _i: self.filtersChanged.emit())
        row = QHBoxLayout(self)
        row.setContentsMargins(0, 0, 0, 0)
        row.addWidget(self.photo_button)
        for w in (self.date, self.type, self.shape, self.min_match, self.sort):
            row.addWidget(w)
        row.addStretch(1)

    @staticmethod
    def _combo(items, tip: str) -> QComboBox:
        combo = QComboBox()
        for name, value in items:
            combo.addItem(name, value)
        combo.setToolTip(tip)
        return combo

    def _on_date_activated(self, index: int) -> None:
        if self.date.itemData(index) == "custom" and self.ask_range is not None:
            text = self.ask_range(self.custom_range)
            if text is None:  # cancelled: back to any time unless a range was set before
                if not self.custom_range:
                    self.date.setCurrentIndex(0)
                return
            self.set_custom_range(text)

    def set_custom_range(self, text: str) -> None:
        """Dates typed by the user (checked by the window with the engine's parser)."""
        self.custom_range = text.strip()
        i = self.date.findData("custom")
        self.date.setItemText(i, f"Dates: {self.custom_range}" if self.custom_range else "Dates…")
        if self.date.currentIndex() != i:
            self.date.setCurrentIndex(i)  # emits filtersChanged
        else:
            self.filtersChanged.emit()

    def values(self) -> tuple[str | None, str | None, str | None]:
        """(date range, file type, orientation) as the engine's filter parsers read them; None for any."""
        date = self.date.currentData()
        if date == "custom":
            date = self.custom_range or None
        return date, self.type.currentData(), self.shape.currentData()

    @property
    def min_score(self) -> float | None:
        return self.min_match.value() or None

    @property
    def order(self) -> str:
        return self.sort.currentData()

    def set_photo(self, path: str | None) -> None:
        self.photo = path
        self.photo_button.setVisible(path is not None)
        if path is not None:
            self.photo_button.setText(f"From photo: {os.path.basename(path)}  ✕")
        self.filtersChanged.emit()


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
        if p.phase == "reading":
            self.label.setText(f"Reading the text in photos indexed before it was read: {p.done} of {p.total} "
                               f"· {format_eta(p.eta_s)}")
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
    searchFromPhoto = Signal()

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
        self.search_button = QPushButton("Search from this photo…")
        self.search_button.setToolTip("Find photos like this one, changed as your words say (\"at night\")")
        self.search_button.clicked.connect(self.searchFromPhoto)
        lv.addWidget(self.search_button)
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
        from picsift.preview import photo_image

        pix = QPixmap.fromImage(photo_image(path, 640)[0])
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


class ExcludedDialog(QDialog):
    """Library ▸ Excluded Folders: folders indexing does not walk, besides the built-in junk list. Excluding
    one forgets its photos (the files are untouched); including it again indexes it at the next rescan."""

    def __init__(self, controller, parent=None):
        super().__init__(parent)
        self.controller = controller
        self.setWindowTitle("Excluded Folders")
        self.resize(560, 340)
        self.list = QListWidget()
        self.add_button = QPushButton("Exclude a Folder…")
        self.add_button.clicked.connect(self.choose)
        self.remove_button = QPushButton("Include Again")
        self.remove_button.clicked.connect(self.include_selected)
        close = QDialogButtonBox(QDialogButtonBox.StandardButton.Close)
        close.rejected.connect(self.reject)
        buttons = QHBoxLayout()
        buttons.addWidget(self.add_button)
        buttons.addWidget(self.remove_button)
        buttons.addStretch(1)
        buttons.addWidget(close)
        layout = QVBoxLayout(self)
        layout.addWidget(QLabel("Photos under these folders are not indexed (nor under hidden folders and "
                                "system folders such as @eaDir or $RECYCLE.BIN)."))
        layout.addWidget(self.list, 1)
        layout.addLayout(buttons)
        controller.maintenanceDone.connect(lambda _msg: self.refresh())
        self.refresh()

    def refresh(self) -> None:
        self.list.clear()
        for path in self.controller.library.excluded_folders():
            self.list.addItem(path)
        self.remove_button.setEnabled(self.list.count() > 0)

    def choose(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Exclude a folder from the library")
        if folder:
            self.exclude(folder)

    def exclude(self, folder: str) -> None:
        self.controller.exclude_folder(folder)

    def include_selected(self) -> None:
        item = self.list.currentItem() or self.list.item(0)
        if item is not None and self.controller.include_folder(item.text()):
            self.refresh()
