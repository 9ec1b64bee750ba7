"""Random-weight BLIP retrieval checkpoints of the real class, for offline trials, tests and benchmarks.

A folder written here holds the same files `save_pretrained` writes for a real
checkpoint (config, weights, processor), so it loads through exactly the code
path of `Salesforce/blip-itm-base-coco`. Its scores mean nothing; its cost and
its plumbing are those of the real model.
"""

from __future__ import annotations

from pathlib import Path

WORDS = """
a an the and or with without on in at of to from by for near under over above below behind beside between
into onto through across along around down up out off while is are was be being two three four five
several many some one group pair couple crowd lot few
man men woman women boy boys girl girls child children kid kids baby people person player players family
friends team couple rider riders surfer skier biker climber dancer worker chef student teacher tourist
dog dogs puppy cat cats kitten horse horses bird birds duck ducks cow cows sheep goat pig chicken fish
elephant giraffe zebra bear lion tiger monkey deer rabbit squirrel
red blue green yellow orange purple pink black white brown gray grey gold silver dark light bright colorful
big small large little tall short young old long wet dry snowy sandy grassy rocky muddy wooden
runs running run jumps jumping jump walks walking walk sits sitting sit stands standing stand plays playing
play rides riding ride swims swimming swim climbs climbing climb throws throwing catches catching holds
holding looks looking eats eating drinks drinking smiles smiling lies lying sleeps sleeping reads reading
waits waiting carries carrying pulls pulling kicks kicking hits hitting skates skating surfs surfing skis
skiing dances dancing sings singing cooks cooking talks talking watches watching fly flying flies
beach sand sea ocean wave waves water lake river pool fountain snow ice mountain mountains hill hills
field grass park garden forest tree trees flowers flower rock rocks desert sky sun sunset cloud clouds rain
street road sidewalk city town building buildings house home room kitchen table chair bed couch sofa window
door wall floor stairs bridge car cars bus truck train bike bicycle motorcycle boat plane airplane
ball frisbee stick toy toys kite skateboard surfboard board bat racket rope net goal hat shirt jacket
dress helmet glasses bag umbrella camera phone book cup glass plate bowl food pizza cake bread fruit
apple banana coffee tea wine beer sandwich
football soccer basketball baseball tennis game race match track court stage crowd concert market shop
store restaurant cafe office school classroom church tower sign night day morning evening winter summer
""".split()

SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
PUNCT = list(".,!?'\"-:;()&/")

PRESETS = {
    # Small enough for a test suite: 32 px photos, two layers a side.
    "tiny": dict(image_size=32, patch_size=8, vision_hidden=32, text_hidden=32, layers=2, heads=2, dim=16, vocab=None,
                 initializer_range=0.3, outliers=0),
    # The architecture of Salesforce/blip-itm-base-coco: ViT-B/16 at 384 px, BERT-base text encoder.
    "base": dict(image_size=384, patch_size=16, vision_hidden=768, text_hidden=768, layers=12, heads=12, dim=256,
                 vocab=30524, initializer_range=0.3, outliers=0),
    # Base width (768 channels, 12 heads, 256-d vectors) with two layers a side and 128 px photos (65 tokens):
    # fast enough for a test, wide enough to try the rerank cache's quantisation at the real token width.
    # Weights 0.05 give a linear layer about the gain the tiny preset's 0.3 gives at 32 channels
    # (0.05 * sqrt(768) ~ 1.4, 0.3 * sqrt(32) ~ 1.7): scores spread widely without every attention
    # collapsing onto one token. The vision tokens carry a few huge channels, as a trained ViT's do.
    "base-width": dict(image_size=128, patch_size=16, vision_hidden=768, text_hidden=768, layers=2, heads=12, dim=256,
                       vocab=None, initializer_range=0.05, outliers=4),
}

BIAS_STD = 0.1  # random biases and LayerNorm shifts: zeros would hide a dropped bias term from every test
NORM_GAIN_STD = 0.1  # LayerNorm gains 1 + N(0, 0.1): ones would hide a dropped or misplaced LayerNorm
OUTLIER_SCALE = 50.0  # how much larger the outlier channels of the vision tokens are than the others


def build_vocab(size: int | None) -> dict[str, int]:
    tokens = SPECIAL + PUNCT + list(dict.fromkeys(w.lower() for w in WORDS))
    if size is not None:
        tokens += [f"[unused{i}]" for i in range(size - 2 - len(tokens))]
    tokens += ["[DEC]", "[ENC]"]  # BLIP's decoder-start and encoder tokens sit at the end, as in the real vocab
    return {t: i for i, t in enumerate(tokens)}


