"""The shapes benchmark: synthetic two-object scenes with captions, to test fine detail.

Each image holds two coloured shapes, each small or large, one left of, right of,
above or below the other, on a pale background with a gentle gradient or noise.
Its captions name both objects and the relation, in both orders ("a small red
circle left of a large blue square", "a large blue square to the right of a small
red circle"), so a model that reads text and image as bags of attributes cannot
tell a scene from its near-miss twins in the test gallery: the colour swap (same
shapes, sizes, positions and background, the two colours exchanged: its canonical
caption has the very same words) and the relation swap (the two objects' places
exchanged). A cross-encoder that binds words to objects can.

What the set guarantees, and tests check:
- the training split covers every combination: every object (colour, shape, size)
  is named first and named second, and every relation comes with every ordered
  pair of colours and every ordered pair of shapes (`check_coverage`);
- every scene (objects and relation, whichever order it is told in) is in one
  image only, across all splits, so every caption identifies exactly one image,
  and no dev or test scene is also a training scene;
- the relation is plain to see: along its axis the two objects' boxes are apart,
  and across it their centres are offset by less than half their distance;
- the same seed gives byte-identical files, another seed other data. All
  randomness comes from `random.Random(str)`'s `random()`, which Python promises
  to keep across versions (its `choice` and `shuffle` are not promised).

Scene sampling (`sample_scenes`) is apart from rendering (`render_scene`) so that
scenes can be reasoned about without drawing a pixel; `generate_shapes` does both
and writes the folder format of the dataset reader: images/NNNNN.png,
captions.csv (image,caption,split), twins.csv (image,twin,kind) and README.txt.
Stdlib, numpy and Pillow only.
"""

from __future__ import annotations

import csv
import math
import random
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np
from PIL import Image, ImageDraw

# ---------------------------------------------------------------- vocabulary

# Clearly distinct, saturated colours; every one has a channel under 60, while a
# background never has one under 150, so an object never blends into the ground.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (210, 30, 35),
    "green": (30, 150, 55),
    "blue": (35, 75, 215),
    "yellow": (240, 210, 20),
    "purple": (135, 50, 175),
    "orange": (245, 120, 20),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "cross")
# Half the side of the box an object fills, as a share of the image's side.
SIZES: dict[str, float] = {"small": 0.10, "large": 0.17}
RELATIONS: tuple[str, ...] = ("left of", "right of", "above", "below")
INVERSE: dict[str, str] = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}
# The second way of saying each relation in a caption.
PARAPHRASE: dict[str, str] = {
    "left of": "to the left of",
    "right of": "to the right of",
    "above": "on top of",
    "below": "under",
}
TWIN_KINDS: tuple[str, ...] = ("colour swap", "relation swap")
SPLITS: tuple[str, ...] = ("train", "dev", "test")
MAX_CAPTIONS = 8  # 2 orders x 2 ways of saying the relation x with or without "is"
# Each scene covers one (relation, ordered colour pair), so no fewer training scenes can cover them all;
# the greedy cover below reaches this bound for every seed tried.
MIN_TRAIN = len(RELATIONS) * len(COLOURS) * (len(COLOURS) - 1)

_GAP = 0.05  # least space between the two objects' boxes along the relation's axis
_EDGE = 0.03  # least space between a large object and the image's edge
_LO = SIZES["large"] + _EDGE  # every centre lies in [_LO, 1 - _LO], so two objects can swap places
_HI = 1.0 - _LO
_CROSS = 0.4  # across the relation's axis, centres differ by at most this share of their distance along it
_SUPERSAMPLE = 4
_BG_MIN_DISTANCE = 110.0  # least RGB distance between any background pixel and any object colour


@dataclass(frozen=True)
class Piece:
    """One object: a colour, a shape and a size."""

    colour: str
    shape: str
    size: str

    def __post_init__(self):
        if self.colour not in COLOURS or self.shape not in SHAPES or self.size not in SIZES:
            raise ValueError(f"unknown object: {self.size} {self.colour} {self.shape}")

    def phrase(self) -> str:
        return f"{self.size} {self.colour} {self.shape}"


