"""Device choice (cuda, then mps, then cpu) and precision."""

from __future__ import annotations

import torch

PRECISIONS = ("auto", "fp32", "fp16", "bf16")
DEVICES = ("auto", "cuda", "mps", "cpu")


def pick_device(preference: str | None = "auto") -> tuple[str, str]:
    """Return (device, reason)."""
    pref = (preference or "auto").lower()
    if pref not in DEVICES and not pref.startswith("cuda:"):
        raise ValueError(f"unknown device '{preference}'; choose one of {', '.join(DEVICES)}")
    cuda = torch.cuda.is_available()
    mps = getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()
    if pref.startswith("cuda"):
        if not cuda:
            return "cpu", "CUDA was asked for but no CUDA device is available"
        return pref, torch.cuda.get_device_name(torch.device(pref))
    if pref == "mps":
        return ("mps", "Apple GPU") if mps else ("cpu", "MPS was asked for but is not available")
    if pref == "cpu":
        return "cpu", "asked for"
    if cuda:
        return "cuda", torch.cuda.get_device_name(0)
    if mps:
        return "mps", "Apple GPU"
    return "cpu", "no CUDA or MPS device found"


def resolve_precision(precision: str | None, device: str) -> str:
    p = (precision or "auto").lower()
    if p not in PRECISIONS:
        raise ValueError(f"unknown precision '{precision}'; choose one of {', '.join(PRECISIONS)}")
    if p == "auto":
        # On a CPU with native bf16 (AVX-512 BF16 or AMX) the vision encoder and the CE run under bf16
        # autocast: measured 951 -> 487 ms a photo and 737 -> 455 ms for a k=20 rerank on 2 cores, CE
        # probabilities within 0.0085 of fp32 with the same top 5 (docs/PERFORMANCE.md). Without those
        # instructions bf16 is emulated and slower: fp32. Dynamic int8 quantisation of the linear layers
        # was 1.7x faster for the vision encoder but moved CE probabilities by up to 0.09: not used.
        if device == "cpu":
            from ..machine import has_bf16_instructions

            return "bf16" if has_bf16_instructions() else "fp32"
        return "fp16"
    if p == "fp16" and device == "cpu":
        return "fp32"  # half precision matmuls on a CPU are slow: keep the exact path
    return p


def is_out_of_memory(exc: BaseException) -> bool:
    if isinstance(exc, torch.cuda.OutOfMemoryError):
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()
