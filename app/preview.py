"""The photo preview inside the window: the photo large with its date, size and folder, and the words read in
it (those a text: search matched highlighted); arrows move through the results, Enter (or the button) opens
the system viewer, Esc closes."""

from __future__ import annotations

import html
import os
import time

from PySide6.QtCore import Qt, QUrl, Signal
from PySide6.QtGui import QDesktopServices, QImage, QImageReader, QPixmap
from PySide6.QtWidgets import QDialog, QHBoxLayout, QLabel, QPushButton, QSizePolicy, QVBoxLayout

from picsift.engine.cli import format_size
from picsift.results_model import HitRole


class PreviewDialog(QDialog):
    """A result shown large. `row` follows the arrows; `moved(row)` tells the grid where the user is."""

    moved = Signal(int)

    def __init__(self, model, row: int, info, parent=None):
        super().__init__(parent)
        self.model, self.row, self.info = model, row, info  # info(path) -> dict | None (engine facts)
        self.setWindowTitle("Preview")
        self.resize(960, 760)
        self.image = QLabel()
        self.image.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.image.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Ignored)
        self.image.setMinimumSize(320, 240)
        self.caption = QLabel()
        self.caption.setWordWrap(True)
        self.caption.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.words = QLabel()  # the text read in the photo
        self.words.setWordWrap(True)
        self.words.setTextFormat(Qt.TextFormat.RichText)
        self.words.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.prev_button = QPushButton("◀ Previous")
        self.next_button = QPushButton("Next ▶")
        self.open_button = QPushButton("Open in Viewer")
        self.prev_button.clicked.connect(lambda: self.go(self.row - 1))
        self.next_button.clicked.connect(lambda: self.go(self.row + 1))
        self.open_button.clicked.connect(self.open_external)
        for b in (self.prev_button, self.next_button, self.open_button):
            b.setFocusPolicy(Qt.FocusPolicy.NoFocus)  # the arrows and Enter stay the dialog's
        buttons = QHBoxLayout()
        buttons.addWidget(self.prev_button)
        buttons.addWidget(self.next_button)
        buttons.addStretch(1)
        buttons.addWidget(self.open_button)
        layout = QVBoxLayout(self)
        layout.addWidget(self.image, 1)
        layout.addWidget(self.caption)
        layout.addWidget(self.words)
        layout.addLayout(buttons)
        self._pixmap = QPixmap()
        self.go(row)

    @property
    def hit(self):
        return self.model.index(self.row).data(HitRole)

    def go(self, row: int) -> None:
        if not 0 <= row < self.model.rowCount():
            return
        self.row = row
        hit = self.hit
        image, error = photo_image(hit.path)
        self._pixmap = QPixmap.fromImage(image) if not image.isNull() else QPixmap()
        self._show_pixmap()
        facts = self.info(hit.path) or {}
        parts = [f"<b>{os.path.basename(hit.path)}</b>"]
        if facts.get("taken"):
            parts.append("taken " + time.strftime("%Y-%m-%d %H:%M", time.localtime(facts["taken"])))
        if facts.get("width") and facts.get("height"):
            parts.append(f"{facts['width']} × {facts['height']}")
        if facts.get("bytes"):
            parts.append(format_size(facts["bytes"]))
        parts.append(os.path.dirname(hit.path))
        match = f"match {hit.match:.2f}" + (" (reranked)" if hit.rerank_score is not None else "")
        parts.append(f"result {row + 1} of {self.model.rowCount()}, {match}")
        if image.isNull():
            parts.append(f"<i>the photo cannot be shown: {html.escape(error)}</i>")
        self.caption.setText(" · ".join(parts))
        text = facts.get("text")
        self.words.setVisible(bool(text))
        self.words.setText(words_html(text, hit.text_matches or ()) if text else "")
        self.prev_button.setEnabled(row > 0)
        self.next_button.setEnabled(row < self.model.rowCount() - 1)
        self.setWindowTitle(f"Preview · {os.path.basename(hit.path)}")
        self.moved.emit(row)

    def _show_pixmap(self) -> None:
        if self._pixmap.isNull():
            self.image.setPixmap(QPixmap())
            return
        self.image.setPixmap(self._pixmap.scaled(self.image.size(), Qt.AspectRatioMode.KeepAspectRatio,
                                                 Qt.TransformationMode.SmoothTransformation))

    def resizeEvent(self, event) -> None:  # noqa: N802 - Qt's name
        super().resizeEvent(event)
        self._show_pixmap()

    def keyPressEvent(self, event) -> None:  # noqa: N802 - Qt's name
        """Left/Right: the previous or next result; Enter: the system viewer; Space (like Esc): close."""
        key = event.key()
        if key in (Qt.Key.Key_Return, Qt.Key.Key_Enter):
            self.open_external()
        elif key == Qt.Key.Key_Left:
            self.go(self.row - 1)
        elif key == Qt.Key.Key_Right:
            self.go(self.row + 1)
        elif key == Qt.Key.Key_Space:
            self.close()
        else:
            super().keyPressEvent(event)

    def open_external(self) -> None:
        QDesktopServices.openUrl(QUrl.fromLocalFile(self.hit.path))


def words_html(text: str, matched) -> str:
    """The photo's words as rich text, one line of the photo a line, with the matched stretches marked."""
    spans: list[tuple[int, int]] = []
    for m in matched:
        start = 0
        while m and (i := text.find(m, start)) >= 0:
            spans.append((i, i + len(m)))
            start = i + len(m)
    spans.sort()
    out, pos = [], 0
    for a, b in spans:
        if a < pos:
            continue
        out.append(html.escape(text[pos:a]))
        out.append(f'<span style="background-color:#ffd54f;color:#000"><b>{html.escape(text[a:b])}</b></span>')
        pos = b
    out.append(html.escape(text[pos:]))
    return "<b>Text in the photo:</b> " + "".join(out).replace("\n", "<br>")


def photo_image(path: str, side: int = 1600) -> tuple[QImage, str]:
    """A photo to show, upright: by Qt's readers, else (camera RAWs, HEIC without Qt's plugin) by picsift's
    own decoder at about `side` pixels; (a null image, why) when neither can read it."""
    from picsift.engine.errors import ImageError
    from picsift.engine.index.imaging import open_photo

    reader = QImageReader(path)
    reader.setAutoTransform(True)  # EXIF orientation, as the thumbnails show it
    image = reader.read()
    if not image.isNull():
        return image, ""
    try:
        img = open_photo(path, side).image
    except ImageError as exc:
        return QImage(), str(exc)
    img.thumbnail((side, side))
    data = img.convert("RGB").tobytes()
    return QImage(data, img.width, img.height, img.width * 3, QImage.Format.Format_RGB888).copy(), ""