@dataclass(frozen=True, eq=False)
class Scene:
    """Two objects and how the first stands to the second ("left of", "right of", "above", "below").

    A scene told the other way round is the same scene: Scene(a, "left of", b) ==
    Scene(b, "right of", a), and they hash alike. Its canonical caption
    (`describe_scene`) follows the order it is told in.
    """

    first: Piece
    relation: str
    second: Piece

    def __post_init__(self):
        if self.relation not in INVERSE:
            raise ValueError(f"unknown relation: {self.relation!r}")
        if self.first.colour == self.second.colour or self.first.shape == self.second.shape:
            raise ValueError("the two objects of a scene must differ in colour and in shape")

    def key(self) -> tuple[Piece, str, Piece]:
        """The same for a scene and for that scene told the other way round."""
        if self.relation in ("left of", "above"):
            return (self.first, self.relation, self.second)
        return (self.second, INVERSE[self.relation], self.first)

    def __eq__(self, other):
        return isinstance(other, Scene) and self.key() == other.key()

    def __hash__(self):
        return hash(self.key())

    def inverse(self) -> Scene:
        """The same scene told the other way round."""
        return Scene(self.second, INVERSE[self.relation], self.first)

    def colour_swap(self) -> Scene:
        """The twin with the two objects' colours exchanged (shapes, sizes and places kept)."""
        a, b = self.first, self.second
        return Scene(Piece(b.colour, a.shape, a.size), self.relation, Piece(a.colour, b.shape, b.size))

    def relation_swap(self) -> Scene:
        """The twin with the same two objects in exchanged places."""
        return Scene(self.first, INVERSE[self.relation], self.second)


def describe_scene(scene: Scene) -> str:
    """The canonical caption: 'a small red circle left of a large blue square'."""
    return f"a {scene.first.phrase()} {scene.relation} a {scene.second.phrase()}"


def scene_captions(scene: Scene) -> list[str]:
    """Every caption of a scene, the canonical one first (MAX_CAPTIONS of them)."""
    out = []
    for told in (scene, scene.inverse()):
        for rel in (told.relation, PARAPHRASE[told.relation]):
            for verb in ("", "is "):
                out.append(f"a {told.first.phrase()} {verb}{rel} a {told.second.phrase()}")
    return out


_RELATION_WORDS = {**{r: r for r in RELATIONS}, **{p: r for r, p in PARAPHRASE.items()}}
_WORD = r"(\w+) (\w+) (\w+)"
_CAPTION_RE = re.compile(
    rf"a {_WORD} (?:is )?({'|'.join(sorted(map(re.escape, _RELATION_WORDS), key=len, reverse=True))}) a {_WORD}"
)


def parse_caption(text: str) -> Scene:
    """The scene a caption of this set describes (any of its paraphrases); ValueError for anything else."""
    m = _CAPTION_RE.fullmatch(" ".join(text.split()))
    if not m:
        raise ValueError(f"not a shapes caption: {text!r}")
    size1, colour1, shape1, rel, size2, colour2, shape2 = m.groups()
    return Scene(Piece(colour1, shape1, size1), _RELATION_WORDS[rel], Piece(colour2, shape2, size2))


def all_pieces() -> list[Piece]:
    return [Piece(c, s, z) for c in COLOURS for s in SHAPES for z in SIZES]


def all_scenes() -> list[Scene]:
    """Every scene in every telling (so each scene twice), in a fixed order."""
    pieces = all_pieces()
    return [
        Scene(a, r, b)
        for a in pieces
        for b in pieces
        if a.colour != b.colour and a.shape != b.shape
        for r in RELATIONS
    ]


# ---------------------------------------------------------------- coverage


def _requirements(scene: Scene) -> tuple[tuple, ...]:
    a, b, r = scene.first, scene.second, scene.relation
    return (("first", a), ("second", b), ("colours", r, a.colour, b.colour), ("shapes", r, a.shape, b.shape))


