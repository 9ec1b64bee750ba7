"""Which module loads a checkpoint, found by the checkpoint's own config (`model_type`).

A family module registers a loader that returns the stages its checkpoints
supply (a bi-encoder, rerankers, or both); `load_cascade` puts a bi-encoder and
rerankers together, from one checkpoint or two (a BE and a separately trained
CE, the method's Sep+Coop). A second family is one new module and one line in
FAMILY_MODULES.
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from ..errors import ModelNotFoundError

log = logging.getLogger("picsift.models")

DEFAULT_MODEL = "Salesforce/blip-itm-base-coco"

# model_type in a checkpoint's config.json -> the module that registers its loader (imported on demand)
FAMILY_MODULES = {"blip": "picsift.engine.models.blip", "clip": "picsift.engine.models.clip"}

_LOADERS: dict[str, Callable] = {}
# One load at a time in a process: transformers' lazy imports are not thread-safe (two windows' loads, or a
# preference change during a load, failed with "cannot import name 'AutoProcessor'"), and two loads at once
# would only compete for the same memory and cores.
_LOAD_LOCK = threading.Lock()


@dataclass
class LoadOptions:
    device: str
    device_reason: str
    precision: str
    notices: list[str] = field(default_factory=list)


@dataclass
class FamilyStages:
    be: object | None  # a BiEncoder, or None when the family has no first stage
    rerankers: list
    backbone: object  # the VisionBackbone that feeds them
    describe: Callable[[], str]
    late: object | None = None  # a LateInteraction stage (an LI head), fed by the same backbone


def register(model_type: str):
    def wrap(loader):
        _LOADERS[model_type] = loader
        return loader

    return wrap


def model_type_of(folder: str) -> str:
    try:
        cfg = json.loads((Path(folder) / "config.json").read_text())
    except (OSError, ValueError) as exc:
        raise ModelNotFoundError(folder, f"config.json unreadable: {exc}", local=True) from exc
    return str(cfg.get("model_type") or "")


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the model hub answers at all; offline, loading fails at once instead of retrying for minutes."""
    import socket
    from urllib.parse import urlparse

    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
        return False
    try:
        from huggingface_hub import constants

        host = urlparse(constants.ENDPOINT).hostname or "huggingface.co"
    except Exception:
        host = "huggingface.co"
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return True
    except OSError:
        return False


def source_name(model_id: str) -> str:
    """How a checkpoint is named for loading it again: a folder as an absolute path, a hub id as given."""
    p = Path(model_id).expanduser()
    return str(p.resolve()) if p.exists() else model_id


def resolve_folder(model_id: str, on_download=None) -> str:
    """The local folder of a checkpoint: a folder as it is, a hub id from the cache, downloaded on first use."""
    name = source_name(model_id)
    if Path(name).exists():
        if not (Path(name) / "config.json").is_file():
            raise ModelNotFoundError(name, "no config.json", local=True)
        return name
    from huggingface_hub import snapshot_download

    try:
        return snapshot_download(name, local_files_only=True)
    except Exception as local_exc:  # not in the cache (or not a valid id)
        if not hub_reachable():
            raise ModelNotFoundError(name, str(local_exc)) from local_exc
    from .download import download

    try:
        return download(name, on_download)
    except Exception as exc:  # hub errors of every kind mean: could not be fetched
        raise ModelNotFoundError(name, str(exc)) from exc


def cached_folder(model_id: str) -> str | None:
    """The local folder of a checkpoint loadable without the network (a folder, or in the hub cache), else None."""
    name = source_name(model_id)
    if Path(name).exists():
        return name if (Path(name) / "config.json").is_file() else None
    try:
        from huggingface_hub import snapshot_download

        return snapshot_download(name, local_files_only=True)
    except Exception:  # any failure means: not loadable offline
        return None


def is_cached(model_id: str) -> bool:
    """Whether a checkpoint can be loaded without the network (a folder, or in the hub cache)."""
    return cached_folder(model_id) is not None


def load_stages(model_id: str, options: LoadOptions, on_download=None, text_only: bool = False) -> FamilyStages:
    from .identity import content_identity

    folder = resolve_folder(model_id, on_download)
    mtype = model_type_of(folder)
    module = FAMILY_MODULES.get(mtype)
    if module is None:
        known = ", ".join(sorted(FAMILY_MODULES))
        raise ModelNotFoundError(source_name(model_id), f"model type '{mtype}' is not supported (known: {known})",
                                 local=True)
    importlib.import_module(module)
    loader = _LOADERS[mtype]
    extra = {"text_only": True} if text_only else {}
    return loader(folder, content_identity(folder), source_name(model_id), options, **extra)


def load_cascade(model_id: str = DEFAULT_MODEL, ce_model: str | None = None, device: str | None = "auto",
                 precision: str | None = "auto", on_download=None, text_only: bool = False, light: bool = False):
    """The retrieval cascade of a checkpoint (or of a BE checkpoint and a separate CE one); raises
    ModelNotFoundError. text_only: only what embeds a text query (a search that does not rerank); the
    cascade then has no reranker and embeds no photos. light: a text query's rerank from the rerank cache,
    in NumPy (light_rerank_loads tells whether the checkpoints allow it); the vision encoder loads only when
    a photo must be encoded."""
    if light:
        return _load_light(model_id, ce_model, device, precision)
    if text_only and text_side_loads_alone(model_id):
        # Imports neither torch nor transformers, so it needs no lock: it can run while another thread loads
        # the whole model (`picsift search -k K` embeds its query while the CE loads).
        return _load_text_side(model_id, precision)
    with _LOAD_LOCK:
        return _load_cascade(model_id, ce_model, device, precision, on_download, text_only)


