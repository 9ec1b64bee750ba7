"""The main window: search with live rerank, drag and drop, indexing in the background."""

from __future__ import annotations

import os
import tempfile
import time

from PySide6.QtCore import QEvent, QSettings, QSize, QStringListModel, Qt, QUrl
from PySide6.QtGui import (
    QAction, QDesktopServices, QGuiApplication, QIcon, QImage, QKeySequence, QPixmap, QShortcut,
)
from PySide6.QtWidgets import (
    QComboBox, QCompleter, QFileDialog, QHBoxLayout, QInputDialog, QLabel, QLineEdit, QListView, QMainWindow, QMenu,
    QMessageBox, QProgressBar, QSpinBox, QStackedWidget, QVBoxLayout, QWidget,
)

from picsift.controller import Controller
from picsift.panels import DropPanel, FilterBar, IndexPanel
from picsift.preferences import Preferences, PreferencesDialog
from picsift.results_model import HitRole, ResultsModel
from picsift.thumbnails import ThumbnailLoader
from picsift.engine.errors import PicsiftError
from picsift.engine.search.filters import Filters, parse_date_range, parse_types
from picsift.engine.index.imaging import is_supported
from picsift.engine.paths import ASSETS_DIR

EMPTY_TEXT = (
    "<h2>Find your photos by what is in them</h2>"
    "<p>Add a photo folder to start: <b>File ▸ Add Folder…</b> (Ctrl+O), or drop a folder on this window.<br>"
    "picsift indexes it in the background; you can search while it works.</p>"
    "<p>Then type what you are looking for, such as <i>a dog running on the beach</i>, and press Enter.<br>"
    "Drop a photo here to see the captions that describe it best and the most similar photos.</p>"
)
PAGE_EMPTY, PAGE_RESULTS, PAGE_DROP = 0, 1, 2


def _local_paths(mime) -> list[str]:
    return [u.toLocalFile() for u in mime.urls() if u.isLocalFile()] if mime is not None else []


def _is_photo(path: str) -> bool:
    return os.path.isfile(path) and is_supported(path)


class MainWindow(QMainWindow):
    def __init__(self, controller: Controller, settings: QSettings, thumb_dir: str):
        super().__init__()
        self.controller = controller
        self.settings = settings
        self.prefs = Preferences.load(settings)
        self.collection: str | None = None
        self.dropped: str | None = None
        self._index_waiting = False  # an indexing request made before the model was loaded
        self._waiting_folders: list[str] | None = None
        self._last_refresh = 0.0
        self.setWindowTitle("picsift")
        icon = ASSETS_DIR / "icons" / "picsift.png"
        if icon.exists():
            self.setWindowIcon(QIcon(str(icon)))
        self.setAcceptDrops(True)

        self.loader = ThumbnailLoader(thumb_dir, parent=self)
        self.results = ResultsModel(self.loader, parent=self)
        self.similar_model = ResultsModel(self.loader, parent=self)

        # search row
        self.search = QLineEdit()
        self.search.setPlaceholderText("Describe the photo you are looking for (Ctrl+F), then Enter;"
                                       ' -word to avoid, 2:word to stress, text:"words" in the photo')
        self.search.setClearButtonEnabled(True)
        self.recent = QStringListModel(self)
        completer = QCompleter(self.recent, self)
        completer.setCaseSensitivity(Qt.CaseSensitivity.CaseInsensitive)
        completer.setFilterMode(Qt.MatchFlag.MatchContains)
        self.search.setCompleter(completer)
        self.search.returnPressed.connect(self.run_search)
        self.search.installEventFilter(self)
        self.k_box = QSpinBox()
        self.k_box.setRange(0, 200)
        self.k_box.setValue(self.prefs.k)
        self.k_box.setPrefix("rerank top ")
        self.k_box.setSpecialValueText("rerank off")
        self.k_box.setToolTip("How many of the first results the cross-encoder reranks (0 = off)")
        self.k_box.valueChanged.connect(self._on_k_changed)
        self.scope = QComboBox()
        self.scope.setToolTip("Search all library folders or one")
        self.rerank_state = QLabel("")
        row = QHBoxLayout()
        row.addWidget(self.search, 1)
        row.addWidget(self.k_box)
        row.addWidget(self.scope)
        row.addWidget(self.rerank_state)
        self.filter_bar = FilterBar()
        self.filter_bar.filtersChanged.connect(self._on_filters_changed)
        self.filter_bar.viewChanged.connect(self._on_view_changed)
        self.filter_bar.ask_range = self.ask_date_range

        # pages
        self.empty = QLabel(EMPTY_TEXT)
        self.empty.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.empty.setWordWrap(True)
        self.grid = QListView()
        self.grid.setViewMode(QListView.ViewMode.IconMode)
        self.grid.setIconSize(QSize(160, 160))
        self.grid.setResizeMode(QListView.ResizeMode.Adjust)
        self.grid.setMovement(QListView.Movement.Static)
        self.grid.setModel(self.results)
        # Double-click or Space: the preview inside the window; Enter: the system viewer (eventFilter)
        self.grid.doubleClicked.connect(self.preview_index)
        self.grid.installEventFilter(self)
        self.grid.setContextMenuPolicy(Qt.ContextMenuPolicy.CustomContextMenu)
        self.grid.customContextMenuRequested.connect(lambda pos: self._context_menu(self.grid, pos))
        self.drop_panel = DropPanel(self.similar_model)
        self.drop_panel.similar.activated.connect(self.open_index)
        self.drop_panel.similar.doubleClicked.connect(self.open_index)
        self.drop_panel.similar.setContextMenuPolicy(Qt.ContextMenuPolicy.CustomContextMenu)
        self.drop_panel.similar.customContextMenuRequested.connect(
            lambda pos: self._context_menu(self.drop_panel.similar, pos))
        self.drop_panel.importRequested.connect(self.import_captions)
        self.drop_panel.collectionChosen.connect(self._on_collection)
        self.drop_panel.searchFromPhoto.connect(lambda: self.dropped and self.search_from_photo(self.dropped))
        self.pages = QStackedWidget()
        self.pages.addWidget(self.empty)
        self.pages.addWidget(self.grid)
        self.pages.addWidget(self.drop_panel)

        self.index_panel = IndexPanel()
        self.index_panel.setVisible(False)
        self.index_panel.pauseToggled.connect(controller.pause_indexing)
        self.index_panel.cancelRequested.connect(controller.cancel_indexing)

        central = QWidget()
        layout = QVBoxLayout(central)
        layout.addLayout(row)
        layout.addWidget(self.filter_bar)
        layout.addWidget(self.pages, 1)
        layout.addWidget(self.index_panel)
        self.setCentralWidget(central)

        self.device_label = QLabel("Loading model…")
        self.size_label = QLabel("")
        self.download_bar = QProgressBar()
        self.download_bar.setMaximumWidth(260)
        self.download_bar.setVisible(False)
        self.statusBar().addWidget(self.device_label, 1)
        self.statusBar().addPermanentWidget(self.download_bar)
        self.statusBar().addPermanentWidget(self.size_label)

        self._build_menus()
        QShortcut(QKeySequence("Ctrl+F"), self, activated=self.focus_search)
        QShortcut(QKeySequence(Qt.Key.Key_Escape), self, activated=self.cancel_work)

        c = controller
        c.modelLoading.connect(lambda mid: self.device_label.setText(f"Loading model {mid}…"))
        c.downloadProgress.connect(self._on_download)
        c.modelReady.connect(self._on_model_ready)
        c.modelFailed.connect(self._on_model_failed)
        c.searchUpdate.connect(self._on_search_update)
        c.searchFailed.connect(lambda msg: self.statusBar().showMessage(msg, 8000))
        c.indexProgress.connect(self._on_index_progress)
        c.indexFinished.connect(self._on_index_finished)
        c.indexFailed.connect(self._on_index_failed)
        c.captionsUpdate.connect(self._on_captions)
        c.similarReady.connect(self._on_similar)
        c.captionsPreparing.connect(self._on_captions_preparing)
        c.dropFailed.connect(self._on_drop_failed)
        c.libraryChanged.connect(self.refresh_library)
        c.notice.connect(lambda msg: self.statusBar().showMessage(msg, 30000))
        c.maintenanceDone.connect(lambda msg: msg and self.statusBar().showMessage(msg, 8000))

        geometry = settings.value("geometry")
        if geometry is not None:
            self.restoreGeometry(geometry)
        else:
            self.resize(1100, 760)
        self.refresh_library()
        self._refresh_recent()

    # ----- menus -----------------------------------------------------------
    def _build_menus(self) -> None:
        file_menu = self.menuBar().addMenu("&File")
        self.add_folder_action = QAction("&Add Folder…", self, shortcut=QKeySequence("Ctrl+O"),
                                         triggered=self.choose_folder)
        file_menu.addAction(self.add_folder_action)
        file_menu.addAction(QAction("&Paste Image", self, shortcut=QKeySequence.StandardKey.Paste,
                                    triggered=self.paste_image))
        file_menu.addAction(QAction("&Import Captions…", self, triggered=self.import_captions))
        file_menu.addSeparator()
        file_menu.addAction(QAction("&Quit", self, shortcut=QKeySequence.StandardKey.Quit, triggered=self.close))
        lib = self.menuBar().addMenu("&Library")
        lib.addAction(QAction("&Rescan All Folders", self, shortcut=QKeySequence("F5"), triggered=self.rescan))
        lib.addAction(QAction("Find &Duplicates…", self, triggered=self.show_duplicates))
        lib.addAction(QAction("&Excluded Folders…", self, triggered=self.edit_excluded))
        self.folders_menu = lib.addMenu("&Folders")
        self.folders_menu.aboutToShow.connect(self._fill_folders_menu)
        edit = self.menuBar().addMenu("&Edit")
        edit.addAction(QAction("&Find", self, triggered=self.focus_search))
        edit.addAction(QAction("Clear &Recent Searches", self, triggered=self.clear_recent))
        edit.addAction(QAction("&Cancel Running Work", self, triggered=self.cancel_work))
        edit.addSeparator()
        edit.addAction(QAction("&Preferences…", self, triggered=self.edit_preferences))

    def show_duplicates(self):
        """The duplicates view (a dialog over the window); returns it."""
        from picsift.duplicates import DuplicatesDialog

        dialog = DuplicatesDialog(self.controller, self.loader, self)
        dialog.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
        dialog.show()
        return dialog

    def edit_excluded(self):
        """The excluded-folders list (a dialog over the window); returns it."""
        from picsift.panels import ExcludedDialog

        dialog = ExcludedDialog(self.controller, self)
        dialog.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
        dialog.show()
        return dialog

    def _fill_folders_menu(self) -> None:
        self.folders_menu.clear()
        folders = self.controller.library.store.folders()
        if not folders:
            self.folders_menu.addAction("No folders yet").setEnabled(False)
        for folder in folders:
            sub = self.folders_menu.addMenu(folder)
            sub.addAction("Rescan", lambda f=folder: self.start_indexing([f]))
            sub.addAction("Open", lambda f=folder: QDesktopServices.openUrl(QUrl.fromLocalFile(f)))
            sub.addAction("Remove from Library…", lambda f=folder: self.remove_folder(f))

    # ----- library ---------------------------------------------------------
    def refresh_library(self) -> None:
        lib = self.controller.library
        count = lib.store.count_photos()
        folders = lib.store.folders()
        skipped = len(lib.store.errors())
        self.size_label.setText(f"{count} photos in {len(folders)} folder{'s' if len(folders) != 1 else ''}"
                                + (f" · {skipped} skipped" if skipped else ""))
        current = self.scope.currentData()
        self.scope.clear()
        self.scope.addItem("All folders", None)
        for f in folders:
            self.scope.addItem(os.path.basename(f) or f, f)
        i = self.scope.findData(current)
        self.scope.setCurrentIndex(max(0, i))
        names = [c["name"] for c in lib.store.collections()] or ["everyday"]
        self.drop_panel.set_collections(names, self.collection or "everyday")
        if count or self.controller.indexing:
            busy = " Indexing goes on in the background; searches see what is indexed so far." \
                if self.controller.indexing else ""
            self.empty.setText("<h2>Type what you are looking for and press Enter</h2>"
                               f"<p>{count} photos indexed.{busy}<br>"
                               "Drop a photo here to describe it and find similar ones.</p>")

    def choose_folder(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Add a photo folder")
        if folder:
            self.start_indexing([folder])

    def start_indexing(self, folders: list[str] | None = None) -> bool:
        if self.controller.indexing:
            self.statusBar().showMessage("Indexing is already running; wait for it or cancel it (Esc).", 6000)
            return False
        if not self.controller.ready:
            self._index_waiting, self._waiting_folders = True, folders
            self.statusBar().showMessage("Indexing starts as soon as the model is loaded.", 6000)
            return False
        self.index_panel.start()
        return self.controller.index(folders)

    def rescan(self) -> None:
        self.start_indexing(None)

    def remove_folder(self, folder: str) -> None:
        answer = QMessageBox.question(self, "Remove folder",
                                      f"Remove {folder} from the library? The photos on disk are not touched.")
        if answer == QMessageBox.StandardButton.Yes:
            self.statusBar().showMessage(f"Removing {folder} from the library…")
            self.controller.remove_folder(folder)

    # ----- model -----------------------------------------------------------
    def _on_download(self, done: int, total: int, name: str) -> None:
        mb = 1024 * 1024
        self.download_bar.setVisible(True)
        self.download_bar.setRange(0, max(1, total // mb))
        self.download_bar.setValue(done // mb)
        self.download_bar.setFormat(f"{done // mb} of {total // mb} MB")
        self.device_label.setText(f"Downloading the model (first run only): {name}")

    def _on_model_ready(self, device: str) -> None:
        self.download_bar.setVisible(False)
        self.device_label.setText(f"Model ready · {device}")
        if self._index_waiting:
            self._index_waiting = False
            self.start_indexing(self._waiting_folders)

    def _on_model_failed(self, message: str) -> None:
        self.download_bar.setVisible(False)
        self.device_label.setText("No model loaded")
        box = QMessageBox(self)
        box.setIcon(QMessageBox.Icon.Warning)
        box.setWindowTitle("Model needed")
        box.setText(message)
        box.setInformativeText("picsift needs a BLIP image-text retrieval model. Connect to the internet once to "
                               "download the default one, or choose a folder holding a saved checkpoint.")
        choose = box.addButton("Choose Model Folder…", QMessageBox.ButtonRole.AcceptRole)
        box.addButton(QMessageBox.StandardButton.Close)
        box.exec()
        if box.clickedButton() is choose:
            folder = QFileDialog.getExistingDirectory(self, "Model folder")
            if folder:
                self.prefs.model = folder
                self.prefs.save(self.settings)
                self.controller.load_model(folder)

    def edit_preferences(self) -> None:
        budget = self.controller.library.tokens.budget_bytes / 1024**3
        dialog = PreferencesDialog(self.prefs, self, cache_budget_gb=budget)
        if dialog.exec():
            old = self.prefs
            self.prefs = dialog.value()
            self.prefs.save(self.settings)
            if dialog.cache_budget_bytes() != self.controller.library.tokens.budget_bytes:
                self.controller.set_cache_budget(dialog.cache_budget_bytes())
            self.k_box.setValue(self.prefs.k)
            if (old.model, old.device) != (self.prefs.model, self.prefs.device):
                self.controller.device = self.prefs.device
                self.controller.load_model(self.prefs.model or None)

    # ----- search ----------------------------------------------------------
    def focus_search(self) -> None:
        self.search.setFocus()
        self.search.selectAll()

    def run_search(self) -> None:
        query = self.search.text().strip()
        photo = self.filter_bar.photo
        if not query and photo is None:
            return
        try:
            filters = self.current_filters()
        except PicsiftError as exc:
            self.statusBar().showMessage(str(exc), 8000)
            return
        self.pages.setCurrentIndex(PAGE_RESULTS)
        self.controller.search(query, self.prefs.n, self.k_box.value(), self.scope.currentData(), filters, photo)
        self._refresh_recent()

    def current_filters(self) -> Filters | None:
        """The filter bar's choices as the engine's filters; None when it asks for none."""
        date, types, shape = self.filter_bar.values()
        lo, hi = parse_date_range(date) if date else (None, None)
        f = Filters(taken_from=lo, taken_to=hi, types=parse_types(types) if types else (), orientation=shape)
        return None if f.empty else f

    def ask_date_range(self, current: str) -> str | None:
        """A date range typed by the user, checked by the engine's parser; None when cancelled."""
        text, ok = QInputDialog.getText(self, "Photos taken", "Dates (2024, 2024-05, 2023-06..2024-02, 2024.., "
                                        "last 30 days):", text=current)
        while ok:
            try:
                parse_date_range(text)
                return text
            except PicsiftError as exc:
                text, ok = QInputDialog.getText(self, "Photos taken", f"{exc}. Dates:", text=text)
        return None

    def _on_filters_changed(self) -> None:
        if self.pages.currentIndex() == PAGE_RESULTS and (self.search.text().strip() or self.filter_bar.photo):
            self.run_search()

    def _on_view_changed(self) -> None:
        self.controller.set_view(self.filter_bar.min_score, self.filter_bar.order)

    def search_from_photo(self, path: str) -> None:
        """Start searches from a photo: the words typed then say how the results should differ."""
        self.filter_bar.set_photo(path)
        self.pages.setCurrentIndex(PAGE_RESULTS)
        self.search.setPlaceholderText("How should the results differ from the photo? (e.g. at night), then Enter")
        self.focus_search()
        self.run_search()

    def _refresh_recent(self) -> None:
        try:
            self.recent.setStringList(self.controller.recent_queries())
        except PicsiftError:
            pass

    def clear_recent(self) -> None:
        self.controller.clear_recent_queries()
        self._refresh_recent()
        self.statusBar().showMessage("Recent searches cleared.", 5000)

    def _on_k_changed(self, k: int) -> None:
        self.prefs.k = k
        self.prefs.save(self.settings)
        if self.controller.query is not None and self.pages.currentIndex() == PAGE_RESULTS:
            self.controller.rerank(k)

    def _on_search_update(self, _request: int, update) -> None:
        self.results.set_hits(update.hits)
        # The current tile follows its photo while the rerank moves it (so a user's choice is kept);
        # if the user is not in the grid, the current tile is the best result.
        if update.hits and (update.done or not self.grid.currentIndex().isValid()) and not self.grid.hasFocus():
            self.grid.setCurrentIndex(self.results.index(0))
        if not update.hits:
            self.rerank_state.setText("no photos found")
        elif update.done:
            self.rerank_state.setText(f"{len(update.hits)} results" +
                                      (f", top {update.to_score} reranked" if update.to_score else ""))
        else:
            self.rerank_state.setText(f"reranking {update.scored} of {update.to_score}")

    def cancel_work(self) -> None:
        self.controller.cancel_search()
        if self.controller.indexing:
            self.controller.cancel_indexing()
            self.statusBar().showMessage("Cancelling indexing; what is indexed so far is kept.", 6000)

    # ----- results actions -------------------------------------------------
    def open_index(self, index) -> None:
        hit = index.data(HitRole)
        if hit is not None and hit.path:
            QDesktopServices.openUrl(QUrl.fromLocalFile(hit.path))

    def _context_menu(self, view: QListView, pos) -> None:
        index = view.indexAt(pos)
        hit = index.data(HitRole) if index.isValid() else None
        if hit is None:
            return
        menu = QMenu(self)
        for name, action in self.hit_actions(hit):
            menu.addAction(name, action)
        menu.exec(view.viewport().mapToGlobal(pos))

    def hit_actions(self, hit) -> list[tuple[str, object]]:
        """What a result's context menu offers."""
        return [
            ("Open", lambda: QDesktopServices.openUrl(QUrl.fromLocalFile(hit.path))),
            ("Open Folder", lambda: QDesktopServices.openUrl(QUrl.fromLocalFile(os.path.dirname(hit.path)))),
            ("Copy Path", lambda: QGuiApplication.clipboard().setText(hit.path)),
            ("Copy Image", lambda: QGuiApplication.clipboard().setImage(QImage(hit.path))),
            ("Find Similar", lambda: self.describe(hit.path)),
            ("Search From This Photo", lambda: self.search_from_photo(hit.path)),
        ]

    # ----- drag and drop, paste ---------------------------------------------
    def dragEnterEvent(self, event) -> None:  # noqa: N802 - Qt's name
        if event.mimeData().hasUrls() or event.mimeData().hasImage():
            event.acceptProposedAction()

    def dragMoveEvent(self, event) -> None:  # noqa: N802
        event.acceptProposedAction()

    def dropEvent(self, event) -> None:  # noqa: N802
        event.acceptProposedAction()
        self.take(event.mimeData())

    def take(self, mime) -> bool:
        """A drop or a paste: local files or folders, else image data. False when it holds neither."""
        paths = _local_paths(mime)
        if paths:
            self.handle_paths(paths)
        elif mime is not None and mime.hasImage():
            data = mime.imageData()  # a QImage, or a QPixmap from some sources
            self.describe_image(data.toImage() if isinstance(data, QPixmap) else QImage(data))
        else:
            return False
        return True

    def handle_paths(self, paths: list[str]) -> None:
        folders = [p for p in paths if os.path.isdir(p)]
        photos = [p for p in paths if _is_photo(p)]
        if folders:
            names = "\n".join(folders)
            answer = QMessageBox.question(self, "Add folder", f"Add and index this folder?\n{names}")
            if answer == QMessageBox.StandardButton.Yes:
                self.start_indexing(folders)
        elif photos:
            self.describe(photos[0])
        else:
            self.statusBar().showMessage("Drop a photo (JPEG, PNG, WebP, HEIC, …) or a folder.", 6000)

    @staticmethod
    def preview_dialog_type():
        from picsift.preview import PreviewDialog

        return PreviewDialog

    def preview_index(self, index):
        """The photo of a result shown large in the window (arrows move through the results); returns the
        preview."""
        from picsift.preview import PreviewDialog

        if not index.isValid() or index.data(HitRole) is None:
            return None
        dialog = PreviewDialog(self.results, index.row(), self.controller.library.photo_info, self)
        dialog.moved.connect(lambda row: self.grid.setCurrentIndex(self.results.index(row)))
        dialog.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
        dialog.show()
        return dialog

    def eventFilter(self, obj, event) -> bool:  # noqa: N802 - Qt's name
        """Ctrl+V in the search field pastes a photo when the clipboard holds one, text otherwise. In the
        results grid, Enter opens the current photo in the system viewer and Space previews it."""
        if obj is self.grid and event.type() == QEvent.Type.KeyPress:
            if event.key() in (Qt.Key.Key_Return, Qt.Key.Key_Enter):
                self.open_index(self.grid.currentIndex())
                return True
            if event.key() == Qt.Key.Key_Space:
                self.preview_index(self.grid.currentIndex())
                return True
        if obj is self.search and event.type() in (QEvent.Type.ShortcutOverride, QEvent.Type.KeyPress) \
                and event.matches(QKeySequence.StandardKey.Paste) and self._clipboard_has_photo():
            if event.type() == QEvent.Type.KeyPress:
                self.paste_image()
            event.accept()
            return True
        return super().eventFilter(obj, event)

    @staticmethod
    def _clipboard_has_photo() -> bool:
        mime = QGuiApplication.clipboard().mimeData()
        if mime is None:
            return False
        return mime.hasImage() or any(os.path.isdir(p) or _is_photo(p) for p in _local_paths(mime))

    def paste_image(self) -> None:
        if not self.take(QGuiApplication.clipboard().mimeData()):
            self.statusBar().showMessage("The clipboard holds no image.", 5000)

    def describe_image(self, image: QImage) -> None:
        fd, path = tempfile.mkstemp(prefix="picsift-pasted-", suffix=".png")
        os.close(fd)
        image.save(path, "PNG")
        self.describe(path)

    def describe(self, path: str) -> None:
        self.dropped = path
        self.pages.setCurrentIndex(PAGE_DROP)
        self.drop_panel.show_photo(path)
        self.similar_model.clear()
        self.controller.describe_photo(path, self.collection, similar_n=self.prefs.n, k=self.k_box.value() or 0)

    def _on_captions(self, path: str, update) -> None:
        if path == self.dropped:
            self.drop_panel.show_captions(update)

    def _on_captions_preparing(self, path: str, done: int, total: int) -> None:
        if path == self.dropped:
            self.drop_panel.state.setText(f"Preparing the caption collection (first use only): {done} of {total}")

    def _on_similar(self, path: str, hits) -> None:
        if path == self.dropped:
            self.similar_model.set_hits(hits)

    def _on_drop_failed(self, message: str) -> None:
        self.drop_panel.state.setText(message)
        self.statusBar().showMessage(message, 8000)

    def _on_collection(self, name: str) -> None:
        self.collection = name
        if self.dropped:
            self.describe(self.dropped)

    def import_captions(self) -> None:
        file, _ = QFileDialog.getOpenFileName(self, "Import captions", "",
                                              "Captions (*.txt *.csv *.tsv *.json);;All files (*)")
        if not file:
            return
        name, ok = QInputDialog.getText(self, "Collection name", "Name:", text=os.path.splitext(os.path.basename(file))[0])
        if not ok:
            return
        try:
            name, count = self.controller.import_captions(file, name or None)
        except Exception as exc:  # engine errors are typed; any other is still shown, never a traceback
            QMessageBox.warning(self, "Import failed", str(exc))
            return
        self.collection = name
        self.refresh_library()
        self.statusBar().showMessage(f"Imported {count} captions as '{name}'.", 6000)
        if self.dropped:
            self.describe(self.dropped)

    # ----- indexing --------------------------------------------------------
    def _on_index_progress(self, progress) -> None:
        self.index_panel.update_progress(progress)
        for m in progress.messages:
            self.statusBar().showMessage(m, 8000)
        now = time.monotonic()
        if progress.phase != "indexing" or now - self._last_refresh > 1.0:
            self._last_refresh = now
            self.refresh_library()

    def _on_index_finished(self, completed: bool) -> None:
        self.index_panel.finish()
        self.refresh_library()

    def _on_index_failed(self, message: str) -> None:
        self.index_panel.finish()
        QMessageBox.warning(self, "Indexing stopped", message)

    # ----- closing ---------------------------------------------------------
    def closeEvent(self, event) -> None:  # noqa: N802
        self.settings.setValue("geometry", self.saveGeometry())
        self.settings.sync()
        self.controller.shutdown()
        self.loader.shutdown()
        super().closeEvent(event)