def _all_requirements() -> list[tuple]:
    pieces = all_pieces()
    out: list[tuple] = [("first", p) for p in pieces] + [("second", p) for p in pieces]
    for r in RELATIONS:
        out += [("colours", r, c1, c2) for c1 in COLOURS for c2 in COLOURS if c1 != c2]
        out += [("shapes", r, s1, s2) for s1 in SHAPES for s2 in SHAPES if s1 != s2]
    return out


def _say(req: tuple) -> str:
    if req[0] in ("first", "second"):
        return f"no scene names the {req[1].phrase()} {req[0]}"
    kind, r, x, y = req
    return f"no scene has {x} {r} {y} ({kind})"


def check_coverage(scenes: Iterable[Scene]) -> list[str]:
    """The combinations that these scenes (as told) miss, one sentence each; empty when all are covered.

    Every object must be named first and named second, and every relation must come
    with every ordered pair of colours and every ordered pair of shapes.
    """
    covered = {req for s in scenes for req in _requirements(s)}
    return [_say(req) for req in _all_requirements() if req not in covered]


# ---------------------------------------------------------------- randomness


class _Rng:
    """Choices built on `random.Random.random()` alone, whose sequence Python keeps across versions."""

    def __init__(self, *parts):
        self._r = random.Random(":".join(["picsift-shapes", *map(str, parts)]))

    def random(self) -> float:
        return self._r.random()

    def uniform(self, lo: float, hi: float) -> float:
        return lo + (hi - lo) * self._r.random()

    def index(self, n: int) -> int:
        return min(int(self._r.random() * n), n - 1)

    def shuffle(self, items: list) -> list:
        for i in range(len(items) - 1, 0, -1):
            j = self.index(i + 1)
            items[i], items[j] = items[j], items[i]
        return items


# ---------------------------------------------------------------- layout, background, plan


@dataclass(frozen=True)
class Layout:
    """Where the two objects' centres are, as shares of the image's width and height (y down)."""

    first: tuple[float, float]
    second: tuple[float, float]

    def exchanged(self) -> Layout:
        return Layout(self.second, self.first)


@dataclass(frozen=True)
class Background:
    """A pale colour with a gentle linear gradient ('gradient') or smooth low-frequency noise ('noise')."""

    rgb: tuple[int, int, int]
    kind: str
    amplitude: float  # largest change from rgb, per channel
    angle: float = 0.0  # gradient direction, radians
    grid: tuple[float, ...] = ()  # noise: 3 channels x 4 x 4 values in [-1, 1]


@dataclass(frozen=True)
class ShapesImage:
    """One image of the plan: its file, split, scene, how it is drawn, its captions and its group."""

    image: str  # "images/00001.png", relative to the set's folder
    split: str
    scene: Scene
    layout: Layout
    background: Background
    captions: tuple[str, ...]
    group: int | None = None  # dev and test: the group (base and its two twins) it belongs to
    role: str = "base"  # "base", "colour swap" or "relation swap"


@dataclass
class ShapesPlan:
    seed: int
    images: list[ShapesImage]
    twins: list[tuple[str, str, str]] = field(default_factory=list)  # (base image, twin image, kind)

    def split(self, name: str) -> list[ShapesImage]:
        return [im for im in self.images if im.split == name]

    def counts(self) -> dict[str, int]:
        return {s: sum(im.split == s for im in self.images) for s in SPLITS}


def _layout(scene: Scene, rng: _Rng) -> Layout:
    """Centres that show the relation plainly and keep the objects apart and inside the image."""
    h1, h2 = SIZES[scene.first.size], SIZES[scene.second.size]
    least = h1 + h2 + _GAP
    span = _HI - _LO
    while True:
        d = rng.uniform(least, span)  # distance along the relation's axis
        lo = rng.uniform(_LO, _HI - d)
        c1 = rng.uniform(_LO, _HI)
        c2 = c1 + rng.uniform(-_CROSS, _CROSS) * d
        if _LO <= c2 <= _HI:
            break
    # lo, lo + d along the axis: the object that comes first along it gets lo.
    if scene.relation in ("left of", "above"):
        a, b = lo, lo + d
    else:
        a, b = lo + d, lo
    if scene.relation in ("left of", "right of"):
        return Layout((a, c1), (b, c2))
    return Layout((c1, a), (c2, b))


