"""A fresh small BLIP retrieval model for from-scratch training (`picsift train --init small|tiny`).

The model is of the real class (BlipForImageTextRetrieval) with its processor, so a checkpoint trained
from it loads, indexes and searches like any other. Its tokenizer's vocabulary is the training data's
own words (plus BERT's special tokens and punctuation), so a small dataset needs no downloaded vocab.
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path
from typing import Iterable

# Width, depth and input size of the fresh models: both train on a 2-core CPU in minutes.
INIT_PRESETS = {
    "tiny": dict(image_size=64, patch_size=8, vision_hidden=64, text_hidden=64, layers=2, heads=2, dim=64),
    "small": dict(image_size=64, patch_size=8, vision_hidden=128, text_hidden=128, layers=4, heads=4, dim=128),
}

INIT_STD = 0.02  # BERT's and ViT's initialisation

WORD = re.compile(r"[a-z0-9]+|[^\sa-z0-9]", re.IGNORECASE)


def vocabulary(captions: Iterable[str], min_count: int = 1, limit: int = 20_000) -> dict[str, int]:
    """BERT-style vocab: special tokens, punctuation, then the captions' lower-cased words by frequency."""
    from ..models.random_blip import PUNCT, SPECIAL

    counts = Counter(w.lower() for c in captions for w in WORD.findall(c))
    words = [w for w, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])) if n >= min_count]
    tokens = list(dict.fromkeys(SPECIAL + PUNCT + words[:limit])) + ["[DEC]", "[ENC]"]
    return {t: i for i, t in enumerate(tokens)}


def fresh_model(preset: str, captions: Iterable[str], seed: int = 0, image_size: int | None = None):
    """(model, processor): a freshly initialised BlipForImageTextRetrieval of the preset's size."""
    import torch
    from transformers import (
        BertTokenizerFast,
        BlipConfig,
        BlipForImageTextRetrieval,
        BlipImageProcessorPil,
        BlipProcessor,
    )

    if preset not in INIT_PRESETS:
        raise ValueError(f"unknown --init '{preset}'; choose one of {', '.join(INIT_PRESETS)}")
    p = dict(INIT_PRESETS[preset])
    if image_size:
        p["image_size"] = image_size
    vocab = vocabulary(captions)
    tokenizer = BertTokenizerFast(vocab=vocab, do_lower_case=True, bos_token="[DEC]",
                                  additional_special_tokens=["[ENC]"], model_max_length=512)
    image_processor = BlipImageProcessorPil(size={"height": p["image_size"], "width": p["image_size"]})
    processor = BlipProcessor(image_processor=image_processor, tokenizer=tokenizer)
    config = BlipConfig(
        vision_config=dict(hidden_size=p["vision_hidden"], intermediate_size=4 * p["vision_hidden"],
                           num_hidden_layers=p["layers"], num_attention_heads=p["heads"],
                           image_size=p["image_size"], patch_size=p["patch_size"],
                           # BlipVisionConfig's default is 1e-10: a fresh vision encoder would be all zeros
                           initializer_range=INIT_STD),
        text_config=dict(vocab_size=len(vocab), hidden_size=p["text_hidden"], intermediate_size=4 * p["text_hidden"],
                         num_hidden_layers=p["layers"], num_attention_heads=p["heads"],
                         encoder_hidden_size=p["vision_hidden"], max_position_embeddings=128,
                         bos_token_id=vocab["[DEC]"], pad_token_id=vocab["[PAD]"], sep_token_id=vocab["[SEP]"],
                         initializer_range=INIT_STD),
        image_text_hidden_size=p["dim"], initializer_range=INIT_STD,
    )
    torch.manual_seed(seed)
    model = BlipForImageTextRetrieval(config)
    return model, processor


def load_trainable(source: str):
    """(model, processor) of an existing BLIP retrieval checkpoint (hub id or folder), for fine-tuning."""
    from transformers import AutoProcessor, BlipForImageTextRetrieval
    from transformers.utils import logging as hf_logging

    from ..errors import ModelNotFoundError
    from ..models.registry import model_type_of, resolve_folder, source_name

    folder = resolve_folder(source)
    if model_type_of(folder) != "blip":
        raise ModelNotFoundError(source_name(source), "training needs a BLIP retrieval checkpoint", local=True)
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    try:
        processor = AutoProcessor.from_pretrained(folder, local_files_only=True)
        model = BlipForImageTextRetrieval.from_pretrained(folder, local_files_only=True)
    except Exception as exc:  # transformers raises many kinds alike
        raise ModelNotFoundError(source_name(source), str(exc), local=True) from exc
    return model, processor


def save_checkpoint(model, processor, folder: str | Path) -> Path:
    """Write a normal checkpoint (what `picsift index --model FOLDER` loads), replacing the previous one
    only once the new one is complete."""
    import os
    import shutil
    import tempfile

    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".ckpt-", dir=folder))
    try:
        model.save_pretrained(tmp)
        processor.save_pretrained(tmp)
        for f in tmp.iterdir():
            os.replace(f, folder / f.name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder
