"""picsift.engine.index.imaging: every supported format decodes to RGB at the right size, orientation is
applied once, and every bad input becomes an ImageError with a reason a user can read."""

from __future__ import annotations

import io
import os
import random
import struct
import time
import zlib

import numpy as np
import pytest
from PIL import Image, ImageFile

from picsift.engine.index import imaging
from picsift.engine.errors import ImageError
from picsift.engine.index.imaging import decode, is_supported, open_photo, read_file

from conftest import make_photo

RED = (255, 0, 0)
BLUE = (0, 0, 255)
WHITE = (255, 255, 255)


def close_to(pixel, expected, tol=24) -> bool:
    return all(abs(int(a) - int(b)) <= tol for a, b in zip(pixel, expected, strict=True))


def _bytes_of(img: Image.Image, fmt: str, **params) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **params)
    return buf.getvalue()


def _noise_jpeg(size, seed=0, quality=90) -> bytes:
    """A JPEG of random noise, so that its bytes are many and every part of it matters."""
    w, h = size
    arr = np.random.default_rng(seed).integers(0, 256, size=(h, w, 3), dtype=np.uint8)
    return _bytes_of(Image.fromarray(arr, "RGB"), "JPEG", quality=quality)


# --------------------------------------------------------------------------- formats


@pytest.mark.parametrize(
    "ext, fmt",
    [("jpg", "JPEG"), ("png", "PNG"), ("webp", "WEBP"), ("bmp", "BMP"), ("gif", "GIF"), ("tiff", "TIFF")],
)
def test_each_format_decodes_to_rgb_at_its_size(tmp_path, ext, fmt):
    path = make_photo(tmp_path / f"p.{ext}", seed=3, size=(52, 36), fmt=fmt)
    with Image.open(path) as reference:
        assert reference.format == fmt
        expected = reference.convert("RGB")
    photo = open_photo(path)
    assert photo.image.mode == "RGB"
    assert photo.image.size == (52, 36)
    assert (photo.width, photo.height) == (52, 36)
    # The pixels are the file's own pixels, not a blank or resized image.
    got = np.asarray(photo.image, dtype=np.int16)
    assert np.abs(got - np.asarray(expected, dtype=np.int16)).max() <= 1


def test_jpeg_colours_survive_decoding(tmp_path):
    img = Image.new("RGB", (30, 20), RED)
    img.paste(BLUE, (15, 0, 30, 20))
    photo = decode(_bytes_of(img, "JPEG", quality=95))
    assert close_to(photo.image.getpixel((3, 10)), RED)
    assert close_to(photo.image.getpixel((27, 10)), BLUE)


def test_animated_gif_decodes_its_first_frame(tmp_path):
    first = Image.new("RGB", (24, 16), RED)
    second = Image.new("RGB", (24, 16), BLUE)
    path = tmp_path / "anim.gif"
    first.save(path, save_all=True, append_images=[second], duration=100, loop=0)
    with Image.open(path) as check:  # the file really holds two frames
        assert check.is_animated and check.n_frames == 2
    photo = open_photo(str(path))
    assert photo.image.mode == "RGB"
    assert (photo.width, photo.height) == (24, 16)
    assert close_to(photo.image.getpixel((12, 8)), RED, tol=4)


def test_animated_webp_decodes_its_first_frame():
    first = Image.new("RGB", (24, 16), RED)
    second = Image.new("RGB", (24, 16), BLUE)
    data = _bytes_of(first, "WEBP", save_all=True, append_images=[second], lossless=True)
    photo = decode(data)
    assert photo.image.size == (24, 16)
    assert close_to(photo.image.getpixel((12, 8)), RED, tol=4)


def _heif_or_skip(img: Image.Image, path) -> str:
    pillow_heif = pytest.importorskip("pillow_heif")
    if not imaging.HEIF_AVAILABLE:
        pytest.skip("pillow-heif is not importable by the engine on this platform")
    try:
        pillow_heif.from_pillow(img).save(str(path), quality=90)
    except Exception as exc:  # pragma: no cover - depends on the wheel's encoders
        pytest.skip(f"this pillow-heif wheel cannot encode HEIF: {exc}")
    return str(path)


