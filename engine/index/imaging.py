"""Decoding photo files into RGB pixels, safely.

Every failure becomes an ImageError whose text is the reason recorded for the
file; nothing here lets a bad file stop a run.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from ..errors import ImageError
from .raw import RAW_AVAILABLE, RAW_EXTENSIONS, decode_raw, is_raw, raw_facts

try:  # HEIC/HEIF support is optional at run time, but declared as a dependency
    import pillow_heif

    pillow_heif.register_heif_opener()
    HEIF_AVAILABLE = True
except ImportError:  # pragma: no cover - depends on the platform's wheels
    HEIF_AVAILABLE = False

SUPPORTED_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".jpe", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"}
    | ({".heic", ".heif"} if HEIF_AVAILABLE else set())
    | (RAW_EXTENSIONS if RAW_AVAILABLE else set())
)

# Our own limit replaces Pillow's global bomb check, which warns (not fails) up to
# twice its limit; a photo above this many pixels is refused before any decoding.
MAX_PIXELS = 180_000_000
Image.MAX_IMAGE_PIXELS = None
ImageFile.LOAD_TRUNCATED_IMAGES = False


@dataclass
class DecodedPhoto:
    image: Image.Image  # RGB, EXIF orientation applied, possibly reduced by JPEG draft decoding
    width: int  # full size after orientation, as the file declares it
    height: int
    taken: float | None = None  # when it was taken, by its EXIF (see photo_facts)


def is_supported(name: str) -> bool:
    dot = name.rfind(".")
    return dot >= 0 and name[dot:].lower() in SUPPORTED_EXTENSIONS


def decode(data: bytes, target_size: int | None = None, max_pixels: int = MAX_PIXELS,
           name: str | None = None) -> DecodedPhoto:
    """Decode file bytes into an RGB photo.

    target_size lets JPEGs decode at a reduced scale that is still at least that
    many pixels on each side (the model resizes to its own input size anyway), and
    camera RAWs use their embedded preview when it is that large. name (the file's
    name or path) says whether the bytes are a camera RAW, which has no magic of its own.
    """
    if name is not None and is_raw(name):
        return decode_raw(data, target_size)
    if not data:
        raise ImageError("empty file (0 bytes)")
    try:
        img = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise ImageError("not an image: the content is not a known image format") from None
    except Exception as exc:
        raise ImageError(f"unreadable image header: {exc}") from None
    w, h = img.size
    if w <= 0 or h <= 0:
        raise ImageError("invalid image size")
    if w * h > max_pixels:
        raise ImageError(
            f"image too large: {w}x{h} = {w * h / 1e6:.0f} megapixels (limit {max_pixels / 1e6:.0f}); "
            "possibly a decompression bomb"
        )
    try:
        if target_size and img.format == "JPEG":
            img.draft("RGB", (target_size, target_size))
        if getattr(img, "is_animated", False):
            img.seek(0)  # first frame of a GIF or animated WebP
        img.load()
        # Read after loading: some formats (TIFF, HEIF) apply the orientation themselves, report the
        # already-rotated size and clear the tag; only an orientation still pending is applied here.
        orientation = _orientation(img)
        taken = _taken(img)  # read before exif_transpose, which returns a copy without the EXIF
        img = ImageOps.exif_transpose(img) if orientation != 1 else img
        rgb = _to_rgb(img)
    except ImageError:
        raise
    except Exception as exc:
        raise ImageError(f"corrupt or truncated image: {exc}") from None
    if orientation in (5, 6, 7, 8):
        w, h = h, w
    return DecodedPhoto(rgb, w, h, taken)


def _orientation(img: Image.Image) -> int:
    try:
        value = img.getexif().get(0x0112, 1)
    except Exception:
        return 1
    return value if value in range(1, 9) else 1


def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode == "RGB":
        return img
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        # Flatten transparency onto white, as a viewer would show it.
        rgba = img.convert("RGBA")
        canvas = Image.new("RGB", rgba.size, (255, 255, 255))
        canvas.paste(rgba, mask=rgba.getchannel("A"))
        return canvas
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        img = img.point(lambda v: v / 256).convert("L")
    return img.convert("RGB")


def open_photo(path: str, target_size: int | None = None) -> DecodedPhoto:
    """Read and decode a file; OS errors become ImageError with a plain reason."""
    return decode(read_file(path), target_size, name=path)


def read_file(path: str) -> bytes:
    try:
        with open(path, "rb") as fh:
            return fh.read()
    except FileNotFoundError:
        raise ImageError("file vanished before it could be read") from None
    except PermissionError:
        raise ImageError("permission denied") from None
    except IsADirectoryError:
        raise ImageError("is a folder, not a file") from None
    except OSError as exc:
        raise ImageError(f"cannot read file: {exc.strerror or exc}") from None


_EXIF_IFD = 0x8769
_DATE_TIME_ORIGINAL = 0x9003
_DATE_TIME = 0x0132


def photo_facts(data: bytes, name: str | None = None) -> tuple[int | None, int | None, float | None]:
    """(width, height, taken) from a file's header, without decoding its pixels: the size after EXIF
    orientation, and when it was taken (EXIF DateTimeOriginal, else the EXIF DateTime; local time as
    seconds since the epoch), None for what the file does not say or cannot be read. name: as for decode."""
    if name is not None and is_raw(name):
        return raw_facts(data)
    try:
        img = Image.open(io.BytesIO(data))
        w, h = img.size
    except Exception:
        return None, None, None
    if _orientation(img) in (5, 6, 7, 8):
        w, h = h, w
    return w, h, _taken(img)


def _taken(img: Image.Image) -> float | None:
    """An opened image's EXIF DateTimeOriginal (else DateTime) as seconds since the epoch, or None."""
    try:
        exif = img.getexif()
        raw = exif.get_ifd(_EXIF_IFD).get(_DATE_TIME_ORIGINAL) or exif.get(_DATE_TIME)
        return exif_time(raw) if raw else None
    except Exception:
        return None


def exif_time(value) -> float | None:
    """EXIF's 'YYYY:MM:DD HH:MM:SS' (local time, no zone) as seconds since the epoch; None when it is not a
    real date (cameras write '0000:00:00 00:00:00' and worse)."""
    import datetime as dt

    text = value.decode("ascii", "ignore") if isinstance(value, bytes) else str(value)
    text = text.strip("\x00 ").strip()
    for fmt in ("%Y:%m:%d %H:%M:%S", "%Y-%m-%d %H:%M:%S", "%Y:%m:%d"):
        try:
            when = dt.datetime.strptime(text[:19] if "%H" in fmt else text[:10], fmt)
        except ValueError:
            continue
        if when.year < 1900:
            return None
        try:
            return when.timestamp()
        except (OverflowError, OSError, ValueError):
            return None
    return None
