"""The one image-caption data reader behind `picsift train` and `picsift eval`: every format,
bad rows counted by reason, split selection, and the errors users see."""

from __future__ import annotations

import collections
import json
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from picsift.engine.errors import DatasetError, PicsiftError
from picsift.engine.training import datasets
from picsift.engine.training.datasets import CaptionData, read_dataset

FLICKR8K_DEV = Path("/work/shared/data/flickr8k-dev")


def _image(path: Path, color=(200, 30, 30), fmt: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), color).save(path, format=fmt)
    return path


def _write(path: Path, text: str, encoding: str = "utf-8") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding=encoding)
    return path


def _pairs(data: CaptionData) -> list[tuple[str, str]]:
    """(image file name, caption) for every caption, in caption order."""
    return [(data.images[i].name, c) for c, i in zip(data.captions, data.caption_image)]


# ----- CSV and TSV -------------------------------------------------------------


def test_csv_relative_and_absolute_paths_several_captions_per_image(tmp_path):
    _image(tmp_path / "pics" / "a.png")
    _image(tmp_path / "b.jpg", fmt="JPEG")
    elsewhere = _image(tmp_path / "elsewhere" / "c.png")
    f = _write(
        tmp_path / "data" / "caps.csv",
        " Image , CAPTION ,Split\n"  # header names matched case-insensitively, whitespace stripped
        "../pics/a.png,a red square,train\n"
        "../b.jpg,  a   red\tjpeg  ,train\n"
        f"{elsewhere},an absolute path,test\n"
        "../pics/a.png,another caption of a,train\n"
        "../pics/../pics/a.png,a third caption of a,train\n",  # the same file spelled differently
    )
    data = read_dataset(f)
    assert data.format == "csv"
    assert data.source == f
    assert data.images == [tmp_path / "pics" / "a.png", tmp_path / "b.jpg", elsewhere]
    assert all(p.is_absolute() for p in data.images)
    assert data.image_splits == ["train", "train", "test"]
    assert data.captions == [
        "a red square",
        "a red jpeg",  # whitespace normalised
        "an absolute path",
        "another caption of a",
        "a third caption of a",
    ]
    assert data.caption_image == [0, 1, 2, 0, 0]
    assert data.captions_of(0) == [0, 3, 4]
    assert data.split_names() == ["train", "test"]
    assert data.skipped == collections.Counter()
    assert data.summary() == "3 images, 5 captions (train, test)"


def test_csv_path_relative_to_the_file_falls_back_to_images_beside_it(tmp_path):
    _image(tmp_path / "images" / "x.png")
    f = _write(tmp_path / "captions.csv", "image,caption\nx.png,found in images/\n")
    data = read_dataset(f)
    assert data.images == [tmp_path / "images" / "x.png"]
    assert data.image_splits == [None]
    assert data.split_names() == []


def test_tsv_file_keeps_commas_in_captions(tmp_path):
    _image(tmp_path / "a.png")
    _image(tmp_path / "b.png", color=(0, 0, 255))
    f = _write(
        tmp_path / "caps.tsv",
        "image\tcaption\n"
        "a.png\ta dog, a cat, and a bird\n"
        "b.png\tblue, plain\n"
        "a.png\tsecond, for a\n",
    )
    data = read_dataset(f)
    assert data.format == "tsv"
    assert _pairs(data) == [
        ("a.png", "a dog, a cat, and a bird"),
        ("b.png", "blue, plain"),
        ("a.png", "second, for a"),
    ]
    assert data.skipped == collections.Counter()


def test_tab_delimited_content_in_a_csv_file_is_read_as_tsv(tmp_path):
    _image(tmp_path / "a.png")
    f = _write(tmp_path / "caps.csv", "image\tcaption\tsplit\na.png\tone, with a comma\tval\n")
    data = read_dataset(f)
    assert data.format == "tsv"
    assert data.captions == ["one, with a comma"]
    assert data.image_splits == ["val"]


