"""Reading image-caption data sets: the one reader behind `picsift train` and `picsift eval`.

Formats, told apart by what the path is and what the file holds:

- CSV (or TSV: a .tsv file, or tab-delimited content) with columns image and caption and an
  optional split; image paths are relative to the file's folder (then to images/ beside it) or
  absolute.
- COCO captions JSON ({"images": [{"id", "file_name"}], "annotations": [{"image_id", "caption"}]});
  paths relative to the JSON's folder, then to images/ beside it. No split unless images carry one.
- Karpathy split JSON ({"images": [{"filepath", "filename", "split", "sentences": [{"raw"}]}]}).
- A folder holding captions.csv (or captions.tsv) beside an images/ folder; paths in it are
  relative to images/ first, then to the folder itself.

A bad row never raises: it is skipped and its reason counted (missing image, unreadable image,
empty caption, unknown column, unknown image id, malformed entry, duplicate row). A file that
cannot be read at all, or data with nothing usable in it, is one DatasetError sentence.

Stdlib and Pillow only (Pillow imported only when images are checked), so this imports fast.
"""

from __future__ import annotations

import collections
import csv
import io
import json
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Hashable, Iterable, NamedTuple

from ..errors import DatasetError

FOLDER_CAPTION_FILES = ("captions.csv", "captions.tsv")
IMAGES_FOLDER = "images"

MISSING_IMAGE = "missing image"
UNREADABLE_IMAGE = "unreadable image"
EMPTY_CAPTION = "empty caption"
UNKNOWN_COLUMN = "unknown column"
UNKNOWN_IMAGE_ID = "unknown image id"
MALFORMED_ENTRY = "malformed entry"
DUPLICATE_ROW = "duplicate row"


@dataclass
class CaptionData:
    source: Path  # the file or folder read
    format: str  # "csv" | "tsv" | "coco" | "karpathy" | "folder"
    images: list[Path]  # unique absolute image paths, in first-seen order
    image_splits: list[str | None]
    captions: list[str]
    caption_image: list[int]  # for each caption, the index of its image in `images`
    skipped: collections.Counter[str] = field(default_factory=collections.Counter)  # reason -> rows
    _by_image: tuple[int, int, list[list[int]]] | None = field(default=None, init=False, repr=False, compare=False)

    def captions_of(self, i: int) -> list[int]:
        """Indices (into `captions`) of the captions of image i, in caption order."""
        sizes = (len(self.images), len(self.caption_image))
        if self._by_image is None or self._by_image[:2] != sizes:  # built once, again only if the lists grew
            by_image: list[list[int]] = [[] for _ in self.images]
            for c, img in enumerate(self.caption_image):
                by_image[img].append(c)
            self._by_image = (*sizes, by_image)
        return list(self._by_image[2][i])

    def subset(self, image_indices: Iterable[int]) -> CaptionData:
        """The given images in the given order with their captions (grouped by image, in that
        order); `skipped` is kept as it was, since it describes the rows read."""
        order = [int(i) for i in image_indices]
        if len(set(order)) != len(order):
            raise ValueError("subset() needs distinct image indices")
        images, splits, captions, caption_image = [], [], [], []
        for new, old in enumerate(order):
            images.append(self.images[old])
            splits.append(self.image_splits[old])
            for c in self.captions_of(old):
                captions.append(self.captions[c])
                caption_image.append(new)
        return CaptionData(
            self.source, self.format, images, splits, captions, caption_image, collections.Counter(self.skipped)
        )

    def split_names(self) -> list[str]:
        """The distinct splits of the images held, in first-seen order (images without one left out)."""
        return list(dict.fromkeys(s for s in self.image_splits if s is not None))

    def summary(self) -> str:
        """One line, e.g. "1,000 images, 5,000 captions (train); skipped 3 rows: 2 missing image, 1 empty caption"."""
        text = f"{_count(len(self.images), 'image')}, {_count(len(self.captions), 'caption')}"
        names = self.split_names()
        if names:
            text += f" ({', '.join(names)})"
        total = sum(self.skipped.values())
        if total:
            text += f"; skipped {_count(total, 'row')}: {_reasons(self.skipped)}"
        return text


