"""A shrunk CE: the cross-encoder reading the patch grid pooled FxF (577 -> 145 image tokens for BLIP base
at F = 2), trained by distillation from the full CE ("Inflate and Shrink").

Only the text encoder's cross-attention layers and the matching head train; every weight the BE uses
(vision encoder, the text encoder's self-attention and feed-forward layers, the projections) stays as it
was. So a shrunk CE lies beside a checkpoint's weights as an overlay (shrunk_ce.json and
shrunk_ce.safetensors) that loading applies, kept out of the checkpoint's identity like an LI head: adding
one keeps a library's BE vectors and LI tokens, and only the rerank cache is filled again under the shrunk
CE's key, which names its layout (`ce-pool2-<digest>`), at a quarter of the size.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

SHRUNK_CONFIG = "shrunk_ce.json"
SHRUNK_WEIGHTS = "shrunk_ce.safetensors"
SHRUNK_FILES = (SHRUNK_CONFIG, SHRUNK_WEIGHTS)


@dataclass
class ShrunkConfig:
    pool: int = 2  # the patch grid is average-pooled pool x pool (the CLS token kept)
    teacher: str | None = None  # what it was distilled from (shown, not used)


def trains(name: str) -> bool:
    """Whether a BlipForImageTextRetrieval parameter belongs to the CE alone (what a shrunk CE retrains)."""
    return ".crossattention." in name or name.startswith("itm_head.")


def has_shrunk(folder: str | Path) -> bool:
    folder = Path(folder)
    return (folder / SHRUNK_CONFIG).is_file() and (folder / SHRUNK_WEIGHTS).is_file()


def read_config(folder: str | Path) -> ShrunkConfig:
    data = json.loads((Path(folder) / SHRUNK_CONFIG).read_text())
    return ShrunkConfig(**{k: v for k, v in data.items() if k in ShrunkConfig.__dataclass_fields__})


def digest(folder: str | Path) -> str:
    """The overlay's own identity: its config and weights (the weights' hash remembered per file, as a
    checkpoint's is: BLIP base's overlay is about 110 MB)."""
    from .identity import file_digest

    folder = Path(folder)
    h = hashlib.blake2b(digest_size=8)
    h.update(json.dumps(json.loads((folder / SHRUNK_CONFIG).read_text()), sort_keys=True).encode())
    h.update(file_digest(folder / SHRUNK_WEIGHTS).encode())
    return h.hexdigest()


def pooled_tokens(tokens: int, pool: int) -> int:
    """Image tokens after pooling a CLS + g*g grid pool x pool."""
    g = int(round((tokens - 1) ** 0.5))
    if g * g != tokens - 1 or g % pool:
        raise ValueError(f"{tokens - 1} patch tokens do not form a grid divisible by {pool}")
    return 1 + (g // pool) ** 2


def layout(tokens: int, pool: int = 1) -> str:
    """The token layout a CE reads, in words (what a library's rerank cache holds)."""
    if pool <= 1:
        return f"{tokens} image tokens a photo (the full grid)"
    return f"{pooled_tokens(tokens, pool)} image tokens a photo (the patch grid pooled {pool}x{pool})"


def save(model, folder: str | Path, cfg: ShrunkConfig) -> None:
    """Write a model's CE-only weights (cross-attention and matching head) as the overlay."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().float().cpu().contiguous() for k, v in model.state_dict().items() if trains(k)}
    tmp = folder / (SHRUNK_WEIGHTS + ".tmp")
    save_file(tensors, str(tmp))
    tmp.replace(folder / SHRUNK_WEIGHTS)
    (folder / SHRUNK_CONFIG).write_text(json.dumps(asdict(cfg), indent=1))


def apply(model, folder: str | Path) -> ShrunkConfig:
    """Load a folder's overlay into a BlipForImageTextRetrieval; refuses weights outside the CE."""
    from safetensors.torch import load_file

    folder = Path(folder)
    cfg = read_config(folder)
    if cfg.pool < 1:
        raise ValueError(f"pool {cfg.pool} in {SHRUNK_CONFIG}")
    tensors = load_file(str(folder / SHRUNK_WEIGHTS))
    own = model.state_dict()
    wrong = [k for k in tensors if not trains(k) or k not in own or own[k].shape != tensors[k].shape]
    if wrong or not tensors:
        raise ValueError(f"{SHRUNK_WEIGHTS} does not fit this checkpoint's CE ({', '.join(wrong[:3]) or 'empty'})")
    model.load_state_dict(tensors, strict=False)
    return cfg
