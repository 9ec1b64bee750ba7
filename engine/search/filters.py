"""Search filters that combine with meaning: when a photo was taken, its folder, its file type, its
orientation. They are facts stored at indexing (engine.store.database) and narrow the photos the BE ranks, so a
filtered search still returns n hits when that many pass."""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass

from ..errors import PicsiftError

ORIENTATIONS = ("landscape", "portrait", "square")
TYPE_ALIASES = {"jpg": ("jpg", "jpeg", "jpe"), "jpeg": ("jpg", "jpeg", "jpe"), "tif": ("tif", "tiff"),
                "tiff": ("tif", "tiff"), "heic": ("heic", "heif"), "heif": ("heic", "heif")}


class FilterError(PicsiftError, ValueError):
    """A filter that cannot be understood; the text says what is expected."""


@dataclass(frozen=True)
class Filters:
    taken_from: float | None = None  # seconds since the epoch, inclusive
    taken_to: float | None = None  # exclusive
    folder: str | None = None  # only photos under this folder
    types: tuple[str, ...] = ()  # file extensions, lower case, without the dot
    orientation: str | None = None  # landscape | portrait | square

    @property
    def empty(self) -> bool:
        return (self.taken_from is None and self.taken_to is None and not self.folder and not self.types
                and not self.orientation)

    def describe(self) -> str:
        parts = []
        if self.taken_from is not None or self.taken_to is not None:
            lo = _day(self.taken_from) if self.taken_from is not None else "…"
            hi = _day(self.taken_to - 1) if self.taken_to is not None else "…"
            parts.append(f"taken {lo}" if lo == hi else f"taken {lo} to {hi}")
        if self.folder:
            parts.append(f"in {self.folder}")
        if self.types:
            parts.append("type " + ", ".join(self.types))
        if self.orientation:
            parts.append(self.orientation)
        return "; ".join(parts)


def _day(t: float) -> str:
    return dt.datetime.fromtimestamp(t).strftime("%Y-%m-%d")


def _start(d: dt.date) -> float:
    return dt.datetime(d.year, d.month, d.day).timestamp()


def _period(text: str) -> tuple[dt.date, dt.date]:
    """One date written as YYYY, YYYY-MM or YYYY-MM-DD: (first day, the day after the last)."""
    m = re.fullmatch(r"(\d{4})(?:-(\d{1,2})(?:-(\d{1,2}))?)?", text.strip())
    if not m:
        raise FilterError(f"'{text}' is not a date: write 2024, 2024-05 or 2024-05-17")
    y, mo, d = int(m.group(1)), m.group(2), m.group(3)
    try:
        if d is not None:
            first = dt.date(y, int(mo), int(d))
            return first, first + dt.timedelta(days=1)
        if mo is not None:
            first = dt.date(y, int(mo), 1)
            return first, (first + dt.timedelta(days=32)).replace(day=1)
        return dt.date(y, 1, 1), dt.date(y + 1, 1, 1)
    except ValueError:
        raise FilterError(f"'{text}' is not a real date") from None


def parse_date_range(text: str, today: dt.date | None = None) -> tuple[float | None, float | None]:
    """(from, to) in seconds since the epoch, local time, `to` exclusive, for what people type:
    2024 · 2024-05 · 2024-05-17 · 2023-06..2024-02 · 2024.. · ..2019 · today · yesterday · this week ·
    this month · last month · this year · last year · last 30 days."""
    today = today or dt.date.today()
    t = " ".join(text.lower().split())
    if not t:
        raise FilterError("the date range is empty")
    named = {
        "today": (today, today + dt.timedelta(days=1)),
        "yesterday": (today - dt.timedelta(days=1), today),
        "this week": (today - dt.timedelta(days=today.weekday()), today + dt.timedelta(days=1)),
        "this month": (today.replace(day=1), today + dt.timedelta(days=1)),
        "this year": (dt.date(today.year, 1, 1), today + dt.timedelta(days=1)),
        "last year": (dt.date(today.year - 1, 1, 1), dt.date(today.year, 1, 1)),
    }
    first_this_month = today.replace(day=1)
    named["last month"] = ((first_this_month - dt.timedelta(days=1)).replace(day=1), first_this_month)
    if t in named:
        lo, hi = named[t]
        return _start(lo), _start(hi)
    m = re.fullmatch(r"(?:the )?last (\d+) days?", t)
    if m:
        return _start(today - dt.timedelta(days=int(m.group(1)) - 1)), _start(today + dt.timedelta(days=1))
    if ".." in t:
        a, b = (x.strip() for x in t.split("..", 1))
        lo = _start(_period(a)[0]) if a else None
        hi = _start(_period(b)[1]) if b else None
        if lo is None and hi is None:
            raise FilterError("'..' needs a date on at least one side")
        if lo is not None and hi is not None and hi <= lo:
            raise FilterError(f"'{text}' ends before it starts")
        return lo, hi
    lo, hi = _period(t)
    return _start(lo), _start(hi)


def parse_types(text: str) -> tuple[str, ...]:
    """'jpg,png' -> the extensions to keep (jpg also keeps jpeg and jpe; heic keeps heif)."""
    out: list[str] = []
    for part in re.split(r"[,\s]+", text.lower()):
        part = part.strip().lstrip(".")
        if not part:
            continue
        if not re.fullmatch(r"[a-z0-9]+", part):
            raise FilterError(f"'{part}' is not a file type: write jpg, png, heic, …")
        for ext in TYPE_ALIASES.get(part, (part,)):
            if ext not in out:
                out.append(ext)
    if not out:
        raise FilterError("no file type given: write jpg, png, heic, …")
    return tuple(out)


def parse_orientation(text: str) -> str:
    t = text.strip().lower()
    if t not in ORIENTATIONS:
        raise FilterError(f"orientation is one of {', '.join(ORIENTATIONS)}, not '{text}'")
    return t
