"""A second checkpoint family is one module: a CLIP bi-encoder, alone and with a BLIP cross-encoder (Sep+Coop)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from picsift.engine.errors import ModelNotFoundError
from picsift.engine.index.indexer import index_folders
from picsift.engine.models import load_model
from picsift.engine.search.searcher import Searcher


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    """A random-weight CLIPModel of the real class, saved with a tokenizer and image processor."""
    from transformers import BertTokenizerFast, CLIPConfig, CLIPImageProcessor, CLIPModel

    from picsift.engine.models.random_blip import build_vocab, randomise_biases_and_norms

    folder = tmp_path_factory.mktemp("clip-tiny")
    vocab = build_vocab(None)
    tokenizer = BertTokenizerFast(vocab=vocab, do_lower_case=True, model_max_length=64)
    config = CLIPConfig(
        text_config=dict(vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, max_position_embeddings=64, pad_token_id=vocab["[PAD]"],
                         bos_token_id=vocab["[CLS]"], eos_token_id=vocab["[SEP]"], initializer_range=0.3),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                           image_size=32, patch_size=8, initializer_range=0.3),
        projection_dim=16, initializer_range=0.3)
    torch.manual_seed(0)
    model = CLIPModel(config).eval()
    randomise_biases_and_norms(model, seed=0)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(folder)
    return folder


def test_a_clip_checkpoint_is_a_bi_encoder_equal_to_its_reference(clip_dir, photo_folder, library):
    from transformers import CLIPModel, CLIPProcessor  # noqa: F401 (the reference)

    model = load_model(str(clip_dir), device="cpu", precision="fp32")
    assert model.be.key.startswith("clip:") and model.ce is None
    ref = CLIPModel.from_pretrained(str(clip_dir)).eval()
    texts = ["a dog runs on the beach", "two children in the park"]
    tok = model.be.tokenizer(texts, padding=True, return_tensors="pt")
    image = Image.open(sorted(photo_folder.rglob("*.png"))[0]).convert("RGB")
    with torch.no_grad():
        t = ref.get_text_features(**tok).pooler_output
        i = ref.get_image_features(pixel_values=model.preprocess([image])).pooler_output
    np.testing.assert_allclose(model.embed_texts(texts), torch.nn.functional.normalize(t, dim=-1).numpy(), atol=1e-5)
    np.testing.assert_allclose(model.encode_images([image]).vectors, torch.nn.functional.normalize(i, dim=-1).numpy(),
                               atol=1e-5)
    for _ in index_folders(library, model, [str(photo_folder)]):
        pass
    hits = Searcher(library, model).search("a dog", n=12, k=5)
    assert len(hits) == 12 and all(h.rerank_score is None for h in hits)  # no reranker: BE order only


def test_a_clip_bi_encoder_with_a_blip_cross_encoder(clip_dir, tiny_model_dir, tiny_model, photo_folder, library):
    """Sep+Coop across families: CLIP's vectors in FAISS, BLIP's CE over the top k, each from its own pass."""
    model = load_model(str(clip_dir), device="cpu", precision="fp32", ce_model=str(tiny_model_dir))
    assert model.be.key.startswith("clip:") and model.ce.key == tiny_model.ce.key
    for _ in index_folders(library, model, [str(photo_folder)]):
        pass
    assert library.tokens.count(model.ce.key) == 12  # the CE's features, from BLIP's own vision pass
    hits = Searcher(library, model).search("a dog runs on the beach", n=12, k=6)
    top = hits[:6]
    assert all(h.rerank_score is not None for h in top)
    png = [h for h in top if h.path.endswith(".png")]
    images = [Image.open(h.path).convert("RGB") for h in png]
    tokens = tiny_model.encode_images(images).features[tiny_model.ce.key]
    direct = tiny_model.match_probs("a dog runs on the beach", tokens)
    np.testing.assert_allclose([h.rerank_score for h in png], direct, atol=1e-4)
    vecs = model.embed_texts(["a dog runs on the beach"]) @ library.store.vectors(model.be.key)[1].T
    assert sorted(h.score for h in hits) == pytest.approx(sorted(vecs[0].tolist()), abs=1e-5)  # CLIP's cosines


def test_an_unknown_family_is_one_clear_error(tmp_path):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(ModelNotFoundError, match="llama.*not supported.*blip, clip"):
        load_model(str(tmp_path / "m"), device="cpu")