def _background(rng: _Rng) -> Background:
    palette = np.array(list(COLOURS.values()), dtype=np.float64)
    while True:
        tint = [rng.uniform(0, 255) for _ in range(3)]
        t = rng.uniform(0.08, 0.30)
        rgb = tuple(int(round(255 * (1 - t) + c * t)) for c in tint)
        amplitude = rng.uniform(6.0, 16.0)
        # The farthest any pixel strays is `amplitude` per channel.
        nearest = np.sqrt(((palette - np.array(rgb)) ** 2).sum(axis=1)).min() - amplitude * math.sqrt(3)
        if nearest >= _BG_MIN_DISTANCE:
            break
    if rng.random() < 0.5:
        return Background(rgb, "gradient", amplitude, angle=rng.uniform(0, 2 * math.pi))
    return Background(rgb, "noise", amplitude, grid=tuple(rng.uniform(-1, 1) for _ in range(3 * 4 * 4)))


def _choose_captions(scene: Scene, n: int, rng: _Rng) -> tuple[str, ...]:
    """The canonical caption, then (n >= 2) one told the other way round, then any others."""
    every = scene_captions(scene)
    half = len(every) // 2  # the first half tells the scene as it is, the second the other way round
    chosen = [every[0]]
    if n >= 2:
        chosen.append(every[half + rng.index(half)])
    rest = rng.shuffle([c for c in every if c not in chosen])
    return tuple(chosen + rest[: n - len(chosen)])


def _pick_groups(n: int, order: list[Scene], used: set, start: int) -> list[tuple[Scene, Scene, Scene]]:
    """n groups (base, colour twin, relation twin) of unused scenes, relations taken in turn."""
    groups = []
    for g in range(n):
        want = RELATIONS[(start + g) % len(RELATIONS)]
        for i, s in enumerate(order):
            if s.relation != want:
                continue
            trio = (s, s.colour_swap(), s.relation_swap())
            if any(t in used for t in trio):
                continue
            used.update(trio)
            groups.append(trio)
            del order[i]
            break
        else:
            raise ValueError(f"not enough distinct scenes for {n} groups of near-miss twins")
    return groups


def _cover(order: list[Scene], used: set) -> list[Scene]:
    """A small set of unused scenes that covers every combination (greedy, most new combinations first)."""
    missing = set(_all_requirements())
    chosen: list[Scene] = []
    for want in (4, 3, 2, 1):
        for s in order:
            if not missing:
                break
            if s in used:
                continue
            reqs = _requirements(s)
            if sum(r in missing for r in reqs) >= want:
                chosen.append(s)
                used.add(s)
                missing.difference_update(reqs)
    if missing:  # cannot happen with this vocabulary: every combination has hundreds of scenes
        raise ValueError("the scenes left after dev and test cannot cover every combination; ask for fewer groups")
    return chosen


