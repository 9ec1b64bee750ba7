"""The cross-encoder's negatives: composition-aware caption swaps, false negatives told from what captions say,
in-batch ITC-sampled negatives, and pair accuracy on near-miss twins."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from picsift.engine.training.losses import caption_key, false_negatives, itc_negatives
from picsift.engine.training.perturb import coverage, perturb
from picsift.engine.training.twins import pair_accuracy, twin_triples

# ----- the perturber -------------------------------------------------------------------------------


def test_each_kind_of_swap_exchanges_two_parts_of_the_caption():
    got = perturb("a small red circle left of a large blue square")
    assert got == {
        "colour": "a small blue circle left of a large red square",
        "size": "a large red circle left of a small blue square",
        "object": "a small red square left of a large blue circle",
        "relation": "a small red circle right of a large blue square",
    }


def test_relation_phrases_flip_to_their_inverse_longest_phrase_first():
    assert perturb("A dog to the left of a man")["relation"] == "A dog to the right of a man"
    assert perturb("a cat on top of a box")["relation"] == "a cat under a box"
    assert perturb("a cat under a box")["relation"] == "a cat on top of a box"
    assert perturb("a boy in front of a wall")["relation"] == "a boy behind a wall"


def test_swaps_keep_capitals_and_other_words():
    got = perturb("Red ball and green ball on the grass")
    assert got == {"colour": "Green ball and red ball on the grass", "object": "Red grass and green grass on the ball"}


@pytest.mark.parametrize("caption", ["a dog runs", "two red dogs play", "sunset"])
def test_a_caption_with_nothing_to_exchange_yields_no_swap(caption):
    assert perturb(caption) == {}


def test_a_caption_with_one_colour_twice_has_no_colour_swap():
    got = perturb("a red circle left of a red square")
    assert "colour" not in got
    assert got["object"] == "a red square left of a red circle"


def test_coverage_counts_each_kind_and_the_captions_with_none():
    caps = ["a red circle left of a blue square", "a dog runs", "a small cat and a big dog", "sunset"]
    assert coverage(caps) == {"captions": 4, "colour": 1, "size": 1, "object": 2, "relation": 1, "none": 2}


def test_every_shapes_swap_describes_another_scene():
    """On shapes captions each swap says something else: its scene differs from the caption's own."""
    from picsift.engine.training.shapes import all_scenes, parse_caption, scene_captions

    checked = 0
    for scene in all_scenes()[:200]:
        for caption in scene_captions(scene):
            for kind, swapped in perturb(caption).items():
                assert parse_caption(swapped).key() != scene.key(), (kind, caption, swapped)
                checked += 1
    assert checked > 1000


# ----- false negatives -------------------------------------------------------------------------------


def test_false_negatives_are_the_mined_items_whose_captions_say_the_same():
    captions = ["a small red circle left of a small blue square",  # photo 0
                "a small blue square right of a small red circle",  # photo 1: the same scene, told the other way
                "a small blue circle left of a small red square",  # photo 2: the colour swap
                "a small red circle right of a small blue square"]  # photo 3: the relation swap
    caption_image = [0, 1, 2, 3]
    images_for = torch.tensor([[1, 2, 3], [0, 2, 3], [0, 1, 3], [0, 1, 2]])
    captions_for = torch.tensor([[1, 2, 3], [0, 2, 3], [0, 1, 3], [0, 1, 2]])
    false_i, false_t = false_negatives(images_for, captions_for, captions, caption_image)
    want = torch.tensor([[True, False, False], [True, False, False], [False, False, False], [False, False, False]])
    assert torch.equal(false_i, want)
    assert torch.equal(false_t, want)


