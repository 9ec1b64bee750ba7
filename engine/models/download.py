"""First-run download of a checkpoint from the model hub, with byte progress for a window to show."""

from __future__ import annotations

import threading
from typing import Callable

# (bytes done, bytes in all, what is fetched). The files come in parallel, so the third is the
# checkpoint's id rather than one file's name, and the total grows as each file's download starts.
ProgressCallback = Callable[[int, int, str], None]

# Files a PyTorch load never reads: other frameworks' weights, export formats, docs.
IGNORE_PATTERNS = ["*.h5", "*.msgpack", "*.onnx", "*.ot", "*.tflite", "*.md", ".gitattributes",
                   "onnx/*", "tf/*", "flax/*"]

# The name snapshot_download gives the progress bar that sums the bytes of all its files
# (huggingface_hub 1.1 and later); its other bars count files or network transfer.
BYTES_BAR = "huggingface_hub.snapshot_download"


def download(model_id: str, on_progress: ProgressCallback | None = None) -> str:
    """Fetch a checkpoint into the hub cache; returns its local snapshot folder.

    on_progress is called from the hub's download threads.
    """
    from huggingface_hub import HfApi, snapshot_download

    ignore = list(IGNORE_PATTERNS)
    # Patterns cannot say "the .bin weights only where there are no safetensors": the listing decides.
    if any(name.endswith(".safetensors") for name in HfApi().list_repo_files(model_id)):
        ignore.append("*.bin")
    tqdm_class = None if on_progress is None else _reporting_bar(on_progress, model_id)
    return snapshot_download(model_id, ignore_patterns=ignore, tqdm_class=tqdm_class)


def _reporting_bar(on_progress: ProgressCallback, label: str):
    from huggingface_hub.utils import tqdm as hub_tqdm

    class ReportingBar(hub_tqdm):
        """Draws nothing (the window shows the progress); the snapshot's bytes bar passes its count on.

        A disabled tqdm does not count, so this one counts its updates itself; they come from
        several download threads at once.
        """

        def __init__(self, *args, **kwargs):
            self._reports = kwargs.get("name") == BYTES_BAR
            self._count_lock = threading.Lock()
            kwargs["disable"] = True
            super().__init__(*args, **kwargs)

        def update(self, n=1):
            if not self._reports:
                return super().update(n)
            with self._count_lock:
                self.n += n or 0
                done, total = int(self.n), int(self.total or 0)
            on_progress(done, total, label)
            return None

    return ReportingBar