def test_bom_quoted_commas_and_a_newline_inside_quotes(tmp_path):
    _image(tmp_path / "a.png")
    f = tmp_path / "caps.csv"
    f.write_bytes(
        "image,caption\r\n"
        'a.png,"a dog, running, on sand"\r\n'
        'a.png,"she said ""hi"",\nthen left"\r\n'.encode("utf-8-sig")
    )
    assert f.read_bytes().startswith(b"\xef\xbb\xbf")
    data = read_dataset(f)
    assert data.captions == ["a dog, running, on sand", 'she said "hi", then left']
    assert data.skipped == collections.Counter()


# ----- bad rows ---------------------------------------------------------------


def _bad_rows_csv(tmp_path: Path) -> Path:
    _image(tmp_path / "good.png")
    _image(tmp_path / "other.jpg", fmt="JPEG")
    (tmp_path / "empty.png").write_bytes(b"")
    _write(tmp_path / "text.png", "not a picture at all\n")
    return _write(
        tmp_path / "caps.csv",
        "image,caption\n"
        "good.png,a good row\n"
        "nowhere.png,the file is not there\n"
        "empty.png,a zero-byte file\n"
        "text.png,a text file named .png\n"
        "good.png,   \n"
        "other.jpg,\n"
        "good.png,a caption, with an unquoted comma\n"
        "good.png,a  good   row\n"  # the same pair as the first row once whitespace is normalised
        ",no image named\n"
        "other.jpg,another good row,\n",  # an empty trailing field is no value under no column
    )


def test_bad_rows_are_skipped_and_counted_by_reason(tmp_path):
    data = read_dataset(_bad_rows_csv(tmp_path))
    assert _pairs(data) == [("good.png", "a good row"), ("other.jpg", "another good row")]
    assert data.skipped == collections.Counter(
        {
            "missing image": 2,
            "unreadable image": 2,
            "empty caption": 2,
            "unknown column": 1,
            "duplicate row": 1,
        }
    )
    assert data.summary() == (
        "2 images, 2 captions; skipped 8 rows: 2 missing image, 2 unreadable image, "
        "2 empty caption, 1 unknown column, 1 duplicate row"
    )


def test_without_check_images_only_missing_files_are_skipped(tmp_path):
    data = read_dataset(_bad_rows_csv(tmp_path), check_images=False)
    assert [p.name for p in data.images] == ["good.png", "empty.png", "text.png", "other.jpg"]
    assert data.skipped["unreadable image"] == 0
    assert data.skipped["missing image"] == 2


def test_each_distinct_image_is_verified_once(tmp_path, monkeypatch):
    _image(tmp_path / "a.png")
    _write(tmp_path / "bad.png", "text")
    f = _write(
        tmp_path / "caps.csv",
        "image,caption\na.png,one\na.png,two\nbad.png,x\na.png,three\nbad.png,y\n",
    )
    checked = []
    real = datasets._verifies
    monkeypatch.setattr(datasets, "_verifies", lambda p: checked.append(p.name) or real(p))
    data = read_dataset(f)
    assert sorted(checked) == ["a.png", "bad.png"]
    assert data.captions == ["one", "two", "three"]
    assert data.skipped == collections.Counter({"unreadable image": 2})


def test_nothing_usable_is_one_clear_error(tmp_path):
    (tmp_path / "zero.png").write_bytes(b"")
    f = _write(tmp_path / "captions.csv", "image,caption\nx.png,a\ny.png,b\nzero.png,c\nz.png, \n")
    with pytest.raises(DatasetError) as err:
        read_dataset(f)
    assert str(err.value) == (
        f"No usable image-caption pairs in {f}: 4 rows skipped "
        "(2 missing image, 1 unreadable image, 1 empty caption)."
    )