def test_false_negatives_on_a_generated_set_match_the_generator_scenes():
    """Photos of a generated set where every scene is shown twice (its captions told differently): the mined
    negatives marked false are exactly those showing the caption's own scene, by the generator's attributes."""
    from picsift.engine.training.shapes import sample_scenes, scene_captions

    plan = sample_scenes(seed=2, train=400, dev_groups=2, test_groups=2)
    scenes = [im.scene for im in plan.images if im.split == "train"][:100]
    photo_scene = [scenes[p % 100] for p in range(200)]  # photos p and p + 100 show one scene
    captions, caption_image = [], []
    for p, scene in enumerate(photo_scene):
        told = scene_captions(scene)
        for c in (told[p // 100], told[-1 - p // 100]):
            captions.append(c)
            caption_image.append(p)
    gen = torch.Generator().manual_seed(0)
    images_for = torch.randint(200, (len(captions), 40), generator=gen)
    captions_for = torch.randint(len(captions), (200, 40), generator=gen)
    # the miner never proposes an item of the photo itself
    images_for = torch.where(images_for == torch.tensor(caption_image)[:, None], (images_for + 1) % 200, images_for)
    captions_for = torch.where(torch.tensor(caption_image)[captions_for] == torch.arange(200)[:, None],
                               (captions_for + 2) % len(captions), captions_for)
    false_i, false_t = false_negatives(images_for, captions_for, captions, caption_image)
    key = [s.key() for s in photo_scene]
    want_i = torch.tensor([[key[i] == key[caption_image[c]] for i in row] for c, row in enumerate(images_for.tolist())])
    want_t = torch.tensor([[key[caption_image[c]] == key[i] for c in row] for i, row in enumerate(captions_for.tolist())])
    assert torch.equal(false_i, want_i) and torch.equal(false_t, want_t)
    assert int(false_i.sum()) > 10 and int(false_t.sum()) > 10  # the twin photo was proposed often enough


def test_caption_key_of_other_captions_is_their_words():
    assert caption_key("A  Dog runs") == caption_key("a dog RUNS")
    assert caption_key("a dog runs") != caption_key("a dog sits")


# ----- ITC-sampled negatives -------------------------------------------------------------------------


def test_itc_negatives_never_draw_a_pair_of_the_same_photo():
    gen = torch.Generator().manual_seed(1)
    b = 24
    ids = torch.randint(6, (b,), generator=gen)  # several captions of a batch share a photo
    text = torch.nn.functional.normalize(torch.randn(b, 8, generator=gen), dim=1)
    image = torch.nn.functional.normalize(torch.randn(b, 8, generator=gen), dim=1)
    for seed in range(50):
        t_rows, i_rows = itc_negatives(text, image, ids, ids, torch.tensor(-3.0), torch.Generator().manual_seed(seed))
        assert (t_rows >= 0).all() and (i_rows >= 0).all()
        assert (ids[i_rows] != ids).all(), "a caption drew an image of its own photo"
        assert (ids[t_rows] != ids).all(), "an image drew a caption of its own photo"


def test_itc_negatives_favour_the_most_similar_other_photo():
    # Caption 0 is nearly image 1's direction; image 2 is far. At a low temperature image 1 is drawn nearly always.
    text = torch.nn.functional.normalize(torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]]), dim=1)
    image = torch.nn.functional.normalize(torch.tensor([[0.0, 1.0], [0.95, 0.3], [-1.0, -0.1]]), dim=1)
    ids = torch.tensor([0, 1, 2])
    drawn = [int(itc_negatives(text, image, ids, ids, torch.tensor(-4.0), torch.Generator().manual_seed(s))[1][0])
             for s in range(200)]
    assert drawn.count(1) > 180 and drawn.count(0) == 0


def test_itc_negatives_mark_a_batch_of_one_photo_as_having_none():
    ids = torch.tensor([4, 4, 4])
    v = torch.nn.functional.normalize(torch.randn(3, 4), dim=1)
    t_rows, i_rows = itc_negatives(v, v, ids, ids, torch.tensor(-3.0), torch.Generator().manual_seed(0))
    assert (t_rows == -1).all() and (i_rows == -1).all()


# ----- pair accuracy ---------------------------------------------------------------------------------


