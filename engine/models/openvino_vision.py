"""The vision encoder through OpenVINO on a CPU.

On a 2-core CPU torch reaches about half of its own matrix-multiply speed in BLIP's
vision encoder; OpenVINO's CPU plugin runs the same graph near that speed, and its
bf16 path doubles it where the CPU has bf16 instructions (docs/PERFORMANCE.md).
The encoder (embeddings, layers, post-layernorm: the tokens `blip_vision.vision_tokens`
returns) is converted from the loaded torch module once per checkpoint and photo
size, saved as OpenVINO IR in the user cache folder under the checkpoint's content
identity, and read from there by later loads. The BE projection and everything
after it stay in torch.

OpenVINO's converter reports usage to Intel unless told otherwise (its
openvino_telemetry package, on by default at `import openvino`). A photo search that
stays on the user's machine sends nothing: picsift imports OpenVINO with that package
blocked, so the converter takes its own no-op stub (`openvino.tools.ovc.telemetry_stub`).

Which backend runs is `PICSIFT_VISION_BACKEND`: auto (OpenVINO on a CPU when the
package imports, else torch), torch or openvino. A conversion that fails is one
notice and torch runs instead.
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path

import numpy as np

log = logging.getLogger("picsift.openvino")

ENV_BACKEND = "PICSIFT_VISION_BACKEND"
BACKENDS = ("auto", "torch", "openvino")
IR_VERSION = 1  # bump when the converted graph changes, so old IR files are not read


def requested_backend() -> str:
    value = (os.environ.get(ENV_BACKEND) or "auto").strip().lower()
    if value not in BACKENDS:
        raise ValueError(f"{ENV_BACKEND}={value!r}: choose one of {', '.join(BACKENDS)}")
    return value


def import_openvino():
    """The openvino module, imported without its usage reporting (see the module's docstring)."""
    import sys

    if "openvino" not in sys.modules:
        for name in ("openvino_telemetry", "openvino_telemetry.backend"):
            sys.modules.setdefault(name, None)  # an import of a None entry raises ImportError
    import openvino

    return openvino


def available() -> bool:
    """Whether the openvino package is installed. Found, not imported: every model load asks, and the import
    (a quarter of a second) is paid at the first photo instead; a wheel that then fails to load is the
    conversion's failure (one notice, torch runs)."""
    import importlib.util

    try:
        return importlib.util.find_spec("openvino") is not None
    except (ImportError, ValueError):
        return False


def choose_backend(device: str, requested: str | None = None) -> tuple[str, str]:
    """(backend, why) for a vision encoder on `device`. OpenVINO runs on the CPU only."""
    requested = requested or requested_backend()
    if requested == "torch":
        return "torch", f"{ENV_BACKEND}=torch"
    if device != "cpu":
        return "torch", f"the model runs on {device}"
    if not available():
        if requested == "openvino":
            return "torch", "OpenVINO was asked for but is not installed (pip install openvino)"
        return "torch", "OpenVINO is not installed"
    return "openvino", "auto" if requested == "auto" else f"{ENV_BACKEND}=openvino"


def ir_folder() -> Path:
    from ..paths import cache_dir

    return cache_dir() / "openvino"


class OpenVinoVision:
    """vision_tokens(vision_model, pixels) through OpenVINO: call it with an (N, 3, S, S) float32 array.
    Thread-safe (each call has its own infer request)."""

    def __init__(self, vision_model, image_size: int, key: str, precision: str, threads: int,
                 folder: Path | None = None):
        ov = import_openvino()
        self.precision = "bf16" if precision == "bf16" else "fp32"
        self.key = key
        folder = folder or ir_folder()
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in key)
        self.path = folder / f"{safe}-{image_size}px-v{IR_VERSION}.xml"
        core = ov.Core()
        # OpenVINO's own cache of the compiled model beside the IR: compiling BLIP base for bf16 takes about
        # 8 s on 2 cores, reading it back about 1 s
        core.set_property({"CACHE_DIR": str(folder / "compiled")})
        if self.path.is_file() and self.path.with_suffix(".bin").is_file():
            try:
                graph = core.read_model(str(self.path))
                self.converted = False
            except Exception as exc:  # a damaged file: convert again
                log.warning("OpenVINO IR %s could not be read (%s); converting again", self.path, exc)
                graph = self._convert(ov, vision_model, image_size)
        else:
            graph = self._convert(ov, vision_model, image_size)
        config = {"INFERENCE_PRECISION_HINT": "bf16" if self.precision == "bf16" else "f32",
                  "INFERENCE_NUM_THREADS": int(max(1, threads)), "PERFORMANCE_HINT": "LATENCY"}
        self.compiled = core.compile_model(graph, "CPU", config)
        self._local = threading.local()

    def _convert(self, ov, vision_model, image_size: int):
        import torch

        from .blip_vision import vision_tokens

        class Encoder(torch.nn.Module):
            def __init__(self, vm):
                super().__init__()
                self.vm = vm

            def forward(self, pixel_values):
                return vision_tokens(self.vm, pixel_values)

        example = torch.zeros(2, 3, image_size, image_size)
        with torch.no_grad():
            graph = ov.convert_model(Encoder(vision_model).float().eval(), example_input=example,
                                     input=[ov.PartialShape([-1, 3, image_size, image_size])])
        self.converted = True
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.stem + f".tmp{os.getpid()}.xml")
        try:
            ov.save_model(graph, str(tmp), compress_to_fp16=False)
            os.replace(tmp.with_suffix(".bin"), self.path.with_suffix(".bin"))
            os.replace(tmp, self.path)  # the .xml last: a reader that sees it sees its weights
        except OSError as exc:  # a read-only cache: this process converts again next time
            log.warning("OpenVINO IR could not be saved to %s (%s)", self.path, exc)
        return graph

    def __call__(self, pixels) -> np.ndarray:
        request = self.compiled.create_infer_request()
        result = request.infer({0: np.ascontiguousarray(pixels, dtype=np.float32)})
        return np.asarray(result[self.compiled.output(0)], dtype=np.float32)