def read_dataset(path: str | Path, split: str | None = None, check_images: bool = True) -> CaptionData:
    """Read image-caption pairs from a CSV/TSV file, COCO or Karpathy JSON, or a dataset folder.

    split keeps only that split's rows (others are not read further, and not counted as skipped);
    check_images opens each distinct image once with Pillow to verify it.
    """
    source = Path(os.path.abspath(os.path.expanduser(str(path))))
    if not source.exists():
        raise DatasetError(f"Dataset not found: {source} does not exist.")
    if source.is_dir():
        fmt, rows, candidates = _read_folder(source)
    else:
        fmt, rows, candidates = _read_file(source)
    return _assemble(source, fmt, rows, candidates, split, check_images)


# ----- rows ---------------------------------------------------------------------


class _Row(NamedTuple):
    image: Hashable | None  # a key the format's candidates() turns into paths to try; None: no image named
    caption: object
    split: str | None
    problem: str | None  # a reason to skip found while parsing


def _assemble(
    source: Path,
    fmt: str,
    rows: list[_Row],
    candidates: Callable[[Hashable], list[Path]],
    split: str | None,
    check_images: bool,
) -> CaptionData:
    keep_splits = _select_splits(source, rows, split)
    data = CaptionData(source, fmt, [], [], [], [])
    skipped = data.skipped
    resolved: dict[Hashable, Path | None] = {}
    readable: dict[Path, bool] = {}
    index_of: dict[Path, int] = {}
    seen_pairs: set[tuple[int, str]] = set()
    selected = 0
    for row in rows:
        if keep_splits is not None and row.split not in keep_splits:
            continue
        selected += 1
        if row.problem:
            skipped[row.problem] += 1
            continue
        if not isinstance(row.caption, str):
            skipped[MALFORMED_ENTRY if row.caption is not None else EMPTY_CAPTION] += 1
            continue
        caption = " ".join(row.caption.split())
        if not caption:
            skipped[EMPTY_CAPTION] += 1
            continue
        if row.image is None:
            skipped[MISSING_IMAGE] += 1
            continue
        if row.image not in resolved:
            resolved[row.image] = _first_file(candidates(row.image))
        image = resolved[row.image]
        if image is None:
            skipped[MISSING_IMAGE] += 1
            continue
        if check_images:
            if image not in readable:
                readable[image] = _verifies(image)
            if not readable[image]:
                skipped[UNREADABLE_IMAGE] += 1
                continue
        i = index_of.get(image)
        if i is None:
            i = index_of[image] = len(data.images)
            data.images.append(image)
            data.image_splits.append(row.split)
        if (i, caption) in seen_pairs:
            skipped[DUPLICATE_ROW] += 1
            continue
        seen_pairs.add((i, caption))
        data.captions.append(caption)
        data.caption_image.append(i)
    if not data.captions:
        where = f"split '{split}' of {source}" if keep_splits is not None else str(source)
        total = sum(skipped.values())
        if selected == 0:
            raise DatasetError(f"No usable image-caption pairs in {where}: it has no caption rows.")
        raise DatasetError(
            f"No usable image-caption pairs in {where}: {_count(total, 'row')} skipped ({_reasons(skipped)})."
        )
    return data


def _select_splits(source: Path, rows: list[_Row], split: str | None) -> set[str] | None:
    if split is None:
        return None
    names = list(dict.fromkeys(r.split for r in rows if r.split is not None))
    want = split.strip()
    keep = {s for s in names if s == want} or {s for s in names if s.casefold() == want.casefold()}
    if keep:
        return keep
    if not names:
        raise DatasetError(f"{source} has no split '{split}': its rows name no splits at all.")
    raise DatasetError(f"{source} has no split '{split}'; its splits are: {', '.join(names)}.")


def _first_file(paths: list[Path]) -> Path | None:
    for p in paths:
        try:
            if p.is_file():
                return Path(os.path.normpath(p))
        except OSError:  # a name too long, a loop of links: no such image either way
            continue
    return None