def text_side_loads_alone(model_id: str) -> bool:
    """Whether a text-only load of this checkpoint reads only the BE's text side, in NumPy on the CPU (a
    cached BLIP checkpoint with model.safetensors and tokenizer.json): no torch, no transformers. A query
    vector computed on the CPU is the one a GPU would give, so this holds whatever device was asked for."""
    folder = cached_folder(model_id)
    if folder is None:
        return False
    try:
        if model_type_of(folder) != "blip":
            return False
        from . import blip_text

        return blip_text.can_load(folder)
    except (ModelNotFoundError, OSError, ValueError):
        return False


def light_rerank_loads(model_id: str, ce_model: str | None = None) -> bool:
    """Whether a text query's rerank can load in NumPy (`load_cascade(light=True)`): both checkpoints' text
    sides load alone and the CE is a full one (a shrunk CE pools the tokens and loads with torch)."""
    from . import shrunk_ce

    if not text_side_loads_alone(model_id) or (ce_model is not None and not text_side_loads_alone(ce_model)):
        return False
    try:
        return not shrunk_ce.has_shrunk(cached_folder(ce_model or model_id))
    except OSError:
        return False


def _load_light(model_id: str, ce_model: str | None, device: str | None, precision: str | None):
    from . import blip_text
    from .cascade import Cascade
    from .identity import content_identity

    folder, name = resolve_folder(model_id), source_name(model_id)
    ce_folder = resolve_folder(ce_model) if ce_model else folder
    ce_name = source_name(ce_model) if ce_model else name
    same = Path(ce_folder) == Path(folder)
    identity = content_identity(folder)
    ce_identity = identity if same else content_identity(ce_folder)
    try:
        be = blip_text.LightTextEncoder(folder, f"blip:{identity}/be", name, with_ce=same)
        ce_text = be if same else blip_text.LightTextEncoder(ce_folder, f"blip:{ce_identity}/be", ce_name,
                                                             with_ce=True)
        ce = blip_text.LightCrossEncoder(ce_text, f"blip:{ce_identity}/ce", blip_text.token_shape(ce_folder))
    except (KeyError, ValueError, OSError) as exc:  # a checkpoint laid out otherwise
        raise ModelNotFoundError(ce_name, str(exc), local=True) from exc

    def load_vision():
        """The CE checkpoint's vision pass, loaded whole; its CE must be the one the NumPy side reads."""
        from .device import pick_device, resolve_precision

        with _LOAD_LOCK:
            dev, reason = pick_device(device)
            stages = load_stages(ce_model or model_id, LoadOptions(dev, reason, resolve_precision(precision, dev)))
        if not stages.rerankers or stages.rerankers[0].key != ce.key:
            raise ModelNotFoundError(ce_name, "its cross-encoder does not match the one its text side was read "
                                     "from", local=True)
        return stages.backbone

    vision = blip_text.LazyVision(load_vision, int(json.loads((Path(ce_folder) / "config.json").read_text())
                                                   .get("vision_config", {}).get("image_size", 384)))
    be_vision = vision if same else blip_text.NoVision(vision.image_size)
    threads = os.cpu_count() or 1
    described = (f"CPU, {threads} cores (text side and CE in NumPy on cached photos; fp32; the vision encoder "
                 "loads for a photo not in the rerank cache)")
    return Cascade(be, be_vision, [(ce, vision)], source=name, ce_source=ce_name if ce_model else None,
                   device="cpu", device_reason="text side and CE only", precision="fp32",
                   exact=(precision or "auto").lower() == "fp32", describe=lambda: described)


def _load_text_side(model_id: str, precision: str | None):
    from . import blip_text
    from .cascade import Cascade
    from .identity import content_identity

    folder = resolve_folder(model_id)
    name = source_name(model_id)
    try:
        be, vision, described = blip_text.load_text_side(folder, content_identity(folder), name)
    except (KeyError, ValueError, OSError) as exc:  # a checkpoint laid out otherwise
        raise ModelNotFoundError(name, str(exc), local=True) from exc
    return Cascade(be, vision, [], source=name, device="cpu", device_reason="text side only", precision="fp32",
                   exact=(precision or "auto").lower() == "fp32", describe=lambda: described)


def _load_cascade(model_id, ce_model, device, precision, on_download, text_only):
    from .cascade import Cascade
    from .device import pick_device, resolve_precision

    dev, reason = pick_device(device)
    prec = resolve_precision(precision, dev)
    options = LoadOptions(dev, reason, prec)
    main = load_stages(model_id, options, on_download, text_only=text_only)
    if main.be is None:
        raise ModelNotFoundError(source_name(model_id), "this checkpoint has no bi-encoder (first stage)", local=True)
    rerankers = [(r, main.backbone) for r in main.rerankers]
    if ce_model is not None and not text_only:
        other = load_stages(ce_model, options, on_download)
        if not other.rerankers:
            raise ModelNotFoundError(source_name(ce_model), "this checkpoint has no cross-encoder", local=True)
        rerankers = [(r, other.backbone) for r in other.rerankers]
    cascade = Cascade(main.be, main.backbone, rerankers, late=None if text_only else main.late,
                      source=source_name(model_id),
                      ce_source=source_name(ce_model) if ce_model else None, device=dev, device_reason=reason,
                      precision=prec, exact=(precision or "auto").lower() == "fp32", describe=main.describe)
    cascade.notices = options.notices  # fallbacks of any stage reach the same list
    return cascade
