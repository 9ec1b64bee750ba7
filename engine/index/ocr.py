"""Reading the words in photos with Tesseract (through tesserocr: the engine in-process, a pool of them).

Most photos have no text, and recognising a large copy of a photo costs a good part of embedding it, so each
photo is first read quickly on a small copy: only photos where that finds a word Tesseract is sure of are
read again on a larger copy. (Tesseract's page-layout analysis alone, tried first as the check, called 86%
of ordinary photos text.) Words Tesseract is unsure of are
dropped: the texture of leaves or water read as letters would only make false matches.
"""

from __future__ import annotations

import glob
import os
import threading
from contextlib import contextmanager
from dataclasses import dataclass

from PIL import Image

try:
    import tesserocr

    tesserocr.set_leptonica_log_level(tesserocr.LeptLogLevel.NONE)  # its notes on odd boxes go to stderr
except ImportError:  # an optional dependency: without it the library reads no text, everything else works
    tesserocr = None

OFF_NOTICE = "Text in photos is off: install tesseract-ocr"
CHECK_SIDE = 640  # the longer side of the copy the layout check reads
READ_SIDE = 1600  # ... and of the copy a photo with text is recognised on
MIN_CONFIDENCE = 60.0  # Tesseract's word confidence (0-100) below which a word is dropped
CHECK_MIN_CHARS = 3  # a word the check must find: shorter "words" are often texture read as letters
TESSDATA_DIRS = ("/usr/share/tesseract-ocr/*/tessdata", "/usr/share/tessdata", "/usr/local/share/tessdata",
                 "/opt/homebrew/share/tessdata", "/usr/local/share/tesseract-ocr/*/tessdata",
                 "C:/Program Files/Tesseract-OCR/tessdata")


_SHARED: dict[str, "TextReader"] = {}
_SHARED_LOCK = threading.Lock()


class TextReadingUnavailable(Exception):
    """Why this machine cannot read text in photos; its text is the one sentence shown to the user."""


def find_tessdata(languages: str) -> str:
    """The folder holding the traineddata of every language asked for ('eng', 'eng+deu'): TESSDATA_PREFIX
    first, then where Tesseract's packages put them."""
    wanted = [x for x in languages.split("+") if x]
    candidates = [os.environ["TESSDATA_PREFIX"]] if os.environ.get("TESSDATA_PREFIX") else []
    for pattern in TESSDATA_DIRS:
        candidates += sorted(glob.glob(pattern), reverse=True)  # the newest Tesseract's first
    for folder in candidates:
        if all(os.path.isfile(os.path.join(folder, f"{lang}.traineddata")) for lang in wanted):
            return folder.rstrip("/\\") + os.sep
    found = sorted({f[:-12] for d in candidates if os.path.isdir(d) for f in os.listdir(d)
                    if f.endswith(".traineddata") and f != "osd.traineddata"})
    if found:
        raise TextReadingUnavailable(f"{OFF_NOTICE} language data for {languages} (found only: "
                                     f"{', '.join(found)}; Debian: apt install tesseract-ocr-<lang>)")
    raise TextReadingUnavailable(f"{OFF_NOTICE} (Debian/Ubuntu: apt install tesseract-ocr; macOS: brew install "
                                 "tesseract) to find photos by the words in them")


@dataclass(frozen=True)
class Reading:
    text: str  # the words kept, a line of the photo a line here; "" when the photo has none
    checked_only: bool  # the layout check found no text: nothing was recognised


