"""The late-interaction (LI) stage: MaxSim, codes, the distillation loss, the head's training, and the LI
tokens a library stores and search reads."""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest
import torch

from conftest import pair_agreement, train_run


# ----- MaxSim ------------------------------------------------------------------------------------------
def test_maxsim_takes_each_text_tokens_best_photo_token_and_averages_over_the_text():
    from picsift.engine.models.late import maxsim
    from picsift.engine.models.late_head import maxsim_matrix, maxsim_pairs

    query = np.array([[1.0, 0.0], [0.0, 1.0]], np.float32)
    photos = np.array([
        [[1.0, 0.0], [0.0, 1.0]],  # each text token finds itself: (1 + 1) / 2
        [[0.6, 0.8], [-1.0, 0.0]],  # token 1: max(0.6, -1) = 0.6; token 2: max(0.8, 0) = 0.8 -> 0.7
        [[0.0, -1.0], [-0.6, 0.8]],  # token 1: max(0, -0.6) = 0; token 2: max(-1, 0.8) = 0.8 -> 0.4
    ], np.float32)
    assert maxsim(query, photos) == pytest.approx([1.0, 0.7, 0.4])
    # torch: a padded third text token is masked out and changes nothing
    text = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]]])
    mask = torch.tensor([[1, 1, 0]])
    m = maxsim_matrix(text, mask, torch.tensor(photos))
    assert m[0].tolist() == pytest.approx([1.0, 0.7, 0.4])
    pairs = maxsim_pairs(text.expand(3, -1, -1), mask.expand(3, -1), torch.tensor(photos))
    assert pairs.tolist() == pytest.approx([1.0, 0.7, 0.4])
    # unmasked, the third token (best 0.0, 1.0, 0.6) enters the average
    full = maxsim_matrix(text, torch.ones(1, 3), torch.tensor(photos))
    assert full[0].tolist() == pytest.approx([(1 + 1 + 0) / 3, (0.6 + 0.8 + 1.0) / 3, (0 + 0.8 + 0.6) / 3])


def test_li_tokens_round_trip_through_int8_within_a_step_per_token():
    from picsift.engine.models.late import bytes_per_photo, decode_tokens, encode_tokens

    rng = np.random.default_rng(0)
    t = rng.normal(size=(32, 128)).astype(np.float32)
    t /= np.linalg.norm(t, axis=1, keepdims=True)
    blob = encode_tokens(t)
    assert len(blob) == bytes_per_photo((32, 128)) == 32 * 4 + 32 * 128
    back = decode_tokens(blob, (32, 128))
    step = np.abs(t).max(axis=1, keepdims=True) / 127
    assert np.all(np.abs(back - t) <= step / 2 + 1e-7)


# ----- codes ---------------------------------------------------------------------------------------------
def test_codes_are_appended_with_the_attention_mask_extended(tiny_model_dir):
    from transformers import BlipForImageTextRetrieval

    from picsift.engine.models.late_head import append_codes, text_outputs, vision_outputs

    hidden = torch.zeros(2, 3, 4)
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    codes = torch.arange(8.0).view(2, 4)
    h, m = append_codes(hidden, mask, codes)
    assert h.shape == (2, 5, 4) and torch.equal(h[1, 3:], codes)
    assert m.tolist() == [[1, 1, 0, 1, 1], [1, 1, 1, 1, 1]]

    model = BlipForImageTextRetrieval.from_pretrained(tiny_model_dir).eval()
    torch.manual_seed(0)
    codes = torch.randn(3, model.config.text_config.hidden_size)
    ids = torch.tensor([[1, 7, 9, 2, 0, 0]]) % model.config.text_config.vocab_size
    mask = torch.tensor([[1, 1, 1, 1, 0, 0]])
    with torch.no_grad():
        out, m = text_outputs(model.text_encoder, ids, mask, codes)
        plain, _ = text_outputs(model.text_encoder, ids, mask, None)
        unpadded, _ = text_outputs(model.text_encoder, ids[:, :4], mask[:, :4], codes)
        reference = model.text_encoder(input_ids=ids, attention_mask=mask).last_hidden_state
    assert out.shape[1] == 6 + 3 and m[0].tolist() == [1, 1, 1, 1, 0, 0, 1, 1, 1]
    assert torch.allclose(plain, reference, atol=1e-5)  # no codes: the BE's own text pass
    assert not torch.allclose(out[:, :4], plain[:, :4], atol=1e-3)  # the codes take part in attention
    # the padding stays masked: the real tokens' and the codes' outputs are those of the unpadded text
    assert torch.allclose(out[:, :4], unpadded[:, :4], atol=1e-5)
    assert torch.allclose(out[:, 6:], unpadded[:, 4:], atol=1e-5)

    vcodes = torch.randn(2, model.config.vision_config.hidden_size)
    px = torch.randn(1, 3, model.config.vision_config.image_size, model.config.vision_config.image_size)
    with torch.no_grad():
        v = vision_outputs(model.vision_model, px, vcodes)
        v0 = vision_outputs(model.vision_model, px, None)
        ref = model.vision_model(pixel_values=px).last_hidden_state
    assert v.shape[1] == ref.shape[1] + 2
    assert torch.allclose(v0, ref, atol=1e-4)
    assert not torch.allclose(v[:, : ref.shape[1]], ref, atol=1e-3)