def test_pair_accuracy_reads_each_pair_from_both_sides_and_counts_ties_half():
    caption_image = [0, 0, 1, 2, 3]
    triples = twin_triples([(0, 1, "colour swap"), (2, 3, "relation swap")], caption_image)
    assert triples["colour swap"].tolist() == [[0, 0, 1], [1, 0, 1], [2, 1, 0]]
    assert triples["relation swap"].tolist() == [[3, 2, 3], [4, 3, 2]]
    scores = np.array([[0.9, 0.1, 0, 0],  # caption 0 prefers its own photo
                       [0.2, 0.8, 0, 0],  # caption 1 prefers the twin
                       [0.5, 0.5, 0, 0],  # caption 2: a tie
                       [0, 0, 0.3, 0.7],  # caption 3 wrong
                       [0, 0, 0.1, 0.6]])  # caption 4 right
    got = pair_accuracy(scores, triples)
    assert got == {"colour swap": pytest.approx(1.5 / 3), "relation swap": 0.5, "all": pytest.approx(2.5 / 5)}


# ----- which swaps training uses ----------------------------------------------------------------------


def test_text_negatives_name_the_kinds_of_exchange_and_refuse_unknown_ones():
    from picsift.engine.training.perturb import KINDS
    from picsift.engine.training.train import TrainingError, swap_kinds

    assert swap_kinds("swap") == KINDS
    assert swap_kinds("none") == ()
    assert swap_kinds("relation") == ("relation",)
    assert swap_kinds("colour, relation") == ("colour", "relation")
    assert swap_kinds("replace") == ("colour-replace", "size-replace", "object-replace")
    assert swap_kinds("swap,replace") == KINDS + ("colour-replace", "size-replace", "object-replace")
    assert swap_kinds("relation,colour-replace,relation") == ("relation", "colour-replace")
    for bad in ("color", "relation,shape", ",", "replaced"):
        with pytest.raises(TrainingError, match="comma list of those and of colour, size, object, relation"):
            swap_kinds(bad)


# ----- replacements: one word changed to another of its kind ----------------------------------------


def test_a_replacement_changes_one_word_to_another_of_its_kind_that_the_data_uses():
    from picsift.engine.training.perturb import replacement_vocabulary, replacements

    vocab = replacement_vocabulary(["a small red circle left of a large blue square", "a green cross", "a dog"])
    got = replacements("a small red circle left of a large blue square", vocab)
    assert got["colour-replace"] == [
        "a small green circle left of a large blue square", "a small blue circle left of a large blue square",
        "a small red circle left of a large red square", "a small red circle left of a large green square"]
    assert got["size-replace"] == ["a large red circle left of a large blue square",
                                   "a small red circle left of a small blue square"]
    # every object word the data has, and none it lacks
    assert "a small red cross left of a large blue square" in got["object-replace"]
    assert "a small red dog left of a large blue square" in got["object-replace"]
    assert not any("triangle" in t for t in got["object-replace"])  # the data never says triangle


def test_a_word_is_never_replaced_by_one_that_can_name_the_same_thing():
    from picsift.engine.training.perturb import replacement_vocabulary, replacements

    data = ["a big dog and a puppy", "a large grey cat", "a gray man", "a little girl", "a small boy in red"]
    vocab = replacement_vocabulary(data)
    got = replacements("A big dog next to a grey cat", vocab)
    assert "A large dog next to a grey cat" not in got["size-replace"]  # big and large say the same
    assert "A little dog next to a grey cat" in got["size-replace"]
    assert "A big puppy next to a grey cat" not in got["object-replace"]  # a puppy is a dog
    assert "A big dog next to a gray cat" not in got["colour-replace"]
    assert "A big dog next to a red cat" in got["colour-replace"]
    assert replacements("Sunset over the sea", vocab) == {}
    # a capital stays a capital; boy and man stand in one group, girl in another
    assert replacements("Boy in red", vocab)["object-replace"] == ["Dog in red", "Puppy in red", "Cat in red",
                                                                       "Girl in red"]


def test_every_shapes_replacement_contradicts_its_photo_in_one_attribute():
    """A replacement of a shapes caption never describes the caption's own scene: it names another scene
    that differs in exactly one of the seven attributes, or no scene the set can draw (two red objects)."""
    from picsift.engine.training.perturb import replacement_vocabulary, replacements
    from picsift.engine.training.shapes import all_scenes, parse_caption, scene_captions

    scenes = all_scenes()[:150]
    captions = [c for s in scenes for c in scene_captions(s)[:2]]
    vocab = replacement_vocabulary(captions)
    checked = impossible = 0
    for c in captions:
        own = parse_caption(c)
        for kind, texts in replacements(c, vocab).items():
            for t in texts:
                assert sum(a != b for a, b in zip(c.split(), t.split())) == 1 and len(c.split()) == len(t.split())
                try:
                    other = parse_caption(t)
                except ValueError:
                    impossible += 1
                    continue
                assert other != own
                checked += 1
    assert checked > 10 * len(captions) and 0 < impossible < checked


