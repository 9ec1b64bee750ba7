"""The shrunk CE: a CE reading the patch grid pooled 2x2, loaded as an overlay beside a checkpoint, its cache
layout recorded by the library, and its training by distillation from the full CE."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from conftest import pair_agreement, train_run


@pytest.fixture(scope="module")
def shrunk_model_dir(tmp_path_factory, tiny_model_dir):
    """The tiny random model with a shrunk-CE overlay: its cross-attention and matching head perturbed."""
    from transformers import BlipForImageTextRetrieval

    from picsift.engine.models import shrunk_ce

    folder = tmp_path_factory.mktemp("shrunk") / "model"
    shutil.copytree(tiny_model_dir, folder)
    model = BlipForImageTextRetrieval.from_pretrained(folder)
    gen = torch.Generator().manual_seed(4)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if shrunk_ce.trains(name):
                p.add_(torch.randn(p.shape, generator=gen) * 0.1)
    shrunk_ce.save(model, folder, shrunk_ce.ShrunkConfig(pool=2))
    return folder


def test_the_torch_and_numpy_poolings_agree():
    from picsift.engine.models.blip_ce import pool_grid

    t = np.random.default_rng(0).normal(size=(3, 37, 5)).astype(np.float32)  # CLS and a 6x6 grid
    a = pool_grid(t, 2)
    b = pool_grid(torch.from_numpy(t), 2)
    assert a.shape == (3, 10, 5) and isinstance(b, torch.Tensor)
    assert np.allclose(a, b.numpy(), atol=1e-6)
    assert pool_grid(t, 3).shape == (3, 5, 5)


def _reference_probability(folder, image_path, query) -> float:
    """The shrunk CE's match probability from transformers' model with the overlay's weights, the grid pooled
    by torch's avg_pool2d (not picsift's pooling)."""
    import torch.nn.functional as F
    from safetensors.torch import load_file
    from transformers import AutoProcessor, BlipForImageTextRetrieval

    from picsift.engine.index.imaging import open_photo

    model = BlipForImageTextRetrieval.from_pretrained(folder).eval()
    model.load_state_dict(load_file(str(folder / "shrunk_ce.safetensors")), strict=False)
    proc = AutoProcessor.from_pretrained(folder)
    img = open_photo(image_path, model.config.vision_config.image_size).image
    px = proc(images=[img], return_tensors="pt")["pixel_values"]
    enc = proc(text=[query], return_tensors="pt")
    with torch.no_grad():
        tokens = model.vision_model(pixel_values=px).last_hidden_state
        g = int((tokens.shape[1] - 1) ** 0.5)
        grid = tokens[:, 1:].transpose(1, 2).reshape(1, -1, g, g)
        pooled = F.avg_pool2d(grid, 2).flatten(2).transpose(1, 2)
        image = torch.cat([tokens[:, :1], pooled], dim=1)
        hidden = model.text_encoder(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"],
                                    encoder_hidden_states=image,
                                    encoder_attention_mask=torch.ones(image.shape[:2], dtype=torch.long))
        logits = model.itm_head(hidden.last_hidden_state[:, 0])
    return float(torch.softmax(logits, dim=-1)[0, 1])


def test_a_shrunk_ce_reads_the_pooled_grid_and_keeps_the_checkpoints_be(tiny_model, tiny_model_dir,
                                                                       shrunk_model_dir, photo_folder):
    from picsift.engine.index.imaging import open_photo
    from picsift.engine.models import load_model

    model = load_model(str(shrunk_model_dir), device="cpu", precision="fp32")
    assert model.be.key == tiny_model.be.key  # the overlay is not part of the checkpoint's identity
    assert model.ce.key != tiny_model.ce.key and "/ce-pool2-" in model.ce.key
    assert tiny_model.ce.feature_shape == (17, 32) and model.ce.feature_shape == (5, 32)
    assert model.ce.layout == "5 image tokens a photo (the patch grid pooled 2x2)"
    path = sorted(photo_folder.rglob("*.jpg"))[0]
    enc = model.encode_images([open_photo(str(path), model.image_size).image])
    assert enc.features[model.ce.key].shape == (1, 5, 32)
    assert np.allclose(enc.vectors, tiny_model.encode_images([open_photo(str(path), 32).image]).vectors, atol=1e-6)
    got = float(model.ce.score("a red square", enc.features[model.ce.key])[0])
    assert got == pytest.approx(_reference_probability(shrunk_model_dir, path, "a red square"), abs=1e-4)
    # the full CE's probability on the same photo differs: the overlay's weights are in use
    full = tiny_model.encode_images([open_photo(str(path), 32).image]).features[tiny_model.ce.key]
    assert abs(float(tiny_model.ce.score("a red square", full)[0]) - got) > 1e-3


def test_an_overlay_with_weights_outside_the_ce_is_refused_with_a_clear_message(tiny_model_dir, tmp_path):
    from safetensors.torch import save_file

    from picsift.engine.errors import ModelNotFoundError
    from picsift.engine.models import load_model
    from picsift.engine.models.shrunk_ce import SHRUNK_CONFIG, SHRUNK_WEIGHTS

    folder = tmp_path / "bad"
    shutil.copytree(tiny_model_dir, folder)
    (folder / SHRUNK_CONFIG).write_text(json.dumps({"pool": 2}))
    save_file({"vision_proj.weight": torch.zeros(16, 32)}, str(folder / SHRUNK_WEIGHTS))
    with pytest.raises(ModelNotFoundError, match="shrunk CE.*vision_proj.weight"):
        load_model(str(folder), device="cpu", precision="fp32")


def test_switching_to_a_shrunk_ce_keeps_the_vectors_and_refills_the_cache_at_the_pooled_size(
        tiny_model, shrunk_model_dir, photo_folder, library):
    from picsift.engine.index.indexer import index_folders
    from picsift.engine.models import load_model
    from picsift.engine.search.searcher import Searcher

    list(index_folders(library, tiny_model, [str(photo_folder)]))
    full_bytes = library.tokens.size_bytes
    assert library.tokens.count(tiny_model.ce.key) == 12
    shrunk = load_model(str(shrunk_model_dir), device="cpu", precision="fp32")
    events = list(index_folders(library, shrunk, [str(photo_folder)]))
    assert events[-1].embedded == 0  # no photo embedded again
    assert library.store.ce_key == shrunk.ce.key
    assert library.tokens.count(shrunk.ce.key) == 12 and library.tokens.count() == 12  # the full CE's are gone
    cache = library.status()["rerank_cache"]
    assert cache["layout"] == "5 image tokens a photo (the patch grid pooled 2x2)"
    assert cache["bytes"] < full_bytes / 2
    hits = Searcher(library, shrunk).search("a blue circle", n=5, k=3)
    assert all(h.rerank_score is not None for h in hits[:3]) and hits[3].rerank_score is None
    feats = library.tokens.get_many(shrunk.ce.key, [library.store.photo(h.path, shrunk.be.key).hash for h in hits[:3]])
    assert all(f.shape == (5, 32) for f in feats.values())


def test_status_in_the_terminal_names_the_cache_layout(shrunk_model_dir, photo_folder, tmp_path, capsys,
                                                       _isolated_home):
    from picsift.engine.cli import main

    lib = str(tmp_path / "lib")
    assert main(["index", str(photo_folder), "--library", lib, "--model", str(shrunk_model_dir), "-q"]) == 0
    capsys.readouterr()
    assert main(["status", "--library", lib]) == 0
    out = capsys.readouterr().out
    line = next(x for x in out.splitlines() if x.startswith("Rerank cache:"))
    assert "12 of 12 photos cached" in line and line.endswith("; 5 image tokens a photo (the patch grid pooled 2x2)")


# ----- training ------------------------------------------------------------------------------------------
def _train(**kw):
    return train_run(mode="shrink-ce", **kw)


def _ce_logits(folder, data, pooled_base=None) -> np.ndarray:
    """(captions, photos) CE log-odds through the product's code path; pooled_base: that checkpoint's CE
    reading the pooled grid without any training (the baseline a student must beat)."""
    from picsift.engine.index.imaging import open_photo
    from picsift.engine.models import load_model
    from picsift.engine.models.blip_ce import pool_grid

    model = load_model(str(folder), device="cpu", precision="fp32")
    images = [open_photo(str(p), model.image_size).image for p in data.images]
    feats = model.encode_images(images).features[model.ce.key]
    if pooled_base:
        feats = pool_grid(feats, 2)
    return np.stack([model.ce.logits(c, feats) for c in data.captions])


def test_a_shrunk_ce_distilled_briefly_orders_photos_like_the_full_ce(tiny_model_dir, small_shapes, tmp_path):
    from picsift.engine.models.identity import content_identity
    from picsift.engine.models.shrunk_ce import has_shrunk, trains
    from picsift.engine.training.datasets import read_dataset
    from safetensors.torch import load_file

    out = tmp_path / "student"
    events = _train(data=str(small_shapes), out=str(out), model=str(tiny_model_dir), steps=80, lr=2e-3,
                    dev_split=None)
    assert events[-1].phase == "done" and has_shrunk(out)
    assert content_identity(out) == content_identity(tiny_model_dir)  # the checkpoint's own files, unchanged
    assert all(trains(k) for k in load_file(str(out / "shrunk_ce.safetensors")))
    log = json.loads((out / "training.json").read_text())
    assert log["trained_parameters"] < log["parameters"] / 2  # the CE's own weights only

    test = read_dataset(small_shapes, split="test")
    teacher = _ce_logits(tiny_model_dir, test)
    student = _ce_logits(out, test)
    untrained = _ce_logits(tiny_model_dir, test, pooled_base=True)
    assert student.shape == teacher.shape == (len(test.captions), len(test.images))
    agree, before = pair_agreement(student, teacher), pair_agreement(untrained, teacher)
    assert agree > before + 0.03, (agree, before)
    # and its match probabilities come nearer the teacher's
    sig = lambda x: 1 / (1 + np.exp(-x))  # noqa: E731
    assert np.abs(sig(student) - sig(teacher)).mean() < np.abs(sig(untrained) - sig(teacher)).mean()


def test_shrink_ce_options_are_checked(tiny_model_dir, small_shapes, tmp_path):
    from picsift.engine.training.train import TrainingError, TrainOptions

    with pytest.raises(TrainingError, match="--init"):
        TrainOptions(data=str(small_shapes), out=str(tmp_path / "a"), mode="shrink-ce", init="tiny").check()
    with pytest.raises(TrainingError, match="--pool"):
        TrainOptions(data=str(small_shapes), out=str(tmp_path / "b"), mode="shrink-ce", model="x", pool=1).check()
    with pytest.raises(TrainingError, match="--pool 3 does not fit"):
        _train(data=str(small_shapes), out=str(tmp_path / "c"), model=str(tiny_model_dir), steps=1, pool=3)


def test_make_random_model_can_add_a_shrunk_ce(tmp_path, capsys, _isolated_home):
    from picsift.engine.cli import main
    from picsift.engine.models import load_model

    assert main(["make-random-model", str(tmp_path / "m"), "--shrunk-ce", "2", "-q"]) == 0
    model = load_model(str(tmp_path / "m"), device="cpu", precision="fp32")
    assert model.ce.pool == 2 and model.ce.feature_shape == (5, 32)
    assert main(["make-random-model", str(tmp_path / "n"), "--shrunk-ce", "3", "-q"]) == 1
    assert "does not fit the tiny preset" in capsys.readouterr().err
