"""First-run download of a checkpoint from the model hub, with byte progress for a window to show."""

from __future__ import annotations

import os
from typing import Callable

ProgressCallback = Callable[[int, int, str], None]  # (bytes done, bytes in all, current file)

# Weights of other frameworks and export formats that a PyTorch load never reads.
SKIP_SUFFIXES = (".h5", ".msgpack", ".onnx", ".ot", ".tflite", ".md", ".gitattributes")


def files_to_fetch(files: list[tuple[str, int]]) -> list[tuple[str, int]]:
    """The files a transformers load needs: safetensors weights when present, else the .bin ones."""
    names = {n for n, _ in files}
    has_safetensors = any(n.endswith(".safetensors") for n in names)
    keep = []
    for name, size in files:
        if name.endswith(SKIP_SUFFIXES) or "/" in name and name.split("/")[0] in ("onnx", "tf", "flax"):
            continue
        if has_safetensors and name.endswith(".bin"):
            continue
        keep.append((name, size))
    return keep


def download(model_id: str, on_progress: ProgressCallback | None = None) -> str:
    """Fetch a checkpoint into the hub cache; returns its local snapshot folder."""
    from huggingface_hub import HfApi, hf_hub_download

    info = HfApi().model_info(model_id, files_metadata=True)
    files = files_to_fetch([(s.rfilename, int(s.size or 0)) for s in info.siblings or []])
    total = sum(size for _, size in files)
    done = 0
    folder = None
    for name, size in files:
        kwargs = {}
        if on_progress is not None:
            kwargs["tqdm_class"] = _reporting_bar(on_progress, done, total, name)
            on_progress(done, total, name)
        path = hf_hub_download(model_id, name, **kwargs)
        folder = path[: -len(name)].rstrip(os.sep) if path.endswith(name) else os.path.dirname(path)
        done += size
        if on_progress is not None:
            on_progress(done, total, name)
    if folder is None:
        raise OSError(f"the hub lists no files for {model_id}")
    return folder


def _reporting_bar(on_progress: ProgressCallback, offset: int, total: int, name: str):
    from tqdm.auto import tqdm

    class ReportingBar(tqdm):
        def __init__(self, *args, **kwargs):
            kwargs["file"] = open(os.devnull, "w")  # the window shows progress; nothing goes to a terminal
            super().__init__(*args, **kwargs)

        def update(self, n=1):
            result = super().update(n)
            on_progress(offset + int(self.n), total, name)
            return result

        def close(self):
            fh = self.fp
            super().close()
            try:
                fh.close()
            except Exception:
                pass

    return ReportingBar
