"""Decoding photo files into RGB pixels, safely.

Every failure becomes an ImageError whose text is the reason recorded for the
file; nothing here lets a bad file stop a run.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from engine.errors import ImageError

try:  # HEIC/HEIF support is optional at run time, but declared as a dependency
    import pillow_heif

    pillow_heif.register_heif_opener()
    HEIF_AVAILABLE = True
except ImportError:  # pragma: no cover - depends on the platform's wheels
    HEIF_AVAILABLE = False

SUPPORTED_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".jpe", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"}
    | ({".heic", ".heif"} if HEIF_AVAILABLE else set())
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


def is_supported(name: str) -> bool:
    dot = name.rfind(".")
    return dot >= 0 and name[dot:].lower() in SUPPORTED_EXTENSIONS


def decode(data: bytes, target_size: int | None = None, max_pixels: int = MAX_PIXELS) -> DecodedPhoto:
    """Decode file bytes into an RGB photo.

    target_size lets JPEGs decode at a reduced scale that is still at least that
    many pixels on each side (the model resizes to its own input size anyway).
    """
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
        img = ImageOps.exif_transpose(img) if orientation != 1 else img
        rgb = _to_rgb(img)
    except ImageError:
        raise
    except Exception as exc:
        raise ImageError(f"corrupt or truncated image: {exc}") from None
    if orientation in (5, 6, 7, 8):
        w, h = h, w
    return DecodedPhoto(rgb, w, h)


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
    return decode(read_file(path), target_size)


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
