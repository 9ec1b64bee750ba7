"""Walking photo folders: which files exist, their size and time, and what could not be walked."""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass, field

from .imaging import is_supported
from .raw import is_raw

JUNK_DIRS = frozenset(
    {
        "node_modules", "__pycache__", "@eaDir", "#recycle", "$RECYCLE.BIN", "System Volume Information",
        "lost+found", "venv", "__MACOSX", "Thumbs", "thumbnails",
    }
)


@dataclass(frozen=True)
class FileEntry:
    path: str
    size: int
    mtime_ns: int


@dataclass(frozen=True)
class ScanProblem:
    path: str
    reason: str


@dataclass
class ScanResult:
    files: list[FileEntry] = field(default_factory=list)
    problems: list[ScanProblem] = field(default_factory=list)
    # Folders whose listing failed (vanished, unreadable): photos recorded under them are kept, not swept.
    incomplete: list[str] = field(default_factory=list)
    # Camera RAWs left out because a photo of the same name sits beside them (RAW+JPEG shooting): (raw, photo).
    paired: list[tuple[str, str]] = field(default_factory=list)

    @property
    def paired_raws(self) -> set[str]:
        return {raw for raw, _ in self.paired}


def folder_problem(root: str) -> str | None:
    """Why a folder given to index cannot be walked ("folder not found: ..." or "not a folder: ..."), or None."""
    if os.path.isdir(root):
        return None
    return f"folder not found: {root}" if not os.path.exists(root) else f"not a folder: {root}"


def skip_dir(name: str) -> bool:
    """Folders never walked (nor watched): hidden ones and the junk list."""
    return name.startswith(".") or name in JUNK_DIRS


def scan(root: str, exclude: frozenset[str] | set[str] = frozenset(), pair_raw: bool = True) -> ScanResult:
    """Recursively list supported photo files under root, following folder links once each; folders whose
    path is in `exclude` (the library's excluded folders, normalised) are not walked. pair_raw: a camera RAW
    with a JPEG (or other non-RAW photo) of the same name in its folder is one photo, the JPEG."""
    result = ScanResult()
    root = os.path.abspath(root)
    seen: set[tuple[int, int]] = set()
    stack = [root]
    while stack:
        folder = stack.pop()
        try:
            st = os.stat(folder)
            key = (st.st_dev, st.st_ino)
            if key in seen:
                continue  # a link back into a folder already walked
            seen.add(key)
            with os.scandir(folder) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as exc:
            result.incomplete.append(folder)
            if folder != root or os.path.lexists(folder):
                result.problems.append(ScanProblem(folder, f"folder could not be read: {_reason(exc)}"))
            continue
        subdirs = []
        files: list[FileEntry] = []
        for entry in entries:
            name = entry.name
            try:
                if entry.is_dir(follow_symlinks=True):
                    if not skip_dir(name) and not (exclude and _normal(entry.path) in exclude):
                        subdirs.append(entry.path)
                    continue
            except OSError:
                pass
            if name.startswith(".") or not is_supported(name):
                continue
            try:
                st = entry.stat(follow_symlinks=True)
            except OSError as exc:
                result.problems.append(ScanProblem(entry.path, _reason(exc, entry.is_symlink())))
                continue
            if not _is_regular(st.st_mode):
                continue
            files.append(FileEntry(entry.path, st.st_size, st.st_mtime_ns))
        result.files += _pair_raws(files, result.paired) if pair_raw else files
        stack.extend(reversed(subdirs))
    return result


def stem_key(path: str) -> str:
    """A file's name without its extension, case-folded: what pairs IMG_0001.CR2 with IMG_0001.jpg."""
    return os.path.splitext(os.path.basename(path))[0].casefold()


def _pair_raws(files: list[FileEntry], paired: list[tuple[str, str]]) -> list[FileEntry]:
    """One folder's files without the RAWs that have a non-RAW photo of the same name (noted in `paired`)."""
    others = {stem_key(f.path): f.path for f in files if not is_raw(f.path)}
    kept = []
    for f in files:
        partner = others.get(stem_key(f.path)) if is_raw(f.path) else None
        if partner is None:
            kept.append(f)
        else:
            paired.append((f.path, partner))
    return kept


def _normal(path: str) -> str:
    from ..paths import normalize_path

    return normalize_path(path)


def _is_regular(mode: int) -> bool:
    import stat

    return stat.S_ISREG(mode)


def _reason(exc: OSError, is_link: bool = False) -> str:
    if exc.errno == errno.ELOOP:
        return "symbolic link loop"
    if exc.errno == errno.ENOENT:
        return "broken symbolic link" if is_link else "vanished during the scan"
    if exc.errno in (errno.EACCES, errno.EPERM):
        return "permission denied"
    return exc.strerror or str(exc)
