"""Duplicates in a library: exact copies (the same content hash) and near-duplicates (BE vectors closer than
a threshold, confirmed by a perceptual hash, so that two photos of one scene are not called copies of each
other), grouped, largest groups first, with what a user needs to pick the one to keep.

Nothing is deleted here: `trash` moves the library's photos the user chose to the system trash (send2trash)
and takes them out of the library; it refuses any other path.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from .errors import ImageError
from .index.imaging import open_photo

COSINE = 0.95  # BE cosine at or above which two photos are near-duplicate candidates
HAMMING = 10  # of the 64 bits of the difference hash: what confirms a candidate pair
NEIGHBOURS = 10  # nearest photos looked at for each photo


@dataclass
class Member:
    id: int
    path: str
    size: int  # bytes
    width: int | None
    height: int | None
    taken: float | None
    hash: str

    @property
    def pixels(self) -> int:
        return (self.width or 0) * (self.height or 0)

    def to_json(self) -> dict:
        return {"path": self.path, "bytes": self.size, "width": self.width, "height": self.height,
                "taken": self.taken, "content_hash": self.hash}


@dataclass
class Group:
    members: list[Member] = field(default_factory=list)  # the suggested one to keep first

    @property
    def exact(self) -> bool:
        """Every member has the same content."""
        return len({m.hash for m in self.members}) == 1

    def to_json(self) -> dict:
        return {"kind": "exact" if self.exact else "near", "photos": [m.to_json() for m in self.members]}


def dhash(path: str, size: int = 8) -> int:
    """The difference hash of a photo: a (size+1) x size grey thumbnail, one bit per horizontal neighbour
    pair that grows brighter. Raises ImageError for an unreadable file."""
    img = open_photo(path, 64).image.convert("L").resize((size + 1, size))
    a = np.asarray(img, dtype=np.int16)
    bits = (a[:, 1:] > a[:, :-1]).flatten()
    return int("".join("1" if b else "0" for b in bits), 2)


def hamming(a: int, b: int) -> int:
    return bin(a ^ b).count("1")


def find_duplicates(library, key: str | None = None, cosine: float = COSINE, max_hamming: int = HAMMING,
                    neighbours: int = NEIGHBOURS) -> list[Group]:
    """Groups of duplicates among the library's readable photos, largest first; within a group the
    suggested one to keep (most pixels, then largest file, then oldest) first."""
    store = library.store
    key = key or store.be_key
    rows = [Member(*r) for r in store.photo_details()]
    by_id = {r.id: r for r in rows}
    parent = {r.id: r.id for r in rows}

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    def union(a: int, b: int) -> None:
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)

    first_of_hash: dict[str, int] = {}
    for r in rows:  # exact copies
        if r.hash in first_of_hash:
            union(first_of_hash[r.hash], r.id)
        else:
            first_of_hash[r.hash] = r.id

    ids, vecs = store.vectors(key) if key else (np.zeros(0, np.int64), None)
    if len(ids) > 1:
        index = library.index_for(key)
        scores, found = index.search(vecs, min(neighbours + 1, len(ids)))
        hashes: dict[int, int | None] = {}

        def phash(i: int) -> int | None:
            if i not in hashes:
                try:
                    hashes[i] = dhash(by_id[i].path)
                except (ImageError, OSError):
                    hashes[i] = None
            return hashes[i]

        for row, i in enumerate(ids.tolist()):
            for s, j in zip(scores[row], found[row]):
                j = int(j)
                if j < 0 or j == i or s < cosine or i not in by_id or j not in by_id:
                    continue
                if by_id[i].hash == by_id[j].hash or find(i) == find(j):
                    continue
                a, b = phash(i), phash(j)
                if a is not None and b is not None and hamming(a, b) <= max_hamming:
                    union(i, j)

    groups: dict[int, list[Member]] = {}
    for r in rows:
        groups.setdefault(find(r.id), []).append(r)
    out = [Group(sorted(ms, key=lambda m: (-m.pixels, -m.size, m.taken if m.taken is not None else float("inf"),
                                           m.path)))
           for ms in groups.values() if len(ms) > 1]
    return sorted(out, key=lambda g: (-len(g.members), g.members[0].path))


@dataclass
class TrashResult:
    moved: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)  # (path, why), refused ones included


def trashable(library, paths: Sequence[str]) -> tuple[list[str], list[tuple[str, str]]]:
    """Which of `paths` are photos of this library: (their recorded paths, (path, why) for the others).

    Whatever a user types or a caller passes may be anything on disk, and the trash is for cleaning up the
    library, so a path passes only when it names a photo the library records and its real path (links
    resolved, of the file and of every folder on the way) lies in one of the library's folders (resolved
    the same way): a link inside a library folder cannot reach a file outside it."""
    from .paths import in_any, normalize_path

    store = library.store
    folders = store.folders()
    real_folders = [normalize_path(os.path.realpath(f)) for f in folders]
    ok: list[str] = []
    refused: list[tuple[str, str]] = []
    for path in paths:
        p = normalize_path(path)
        if not os.path.exists(p):  # a dangling link included
            refused.append((path, "does not exist"))
        elif os.path.isdir(p):
            refused.append((path, "is a folder"))
        elif in_any(real := normalize_path(os.path.realpath(p)), real_folders, case_sensitive=None) is None:
            leads_out = in_any(p, folders, case_sensitive=None) is not None
            refused.append((path, "a link that leads outside the library" if leads_out else "not in the library"))
        elif (row := store.photo(p) or store.photo(real)) is None:
            refused.append((path, "not in the library"))
        elif row.path not in ok:
            ok.append(row.path)
    return ok, refused


def trash(library, paths: Sequence[str]) -> TrashResult:
    """Move photos of the library to the system trash (never a permanent delete) and take them out of the
    library. Anything that is not one of its photos (see `trashable`) is refused and left alone, and a file
    that cannot be moved stays, in the library too; both are reported."""
    from send2trash import send2trash

    photos, refused = trashable(library, paths)
    result = TrashResult(failed=refused)
    for p in photos:
        try:
            send2trash(p)  # a link goes to the trash itself; what it points to stays
        except Exception as exc:  # send2trash raises OSError and its own TrashPermissionError alike
            result.failed.append((p, f"could not be moved to the trash: {exc}"))
            continue
        result.moved.append(p)
    if result.moved:
        library.forget_paths(result.moved)
    return result
