"""What this machine can do, measured: its processor and how fast it multiplies matrices.

Model timings differ between machines by far more than code changes move them.
Dividing a model's achieved arithmetic rate by the rate of a plain matrix
multiply on the same machine, with the same threads, gives a share that
travels between machines: a figure taken on a 2-core laptop and one taken on a
16-core server can then be compared.
"""

from __future__ import annotations

import platform
import time
from pathlib import Path

# Instruction sets that decide how fast the matrix multiplies run (x86 names as /proc/cpuinfo spells them).
FLAGS_OF_INTEREST = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16", "amx_int8")
CPUINFO = Path("/proc/cpuinfo")


def cpu_flags() -> set[str]:
    """The processor's feature flags (Linux); empty where they cannot be read."""
    try:
        for line in CPUINFO.read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def cpu_name() -> str:
    try:
        for line in CPUINFO.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown processor"


def describe_cpu() -> str:
    """Processor name and the matrix-relevant instruction sets it has, for a figure's note."""
    flags = cpu_flags()
    have = [f for f in FLAGS_OF_INTEREST if f in flags]
    return f"{cpu_name()}; " + (", ".join(have) if have else "no AVX2/AVX-512/AMX flags seen")


def has_bf16_instructions() -> bool:
    """Whether the CPU multiplies bfloat16 natively (AVX-512 BF16 or AMX); without, bf16 is emulated."""
    return bool(cpu_flags() & {"avx512_bf16", "amx_bf16"})


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def matmul_gflops(dtype=None, n: int = 1024, device: str = "cpu", min_time_s: float = 0.25, rounds: int = 5) -> float:
    """GFLOP/s of torch.matmul of two n x n matrices of `dtype` on `device`, with torch's current threads
    (the ones the model uses): the best of `rounds` rounds of at least `min_time_s` each, after a warm-up.
    The best, not the median: the figure is what the machine can do, and a loaded machine only ever
    makes it slower."""
    import torch

    dtype = dtype or torch.float32
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(n, n, generator=gen).to(device, dtype)
    b = torch.randn(n, n, generator=gen).to(device, dtype)
    flops = 2.0 * n * n * n
    with torch.inference_mode():
        for _ in range(2):
            torch.matmul(a, b)
        _sync(device)
        best = 0.0
        for _ in range(rounds):
            reps = 0
            start = time.perf_counter()
            while True:
                torch.matmul(a, b)
                reps += 1
                _sync(device)
                elapsed = time.perf_counter() - start
                if elapsed >= min_time_s:
                    break
            best = max(best, flops * reps / elapsed / 1e9)
    return best