def test_header_only_is_nothing_usable(tmp_path):
    f = _write(tmp_path / "captions.csv", "image,caption\n")
    with pytest.raises(DatasetError, match="no caption rows"):
        read_dataset(f)


# ----- COCO ----------------------------------------------------------------------


def test_coco_json_with_images_beside_or_in_images_folder_and_unknown_ids(tmp_path):
    _image(tmp_path / "ann" / "one.png")
    _image(tmp_path / "ann" / "images" / "two.jpg", fmt="JPEG")
    f = _write(
        tmp_path / "ann" / "captions.json",
        json.dumps(
            {
                "images": [
                    {"id": 1, "file_name": "one.png"},
                    {"id": 2, "file_name": "two.jpg"},
                    {"id": 3, "file_name": "gone.png"},
                ],
                "annotations": [
                    {"image_id": 2, "caption": "Two first"},
                    {"image_id": 1, "caption": "One, a"},
                    {"image_id": 2, "caption": "Two  second\n"},
                    {"image_id": 99, "caption": "nobody's image"},
                    {"image_id": 3, "caption": "file missing"},
                    {"image_id": 1, "caption": ""},
                    {"image_id": 1, "caption": "One, b"},
                ],
            }
        ),
    )
    data = read_dataset(f)
    assert data.format == "coco"
    assert data.images == [tmp_path / "ann" / "images" / "two.jpg", tmp_path / "ann" / "one.png"]
    assert data.image_splits == [None, None]
    assert data.captions == ["Two first", "One, a", "Two second", "One, b"]
    assert data.caption_image == [0, 1, 0, 1]
    assert data.skipped == collections.Counter({"unknown image id": 1, "missing image": 1, "empty caption": 1})


def test_coco_images_with_a_split_key_can_be_selected(tmp_path):
    _image(tmp_path / "a.png")
    _image(tmp_path / "b.png")
    f = _write(
        tmp_path / "coco.json",
        json.dumps(
            {
                "images": [{"id": 1, "file_name": "a.png", "split": "train"}, {"id": 2, "file_name": "b.png", "split": "val"}],
                "annotations": [{"image_id": 1, "caption": "a"}, {"image_id": 2, "caption": "b"}],
            }
        ),
    )
    data = read_dataset(f, split="val")
    assert _pairs(data) == [("b.png", "b")]
    assert data.image_splits == ["val"]


# ----- Karpathy ------------------------------------------------------------------


def _karpathy(tmp_path: Path) -> Path:
    _image(tmp_path / "val2014" / "v1.jpg", fmt="JPEG")  # folder / filepath / filename
    _image(tmp_path / "images" / "train2014" / "t1.png")  # folder / images / filepath / filename
    _image(tmp_path / "r1.png")  # folder / filename
    return _write(
        tmp_path / "dataset_coco.json",
        json.dumps(
            {
                "dataset": "coco",
                "images": [
                    {"filepath": "val2014", "filename": "v1.jpg", "split": "val", "sentences": [{"raw": "V one."}, {"raw": "V two."}]},
                    {"filepath": "train2014", "filename": "t1.png", "split": "train", "sentences": [{"raw": "T one."}]},
                    {"filename": "r1.png", "split": "restval", "sentences": [{"raw": "R one."}, {"tokens": ["r", "two"]}]},
                    {"filepath": "val2014", "filename": "lost.jpg", "split": "val", "sentences": [{"raw": "lost"}, {"raw": "lost too"}]},
                ],
            }
        ),
    )


def test_karpathy_json_paths_and_splits(tmp_path):
    data = read_dataset(_karpathy(tmp_path))
    assert data.format == "karpathy"
    assert data.images == [
        tmp_path / "val2014" / "v1.jpg",
        tmp_path / "images" / "train2014" / "t1.png",
        tmp_path / "r1.png",
    ]
    assert data.image_splits == ["val", "train", "restval"]
    assert data.captions == ["V one.", "V two.", "T one.", "R one.", "r two"]
    assert data.caption_image == [0, 0, 1, 2, 2]
    assert data.skipped == collections.Counter({"missing image": 2})  # one per sentence of the lost image