def test_heic_decodes_through_pillow_heif(tmp_path):
    img = Image.new("RGB", (40, 24), RED)
    img.paste(BLUE, (20, 0, 40, 24))
    path = _heif_or_skip(img, tmp_path / "photo.heic")
    assert is_supported(path)
    photo = open_photo(path)
    assert photo.image.mode == "RGB"
    assert photo.image.size == (40, 24)
    assert (photo.width, photo.height) == (40, 24)
    assert close_to(photo.image.getpixel((5, 12)), RED, tol=30)
    assert close_to(photo.image.getpixel((35, 12)), BLUE, tol=30)


# --------------------------------------------------------------------------- orientation


def _corner_marked(size=(40, 20)) -> Image.Image:
    """Blue, with a red block in the top-left corner."""
    img = Image.new("RGB", size, BLUE)
    img.paste(RED, (0, 0, 8, 8))
    return img


def _exif(orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return exif.tobytes()


def _corners(img: Image.Image) -> dict[str, tuple]:
    w, h = img.size
    return {
        "top-left": img.getpixel((2, 2)),
        "top-right": img.getpixel((w - 3, 2)),
        "bottom-left": img.getpixel((2, h - 3)),
        "bottom-right": img.getpixel((w - 3, h - 3)),
    }


def _assert_red_only_at(img: Image.Image, corner: str):
    for name, pixel in _corners(img).items():
        expected = RED if name == corner else BLUE
        assert close_to(pixel, expected), f"{name} is {pixel}, expected {expected}"


def test_exif_orientation_6_rotates_a_jpeg(tmp_path):
    path = tmp_path / "rotated.jpg"
    _corner_marked().save(path, format="JPEG", quality=95, exif=_exif(6))
    with Image.open(path) as raw:
        assert raw.size == (40, 20)  # stored landscape
    photo = open_photo(str(path))
    assert photo.image.size == (20, 40)
    assert (photo.width, photo.height) == (20, 40)
    # Orientation 6 is displayed turned 90 degrees clockwise: top-left goes to top-right.
    _assert_red_only_at(photo.image, "top-right")


@pytest.mark.parametrize(
    "orientation, size, corner",
    [(1, (40, 20), "top-left"), (3, (40, 20), "bottom-right"), (8, (20, 40), "bottom-left"),
     (2, (40, 20), "top-right")],
)
def test_other_exif_orientations(orientation, size, corner):
    data = _bytes_of(_corner_marked(), "JPEG", quality=95, exif=_exif(orientation))
    photo = decode(data)
    assert photo.image.size == size
    assert (photo.width, photo.height) == size
    _assert_red_only_at(photo.image, corner)


@pytest.mark.parametrize("fmt, params", [("PNG", {}), ("WEBP", {"lossless": True}), ("TIFF", {}),
                                         ("TIFF", {"compression": "tiff_lzw"})])
def test_orientation_is_applied_exactly_once_in_other_formats(fmt, params):
    # Pillow rotates TIFFs itself while loading (and reports the rotated size before that);
    # the decoder must neither rotate twice nor swap the reported size twice.
    data = _bytes_of(_corner_marked(), fmt, exif=_exif(6), **params)
    photo = decode(data)
    assert photo.image.size == (20, 40)
    assert (photo.width, photo.height) == (20, 40)
    _assert_red_only_at(photo.image, "top-right")


def test_heic_orientation_is_applied_exactly_once(tmp_path):
    # libheif stores the orientation as a transform of its own; pillow-heif reports the turned size
    # and resets the EXIF tag, so the decoder must not turn the picture (or swap its size) again.
    pillow_heif = pytest.importorskip("pillow_heif")
    path = tmp_path / "rotated.heic"
    try:
        pillow_heif.from_pillow(_corner_marked()).save(str(path), quality=95, exif=_exif(6))
    except Exception as exc:  # pragma: no cover - depends on the wheel's encoders
        pytest.skip(f"this pillow-heif wheel cannot encode HEIF: {exc}")
    with Image.open(path) as check:
        assert check.info.get("original_orientation") == 6  # the file really is marked as turned
    photo = open_photo(str(path))
    assert photo.image.size == (20, 40)
    assert (photo.width, photo.height) == (20, 40)
    _assert_red_only_at(photo.image, "top-right")


# --------------------------------------------------------------------------- colour modes


def test_rgba_becomes_rgb_with_transparency_on_white():
    img = Image.new("RGBA", (10, 6), (255, 0, 0, 255))
    img.paste((0, 255, 0, 0), (5, 0, 10, 6))  # right half fully transparent
    photo = decode(_bytes_of(img, "PNG"))
    assert photo.image.mode == "RGB"
    assert photo.image.size == (10, 6)
    assert photo.image.getpixel((1, 1)) == RED
    assert photo.image.getpixel((8, 1)) == WHITE


def test_la_becomes_rgb():
    img = Image.new("LA", (10, 6), (40, 255))
    img.paste((200, 0), (5, 0, 10, 6))
    photo = decode(_bytes_of(img, "PNG"))
    assert photo.image.mode == "RGB"
    assert photo.image.getpixel((1, 1)) == (40, 40, 40)
    assert photo.image.getpixel((8, 1)) == WHITE


def test_palette_with_transparency_becomes_rgb():
    img = Image.new("P", (10, 6), 1)
    img.putpalette([0, 255, 0] + [0, 0, 255] + [0, 0, 0] * 254)
    img.paste(0, (5, 0, 10, 6))
    data = _bytes_of(img, "PNG", transparency=0)  # palette index 0 (green) is transparent
    with Image.open(io.BytesIO(data)) as check:
        assert check.mode == "P" and "transparency" in check.info
    photo = decode(data)
    assert photo.image.mode == "RGB"
    assert photo.image.getpixel((1, 1)) == BLUE
    assert photo.image.getpixel((8, 1)) == WHITE  # not the green hidden under transparency


def test_palette_gif_with_transparency_becomes_rgb(tmp_path):
    img = Image.new("P", (10, 6), 1)
    img.putpalette([0, 255, 0] + [255, 0, 0] + [0, 0, 0] * 254)
    img.paste(0, (5, 0, 10, 6))
    path = tmp_path / "t.gif"
    img.save(path, transparency=0)
    photo = open_photo(str(path))
    assert photo.image.mode == "RGB"
    assert photo.image.getpixel((1, 1)) == RED
    assert photo.image.getpixel((8, 1)) == WHITE


@pytest.mark.parametrize("fmt", ["PNG", "TIFF"])
def test_16_bit_grayscale_becomes_rgb_scaled_to_8_bits(fmt):
    arr = np.zeros((6, 10), dtype=np.uint16)
    arr[:, :5] = 59500  # 59500 / 256 = 232
    arr[:, 5:] = 2560  # 2560 / 256 = 10
    img = Image.fromarray(arr)
    data = _bytes_of(img, fmt)
    with Image.open(io.BytesIO(data)) as check:
        assert check.mode.startswith("I")  # really 16-bit, not already 8-bit
    photo = decode(data)
    assert photo.image.mode == "RGB"
    assert photo.image.size == (10, 6)
    assert close_to(photo.image.getpixel((1, 1)), (232, 232, 232), tol=1)
    assert close_to(photo.image.getpixel((8, 1)), (10, 10, 10), tol=1)


@pytest.mark.parametrize("mode", ["L", "1", "CMYK"])
def test_other_modes_become_rgb(mode):
    img = Image.new(mode, (12, 8))
    fmt = "JPEG" if mode == "CMYK" else "PNG"
    photo = decode(_bytes_of(img, fmt))
    assert photo.image.mode == "RGB"
    assert photo.image.size == (12, 8)


# --------------------------------------------------------------------------- bad input


def _reason(excinfo) -> str:
    return str(excinfo.value).lower()


def test_zero_byte_file_is_empty(tmp_path):
    path = tmp_path / "empty.jpg"
    path.write_bytes(b"")
    with pytest.raises(ImageError) as excinfo:
        open_photo(str(path))
    assert "empty" in _reason(excinfo)
    with pytest.raises(ImageError, match="empty"):
        decode(b"")


def test_random_bytes_named_jpg_are_not_an_image(tmp_path):
    path = tmp_path / "noise.jpg"
    path.write_bytes(random.Random(1234).randbytes(4096))
    with pytest.raises(ImageError) as excinfo:
        open_photo(str(path))
    assert "not an image" in _reason(excinfo)


def test_text_file_named_png_is_not_an_image(tmp_path):
    path = tmp_path / "notes.png"
    path.write_text("These are my holiday notes, not a picture.\n" * 20)
    with pytest.raises(ImageError) as excinfo:
        open_photo(str(path))
    assert "not an image" in _reason(excinfo)


def test_truncated_jpeg_is_corrupt_or_truncated(tmp_path):
    data = _noise_jpeg((200, 150))
    decode(data)  # the whole file is fine
    path = tmp_path / "cut.jpg"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageError) as excinfo:
        open_photo(str(path))
    reason = _reason(excinfo)
    assert "truncated" in reason or "corrupt" in reason


