"""Camera RAW files (CR2, CR3, NEF, ARW, DNG, ORF, RAF, RW2) decoded through LibRaw (rawpy).

The model reads a few hundred pixels a side, so the preview the camera embedded is used whenever it is that
large (no demosaic: several times faster); only a RAW without a large enough preview is demosaiced, at half
size when half size is still large enough. Size, orientation and date taken come from the RAW's own header.
"""

from __future__ import annotations

import datetime as dt
import io
import os

from PIL import Image, ImageOps

from ..errors import ImageError

try:
    import rawpy

    RAW_AVAILABLE = True
except ImportError:  # pragma: no cover - rawpy is a dependency; a platform without its wheel loses RAW only
    rawpy = None
    RAW_AVAILABLE = False

RAW_EXTENSIONS = frozenset({".cr2", ".cr3", ".nef", ".arw", ".dng", ".orf", ".raf", ".rw2"})
# LibRaw's `flip` for a photo turned a quarter: its sides swap.
_QUARTER_TURNS = (5, 6)
_TRANSPOSE = {3: Image.Transpose.ROTATE_180, 5: Image.Transpose.ROTATE_90, 6: Image.Transpose.ROTATE_270}


def is_raw(name) -> bool:
    """Whether a file name or path (str or os.PathLike) has a camera RAW's extension."""
    name = os.fspath(name)
    dot = name.rfind(".")
    return dot >= 0 and name[dot:].lower() in RAW_EXTENSIONS


def _open(data: bytes):
    if rawpy is None:
        raise ImageError("camera RAW files need rawpy (pip install rawpy)")
    if not data:
        raise ImageError("empty file (0 bytes)")
    try:
        return rawpy.imread(io.BytesIO(data))
    except rawpy.LibRawFileUnsupportedError:
        raise ImageError("not a camera RAW file LibRaw can read (unsupported or not a RAW)") from None
    except (rawpy.LibRawError, OSError, ValueError) as exc:
        raise ImageError(f"corrupt or truncated RAW file: {_reason(exc)}") from None


def _reason(exc: Exception) -> str:
    text = str(exc)
    return text[2:-1] if text.startswith(("b'", 'b"')) else text or type(exc).__name__


def _facts(raw) -> tuple[int, int, float | None]:
    s = raw.sizes
    w, h = s.width, s.height
    if s.flip in _QUARTER_TURNS:
        w, h = h, w
    return w, h, _taken(raw)


def _taken(raw) -> float | None:
    try:
        stamp = raw.other.timestamp
    except Exception:
        return None
    if isinstance(stamp, dt.datetime):
        return stamp.timestamp() if stamp.year >= 1900 else None
    return float(stamp) if stamp and stamp > 0 else None


def raw_facts(data: bytes) -> tuple[int | None, int | None, float | None]:
    """(width, height, taken) of a RAW from its header (nothing decoded); Nones when it cannot be read."""
    try:
        with _open(data) as raw:
            return _facts(raw)
    except ImageError:
        return None, None, None


def decode_raw(data: bytes, target_size: int | None = None):
    """A RAW's pixels as a DecodedPhoto: its embedded preview when both its sides are at least target_size,
    else a demosaic (target_size None asks for the full picture: always a full demosaic)."""
    from .imaging import DecodedPhoto, _to_rgb

    with _open(data) as raw:
        width, height, taken = _facts(raw)
        flip = raw.sizes.flip
        if target_size:
            preview = _preview(raw, flip)
            if preview is not None and min(preview.size) >= min(target_size, width, height):
                return DecodedPhoto(preview, width, height, taken)
        try:
            # half size (no interpolation: each 2x2 Bayer cell is one pixel) when that still covers the model
            half = bool(target_size) and min(raw.sizes.width, raw.sizes.height) // 2 >= target_size
            pixels = raw.postprocess(use_camera_wb=True, half_size=half, output_bps=8)
        except (rawpy.LibRawError, MemoryError, ValueError) as exc:
            raise ImageError(f"corrupt or truncated RAW file: {_reason(exc)}") from None
    return DecodedPhoto(_to_rgb(Image.fromarray(pixels)), width, height, taken)


def _preview(raw, flip: int) -> Image.Image | None:
    """The embedded preview, upright, or None when the file has none that can be read."""
    try:
        thumb = raw.extract_thumb()
    except Exception:  # LibRawNoThumbnailError, LibRawUnsupportedThumbnailError, a damaged preview
        return None
    try:
        if thumb.format == rawpy.ThumbFormat.JPEG:
            img = Image.open(io.BytesIO(thumb.data))
            img.load()
            if img.getexif().get(0x0112, 1) not in (1, None):
                return _rgb(ImageOps.exif_transpose(img))  # the preview says how it is turned
        else:
            img = Image.fromarray(thumb.data)
    except Exception:
        return None
    if flip in _TRANSPOSE:  # previews are stored as the sensor saw them; the RAW's flip turns them upright
        img = img.transpose(_TRANSPOSE[flip])
    return _rgb(img)


def _rgb(img: Image.Image) -> Image.Image:
    from .imaging import _to_rgb

    return _to_rgb(img)