def test_karpathy_restval_is_a_split_like_any_other(tmp_path):
    data = read_dataset(_karpathy(tmp_path), split="restval")
    assert _pairs(data) == [("r1.png", "R one."), ("r1.png", "r two")]
    assert data.skipped == collections.Counter()  # the lost image's rows are val, not selected
    assert data.summary() == "1 image, 2 captions (restval)"


# ----- folder --------------------------------------------------------------------


def test_folder_with_captions_csv_beside_images(tmp_path):
    root = tmp_path / "synthetic"
    _image(root / "images" / "00001.png")
    _image(root / "images" / "00002.png", color=(0, 255, 0))
    _image(root / "cover.png")  # not in images/: found relative to the folder itself
    _write(
        root / "captions.csv",
        "image,caption,split\n"
        "images/00001.png,red square,train\n"  # as written relative to the folder
        "00001.png,a red image,train\n"  # as written relative to images/: the same image
        "00002.png,green square,test\n"
        "cover.png,the cover,train\n",
    )
    data = read_dataset(root)
    assert data.format == "folder"
    assert data.source == root
    assert data.images == [root / "images" / "00001.png", root / "images" / "00002.png", root / "cover.png"]
    assert data.captions_of(0) == [0, 1]
    assert data.image_splits == ["train", "test", "train"]
    train = read_dataset(root, split="train")
    assert [p.name for p in train.images] == ["00001.png", "cover.png"]
    assert train.captions == ["red square", "a red image", "the cover"]
    assert train.skipped == collections.Counter()


def test_folder_prefers_images_folder_over_the_folder_itself(tmp_path):
    _image(tmp_path / "images" / "same.png")
    _image(tmp_path / "same.png", color=(0, 0, 0))
    _write(tmp_path / "captions.csv", "image,caption\nsame.png,which one\n")
    assert read_dataset(tmp_path).images == [tmp_path / "images" / "same.png"]
    # a file read directly looks beside itself first
    assert read_dataset(tmp_path / "captions.csv").images == [tmp_path / "same.png"]


def test_flickr8k_dev_folder():
    if not FLICKR8K_DEV.is_dir():
        pytest.skip("the shared flickr8k-dev data is not on this machine")
    data = read_dataset(FLICKR8K_DEV)
    assert data.format == "folder"
    assert len(data.images) == 600
    assert len(data.captions) == 3000
    assert all(len(data.captions_of(i)) == 5 for i in range(len(data.images)))
    assert data.summary() == "600 images, 3,000 captions"


# ----- splits -----------------------------------------------------------------------


def test_split_selection_does_not_count_other_splits_as_skipped(tmp_path):
    _image(tmp_path / "a.png")
    _image(tmp_path / "b.png")
    f = _write(
        tmp_path / "caps.csv",
        "image,caption,split\na.png,a1,train\nmissing.png,m,val\nb.png,b1,val\nb.png,,val\na.png,a2,train\n",
    )
    val = read_dataset(f, split="val")
    assert _pairs(val) == [("b.png", "b1")]
    assert val.skipped == collections.Counter({"missing image": 1, "empty caption": 1})
    train = read_dataset(f, split="train")
    assert train.captions == ["a1", "a2"]
    assert train.skipped == collections.Counter()
    assert read_dataset(f, split="TRAIN").captions == ["a1", "a2"]


def test_unknown_split_names_the_splits_there_are(tmp_path):
    _image(tmp_path / "a.png")
    f = _write(tmp_path / "caps.csv", "image,caption,split\na.png,x,train\na.png,y,test\na.png,z,\n")
    with pytest.raises(DatasetError) as err:
        read_dataset(f, split="val")
    assert str(err.value) == f"{f} has no split 'val'; its splits are: train, test."