def build_random_blip(folder: str | Path, preset: str = "tiny", seed: int = 0, initializer_range: float | None = None,
                      outliers: int | None = None) -> Path:
    """Write a random-weight BlipForImageTextRetrieval checkpoint with its processor into folder.

    Weights are drawn with initializer_range (the preset's by default); biases and LayerNorm
    parameters are random too. outliers (the preset's by default) vision-token channels are made
    OUTLIER_SCALE times larger than the rest, see `inject_outlier_channels`.
    """
    import torch
    from transformers import (
        BertTokenizerFast,
        BlipConfig,
        BlipForImageTextRetrieval,
        BlipImageProcessorPil,
        BlipProcessor,
    )

    if preset not in PRESETS:
        raise ValueError(f"unknown preset '{preset}'; choose one of {', '.join(PRESETS)}")
    p = PRESETS[preset]
    if initializer_range is None:
        initializer_range = p["initializer_range"]
    if outliers is None:
        outliers = p["outliers"]
    vocab = build_vocab(p["vocab"])
    tokenizer = BertTokenizerFast(
        vocab=vocab, do_lower_case=True, bos_token="[DEC]", additional_special_tokens=["[ENC]"],
        model_max_length=512,
    )
    image_processor = BlipImageProcessorPil(size={"height": p["image_size"], "width": p["image_size"]})
    processor = BlipProcessor(image_processor=image_processor, tokenizer=tokenizer)
    config = BlipConfig(
        vision_config=dict(
            hidden_size=p["vision_hidden"], intermediate_size=4 * p["vision_hidden"],
            num_hidden_layers=p["layers"], num_attention_heads=p["heads"],
            image_size=p["image_size"], patch_size=p["patch_size"], initializer_range=initializer_range,
        ),
        text_config=dict(
            vocab_size=len(vocab), hidden_size=p["text_hidden"], intermediate_size=4 * p["text_hidden"],
            num_hidden_layers=p["layers"], num_attention_heads=p["heads"], encoder_hidden_size=p["vision_hidden"],
            max_position_embeddings=512, bos_token_id=vocab["[DEC]"], pad_token_id=vocab["[PAD]"],
            sep_token_id=vocab["[SEP]"], initializer_range=initializer_range,
        ),
        image_text_hidden_size=p["dim"],
        initializer_range=initializer_range,
    )
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    torch.manual_seed(seed)
    model = BlipForImageTextRetrieval(config).eval()
    randomise_biases_and_norms(model, seed)
    if outliers:
        inject_outlier_channels(model, outliers, seed)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def randomise_biases_and_norms(model, seed: int = 0) -> None:
    """Give every Linear/Conv bias and every LayerNorm gain and shift a seeded random value.

    Hugging Face initialises biases to zero and LayerNorms to the identity; a trained model has
    neither, and with them a computation that forgets a bias or a LayerNorm gives the same numbers
    as the reference, so equivalence tests could not see the mistake.
    """
    import torch

    gen = torch.Generator().manual_seed(10_007 + seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.LayerNorm):
                if module.weight is not None:
                    module.weight.copy_(1.0 + NORM_GAIN_STD * torch.randn(module.weight.shape, generator=gen))
                if module.bias is not None:
                    module.bias.copy_(BIAS_STD * torch.randn(module.bias.shape, generator=gen))
            elif isinstance(module, (torch.nn.Linear, torch.nn.Conv2d)) and module.bias is not None:
                module.bias.copy_(BIAS_STD * torch.randn(module.bias.shape, generator=gen))


def inject_outlier_channels(model, count: int, seed: int = 0, scale: float = OUTLIER_SCALE) -> list[int]:
    """Make `count` channels of the vision tokens `scale` times larger; returns the channels.

    Trained vision transformers carry a few channels of huge magnitude in every token, and the
    layers that read those tokens have learned to weigh them lightly. Here the vision encoder's
    final LayerNorm scales the channels up, and every reader of the tokens (the BE projection of
    [CLS], the CE's cross-attention keys and values) scales them down by as much, so the model
    still reads all channels alike while its tokens, and anything that stores them, see the outliers.
    """
    import torch

    gen = torch.Generator().manual_seed(20_011 + seed)
    width = model.vision_model.post_layernorm.weight.shape[0]
    channels = sorted(torch.randperm(width, generator=gen)[:count].tolist())
    with torch.no_grad():
        norm = model.vision_model.post_layernorm
        norm.weight[channels] *= scale
        norm.bias[channels] *= scale
        readers = [model.vision_proj] + [
            m for layer in model.text_encoder.encoder.layer
            for m in (layer.crossattention.self.key, layer.crossattention.self.value)
        ]
        for linear in readers:
            linear.weight[:, channels] /= scale
    return channels