_heif_tried = False


def _verifies(path: Path) -> bool:
    """Whether Pillow recognises the file and its structure checks out (cheap: no full decode)."""
    global _heif_tried
    from PIL import Image

    if not _heif_tried and path.suffix.lower() in (".heic", ".heif"):
        _heif_tried = True
        try:  # the app reads HEIC through pillow-heif, so a HEIC photo here is not "unreadable"
            import pillow_heif

            pillow_heif.register_heif_opener()
        except ImportError:  # pragma: no cover - depends on the platform's wheels
            pass
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. DecompressionBombWarning: size is not our question
            with Image.open(path) as img:
                img.verify()
        return True
    except Exception:  # Pillow raises many kinds (UnidentifiedImageError, SyntaxError, struct.error...)
        return False


def _bases_candidates(bases: list[Path]) -> Callable[[Hashable], list[Path]]:
    def candidates(raw: Hashable) -> list[Path]:
        p = Path(str(raw))
        if p.is_absolute():
            return [p]
        return [b / p for b in bases]

    return candidates


# ----- files and folders -----------------------------------------------------------


def _read_folder(folder: Path):
    for name in FOLDER_CAPTION_FILES:
        f = folder / name
        if f.is_file():
            text = _read_text(f)
            _, rows = _parse_table(text, f, "\t" if _is_tab_delimited(text, f) else ",")
            return "folder", rows, _bases_candidates([folder / IMAGES_FOLDER, folder])
    raise DatasetError(
        f"{folder} is a folder without captions.csv: a dataset folder holds captions.csv "
        f"(columns image and caption) beside an images/ folder."
    )


def _read_file(path: Path):
    text = _read_text(path)
    suffix = path.suffix.lower()
    if suffix == ".json" or (suffix not in (".csv", ".tsv") and text.lstrip()[:1] in ("{", "[")):
        return _read_json(text, path)
    fmt, rows = _parse_table(text, path, "\t" if _is_tab_delimited(text, path) else ",")
    return fmt, rows, _bases_candidates([path.parent, path.parent / IMAGES_FOLDER])


def _read_text(path: Path) -> str:
    try:
        with open(path, encoding="utf-8-sig", newline="") as f:
            return f.read()
    except UnicodeDecodeError:
        raise DatasetError(f"{path} is not UTF-8 text; save it as UTF-8 and read it again.") from None
    except OSError as exc:
        raise DatasetError(f"Cannot read {path}: {exc.strerror or exc}.") from None


def _is_tab_delimited(text: str, path: Path) -> bool:
    if path.suffix.lower() == ".tsv":
        return True
    header = next((line for line in text.splitlines() if line.strip()), "")
    if "\t" not in header:
        return False
    names = {c.strip().strip('"').lower() for c in header.split("\t")}
    return "," not in header or {"image", "caption"} <= names


def _parse_table(text: str, path: Path, delimiter: str) -> tuple[str, list[_Row]]:
    fmt = "tsv" if delimiter == "\t" else "csv"
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    header: list[str] | None = None
    rows: list[_Row] = []
    try:
        for fields in reader:
            if not any(v.strip() for v in fields):
                continue  # blank lines (and rows of empty fields) are not rows
            if header is None:
                header = [v.strip() for v in fields]
                names = [h.lower() for h in header]
                if "image" not in names or "caption" not in names:
                    has = ", ".join(h for h in header if h) or "no named columns"
                    raise DatasetError(f"{path} needs columns image and caption; it has: {has}.")
                i_image, i_caption = names.index("image"), names.index("caption")
                i_split = names.index("split") if "split" in names else None
                continue
            width = len(header)
            image = fields[i_image].strip() if i_image < len(fields) else ""
            caption = fields[i_caption] if i_caption < len(fields) else ""
            split = (fields[i_split].strip() or None) if i_split is not None and i_split < len(fields) else None
            # Values past the header fall under no column, e.g. a caption with an unquoted comma
            # split in two; empty trailing fields (a trailing delimiter) are harmless.
            problem = UNKNOWN_COLUMN if any(v.strip() for v in fields[width:]) else None
            rows.append(_Row(image or None, caption, split, problem))
    except csv.Error as exc:
        raise DatasetError(f"{path} is not a readable {fmt.upper()} file (line {reader.line_num}: {exc}).") from None
    if header is None:
        raise DatasetError(f"{path} is empty; it needs a header row with columns image and caption.")
    return fmt, rows