def test_asking_for_a_split_of_data_without_splits(tmp_path):
    _image(tmp_path / "a.png")
    f = _write(tmp_path / "caps.csv", "image,caption\na.png,x\n")
    with pytest.raises(DatasetError, match="no split 'train': its rows name no splits"):
        read_dataset(f, split="train")


def test_a_split_whose_rows_are_all_bad_is_nothing_usable(tmp_path):
    _image(tmp_path / "a.png")
    f = _write(tmp_path / "caps.csv", "image,caption,split\na.png,x,train\ngone.png,y,test\n")
    with pytest.raises(DatasetError) as err:
        read_dataset(f, split="test")
    assert str(err.value) == f"No usable image-caption pairs in split 'test' of {f}: 1 row skipped (1 missing image)."


# ----- subset and captions_of ----------------------------------------------------------


def test_subset_keeps_the_given_images_in_order_with_their_captions(tmp_path):
    for name in ("a", "b", "c"):
        _image(tmp_path / f"{name}.png")
    f = _write(
        tmp_path / "caps.csv",
        "image,caption,split\na.png,a1,train\nb.png,b1,val\nc.png,c1,test\nb.png,b2,val\na.png,a2,train\nzz.png,q,val\n",
    )
    data = read_dataset(f)
    assert data.captions_of(1) == [1, 3]
    sub = data.subset([2, 1])
    assert [p.name for p in sub.images] == ["c.png", "b.png"]
    assert sub.image_splits == ["test", "val"]
    assert sub.captions == ["c1", "b1", "b2"]
    assert sub.caption_image == [0, 1, 1]
    assert sub.captions_of(1) == [1, 2]
    assert sub.skipped == collections.Counter({"missing image": 1})
    assert sub.skipped is not data.skipped
    assert sub.format == data.format and sub.source == data.source
    assert data.captions == ["a1", "b1", "c1", "b2", "a2"]  # the original is untouched
    with pytest.raises(ValueError):
        data.subset([0, 0])


# ----- errors ---------------------------------------------------------------------------


def test_missing_path_is_a_dataset_error(tmp_path):
    with pytest.raises(DatasetError, match="not found"):
        read_dataset(tmp_path / "nope.csv")
    assert issubclass(DatasetError, PicsiftError)


def test_csv_without_image_and_caption_columns(tmp_path):
    f = _write(tmp_path / "caps.csv", "a, b\n1,2\n")
    with pytest.raises(DatasetError) as err:
        read_dataset(f)
    assert str(err.value) == f"{f} needs columns image and caption; it has: a, b."


def test_invalid_json(tmp_path):
    f = _write(tmp_path / "caps.json", '{"images": [')
    with pytest.raises(DatasetError, match=r"is not valid JSON \(line 1"):
        read_dataset(f)


def test_json_of_another_shape(tmp_path):
    f = _write(tmp_path / "caps.json", json.dumps({"images": [{"file_name": "a.png"}]}))
    with pytest.raises(DatasetError, match="neither COCO captions JSON .* nor Karpathy split JSON"):
        read_dataset(f)


def test_folder_without_captions_csv(tmp_path):
    _image(tmp_path / "images" / "a.png")
    with pytest.raises(DatasetError, match="without captions.csv"):
        read_dataset(tmp_path)


def test_text_that_is_not_utf8(tmp_path):
    f = tmp_path / "caps.csv"
    f.write_bytes("image,caption\na.png,caf\u00e9\n".encode("latin-1"))
    with pytest.raises(DatasetError, match="not UTF-8"):
        read_dataset(f)


def test_module_imports_without_torch_qt_or_pillow():
    code = (
        "import sys, picsift.engine.training.datasets\n"
        "heavy = [m for m in ('torch', 'PySide6', 'PIL', 'numpy') if m in sys.modules]\n"
        "print(','.join(heavy))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=Path(__file__).parents[1])
    assert out.stdout.strip() == ""
