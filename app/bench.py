"""Window responsiveness, measured: `python -m app.bench [--photos 100000] [--model DIR]`.

Prints how long the window takes to be shown and usable (the model loads in the
background), and how long after Enter the BE results are on screen with a
library of N photos (synthetic vectors and paths; the query runs the real
model). Without --model it uses BLIP base's architecture with random weights.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

T0 = time.perf_counter()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m app.bench")
    parser.add_argument("--photos", type=int, default=100_000)
    parser.add_argument("--model", help="checkpoint folder (default: random-weight BLIP base)")
    parser.add_argument("--queries", type=int, default=10)
    args = parser.parse_args(argv)
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

    from PySide6.QtCore import QEventLoop, QSettings
    from PySide6.QtWidgets import QApplication

    app = QApplication.instance() or QApplication(sys.argv[:1])
    tmp = tempfile.TemporaryDirectory(prefix="picsift-window-bench-")
    from picsift.main import create_window

    settings = QSettings(os.path.join(tmp.name, "settings.ini"), QSettings.Format.IniFormat)
    model_dir = args.model
    build_s = 0.0  # making the random test model is no part of what a user's window does: left out below
    if model_dir is None:
        from picsift.engine.models.random_blip import build_random_blip

        t = time.perf_counter()
        model_dir = str(build_random_blip(os.path.join(tmp.name, "blip-base"), "base"))
        build_s = time.perf_counter() - t
    t_start = time.perf_counter()
    window = create_window(argparse.Namespace(library=os.path.join(tmp.name, "lib"), model=model_dir,
                                              device="auto", precision="auto", folders=[]), settings)
    window.show()
    app.processEvents()
    shown_ms = (time.perf_counter() - t_start) * 1000
    print(f"window_shown_ms            {shown_ms:8.0f}  ms  (create and show; the model loads in the background)")
    print(f"process_to_window_ms       {(time.perf_counter() - T0 - build_s) * 1000:8.0f}  ms  (from the start of this "
          "process, imports included, making the random test model left out)")

    controller = window.controller
    t = time.perf_counter()
    while not controller.ready:
        app.processEvents()
        time.sleep(0.01)
        if time.perf_counter() - t > 120:
            print("the model did not load", file=sys.stderr)
            return 1
    print(f"model_ready_ms             {(time.perf_counter() - t_start) * 1000:8.0f}  ms")

    fill_library(controller.library, controller.model, args.photos)
    controller.library._index = None  # load the index as a fresh window would
    _ = controller.library.index
    print(f"library_photos             {controller.library.store.count_photos():8d}")

    firsts = []
    words = ["a dog on the beach", "children playing", "a red car", "snow on mountains", "a man with a bike"]
    for i in range(args.queries):
        got = []
        window.k_box.setValue(0)  # BE results only: the figure is the time to the first results
        controller.searchUpdate.connect(lambda _r, u, got=got: got.append(time.perf_counter()))
        window.search.setText(words[i % len(words)] + f" {i}")
        loop = QEventLoop()
        controller.searchUpdate.connect(lambda _r, _u: loop.quit())
        t = time.perf_counter()
        window.run_search()
        if not got:
            loop.exec()  # the window's own event loop, as a user's Enter is handled
        app.processEvents()
        firsts.append((got[0] - t) * 1000)
        controller.searchUpdate.disconnect()
        controller.searchUpdate.connect(window._on_search_update)
    print(f"be_results_ms_{args.photos // 1000}k         {statistics.median(firsts):8.1f}  ms  (Enter to BE results in the"
          f" grid, median of {len(firsts)}; max {max(firsts):.1f})")
    window.close()
    controller.library.close()
    tmp.cleanup()
    return 0


def fill_library(library, model, count: int) -> None:
    """count synthetic photos with vectors of the model's size (clustered, as real collections are)."""
    from picsift.engine.bench import clustered_vectors

    store = library.store
    store.register_model(model.be.key, "be", model.source, model.dim)
    library.activate(model)
    vectors = clustered_vectors(count, model.dim)
    hashes = [f"{i:032x}" for i in range(count)]
    with store.batch():
        store.add_folder("/photos")
        store.conn.executemany(
            "INSERT INTO photos(path, size, mtime_ns, hash, width, height, status, updated_at) "
            "VALUES (?, 1, 1, ?, 1, 1, 'ok', 0)",
            ((f"/photos/{i // 1000:03d}/{i:07d}.jpg", h) for i, h in enumerate(hashes)))
        store.put_vectors(model.be.key, zip(hashes, vectors))
        store.bump_generation()
    library.rebuild_index()


if __name__ == "__main__":
    sys.exit(main())