# ----- the distillation loss -----------------------------------------------------------------------------
def test_distillation_loss_on_a_small_known_matrix():
    from picsift.engine.training.losses import distillation_loss

    teacher = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    # a flat student: each softmax is (1/2, 1/2), so every cross-entropy is log 2, rows and columns alike
    flat = torch.zeros(2, 2, requires_grad=True)
    assert float(distillation_loss(teacher, flat, 1.0, 1.0).detach()) == pytest.approx(math.log(2), abs=1e-6)
    # the student equal to the teacher: the cross-entropy is the teacher's entropy
    p = math.e / (1 + math.e)
    entropy = -(p * math.log(p) + (1 - p) * math.log(1 - p))
    assert float(distillation_loss(teacher, teacher.clone(), 1.0, 1.0)) == pytest.approx(entropy, abs=1e-6)
    # scales: teacher x2 against student x1 on a matrix whose rows and columns differ
    t = torch.tensor([[2.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
    s = torch.tensor([[0.5, 0.0, 0.0], [0.0, 0.0, 1.0]])
    pt_r, ls_r = torch.softmax(2 * t, 1), torch.log_softmax(s, 1)
    pt_c, ls_c = torch.softmax(2 * t, 0), torch.log_softmax(s, 0)
    expected = 0.5 * -(pt_r * ls_r).sum(1).mean() + 0.5 * -(pt_c * ls_c).sum(0).mean()
    assert float(distillation_loss(t, s, 2.0, 1.0)) == pytest.approx(float(expected), abs=1e-6)
    # only the student gets a gradient
    t_grad = teacher.clone().requires_grad_(True)
    distillation_loss(t_grad, flat, 1.0, 1.0).backward()
    assert t_grad.grad is None and flat.grad is not None and float(flat.grad.abs().sum()) > 0


# ----- a model with an LI head in the product ---------------------------------------------------------------
@pytest.fixture(scope="module")
def late_model_dir(tmp_path_factory, tiny_model_dir):
    """The tiny random model with a random LI head (codes on both sides, 3 kept image tokens)."""
    from transformers import BlipForImageTextRetrieval

    from picsift.engine.models.late_head import head_for, save_head

    folder = tmp_path_factory.mktemp("late") / "model"
    shutil.copytree(tiny_model_dir, folder)
    model = BlipForImageTextRetrieval.from_pretrained(folder)
    torch.manual_seed(11)
    save_head(head_for(model.config, width=16, codes=4, keep_image=3), folder)
    return folder


def _reference_li(folder, image_path, query):
    """The LI score computed straight from transformers' model and the head, in float32."""
    from transformers import AutoProcessor, BlipForImageTextRetrieval

    from picsift.engine.index.imaging import open_photo
    from picsift.engine.models.late_head import load_head, maxsim_matrix, text_outputs, vision_outputs

    model = BlipForImageTextRetrieval.from_pretrained(folder).eval()
    proc = AutoProcessor.from_pretrained(folder)
    head = load_head(folder)
    img = open_photo(image_path, model.config.vision_config.image_size).image
    px = proc(images=[img], return_tensors="pt")["pixel_values"]
    enc = proc(text=[query], return_tensors="pt")
    with torch.no_grad():
        i = head.image_side(vision_outputs(model.vision_model, px, head.image_codes))
        h, m = text_outputs(model.text_encoder, enc["input_ids"], enc["attention_mask"], head.text_codes)
        t, tm = head.text_side(h, m)
        return float(maxsim_matrix(t, tm, i)[0, 0])


def test_indexing_stores_li_tokens_and_search_orders_by_them_with_li_score(late_model_dir, photo_folder, library):
    from picsift.engine.index.indexer import index_folders
    from picsift.engine.models import load_model
    from picsift.engine.models.late import bytes_per_photo
    from picsift.engine.search.searcher import Searcher

    model = load_model(str(late_model_dir), device="cpu", precision="fp32")
    assert model.li is not None and model.li.feature_shape == (3, 16)
    list(index_folders(library, model, [str(photo_folder)]))
    status = library.status()["late_interaction"]
    assert status["photos"] == 12 and status["bytes"] == 12 * bytes_per_photo((3, 16))

    searcher = Searcher(library, model, li_candidates=10)
    hits = searcher.search("a red square", n=6, k=2)
    assert len(hits) == 6 and all(h.li_score is not None for h in hits)
    # the CE reranked the LI order's top 2 (by its probability); the rest keep the LI order
    assert {h.li_rank for h in hits[:2]} == {1, 2} and [h.li_rank for h in hits[2:]] == [3, 4, 5, 6]
    assert hits[0].rerank_score >= hits[1].rerank_score and hits[2].rerank_score is None
    assert [h.li_score for h in hits[2:]] == sorted([h.li_score for h in hits[2:]], reverse=True)
    assert "li_score" in hits[0].to_json()
    # every score is the head's MaxSim on the photo (stored in int8)
    for h in hits[:3]:
        assert h.li_score == pytest.approx(_reference_li(late_model_dir, h.path, "a red square"), abs=0.02)
    # the LI stage chose among the BE's top 10: its first hit need not be the BE's first, but is one of them
    assert all(h.be_rank <= 10 for h in hits)
    no_li = Searcher(library, model, li_candidates=0).search("a red square", n=6, k=0)
    assert all(h.li_rank == 0 and "li_score" not in h.to_json() for h in no_li)
    assert [h.be_rank for h in no_li] == [1, 2, 3, 4, 5, 6]


def test_adding_an_li_head_keeps_the_library_and_fills_in_the_tokens(tiny_model, late_model_dir, photo_folder,
                                                                    library):
    from picsift.engine.index.indexer import index_folders
    from picsift.engine.models import load_model
    from picsift.engine.search.searcher import Searcher

    list(index_folders(library, tiny_model, [str(photo_folder)]))
    before = Searcher(library, tiny_model).search("a blue circle", n=5, k=3)
    assert library.status()["late_interaction"] is None
    assert all(h.li_rank == 0 and set(h.to_json()) == {"rank", "score", "rerank_score", "match", "path"}
               for h in before)

    late = load_model(str(late_model_dir), device="cpu", precision="fp32")
    assert late.be.key == tiny_model.be.key  # the head is not part of the checkpoint's identity
    events = list(index_folders(library, late, [str(photo_folder)]))
    assert events[-1].embedded == 0  # no photo embedded again
    assert any(e.phase == "late" for e in events)
    assert library.li_key == late.li.key and library.status()["late_interaction"]["photos"] == 12
    assert library.store.model_id == late.source  # search loads the checkpoint with the head from now on
    hits = Searcher(library, late).search("a blue circle", n=5, k=0)
    assert all(h.li_score is not None for h in hits)


def test_search_from_the_terminal_reports_li_scores(late_model_dir, photo_folder, tmp_path, capsys, _isolated_home):
    from picsift.engine.cli import main

    lib = str(tmp_path / "lib")
    assert main(["index", str(photo_folder), "--library", lib, "--model", str(late_model_dir), "-q"]) == 0
    capsys.readouterr()
    assert main(["search", "a green triangle", "--library", lib, "-n", "4", "-k", "0", "--json"]) == 0
    hits = json.loads(capsys.readouterr().out)
    assert len(hits) == 4 and all(isinstance(h["li_score"], float) for h in hits)
    assert [h["li_score"] for h in hits] == sorted((h["li_score"] for h in hits), reverse=True)
    assert main(["search", "a green triangle", "--library", lib, "-n", "4", "-k", "0", "--json",
                 "--li-candidates", "0"]) == 0
    assert all("li_score" not in h for h in json.loads(capsys.readouterr().out))


# ----- training the head ------------------------------------------------------------------------------------
def _li_matrix(folder, data):
    """(captions, photos) LI scores of a checkpoint on a dataset, through the product's code path (the
    cascade's LI stage, int8 storage included)."""
    from picsift.engine.index.imaging import open_photo
    from picsift.engine.models import load_model
    from picsift.engine.models.late import decode_tokens, encode_tokens, maxsim

    model = load_model(str(folder), device="cpu", precision="fp32")
    images = [open_photo(str(p), model.image_size).image for p in data.images]
    feats = model.encode_images(images).features[model.li.key]
    shape = model.li.feature_shape
    stored = np.stack([decode_tokens(encode_tokens(f), shape) for f in feats])
    return np.stack([maxsim(model.li.text_tokens(c), stored) for c in data.captions])


def test_a_student_trained_briefly_agrees_with_its_teacher_better_than_chance(small_shapes, tmp_path):
    from transformers import BlipForImageTextRetrieval

    from picsift.engine.models.late_head import head_for, save_head
    from picsift.engine.training.datasets import read_dataset

    # the teacher: a fresh tiny model with the data's vocabulary and an inflated LI head (codes, every token)
    teacher = tmp_path / "teacher"
    train_run(data=str(small_shapes), out=str(teacher), mode="be", init="tiny", image_size=32, steps=1,
           be_loss="infonce", dev_split=None)
    model = BlipForImageTextRetrieval.from_pretrained(teacher)
    torch.manual_seed(5)
    save_head(head_for(model.config, width=32, codes=4), teacher)
    # an untrained student of the same shape: what agreement looks like without distillation
    untrained = tmp_path / "untrained"
    shutil.copytree(teacher, untrained)
    torch.manual_seed(6)
    save_head(head_for(model.config, width=32, codes=4, keep_image=2), untrained)

    student = tmp_path / "student"
    events = train_run(data=str(small_shapes), out=str(student), mode="li", shrink_from=str(teacher), keep=2,
                    steps=60, lr=3e-3, dev_split=None)
    assert events[-1].phase == "done"
    log = json.loads((student / "training.json").read_text())
    assert log["trained_parameters"] < log["parameters"] / 5  # only the head trained
    assert (student / "model.safetensors").read_bytes() == (teacher / "model.safetensors").read_bytes()

    test = read_dataset(small_shapes, split="test")
    t = _li_matrix(teacher, test)
    s = _li_matrix(student, test)
    u = _li_matrix(untrained, test)
    assert s.shape == t.shape == (len(test.captions), len(test.images))
    # agreement: of each caption's photo pairs that both order, the share they order alike (chance: 0.5)
    agree, before = pair_agreement(s, t), pair_agreement(u, t)
    assert agree > 0.6 and agree > before + 0.02, (agree, before)


def test_an_li_head_distilled_from_a_ce_orders_photos_like_the_ce(tiny_model_dir, small_shapes, tmp_path):
    """Distilling from a checkpoint with no LI head (its CE the teacher), as a user would with the default
    BLIP model: only the new head trains, and its LI order follows the CE's."""
    from transformers import BlipForImageTextRetrieval

    from picsift.engine.index.imaging import open_photo
    from picsift.engine.models import load_model
    from picsift.engine.models.late_head import head_for, save_head
    from picsift.engine.training.datasets import read_dataset

    untrained = tmp_path / "untrained"
    shutil.copytree(tiny_model_dir, untrained)
    torch.manual_seed(6)
    save_head(head_for(BlipForImageTextRetrieval.from_pretrained(untrained).config, width=32, keep_image=2),
              untrained)
    student = tmp_path / "student"
    events = train_run(data=str(small_shapes), out=str(student), mode="li", shrink_from=str(tiny_model_dir), keep=2,
                    li_width=32, steps=80, lr=3e-3, dev_split=None)
    assert events[-1].phase == "done"
    assert json.loads((student / "late_interaction.json").read_text())["image_codes"] == 0

    test = read_dataset(small_shapes, split="test")
    ce = load_model(str(tiny_model_dir), device="cpu", precision="fp32")
    feats = ce.encode_images([open_photo(str(p), ce.image_size).image for p in test.images]).features[ce.ce.key]
    teacher = np.stack([ce.ce.logits(c, feats) for c in test.captions])
    s, u = _li_matrix(student, test), _li_matrix(untrained, test)
    agree, before = pair_agreement(s, teacher), pair_agreement(u, teacher)
    assert agree > 0.6 and agree > before + 0.03, (agree, before)


def test_inflating_trains_codes_and_head_and_keeps_the_encoders(small_shapes, tmp_path):
    from safetensors.torch import load_file

    base = tmp_path / "base"
    train_run(data=str(small_shapes), out=str(base), mode="be", init="tiny", image_size=32, steps=1,
           be_loss="infonce", dev_split=None)
    out = tmp_path / "inflated"
    events = train_run(data=str(small_shapes), out=str(out), model=str(base), mode="li", codes=3, li_width=16,
                    steps=8, dev_split="dev", eval_every=4)
    dev = [e.dev for e in events if e.dev]
    assert dev and "li_ir@1" in dev[-1]
    head = load_file(str(out / "late_interaction.safetensors"))
    assert head["image_codes"].shape == (3, 64) and head["text_codes"].shape == (3, 64)
    assert (out / "model.safetensors").read_bytes() == (base / "model.safetensors").read_bytes()
    assert json.loads((out / "late_interaction.json").read_text())["keep_image"] is None


def test_li_options_are_checked():
    from picsift.engine.training.train import TrainingError, TrainOptions

    with pytest.raises(TrainingError, match="--mode li"):
        TrainOptions(data="d", out="o", mode="be", init="tiny", keep=4).check()
    with pytest.raises(TrainingError, match="--keep"):
        TrainOptions(data="d", out="o", mode="li", init="tiny", keep=0).check()
    o = TrainOptions(data="d", out="o", mode="li", shrink_from="teacher", keep=4)
    o.check()
    assert o.model == "teacher"  # the student starts from the teacher


def test_eval_adds_the_li_rows_for_a_model_with_an_li_head(late_model_dir, photo_folder, tmp_path):
    from picsift.engine.models import load_model
    from picsift.engine.models.late import bytes_per_photo
    from picsift.engine.training.evaluate import EvalOptions, Evaluation
    from picsift.engine.training.recall import recalls

    rows = [["image", "caption"]]
    for i, p in enumerate(sorted(photo_folder.rglob("*.*"))):
        rows += [[str(p), f"photo number {i} in colour"], [str(p), f"a picture {i}"]]
    data = tmp_path / "captions.csv"
    data.write_text("\n".join(",".join(r) for r in rows))
    model = load_model(str(late_model_dir), device="cpu", precision="fp32")
    ev = Evaluation(EvalOptions(data=str(data), model=str(late_model_dir), ks=[3, 12], li_n=5, latency_queries=2),
                    model=model)
    list(ev.run())
    result, g = ev.result, ev.gallery
    modes = [(r["mode"], r["k"]) for r in result["rows"]]
    assert modes == [("be", None), ("li", None), ("be-li", None), ("ce", None), ("coop", 3), ("coop", 3),
                     ("coop", 12), ("coop", 12), ("be-li-ce", 3), ("be-li-ce", 12)]
    row = {(r["mode"], r["k"], r["scoring"]): r for r in result["rows"]}
    assert result["li"] == {"tokens": 3, "width": 16, "n": 5}
    # the LI row ranks by MaxSim over every photo
    assert row[("li", None, None)]["ir@1"] == pytest.approx(recalls(g.li, g.caption_image)["ir@1"], abs=1e-4)
    # BE then LI: LI reorders the BE's top 5 only, so a caption's photo outside them ranks as the BE left it
    be_li = row[("be-li", None, None)]
    assert be_li["n"] == 5 and be_li["ir@10"] == pytest.approx(row[("be", None, None)]["ir@10"], abs=1e-4)
    # the CE reranking 12 of the LI order's top 5 (then the rest) is the CE over the top 5
    assert row[("be-li-ce", 12, "ce")]["ir@1"] == pytest.approx(row[("be-li-ce", 3, "ce")]["ir@1"], abs=0.5)
    li_bytes = bytes_per_photo((3, 16))
    assert row[("li", None, None)]["bytes_per_photo"] == li_bytes
    assert row[("be-li", None, None)]["bytes_per_photo"] == li_bytes + 4 * model.dim
    assert row[("be-li-ce", 3, "ce")]["bytes_per_photo"] == li_bytes + row[("coop", 3, "ce")]["bytes_per_photo"]


def test_pooling_the_patch_grid_2x2_keeps_cls_and_averages_each_block():
    from picsift.engine.models.blip_ce import pool_grid

    t = np.arange(2 * 17 * 3, dtype=np.float32).reshape(2, 17, 3)  # CLS and a 4x4 grid
    p = pool_grid(t, 2)
    assert p.shape == (2, 5, 3)
    assert np.array_equal(p[:, 0], t[:, 0])
    grid = t[:, 1:].reshape(2, 4, 4, 3)
    assert np.allclose(p[:, 1], grid[:, :2, :2].mean(axis=(1, 2)))
    assert np.allclose(p[:, 4], grid[:, 2:, 2:].mean(axis=(1, 2)))
    with pytest.raises(ValueError):
        pool_grid(t[:, :16], 2)


def test_make_random_model_can_add_a_random_li_head(tmp_path, capsys, _isolated_home):
    from picsift.engine.cli import main
    from picsift.engine.models import load_model

    assert main(["make-random-model", str(tmp_path / "m"), "--li-keep", "4", "-q"]) == 0
    model = load_model(str(tmp_path / "m"), device="cpu", precision="fp32")
    assert model.li is not None and model.li.feature_shape == (4, 128)
    assert model.li.config.image_codes == 0  # reads the vision pass the BE and CE use