def test_truncated_png_is_corrupt_or_truncated():
    arr = np.random.default_rng(5).integers(0, 256, size=(80, 90, 3), dtype=np.uint8)
    data = _bytes_of(Image.fromarray(arr, "RGB"), "PNG")
    with pytest.raises(ImageError) as excinfo:
        decode(data[: len(data) // 2])
    reason = _reason(excinfo)
    assert "truncated" in reason or "corrupt" in reason


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def _bomb_png(width: int, height: int) -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    idat = zlib.compress(b"\x00" * 64)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", idat)
            + _png_chunk(b"IEND", b""))


def test_decompression_bomb_is_refused_before_decoding(tmp_path, monkeypatch):
    data = _bomb_png(100_000, 100_000)
    assert len(data) < 200
    with Image.open(io.BytesIO(data)) as check:  # the crafted header is read as declared
        assert check.size == (100_000, 100_000)
    loads = []
    original_load = ImageFile.ImageFile.load

    def spy_load(self, *args, **kwargs):
        loads.append(self.size)
        return original_load(self, *args, **kwargs)

    monkeypatch.setattr(ImageFile.ImageFile, "load", spy_load)
    path = tmp_path / "bomb.png"
    path.write_bytes(data)
    started = time.perf_counter()
    with pytest.raises(ImageError) as excinfo:
        open_photo(str(path))
    assert time.perf_counter() - started < 2.0
    assert "too large" in _reason(excinfo)
    assert "100000x100000" in _reason(excinfo)
    assert loads == []  # no pixel was decoded


def test_max_pixels_limit_is_honoured():
    data = _bytes_of(Image.new("RGB", (30, 20), RED), "PNG")
    assert decode(data, max_pixels=600).width == 30  # exactly at the limit is fine
    with pytest.raises(ImageError, match="too large"):
        decode(data, max_pixels=599)


def test_missing_file_vanished(tmp_path):
    with pytest.raises(ImageError) as excinfo:
        open_photo(str(tmp_path / "gone.jpg"))
    assert "vanished" in _reason(excinfo)


def test_directory_passed_to_read_file(tmp_path):
    folder = tmp_path / "album.jpg"
    folder.mkdir()
    with pytest.raises(ImageError) as excinfo:
        read_file(str(folder))
    assert "folder" in _reason(excinfo)


def test_permission_denied(tmp_path, monkeypatch):
    locked = make_photo(tmp_path / "locked.jpg", seed=1, fmt="JPEG")
    fine = make_photo(tmp_path / "fine.jpg", seed=2, fmt="JPEG")
    real_open = open

    def guarded_open(file, *args, **kwargs):
        if os.fspath(file) == locked:
            raise PermissionError(13, "Permission denied", file)
        return real_open(file, *args, **kwargs)

    # The engine resolves open() through its module globals first; shadow it there only.
    monkeypatch.setattr(imaging, "open", guarded_open, raising=False)
    with pytest.raises(ImageError) as excinfo:
        open_photo(locked)
    assert "permission denied" in _reason(excinfo)
    assert read_file(fine)[:2] == b"\xff\xd8"  # other files are still read


def test_other_os_errors_become_image_errors(tmp_path, monkeypatch):
    path = make_photo(tmp_path / "io.jpg", seed=1, fmt="JPEG")

    def failing_open(file, *args, **kwargs):
        raise OSError(5, "Input/output error", file)

    monkeypatch.setattr(imaging, "open", failing_open, raising=False)
    with pytest.raises(ImageError) as excinfo:
        read_file(path)
    assert "input/output error" in _reason(excinfo)


# --------------------------------------------------------------------------- JPEG draft


def test_jpeg_draft_decodes_smaller_but_reports_full_size():
    data = _noise_jpeg((2000, 1500), quality=80)
    photo = decode(data, target_size=384)
    w, h = photo.image.size
    assert min(w, h) >= 384
    assert w < 2000 and h < 1500
    assert abs(w / h - 2000 / 1500) < 0.01
    assert (photo.width, photo.height) == (2000, 1500)
    assert photo.image.mode == "RGB"


def test_jpeg_without_target_size_decodes_at_full_size():
    photo = decode(_noise_jpeg((800, 600)))
    assert photo.image.size == (800, 600)


def test_jpeg_draft_with_rotation_reports_rotated_full_size():
    arr = np.random.default_rng(2).integers(0, 256, size=(1500, 2000, 3), dtype=np.uint8)
    data = _bytes_of(Image.fromarray(arr, "RGB"), "JPEG", quality=80, exif=_exif(6))
    photo = decode(data, target_size=384)
    w, h = photo.image.size
    assert min(w, h) >= 384 and w < h < 2000
    assert (photo.width, photo.height) == (1500, 2000)


def test_target_size_does_not_shrink_other_formats():
    data = _bytes_of(Image.new("RGB", (900, 700), RED), "PNG")
    photo = decode(data, target_size=384)
    assert photo.image.size == (900, 700)


# --------------------------------------------------------------------------- is_supported


@pytest.mark.parametrize(
    "name",
    ["a.jpg", "A.JPG", "b.JpEg", "c.jpe", "d.PNG", "e.webp", "f.Bmp", "g.GIF", "h.tif", "i.TIFF",
     "with.many.dots.jpg", "/some/folder.d/photo.png"],
)
def test_is_supported_accepts_photo_extensions_in_any_case(name):
    assert is_supported(name)


@pytest.mark.parametrize("name", ["x.HEIC", "y.heif"])
def test_is_supported_heic_when_pillow_heif_is_present(name):
    if not imaging.HEIF_AVAILABLE:
        pytest.skip("pillow-heif is not available")
    assert is_supported(name)


@pytest.mark.parametrize("name", ["a.CR2", "b.cr3", "c.nef", "d.ARW", "e.dng", "f.orf", "g.raf", "h.rw2"])
def test_camera_raws_are_supported(name):
    assert is_supported(name)


@pytest.mark.parametrize(
    "name",
    ["notes.txt", "README", "jpg", "photo", "photo.jpg.txt", "movie.mp4", "raw.cr2.xmp", "photo.jpg~",
     "folder.jpg/notes", ""],
)
def test_is_supported_rejects_other_names(name):
    assert not is_supported(name)