def _read_json(text: str, path: Path):
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DatasetError(
            f"{path} is not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})."
        ) from None
    folder = path.parent
    if isinstance(data, dict) and "annotations" in data:
        return "coco", _coco_rows(data, path), _bases_candidates([folder, folder / IMAGES_FOLDER])
    if isinstance(data, dict) and isinstance(data.get("images"), list):
        if any(isinstance(e, dict) and "sentences" in e for e in data["images"]):
            return "karpathy", _karpathy_rows(data), _karpathy_candidates(folder)
    raise DatasetError(
        f"{path} is neither COCO captions JSON (lists images and annotations) nor Karpathy split JSON "
        f"(a list images whose entries hold sentences)."
    )


def _coco_rows(data: dict, path: Path) -> list[_Row]:
    images, annotations = data.get("images"), data.get("annotations")
    if not isinstance(images, list) or not isinstance(annotations, list):
        raise DatasetError(f"{path} is not COCO captions JSON: images and annotations must both be lists.")
    by_id: dict[int | str, tuple[str, str | None]] = {}
    for entry in images:
        if not isinstance(entry, dict):
            continue
        image_id, name = entry.get("id"), entry.get("file_name")
        if isinstance(image_id, (int, str)) and isinstance(name, str) and name.strip():
            by_id.setdefault(image_id, (name.strip(), _split_value(entry.get("split"))))
    rows = []
    for ann in annotations:
        if not isinstance(ann, dict):
            rows.append(_Row(None, None, None, MALFORMED_ENTRY))
            continue
        image_id = ann.get("image_id")
        known = by_id.get(image_id) if isinstance(image_id, (int, str)) else None
        if known is None:
            rows.append(_Row(None, None, None, UNKNOWN_IMAGE_ID))
            continue
        name, split = known
        rows.append(_Row(name, ann.get("caption"), split, None))
    return rows


def _karpathy_rows(data: dict) -> list[_Row]:
    rows = []
    for entry in data["images"]:
        if not isinstance(entry, dict):
            rows.append(_Row(None, None, None, MALFORMED_ENTRY))
            continue
        name, filepath = entry.get("filename"), entry.get("filepath") or ""
        key = (str(filepath).strip(), name.strip()) if isinstance(name, str) and name.strip() else None
        split = _split_value(entry.get("split"))
        sentences = entry.get("sentences")
        if not isinstance(sentences, list):
            rows.append(_Row(None, None, split, MALFORMED_ENTRY))
            continue
        for sentence in sentences:
            if isinstance(sentence, dict):
                raw = sentence.get("raw")
                if raw is None and isinstance(sentence.get("tokens"), list):
                    raw = " ".join(str(t) for t in sentence["tokens"])
            else:
                raw = sentence
            rows.append(_Row(key, raw, split, None))
    return rows


def _karpathy_candidates(folder: Path) -> Callable[[Hashable], list[Path]]:
    def candidates(key: Hashable) -> list[Path]:
        filepath, filename = key  # type: ignore[misc]
        tried = [folder / filepath / filename, folder / IMAGES_FOLDER / filepath / filename, folder / filename]
        return list(dict.fromkeys(tried))

    return candidates


def _split_value(value: object) -> str | None:
    if value is None:
        return None
    text = str(value).strip()
    return text or None


# ----- wording ---------------------------------------------------------------------


def _count(n: int, noun: str) -> str:
    return f"{n:,} {noun}{'' if n == 1 else 's'}"


def _reasons(skipped: collections.Counter[str]) -> str:
    return ", ".join(f"{n:,} {reason}" for reason, n in skipped.most_common())
