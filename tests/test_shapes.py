"""The shapes benchmark: determinism, splits, twins, coverage, captions, and what the pixels show."""

from __future__ import annotations

import csv
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from picsift.engine.training.shapes import (
    COLOURS,
    MIN_TRAIN,
    SIZES,
    Piece,
    Scene,
    check_coverage,
    describe_scene,
    generate_shapes,
    parse_caption,
    sample_scenes,
)

SMALL = dict(train=MIN_TRAIN + 10, dev_groups=3, test_groups=8, image_size=32, captions_per_image=4)


def _read(path: Path) -> list[dict[str, str]]:
    with open(path, encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def small_set(tmp_path_factory):
    out = tmp_path_factory.mktemp("shapes") / "set"
    calls = []
    summary = generate_shapes(out, seed=1, progress=lambda done, total: calls.append((done, total)), **SMALL)
    captions = _read(out / "captions.csv")
    by_image = defaultdict(list)
    split_of = {}
    for row in captions:
        by_image[row["image"]].append(row["caption"])
        split_of[row["image"]] = row["split"]
    return dict(out=out, summary=summary, calls=calls, rows=captions, by_image=by_image, split_of=split_of,
                twins=_read(out / "twins.csv"))


def test_same_seed_gives_identical_files_and_another_seed_other_data(small_set, tmp_path):
    out = small_set["out"]
    again = generate_shapes(tmp_path / "again", seed=1, **SMALL).folder
    other = generate_shapes(tmp_path / "other", seed=2, **SMALL).folder
    for name in ("captions.csv", "twins.csv", "README.txt"):
        assert (again / name).read_bytes() == (out / name).read_bytes()
    images = sorted(p.name for p in (out / "images").iterdir())
    assert images == sorted(p.name for p in (again / "images").iterdir())
    assert len(images) == sum(small_set["summary"].counts.values())
    for name in images:
        assert (again / "images" / name).read_bytes() == (out / "images" / name).read_bytes(), name
    assert (other / "captions.csv").read_bytes() != (out / "captions.csv").read_bytes()
    differ = sum((other / "images" / n).read_bytes() != (out / "images" / n).read_bytes() for n in images)
    assert differ > 0.9 * len(images)


def test_counts_files_and_progress(small_set):
    s, out = small_set["summary"], small_set["out"]
    assert s.seed == 1 and s.folder == out
    assert s.counts == {"train": MIN_TRAIN + 10, "dev": 9, "test": 24}
    n = sum(s.counts.values())
    assert Counter(small_set["split_of"].values()) == s.counts
    assert len(small_set["by_image"]) == n and len(small_set["rows"]) == s.captions == 4 * n
    assert all(len(c) == 4 for c in small_set["by_image"].values())
    assert s.twins == len(small_set["twins"]) == 2 * (3 + 8)
    assert (out / "captions.csv").read_text().splitlines()[0] == "image,caption,split"
    assert (out / "twins.csv").read_text().splitlines()[0] == "image,twin,kind"
    for image in small_set["by_image"]:
        assert (out / image).is_file() and image.startswith("images/") and image.endswith(".png")
        with Image.open(out / image) as im:
            assert im.size == (32, 32) and im.mode == "RGB" and im.format == "PNG"
    readme = (out / "README.txt").read_text()
    assert "seed 1" in readme and f"train {MIN_TRAIN + 10}" in readme and "test 24" in readme
    assert 2 <= len(readme.strip().splitlines()) <= 3
    calls = small_set["calls"]
    assert calls[0] == (0, n) and calls[-1] == (n, n)
    assert [d for d, _ in calls] == sorted(d for d, _ in calls)


def test_every_dev_and_test_base_has_both_twins(small_set):
    by_image, split_of = small_set["by_image"], small_set["split_of"]
    kinds = defaultdict(dict)
    for row in small_set["twins"]:
        assert row["kind"] in ("colour swap", "relation swap")
        assert row["kind"] not in kinds[row["image"]], "one twin of each kind per base"
        kinds[row["image"]][row["kind"]] = row["twin"]
        assert split_of[row["image"]] == split_of[row["twin"]] in ("dev", "test")
    assert Counter(split_of[b] for b in kinds) == {"test": 8, "dev": 3}
    members = [b for b in kinds] + [t for k in kinds.values() for t in k.values()]
    assert len(members) == len(set(members)) == 33, "groups share no image"
    assert {m for m in members} == {i for i, s in split_of.items() if s != "train"}
    for base, twins in kinds.items():
        assert set(twins) == {"colour swap", "relation swap"}
        base_scene = parse_caption(by_image[base][0])
        for kind, twin in twins.items():
            assert not set(by_image[twin]) & set(by_image[base])
            twin_scene = parse_caption(by_image[twin][0])
            assert twin_scene != base_scene
            if kind == "colour swap":
                assert twin_scene == base_scene.colour_swap()
                assert by_image[twin][0] != by_image[base][0]
                assert sorted(by_image[twin][0].split()) == sorted(by_image[base][0].split())
            else:
                assert twin_scene == base_scene.relation_swap()


def test_captions_name_exactly_one_scene(small_set):
    by_image, split_of = small_set["by_image"], small_set["split_of"]
    plan = sample_scenes(1, **{k: v for k, v in SMALL.items() if k != "image_size"})
    owner = {}
    for im in plan.images:
        caps = by_image[im.image]
        assert caps[0] == describe_scene(im.scene) and split_of[im.image] == im.split
        assert len(set(caps)) == len(caps)
        for c in caps:
            assert parse_caption(c) == im.scene, c
            assert c not in owner, f"{c!r} captions both {owner.get(c)} and {im.image}"
            owner[c] = im.image
        # at least one caption tells the scene the other way round, with the inverse relation
        assert any(c.startswith(f"a {im.scene.second.phrase()} ") for c in caps)
    scenes = Counter(im.scene for im in plan.images)
    assert max(scenes.values()) == 1, "a scene is in one image only"
    test_captions = [r["caption"] for r in small_set["rows"] if r["split"] == "test"]
    assert len(test_captions) == len(set(test_captions)) == 24 * 4
    # paraphrases are chosen per image: not every image gets the same four forms
    shapes_of = {tuple(c.replace(im.scene.first.phrase(), "A").replace(im.scene.second.phrase(), "B")
                       for c in by_image[im.image]) for im in plan.images}
    assert len(shapes_of) > 10


def _centroid(arr: np.ndarray, rgb) -> tuple[float, float, int]:
    near = np.sqrt(((arr - np.array(rgb, dtype=np.float64)) ** 2).sum(axis=2)) < 40
    ys, xs = np.nonzero(near)
    return (xs.mean() if len(xs) else np.nan), (ys.mean() if len(ys) else np.nan), len(xs)


def test_pixels_show_the_stated_colours_places_and_sizes(small_set):
    out = small_set["out"]
    plan = sample_scenes(1, **{k: v for k, v in SMALL.items() if k != "image_size"})
    checked = 0
    where = {}
    for im in plan.images:
        if im.split == "train" and checked > 60:
            continue
        arr = np.asarray(Image.open(out / im.image).convert("RGB"), dtype=np.float64)
        a, b = im.scene.first, im.scene.second
        ax, ay, an = _centroid(arr, COLOURS[a.colour])
        bx, by, bn = _centroid(arr, COLOURS[b.colour])
        assert an >= 4 and bn >= 4, f"{im.image}: both objects visible"
        # no other object colour shows up anywhere
        for other in set(COLOURS) - {a.colour, b.colour}:
            assert _centroid(arr, COLOURS[other])[2] == 0, f"{im.image} shows {other}"
        main, cross = {
            "left of": (bx - ax, by - ay), "right of": (ax - bx, ay - by),
            "above": (by - ay, bx - ax), "below": (ay - by, ax - bx),
        }[im.scene.relation]
        assert main > 1.5 and abs(cross) < main, f"{im.image}: {describe_scene(im.scene)}"
        if a.size != b.size:
            assert (an > bn) == (a.size == "large"), f"{im.image}: the large object is the larger"
        where[im.image] = {a.colour: (ax, ay), b.colour: (bx, by)}
        checked += 1
    # a colour twin has the two colours where the base had the other one
    for row in small_set["twins"]:
        if row["kind"] == "colour swap":
            base, twin = where[row["image"]], where[row["twin"]]
            c1, c2 = base
            assert np.allclose(base[c1], twin[c2], atol=1.0) and np.allclose(base[c2], twin[c1], atol=1.0)


def test_layouts_keep_objects_apart_inside_and_twins_share_them():
    plan = sample_scenes(3)
    for im in plan.images:
        (x1, y1), (x2, y2) = im.layout.first, im.layout.second
        h1, h2 = SIZES[im.scene.first.size], SIZES[im.scene.second.size]
        for x, y, h in ((x1, y1, h1), (x2, y2, h2)):
            assert h <= x <= 1 - h and h <= y <= 1 - h
        main, cross = {"left of": (x2 - x1, y2 - y1), "right of": (x1 - x2, y1 - y2),
                       "above": (y2 - y1, x2 - x1), "below": (y1 - y2, x1 - x2)}[im.scene.relation]
        assert main >= h1 + h2 and abs(cross) <= 0.5 * main
    by_name = {im.image: im for im in plan.images}
    for base, twin, kind in plan.twins:
        b, t = by_name[base], by_name[twin]
        assert t.background == b.background
        assert t.layout == (b.layout if kind == "colour swap" else b.layout.exchanged())


def test_default_training_split_covers_every_combination():
    plan = sample_scenes(0)
    assert plan.counts() == {"train": 2000, "dev": 90, "test": 180}
    train = [im.scene for im in plan.split("train")]
    assert check_coverage(train) == []
    held_out = {im.scene for im in plan.images if im.split != "train"}
    assert not held_out & set(train), "no dev or test scene is a training scene"
    dev, test = ({im.scene for im in plan.split(s)} for s in ("dev", "test"))
    assert not dev & test
    # the checker does report what is missing
    red_circle = Piece("red", "circle", "small")
    no_red_blue_above = [s for s in train if not (s.relation == "above" and
                                                  (s.first.colour, s.second.colour) == ("red", "blue"))]
    assert check_coverage(no_red_blue_above) == ["no scene has red above blue (colours)"]
    no_first = [s for s in train if s.first != red_circle]
    assert check_coverage(no_first) == ["no scene names the small red circle first"]
    no_shapes = [s for s in train if (s.relation, s.first.shape, s.second.shape) != ("below", "cross", "square")]
    assert check_coverage(no_shapes) == ["no scene has cross below square (shapes)"]
    assert len(check_coverage([])) > 200


def test_scenes_told_either_way_are_one_scene():
    a, b = Piece("red", "circle", "small"), Piece("blue", "square", "large")
    s = Scene(a, "left of", b)
    assert s == Scene(b, "right of", a) == s.inverse() and len({s, s.inverse()}) == 1
    assert s != s.relation_swap() and s != s.colour_swap()
    assert describe_scene(s) == "a small red circle left of a large blue square"
    assert describe_scene(s.colour_swap()) == "a small blue circle left of a large red square"
    assert parse_caption("a large blue square is to the right of a small red circle") == s
    assert parse_caption("a large blue square under a small red circle") == Scene(b, "below", a)
    with pytest.raises(ValueError):
        Scene(a, "left of", Piece("red", "square", "large"))  # same colour
    with pytest.raises(ValueError):
        Scene(a, "left of", Piece("blue", "circle", "large"))  # same shape
    with pytest.raises(ValueError):
        parse_caption("a small red circle near a large blue square")


def test_refuses_a_non_empty_folder_and_too_small_a_training_split(tmp_path):
    full = tmp_path / "full"
    full.mkdir()
    (full / "keep.txt").write_text("mine")
    with pytest.raises(ValueError, match="not empty"):
        generate_shapes(full, train=MIN_TRAIN, dev_groups=0, test_groups=1, image_size=16)
    assert [p.name for p in full.iterdir()] == ["keep.txt"]

    with pytest.raises(ValueError, match="too small to cover every combination"):
        generate_shapes(tmp_path / "new", train=MIN_TRAIN - 1, dev_groups=0, test_groups=1, image_size=16)
    assert not (tmp_path / "new").exists()
    with pytest.raises(ValueError, match="distinct scenes"):
        sample_scenes(0, train=3000)

    empty = tmp_path / "empty"
    empty.mkdir()
    s = generate_shapes(empty, seed=5, train=MIN_TRAIN, dev_groups=0, test_groups=1, image_size=16,
                        captions_per_image=1)
    assert s.counts == {"train": MIN_TRAIN, "dev": 0, "test": 3} and s.captions == MIN_TRAIN + 3 and s.twins == 2