def sample_scenes(
    seed: int = 0,
    train: int = 2000,
    dev_groups: int = 30,
    test_groups: int = 60,
    captions_per_image: int = 4,
) -> ShapesPlan:
    """Every image of a set: scenes, layouts, backgrounds, captions and twins; nothing drawn.

    Test groups (base and its two twins) are chosen first, then dev groups, then a
    training set that covers every combination, filled up with random scenes; every
    scene is used once at most. Images are numbered train, dev, test, each split in
    shuffled order. ValueError when the counts cannot be met.
    """
    for name, value, least in (("train", train, 1), ("dev_groups", dev_groups, 0), ("test_groups", test_groups, 1)):
        if not isinstance(value, int) or value < least:
            raise ValueError(f"{name} must be a whole number of at least {least}, not {value!r}")
    if not 1 <= captions_per_image <= MAX_CAPTIONS:
        raise ValueError(f"captions_per_image must be between 1 and {MAX_CAPTIONS}, not {captions_per_image!r}")
    if train < MIN_TRAIN:
        raise ValueError(
            f"train={train} is too small to cover every combination of colour, shape, size and relation: "
            f"it takes at least {MIN_TRAIN} training images"
        )
    every = all_scenes()
    distinct = len(every) // 2
    wanted = train + 3 * (dev_groups + test_groups)
    if wanted > distinct:
        raise ValueError(
            f"{wanted} images asked for ({train} train, {3 * dev_groups} dev, {3 * test_groups} test) "
            f"but there are only {distinct} distinct scenes"
        )

    rng = _Rng(seed, "plan")
    order = rng.shuffle(list(every))
    used: set[Scene] = set()
    test = _pick_groups(test_groups, order, used, 0)
    dev = _pick_groups(dev_groups, order, used, rng.index(len(RELATIONS)))
    covering = _cover(order, used)
    if train < len(covering):
        raise ValueError(
            f"train={train} is too small to cover every combination of colour, shape, size and relation: "
            f"seed {seed} needs at least {len(covering)} training images"
        )
    fill = []
    for s in order:
        if len(covering) + len(fill) >= train:
            break
        if s not in used:
            used.add(s)
            fill.append(s)
    train_scenes = rng.shuffle(covering + fill)

    slots: list[tuple[str, Scene, int | None, str]] = [("train", s, None, "base") for s in train_scenes]
    for split, groups in (("dev", dev), ("test", test)):
        members = [
            (split, scene, g, role) for g, trio in enumerate(groups) for scene, role in zip(trio, ("base", *TWIN_KINDS))
        ]
        slots += rng.shuffle(members)

    width = max(5, len(str(len(slots))))
    names = [f"images/{i + 1:0{width}d}.png" for i in range(len(slots))]
    # Layouts and backgrounds come from each base's own generator; twins take their base's.
    bases: dict[object, tuple[Layout, Background]] = {}
    for name, (split, scene, g, role) in zip(names, slots):
        if role == "base":
            own = _Rng(seed, "image", name)
            bases[(split, g) if g is not None else name] = (_layout(scene, own), _background(own))
    images: list[ShapesImage] = []
    for name, (split, scene, g, role) in zip(names, slots):
        own = _Rng(seed, "captions", name)
        layout, background = bases[(split, g) if g is not None else name]
        if role == "relation swap":
            layout = layout.exchanged()
        captions = _choose_captions(scene, captions_per_image, own)
        images.append(ShapesImage(name, split, scene, layout, background, captions, g, role))
    by_group = {(im.split, im.group, im.role): im.image for im in images if im.group is not None}
    twins = [
        (by_group[(split, g, "base")], by_group[(split, g, kind)], kind)
        for split, groups in (("dev", dev), ("test", test))
        for g in range(len(groups))
        for kind in TWIN_KINDS
    ]
    twins.sort()
    return ShapesPlan(seed, images, twins)


# ---------------------------------------------------------------- rendering


def _background_array(bg: Background, size: int) -> np.ndarray:
    if bg.kind == "gradient":
        u = (np.arange(size, dtype=np.float32) + 0.5) / size - 0.5
        ramp = math.cos(bg.angle) * u[None, :] + math.sin(bg.angle) * u[:, None]  # in [-0.71, 0.71]
        delta = (ramp * (bg.amplitude / 0.71))[:, :, None].repeat(3, axis=2)
    else:
        grid = np.array(bg.grid, dtype=np.float32).reshape(3, 4, 4)
        delta = np.stack(
            [
                np.asarray(Image.fromarray(grid[c] * np.float32(bg.amplitude)).resize((size, size), Image.BICUBIC))
                for c in range(3)
            ],
            axis=2,
        )
        delta = np.clip(delta, -bg.amplitude, bg.amplitude)
    return np.clip(np.array(bg.rgb, dtype=np.float32) + delta, 0, 255).astype(np.uint8)


