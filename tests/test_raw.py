"""Camera RAW files: the embedded preview when it is large enough, a demosaic otherwise, size, orientation and
date from the RAW, clear errors for broken ones, and a RAW beside a JPEG of the same name as one photo."""

from __future__ import annotations

import datetime as dt
import os

import numpy as np
import pytest
from PIL import Image

from conftest import make_photo
from raw_photos import green_preview, write_dng

pytest.importorskip("rawpy")


def _mean(img: Image.Image, box) -> np.ndarray:
    return np.asarray(img.crop(box), np.float32).reshape(-1, 3).mean(axis=0)


def test_a_raw_without_a_preview_is_demosaiced_with_its_colours(tmp_path):
    from picsift.engine.index.imaging import open_photo

    path = write_dng(tmp_path / "IMG_0001.DNG", size=(384, 256))
    photo = open_photo(path, target_size=100)
    assert (photo.width, photo.height) == (384, 256)
    img = photo.image
    assert img.mode == "RGB" and min(img.size) >= 100
    w, h = img.size
    left, right = _mean(img, (4, 4, w // 2 - 8, h // 2 - 8)), _mean(img, (w // 2 + 8, 4, w - 4, h // 2 - 8))
    assert left[0] > 150 and left[2] < 60, left  # the red half
    assert right[2] > 150 and right[0] < 60, right  # the blue half
    assert photo.taken == dt.datetime(2021, 6, 5, 14, 3, 2).timestamp()
    # half-size demosaic when half still covers the model's input; the full picture when asked for it
    assert img.size == (192, 128)
    assert open_photo(path).image.size == (384, 256)


def test_the_embedded_preview_is_used_when_large_enough_else_the_raw_is_demosaiced(tmp_path):
    from picsift.engine.index.imaging import open_photo

    path = write_dng(tmp_path / "a.dng", size=(768, 512), preview=green_preview(384, 256))
    used = open_photo(path, target_size=200).image
    assert used.size == (384, 256)
    assert _mean(used, (250, 150, 380, 250))[1] > 180  # the preview's green, not the scene's red and blue
    assert _mean(used, (10, 10, 150, 100)).min() > 240  # its white quarter
    # the model needs more than the preview has: the RAW itself
    full = open_photo(path, target_size=300).image
    assert min(full.size) >= 256 and _mean(full, (10, 10, 150, 100))[0] > 150


def test_orientation_comes_from_the_raw_for_preview_and_demosaic_alike(tmp_path):
    from picsift.engine.index.imaging import open_photo, photo_facts

    path = write_dng(tmp_path / "turned.dng", size=(768, 512), preview=green_preview(384, 256), orientation=6)
    data = open(path, "rb").read()
    assert photo_facts(data, path)[:2] == (512, 768)
    by_preview = open_photo(path, target_size=200)
    by_raw = open_photo(path, target_size=300)
    assert (by_preview.width, by_preview.height) == (512, 768)
    assert by_preview.image.size == (256, 384)  # turned upright
    assert by_raw.image.size[0] < by_raw.image.size[1]
    # turned a quarter clockwise: the preview's white top-left quarter is now at the top right
    img = by_preview.image
    assert _mean(img, (140, 10, 250, 180)).min() > 240 and _mean(img, (10, 10, 110, 180))[0] < 100


@pytest.mark.parametrize("content, reason", [
    (b"", "empty file"),
    (b"these are my notes, not a photo\n" * 20, "not a camera RAW"),
])
def test_broken_raws_get_a_clear_reason(tmp_path, content, reason):
    from picsift.engine.errors import ImageError
    from picsift.engine.index.imaging import open_photo

    path = tmp_path / "bad.cr2"
    path.write_bytes(content)
    with pytest.raises(ImageError, match=reason):
        open_photo(str(path), 100)


def test_a_truncated_raw_is_an_error_not_a_crash(tmp_path):
    from picsift.engine.errors import ImageError
    from picsift.engine.index.imaging import open_photo

    path = write_dng(tmp_path / "cut.dng", size=(384, 256))
    data = open(path, "rb").read()
    cut = tmp_path / "cut2.dng"
    cut.write_bytes(data[: len(data) // 3])
    with pytest.raises(ImageError, match="RAW"):
        open_photo(str(cut), 100)


def test_a_raw_beside_a_jpeg_of_the_same_name_is_one_photo(tmp_path):
    from picsift.engine.index.scanner import scan

    root = tmp_path / "shoot"
    root.mkdir()
    write_dng(root / "IMG_0001.CR2.tmp")  # not a photo name: ignored
    write_dng(root / "IMG_0001.DNG")
    make_photo(root / "IMG_0001.jpg", 1)
    write_dng(root / "IMG_0002.dng")  # RAW only
    make_photo(root / "IMG_0003.JPG", 3)
    sub = root / "other"
    sub.mkdir()
    make_photo(sub / "IMG_0002.jpg", 2)  # same name in another folder: not a pair
    result = scan(str(root))
    names = sorted(os.path.relpath(f.path, root) for f in result.files)
    assert names == ["IMG_0001.jpg", "IMG_0002.dng", "IMG_0003.JPG", os.path.join("other", "IMG_0002.jpg")]
    assert [(os.path.basename(a), os.path.basename(b)) for a, b in result.paired] == [("IMG_0001.DNG",
                                                                                       "IMG_0001.jpg")]
    both = sorted(os.path.basename(f.path) for f in scan(str(root), pair_raw=False).files)
    assert both == ["IMG_0001.DNG", "IMG_0001.jpg", "IMG_0002.dng", "IMG_0002.jpg", "IMG_0003.JPG"]


def test_indexing_raws_records_them_and_the_library_setting_keeps_pairs_or_both(tiny_model, library, tmp_path):
    from picsift.engine.index.indexer import index_folders

    root = tmp_path / "raws"
    root.mkdir()
    write_dng(root / "pair.dng")
    make_photo(root / "pair.jpg", 5)
    write_dng(root / "alone.nef.dng", taken="2019:02:03 04:05:06")
    (root / "broken.arw").write_bytes(b"\x00" * 300)
    last = list(index_folders(library, tiny_model, [str(root)], text_reader=None))[-1]
    assert last.embedded == 2 and last.skipped == 1
    paths = sorted(os.path.basename(p) for p in library.store.paths(library.store.photo_ids()).values())
    assert paths == ["alone.nef.dng", "pair.jpg"]
    errors = {os.path.basename(e["path"]): e["reason"] for e in library.store.errors()}
    assert "RAW" in errors["broken.arw"]
    info = library.photo_info(str(root / "alone.nef.dng"))
    assert (info["width"], info["height"]) == (384, 256)
    assert info["taken"] == dt.datetime(2019, 2, 3, 4, 5, 6).timestamp()

    library.set_raw_with_jpeg("both")
    last = list(index_folders(library, tiny_model, [str(root)], text_reader=None))[-1]
    assert last.embedded == 1  # pair.dng joins as a photo of its own
    assert library.store.count_photos() == 3
    library.set_raw_with_jpeg("one")
    last = list(index_folders(library, tiny_model, [str(root)], text_reader=None))[-1]
    assert last.removed == 1 and library.store.count_photos() == 2
    with pytest.raises(ValueError):
        library.set_raw_with_jpeg("neither")
