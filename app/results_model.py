"""A Qt list model over search hits, keeping each tile's identity as the rerank reorders them."""

from __future__ import annotations

import os

from PySide6.QtCore import QAbstractListModel, QModelIndex, QPersistentModelIndex, QSize, Qt
from PySide6.QtGui import QColor, QIcon, QImage, QPixmap

HitRole = Qt.ItemDataRole.UserRole + 1


def hit_tooltip(hit) -> str:
    lines = [os.path.basename(hit.path or ""), f"BE score: {hit.score:.3f}"]
    if getattr(hit, "li_score", None) is not None:
        lines.append(f"LI score: {hit.li_score:.3f} (BE rank {hit.be_rank}, LI rank {hit.li_rank})")
    if hit.rerank_score is None:
        lines.append("CE probability: not reranked")
    else:
        lines.append(f"CE probability: {hit.rerank_score:.3f}")
        moved = hit.first_rank - hit.rank
        lines.append("Rerank: stayed in place" if moved == 0 else
                     f"Rerank: moved {'up' if moved > 0 else 'down'} {abs(moved)} place{'s' if abs(moved) != 1 else ''}")
    return "\n".join(lines)


def match_label(hit) -> str:
    """How well a hit matches, under its name: the CE's probability as a percentage once reranked, else the
    BE's score (a cosine, not a probability)."""
    if hit.rerank_score is not None:
        return f"{hit.rerank_score:.0%} match"
    return f"score {hit.score:.2f}"


class ResultsModel(QAbstractListModel):
    def __init__(self, loader, tile: int = 160, parent=None):
        super().__init__(parent)
        self.hits: list = []
        self.loader = loader
        self.tile = tile
        self._icons: dict[str, QIcon] = {}
        self._broken: set[str] = set()
        placeholder = QPixmap(tile, tile)
        placeholder.fill(QColor(60, 60, 60))
        self._placeholder = QIcon(placeholder)
        loader.loaded.connect(self._on_thumb)
        loader.failed.connect(self._on_broken)

    def rowCount(self, parent=QModelIndex()) -> int:  # noqa: N802 - Qt's name
        return 0 if parent.isValid() else len(self.hits)

    def data(self, index, role=Qt.ItemDataRole.DisplayRole):
        if not index.isValid() or index.row() >= len(self.hits):
            return None
        hit = self.hits[index.row()]
        if role == Qt.ItemDataRole.DisplayRole:
            name = os.path.basename(hit.path)
            name = name if len(name) <= 24 else name[:21] + "…"
            return f"{name}\n{match_label(hit)}"
        if role == Qt.ItemDataRole.DecorationRole:
            icon = self._icons.get(hit.path)
            if icon is None:
                if hit.path not in self._broken:
                    self.loader.request(hit.path)
                return self._placeholder
            return icon
        if role == Qt.ItemDataRole.SizeHintRole:
            return QSize(self.tile + 16, self.tile + 48)  # room for any thumbnail shape and its two lines
        if role == Qt.ItemDataRole.ToolTipRole:
            return hit_tooltip(hit)
        if role == HitRole:
            return hit
        return None

    def set_hits(self, hits: list) -> None:
        """Replace the hits; when only their order changed, move rows so selection and focus follow them."""
        if [h.id for h in hits] and sorted(h.id for h in hits) == sorted(h.id for h in self.hits):
            old_ids = [h.id for h in self.hits]
            self.layoutAboutToBeChanged.emit()
            persistent = self.persistentIndexList()
            self.hits = list(hits)
            pos = {h.id: i for i, h in enumerate(self.hits)}
            self.changePersistentIndexList(
                persistent, [self.index(pos[old_ids[p.row()]]) if p.isValid() else QModelIndex() for p in persistent])
            self.layoutChanged.emit()
            return
        self.beginResetModel()
        self.hits = list(hits)
        self.endResetModel()

    def clear(self) -> None:
        self.set_hits([])

    def hit_at(self, index) -> object | None:
        if isinstance(index, QPersistentModelIndex):
            index = QModelIndex(index)
        return self.hits[index.row()] if index.isValid() and index.row() < len(self.hits) else None

    def _on_thumb(self, path: str, image: QImage) -> None:
        self._icons[path] = QIcon(QPixmap.fromImage(image))
        self._refresh(path)

    def _on_broken(self, path: str) -> None:
        self._broken.add(path)

    def _refresh(self, path: str) -> None:
        for row, h in enumerate(self.hits):
            if h.path == path:
                idx = self.index(row)
                self.dataChanged.emit(idx, idx, [Qt.ItemDataRole.DecorationRole])
