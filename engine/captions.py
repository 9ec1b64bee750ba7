"""Caption collections: reading them from files, storing them, embedding them with the library's model."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Iterator

from .errors import CollectionError
from .library import Library
from .paths import DEFAULT_COLLECTION_FILE

DEFAULT_COLLECTION = "everyday"
CSV_COLUMNS = ("caption", "text", "captions", "description", "sentence")


def read_captions(path: str | Path) -> list[str]:
    """Captions from a text file (one a line), a CSV with a caption column, or COCO captions JSON."""
    path = Path(path)
    try:
        raw = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise CollectionError(f"caption file not found: {path}") from None
    except UnicodeDecodeError:
        raise CollectionError(f"{path} is not UTF-8 text") from None
    except OSError as exc:
        raise CollectionError(f"cannot read {path}: {exc.strerror or exc}") from None
    suffix = path.suffix.lower()
    if suffix == ".json":
        texts = _from_coco(raw, path)
    elif suffix in (".csv", ".tsv"):
        texts = _from_csv(raw, path, "\t" if suffix == ".tsv" else ",")
    else:
        texts = raw.splitlines()
    seen: dict[str, None] = {}
    for t in texts:
        t = " ".join(str(t).split())
        if t:
            seen.setdefault(t, None)
    if not seen:
        raise CollectionError(f"no captions found in {path}")
    return list(seen)


def _from_coco(raw: str, path: Path) -> list[str]:
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise CollectionError(f"{path} is not valid JSON: {exc}") from None
    if isinstance(data, dict) and isinstance(data.get("annotations"), list):
        return [a["caption"] for a in data["annotations"] if isinstance(a, dict) and "caption" in a]
    if isinstance(data, list) and all(isinstance(x, str) for x in data):
        return data
    raise CollectionError(f"{path} is not COCO captions JSON (an object with an 'annotations' list of captions)")


def _from_csv(raw: str, path: Path, delimiter: str) -> list[str]:
    reader = csv.DictReader(raw.splitlines(), delimiter=delimiter)
    fields = {f.strip().lower(): f for f in (reader.fieldnames or [])}
    column = next((fields[c] for c in CSV_COLUMNS if c in fields), None)
    if column is None:
        raise CollectionError(f"{path} has no caption column (looked for: {', '.join(CSV_COLUMNS)})")
    return [row[column] for row in reader if row.get(column)]


def import_collection(library: Library, path: str | Path, name: str | None = None) -> tuple[str, int]:
    texts = read_captions(path)
    name = name or Path(path).stem
    library.store.add_collection(name, str(Path(path).resolve()), texts)
    return name, len(texts)


def ensure_default_collection(library: Library) -> None:
    """Import the built-in collection unless the library has it (collections of the user's own don't count)."""
    if library.store.collection_id(DEFAULT_COLLECTION) is None:
        import_collection(library, DEFAULT_COLLECTION_FILE, DEFAULT_COLLECTION)


def resolve_collection(library: Library, name: str | None) -> int:
    """The id of a named collection, or of the default one (imported on first use)."""
    if name is None:
        ensure_default_collection(library)
        name = DEFAULT_COLLECTION
    cid = library.store.collection_id(name)
    if cid is None:
        known = ", ".join(c["name"] for c in library.store.collections()) or "none"
        raise CollectionError(f"no caption collection named '{name}' (known: {known})")
    return cid


def embed_collection(library: Library, model, collection_id: int, batch: int = 128) -> Iterator[tuple[int, int]]:
    """Embed captions that have no vector of this model's bi-encoder yet, yielding (done, total)."""
    key = model.be.key
    library.store.register_model(key, "be", model.source, model.dim)
    missing = library.store.captions_missing_vectors(collection_id, key)
    total = len(missing)
    for i in range(0, total, batch):
        chunk = missing[i : i + batch]
        vecs = model.embed_texts([t for _, t in chunk])
        library.store.set_caption_vectors(key, [cid for cid, _ in chunk], vecs)
        yield min(total, i + batch), total