def _draw_piece(draw: ImageDraw.ImageDraw, piece: Piece, centre: tuple[float, float], side: int) -> None:
    cx, cy = centre[0] * side, centre[1] * side
    h = SIZES[piece.size] * side
    fill = COLOURS[piece.colour]
    if piece.shape == "circle":
        draw.ellipse([cx - h, cy - h, cx + h, cy + h], fill=fill)
    elif piece.shape == "square":
        q = 0.85 * h  # a square looks bigger than a circle of the same span
        draw.rectangle([cx - q, cy - q, cx + q, cy + q], fill=fill)
    elif piece.shape == "triangle":
        draw.polygon([(cx, cy - h), (cx + h, cy + 0.85 * h), (cx - h, cy + 0.85 * h)], fill=fill)
    elif piece.shape == "cross":
        w = 0.36 * h
        draw.rectangle([cx - h, cy - w, cx + h, cy + w], fill=fill)
        draw.rectangle([cx - w, cy - h, cx + w, cy + h], fill=fill)
    else:  # pragma: no cover - Piece checks its shape
        raise ValueError(piece.shape)


def render_scene(scene: Scene, layout: Layout, background: Background, image_size: int = 64) -> Image.Image:
    """The scene drawn at 4x its size and brought down with LANCZOS (antialiased), as an RGB image."""
    side = image_size * _SUPERSAMPLE
    canvas = Image.fromarray(_background_array(background, side))
    draw = ImageDraw.Draw(canvas)
    _draw_piece(draw, scene.first, layout.first, side)
    _draw_piece(draw, scene.second, layout.second, side)
    return canvas.resize((image_size, image_size), Image.LANCZOS)


# ---------------------------------------------------------------- the folder


@dataclass
class ShapesSummary:
    folder: Path
    seed: int
    counts: dict[str, int]  # images per split
    captions: int
    twins: int


def generate_shapes(
    out: str | Path,
    seed: int = 0,
    train: int = 2000,
    dev_groups: int = 30,
    test_groups: int = 60,
    image_size: int = 64,
    captions_per_image: int = 4,
    progress: Callable[[int, int], None] | None = None,
) -> ShapesSummary:
    """Write a shapes set into `out` (which must not exist or be empty): images, captions.csv, twins.csv, README.txt.

    dev_groups and test_groups count base scenes; each brings three images (base,
    colour twin, relation twin). progress(done, total) is called as images are written.
    """
    out = Path(out)
    if out.exists():
        if not out.is_dir():
            raise ValueError(f"{out} exists and is not a folder; give a new or empty folder for the shapes set")
        if any(out.iterdir()):
            raise ValueError(f"{out} is not empty; give a new or empty folder for the shapes set")
    if not isinstance(image_size, int) or image_size < 16:
        raise ValueError(f"image_size must be a whole number of pixels, at least 16, not {image_size!r}")
    plan = sample_scenes(seed, train, dev_groups, test_groups, captions_per_image)

    (out / "images").mkdir(parents=True, exist_ok=True)
    total = len(plan.images)
    if progress:
        progress(0, total)
    for done, im in enumerate(plan.images, 1):
        render_scene(im.scene, im.layout, im.background, image_size).save(out / im.image, format="PNG")
        if progress:
            progress(done, total)

    rows = [(im.image, caption, im.split) for im in plan.images for caption in im.captions]
    _write_csv(out / "captions.csv", ("image", "caption", "split"), rows)
    _write_csv(out / "twins.csv", ("image", "twin", "kind"), plan.twins)
    counts = plan.counts()
    (out / "README.txt").write_text(
        "picsift shapes: synthetic two-object scenes (colour, shape, size, left of/right of/above/below) "
        "with captions, and near-miss twins (colour swap, relation swap) of every dev and test base image.\n"
        f"seed {seed}, {image_size} px PNG, {captions_per_image} captions per image; "
        f"train {counts['train']}, dev {counts['dev']} ({dev_groups} groups), test {counts['test']} "
        f"({test_groups} groups) images; {len(rows)} captions, {len(plan.twins)} twin pairs.\n",
        encoding="utf-8",
    )
    return ShapesSummary(out, seed, counts, len(rows), len(plan.twins))


def _write_csv(path: Path, header: Sequence[str], rows: Iterable[Sequence[str]]) -> None:
    with open(path, "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(header)
        w.writerows(rows)