class TextReader:
    """Reads photos' text; safe to call from several threads: each call borrows a Tesseract of its own
    from a pool (an engine serves one thread at a time, and loading one takes a moment)."""

    def __init__(self, languages: str = "eng", tessdata: str | None = None):
        if tesserocr is None:
            raise TextReadingUnavailable(f"{OFF_NOTICE} and the tesserocr package (pip install tesserocr)")
        self.languages = languages
        self.tessdata = tessdata or find_tessdata(languages)
        self._free: list = []  # engines not in use
        self._all: list = []
        self._lock = threading.Lock()
        with self._borrow():  # fails here, once, when the data cannot be loaded
            pass
        self.key = f"tesseract {tesserocr.tesseract_version().split()[1]} {languages}"

    @classmethod
    def for_library(cls, languages: str | None) -> tuple["TextReader | None", str | None]:
        """(a reader, None), or (None, the sentence saying why text in photos is off); None languages: off.
        Readers are kept per languages for the process: the next indexing run needs no new engines."""
        if not languages:
            return None, None
        with _SHARED_LOCK:
            reader = _SHARED.get(languages)
            if reader is None:
                try:
                    reader = cls(languages)
                except TextReadingUnavailable as exc:
                    return None, str(exc)
                _SHARED[languages] = reader
            return reader, None

    def _make(self):
        try:
            api = tesserocr.PyTessBaseAPI(path=self.tessdata, lang=self.languages, psm=tesserocr.PSM.AUTO)
            # Sauvola's local threshold: Otsu's global one turns a photo's texture around a sign into specks
            # that drown the letters (measured: 2 of 4 rendered signs read with it, 0 of 4 without)
            api.SetVariable("thresholding_method", "2")
            return api
        except RuntimeError as exc:
            raise TextReadingUnavailable(f"{OFF_NOTICE}: Tesseract could not load {self.languages} from "
                                         f"{self.tessdata} ({exc})") from None

    @contextmanager
    def _borrow(self):
        with self._lock:
            api = self._free.pop() if self._free else None
        if api is None:
            api = self._make()
            with self._lock:
                self._all.append(api)
        try:
            yield api
        finally:
            with self._lock:
                self._free.append(api)

    def close(self) -> None:
        with self._lock:
            for api in self._all:
                api.End()
            self._all.clear()
            self._free = []

    # ----- reading -------------------------------------------------------------
    def likely_text(self, image: Image.Image) -> bool:
        """Whether a quick reading of a copy CHECK_SIDE pixels long finds a word Tesseract is sure of, of
        CHECK_MIN_CHARS letters or digits or more."""
        return bool(self._check(image))

    def _check(self, image: Image.Image) -> list[list[str]]:
        """The quick reading's lines, or [] when it found no word long enough to count."""
        words = self._words(_fit(image.convert("L"), CHECK_SIDE))
        found = any(sum(c.isalnum() for c in w) >= CHECK_MIN_CHARS for line in words for w in line)
        return words if found else []

    def read(self, image: Image.Image, larger=None) -> Reading:
        """The words in a photo. larger: a callable giving the photo at READ_SIDE pixels or more (a photo
        decoded small for the model is decoded again, only when it has text). Of the quick reading and the
        larger one, the one with more letters and digits is kept: Tesseract's page segmentation sometimes
        loses on the larger copy a line it read on the small one."""
        quick = self._check(image)
        if not quick:
            return Reading("", True)
        if larger is not None and max(image.size) < READ_SIDE:
            image = larger()
        full = self._words(_fit(image.convert("L"), READ_SIDE))
        best = max((full, quick), key=lambda lines: sum(c.isalnum() for line in lines for w in line for c in w))
        return Reading("\n".join(" ".join(ws) for ws in best if ws), False)

    def recognise(self, image: Image.Image) -> str:
        """Tesseract's words of an image, those it is sure of, in lines."""
        return "\n".join(" ".join(ws) for ws in self._words(image) if ws)

    def _words(self, image: Image.Image) -> list[list[str]]:
        """The words Tesseract is sure of, line by line."""
        lines: list[list[str]] = []
        word_level, line_level = tesserocr.RIL.WORD, tesserocr.RIL.TEXTLINE
        with self._borrow() as api:
            api.SetImage(image)
            api.Recognize()
            it = api.GetIterator()
            for word in tesserocr.iterate_level(it, word_level):
                try:
                    text = (word.GetUTF8Text(word_level) or "").strip()
                except RuntimeError:  # "No text returned": an empty word
                    text = ""
                if not lines or word.IsAtBeginningOf(line_level):
                    lines.append([])
                if text and word.Confidence(word_level) >= MIN_CONFIDENCE and any(c.isalnum() for c in text):
                    lines[-1].append(text)
        return lines


def _fit(image: Image.Image, side: int) -> Image.Image:
    """The image with its longer side at most `side` pixels."""
    w, h = image.size
    if max(w, h) <= side:
        return image
    scale = side / max(w, h)
    return image.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.Resampling.BILINEAR)