def test_training_on_relation_swaps_meets_only_relation_swaps(small_shapes, tmp_path):
    """--text-negatives relation: each caption's text negative is its relation flipped, nothing else."""
    from picsift.engine.training.shapes import parse_caption
    from picsift.engine.training.train import TrainOptions, make_trainer

    t = make_trainer(TrainOptions(data=str(small_shapes), out=str(tmp_path / "m"), mode="ce", init="tiny",
                                  image_size=32, steps=1, text_negatives="relation", device="cpu"))
    list(t._prepare())
    assert set(t.swaps.kinds) == {"relation"}
    decode = t.processor.tokenizer.batch_decode
    captions = decode(t.ids, skip_special_tokens=True)
    swapped = decode(t.swaps.ids, skip_special_tokens=True)
    checked = 0
    for c, (start, count) in enumerate(zip(t.swaps.start.tolist(), t.swaps.count.tolist())):
        for text in swapped[start:start + count]:
            own, other = parse_caption(captions[c]), parse_caption(text)
            assert own is not None and other is not None and own != other
            # the same two objects in the same order of words, standing the other way round
            assert text.split()[:4] == captions[c].split()[:4] and text.split()[-4:] == captions[c].split()[-4:]
            checked += 1
    assert checked >= len(captions) // 2


# ----- mirrored photos as image negatives (--image-negatives flip) ----------------------------------


def test_mirror_swaps_the_words_of_the_flipped_axis_only():
    from picsift.engine.training.perturb import mirror

    assert mirror("a small red circle left of a large blue square") == (
        "horizontal", "a small red circle right of a large blue square")
    assert mirror("A dog to the right of a man") == ("horizontal", "A dog to the left of a man")
    assert mirror("a cat on top of a box") == ("vertical", "a cat under a box")
    assert mirror("a red square below a cross") == ("vertical", "a red square above a cross")
    # depth is the same in a mirror: it stays, and so does the axis of the other words
    assert mirror("a dog in front of a car left of a tree") == ("horizontal", "a dog in front of a car right of a tree")
    for caption in ("a dog runs", "a dog in front of a car", "a cat under a table left of a man"):
        assert mirror(caption) is None


def test_a_flipped_shapes_photo_shows_what_the_mirrored_caption_says():
    """Render scenes, flip the image along the axis mirror() names, find the two objects by colour: their places
    agree with the mirrored caption's relation and no longer with the caption's own."""
    from picsift.engine.training.perturb import mirror
    from picsift.engine.training.shapes import (COLOURS, Background, Layout, Piece, Scene, describe_scene,
                                                parse_caption, render_scene)

    bg = Background((235, 235, 225), "gradient", 0.0)
    checked = 0
    for relation, layout in (("left of", Layout((0.25, 0.5), (0.75, 0.55))),
                             ("below", Layout((0.5, 0.8), (0.45, 0.25)))):
        scene = Scene(Piece("red", "square", "large"), relation, Piece("blue", "circle", "large"))
        image = np.asarray(render_scene(scene, layout, bg, image_size=64)).astype(int)
        axis, text = mirror(describe_scene(scene))
        flipped = image[:, ::-1] if axis == "horizontal" else image[::-1, :]

        def centre(colour):
            ys, xs = np.nonzero((np.abs(flipped - np.array(COLOURS[colour])).sum(-1) < 60))
            return xs.mean(), ys.mean()

        (rx, ry), (bx, by) = centre("red"), centre("blue")
        said = parse_caption(text).relation
        seen = {"left of": rx < bx, "right of": rx > bx, "above": ry < by, "below": ry > by}
        assert seen[said] and not seen[relation]
        checked += 1
    assert checked == 2


