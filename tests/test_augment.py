"""Training photo augmentation (--augment shift): small shifts and scales that keep every caption true."""

from __future__ import annotations

import pytest
import torch

from picsift.engine.training.augment import shift_and_scale


def _two_objects(n=8, side=64):
    """A batch of photos: a small square on the left half (channel 0), a large one on the right half (channel 1)."""
    x = torch.full((n, 3, side, side), -1.0)
    x[:, 0, 28:36, 10:18] = 1.0  # small, left
    x[:, 1, 24:40, 40:56] = 1.0  # large, right
    return x


def _centre_and_area(img, channel):
    ys, xs = torch.nonzero(img[channel] > 0, as_tuple=True)
    return xs.float().mean(), ys.float().mean(), len(xs)


def test_no_shift_and_no_zoom_gives_the_photo_back():
    x = _two_objects()
    got = shift_and_scale(x, torch.Generator().manual_seed(0), max_shift=0.0, scales=(1.0, 1.0))
    assert torch.allclose(got, x, atol=1e-5)


def test_a_shift_moves_objects_a_little_and_keeps_their_relation_and_sizes():
    x = _two_objects()
    got = shift_and_scale(x, torch.Generator().manual_seed(1))
    moved = 0
    for img in got:
        lx, ly, la = _centre_and_area(img, 0)
        rx, ry, ra = _centre_and_area(img, 1)
        assert lx < rx  # left stays left
        assert ra > 2 * la  # the large one stays larger
        assert abs(lx - 13.5) <= 0.04 * 64 + 0.1 * 32 + 1 and abs(ly - 31.5) <= 0.04 * 64 + 0.1 * 32 + 1
        moved += abs(float(lx) - 13.5) > 0.5
    assert moved >= 4  # most photos of the batch did move
    assert not torch.allclose(got[0], got[1])  # each photo its own draw


def test_the_edges_fill_what_comes_into_view():
    x = _two_objects()
    got = shift_and_scale(x, torch.Generator().manual_seed(2), max_shift=0.1, scales=(0.8, 0.8))
    assert (got[:, :, 0, :] == -1.0).all() and (got[:, :, :, 0] == -1.0).all()  # the background, not zeros


def test_a_training_step_reads_the_same_augmented_pixels_again_on_resume(small_shapes, tmp_path):
    from picsift.engine.training.train import TrainOptions, TrainingError, make_trainer

    t = make_trainer(TrainOptions(data=str(small_shapes), out=str(tmp_path / "m"), mode="ce", init="tiny",
                                  image_size=32, steps=1, augment="shift", device="cpu"))
    list(t._prepare())
    idx = torch.arange(4)
    a, b, c = t.train_pixels(idx, 5, 1), t.train_pixels(idx, 5, 1), t.train_pixels(idx, 6, 1)
    assert torch.equal(a, b) and not torch.allclose(a, c) and not torch.allclose(a, t.pixels[idx])
    with pytest.raises(TrainingError, match="--augment must be one of none, shift"):
        TrainOptions(data=str(small_shapes), out=str(tmp_path / "n"), augment="rotate").check()