def test_flip_pairs_meet_each_relation_caption_with_its_flipped_photo(small_shapes, tmp_path):
    """The CE's flip rows: caption + photo flipped along its relation's axis is a negative, the mirrored caption
    + that flipped photo a positive; the pixels are the photo's own, flipped along the right axis."""
    from picsift.engine.training.perturb import mirror
    from picsift.engine.training.train import TrainOptions, make_trainer

    t = make_trainer(TrainOptions(data=str(small_shapes), out=str(tmp_path / "m"), mode="ce", init="tiny",
                                  image_size=32, steps=1, image_negatives="flip", device="cpu"))
    list(t._prepare())
    decode = t.processor.tokenizer.batch_decode
    captions = decode(t.ids, skip_special_tokens=True)
    mirrored = decode(t.mirrors.ids, skip_special_tokens=True)
    for c, text in enumerate(captions):
        axis, want = mirror(text)  # every shapes caption names one relation
        assert t.mirrors.axis[c] == (1 if axis == "horizontal" else 2) and mirrored[c] == want

    seen = {}

    def image_tokens(pixels):
        seen["pixels"] = pixels
        return torch.zeros(len(pixels), 5, 32)

    def itm_logits(ids, mask, tokens):
        seen["ids"], seen["tokens"] = ids, tokens
        return torch.zeros(len(ids), 2)

    t.image_tokens, t.itm_logits = image_tokens, itm_logits
    caps = torch.arange(6)
    imgs = t.caption_image[caps]
    logits, labels = t._flip_pairs(caps, imgs, step=0)
    assert labels.tolist() == [0.0] * 6 + [1.0] * 6 and logits.shape == (12, 2)
    assert torch.equal(seen["ids"][:6], t.ids[caps]) and torch.equal(seen["ids"][6:], t.mirrors.ids[caps])
    for j in range(6):
        dim = 3 if t.mirrors.axis[caps[j]] == 1 else 2
        assert torch.equal(seen["pixels"][j], t.pixels[imgs[j]].flip(dim - 1))
        assert not torch.equal(seen["pixels"][j], t.pixels[imgs[j]])


def test_image_negatives_refuse_an_unknown_kind(small_shapes, tmp_path):
    from picsift.engine.training.train import TrainingError, TrainOptions

    with pytest.raises(TrainingError, match="--image-negatives must be one of none, flip"):
        TrainOptions(data=str(small_shapes), out=str(tmp_path / "m"), image_negatives="mirror").check()


def test_training_with_replacements_draws_each_kind_alike(small_shapes, tmp_path):
    """--text-negatives replace: each caption's replacements are its own caption with one word changed, and a
    step's draw gives colour, size and object replacements an equal share, however many rows each has."""
    from collections import Counter

    from picsift.engine.training.train import TrainOptions, make_trainer

    t = make_trainer(TrainOptions(data=str(small_shapes), out=str(tmp_path / "m"), mode="ce", init="tiny",
                                  image_size=32, steps=1, text_negatives="replace", device="cpu"))
    list(t._prepare())
    assert t.swaps is None and t.replacements is not None
    assert set(t.replacements.kinds) == {"colour-replace", "size-replace", "object-replace"}
    decode = t.processor.tokenizer.batch_decode
    captions = decode(t.ids, skip_special_tokens=True)
    replaced = decode(t.replacements.ids, skip_special_tokens=True)
    for c, (start, count) in enumerate(zip(t.replacements.start.tolist(), t.replacements.count.tolist())):
        for text in replaced[start:start + count]:
            assert sum(a != b for a, b in zip(captions[c].split(), text.split())) == 1
    c = 0
    per_kind = Counter(t.replacements.kinds[t.replacements.start[c]:t.replacements.start[c] + t.replacements.count[c]])
    assert per_kind["colour-replace"] > 2 * per_kind["size-replace"]  # more colour rows than size rows
    gen = torch.Generator().manual_seed(0)
    drawn = Counter()
    for _ in range(3000):
        rows, has = t.replacements.draw(torch.tensor([c]), gen)
        drawn[t.replacements.kinds[int(rows[0])]] += 1
    for kind in per_kind:
        assert abs(drawn[kind] / 3000 - 1 / 3) < 0.04, drawn
