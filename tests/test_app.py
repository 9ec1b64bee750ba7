"""The window, offscreen: live rerank, k changes without a new BE search, drops, indexing, cancel."""

from __future__ import annotations

import argparse
import math
import threading

import pytest

pytest.importorskip("PySide6")

from PySide6.QtCore import QMimeData, QPointF, QSettings, Qt, QUrl  # noqa: E402
from PySide6.QtGui import QDropEvent  # noqa: E402
from PySide6.QtWidgets import QMessageBox  # noqa: E402

from conftest import make_photo  # noqa: E402
from picsift.engine.search.searcher import Searcher  # noqa: E402

MODEL_TIMEOUT = 60_000


@pytest.fixture
def make_window(qtbot, tmp_path, tiny_model_dir, monkeypatch):
    from picsift.main import create_window

    monkeypatch.setattr(QMessageBox, "exec", lambda self: 0)  # no modal dialog may block a test
    windows = []

    def make(folders=(), model=None, wait_model=True):
        settings = QSettings(str(tmp_path / "settings.ini"), QSettings.Format.IniFormat)
        args = argparse.Namespace(library=str(tmp_path / "lib"), model=model or str(tiny_model_dir),
                                  device="cpu", precision="fp32", folders=list(folders))
        window = create_window(args, settings)
        qtbot.addWidget(window)
        windows.append(window)
        window.show()
        if wait_model:
            with qtbot.waitSignal(window.controller.modelReady, timeout=MODEL_TIMEOUT):
                pass
        return window

    yield make
    for w in windows:
        w.close()
        assert not any(t.isRunning() for t in w.controller._threads), "a worker thread outlived the window"
        w.controller.library.close()
    from picsift.workers import _job_pool

    assert _job_pool().waitForDone(10_000), "an engine job outlived the window"


def index_and_wait(qtbot, window, folders, timeout=60_000):
    progress = []
    window.controller.indexProgress.connect(progress.append)
    with qtbot.waitSignal(window.controller.indexFinished, timeout=timeout) as finished:
        assert window.start_indexing([str(f) for f in folders])
    return progress, finished.args[0]


def collect_updates(qtbot, window, start):
    updates = []
    window.controller.searchUpdate.connect(lambda _r, u: updates.append(u))
    start()
    qtbot.waitUntil(lambda: bool(updates) and updates[-1].done, timeout=30_000)
    return updates


def test_window_opens_with_an_empty_state_and_loads_the_model(make_window):
    window = make_window()
    assert window.windowTitle() == "picsift"
    assert window.pages.currentWidget() is window.empty
    assert "Add Folder" in window.empty.text()
    assert "CPU" in window.device_label.text()
    assert window.size_label.text().startswith("0 photos")


def test_indexing_reports_progress_and_fills_the_library(qtbot, make_window, photo_folder):
    window = make_window()
    progress, completed = index_and_wait(qtbot, window, [photo_folder])
    assert completed is True
    phases = [p.phase for p in progress]
    assert phases[0] == "scanning" and phases[-1] == "done" and "indexing" in phases
    assert progress[-1].embedded == 12
    assert window.size_label.text().startswith("12 photos")
    assert window.index_panel.bar.value() == 12 and "Done" in window.index_panel.label.text()


def test_search_shows_be_results_then_reorders_into_ce_order(qtbot, make_window, photo_folder):
    window = make_window()
    index_and_wait(qtbot, window, [photo_folder])
    window.k_box.setValue(6)
    window.search.setText("a dog runs on the beach")
    updates = collect_updates(qtbot, window, window.run_search)
    assert updates[0].scored == 0 and all(h.rerank_score is None for h in updates[0].hits)
    assert [u.scored for u in updates] == sorted(u.scored for u in updates) and updates[-1].scored == 6
    shown = [window.results.hit_at(window.results.index(r)).id for r in range(window.results.rowCount())]
    expected = Searcher(window.controller.library, window.controller.model).search(
        "a dog runs on the beach", n=window.prefs.n, k=6)
    assert shown == [h.id for h in expected]
    assert window.pages.currentWidget() is window.grid
    assert window.rerank_state.text() == "12 results, top 6 reranked"
    tip = window.results.data(window.results.index(0), Qt.ItemDataRole.ToolTipRole)
    assert "BE score" in tip and "CE probability" in tip and "Rerank:" in tip


def test_changing_k_reranks_without_a_new_be_search(qtbot, make_window, photo_folder, monkeypatch):
    window = make_window()
    index_and_wait(qtbot, window, [photo_folder])
    window.k_box.setValue(0)
    window.search.setText("a red car")
    first = collect_updates(qtbot, window, window.run_search)
    assert all(h.rerank_score is None for h in first[-1].hits)
    calls = []
    searcher = window.controller.searcher
    real_faiss, real_text = searcher._photos_by_vector, searcher.model.be.embed_texts
    monkeypatch.setattr(searcher, "_photos_by_vector", lambda *a, **k: calls.append("faiss") or real_faiss(*a, **k))
    monkeypatch.setattr(searcher.model.be, "embed_texts", lambda *a, **k: calls.append("text") or real_text(*a, **k))
    updates = collect_updates(qtbot, window, lambda: window.k_box.setValue(8))
    assert calls == []  # the BE step (query vector, FAISS) was not run again
    final = updates[-1].hits
    assert all(h.rerank_score is not None for h in final[:8]) and all(h.rerank_score is None for h in final[8:])
    probs = [h.rerank_score for h in final[:8]]
    assert probs == sorted(probs, reverse=True)


def test_deeper_rerank_keeps_the_folder_scope(qtbot, make_window, photo_folder):
    """A rerank deeper than the candidates widens them in the engine's session: same query, same --in folder."""
    window = make_window()
    index_and_wait(qtbot, window, [photo_folder])
    controller, trips = window.controller, str(photo_folder / "trips")
    first = collect_updates(qtbot, window, lambda: controller.search("a red car", n=2, k=0, scope=trips))
    assert len(first[-1].hits) == 2
    deeper = collect_updates(qtbot, window, lambda: controller.rerank(10))
    hits = deeper[-1].hits
    assert len(hits) == 6 and all(h.path.startswith(trips + "/") for h in hits)  # trips holds 6 of the 12
    assert all(h.rerank_score is not None for h in hits)


def test_a_new_query_cancels_the_one_in_flight(qtbot, make_window, photo_folder):
    window = make_window()
    index_and_wait(qtbot, window, [photo_folder])
    seen = []
    window.controller.searchUpdate.connect(lambda r, u: seen.append((r, u)))
    window.search.setText("a dog on the beach")
    window.run_search()
    first = window.controller._search
    window.search.setText("a red car at night")
    window.run_search()
    assert first.token.cancelled  # the first search's worker was told to stop
    qtbot.waitUntil(lambda: bool(seen) and seen[-1][1].done, timeout=30_000)
    qtbot.waitUntil(lambda: not first.isRunning(), timeout=30_000)
    qtbot.wait(50)  # anything the first worker still sent has been delivered by now
    last_request = window.controller._request
    assert {r for r, _ in seen} == {last_request}  # no update of the first query reached the window
    expected = Searcher(window.controller.library, window.controller.model).search(
        "a red car at night", n=window.prefs.n, k=window.k_box.value())
    shown = [window.results.hit_at(window.results.index(r)).id for r in range(window.results.rowCount())]
    assert shown == [h.id for h in expected]


def test_dropping_a_photo_shows_captions_and_similar_photos(qtbot, make_window, photo_folder, tmp_path):
    window = make_window()
    index_and_wait(qtbot, window, [photo_folder])
    outside = make_photo(tmp_path / "dropped.png", seed=3)
    mime = QMimeData()
    mime.setUrls([QUrl.fromLocalFile(outside)])
    event = QDropEvent(QPointF(10, 10), Qt.DropAction.CopyAction, mime, Qt.MouseButton.LeftButton,
                       Qt.KeyboardModifier.NoModifier)
    captions, preparing = [], []
    window.controller.captionsUpdate.connect(lambda p, u: captions.append(u))
    window.controller.captionsPreparing.connect(lambda p, d, t: preparing.append((d, t)))
    with qtbot.waitSignal(window.controller.similarReady, timeout=30_000):
        window.dropEvent(event)
    qtbot.waitUntil(lambda: bool(captions) and captions[-1].done, timeout=60_000)
    assert window.pages.currentWidget() is window.drop_panel
    assert window.drop_panel.captions.count() == len(captions[-1].hits) > 0
    assert window.similar_model.rowCount() == 12
    top = captions[-1].hits[0]
    assert f"{top.rerank_score:.2f}" in window.drop_panel.captions.item(0).text()
    assert window.drop_panel.collection.currentText() == "everyday"
    assert preparing and preparing[-1][0] == preparing[-1][1] >= 2000  # the first use embedded the collection


def test_dropping_a_folder_offers_to_index_it(qtbot, make_window, photo_folder, monkeypatch):
    window = make_window()
    asked = []
    monkeypatch.setattr(QMessageBox, "question", lambda *a, **k: asked.append(a) or QMessageBox.StandardButton.Yes)
    mime = QMimeData()
    mime.setUrls([QUrl.fromLocalFile(str(photo_folder))])
    event = QDropEvent(QPointF(5, 5), Qt.DropAction.CopyAction, mime, Qt.MouseButton.LeftButton,
                       Qt.KeyboardModifier.NoModifier)
    with qtbot.waitSignal(window.controller.indexFinished, timeout=60_000):
        window.dropEvent(event)
    assert asked and window.controller.library.store.count_photos() == 12


def test_cancel_stops_within_a_batch_and_keeps_what_was_indexed(qtbot, make_window, tmp_path):
    folder = tmp_path / "many"
    for i in range(64):
        make_photo(folder / f"{i:02d}.png", seed=i, size=(400, 300))
    window = make_window()
    lib = window.controller.library
    done_at_cancel = []

    def on_progress(p):
        if p.phase == "indexing" and not done_at_cancel:
            done_at_cancel.append(p.done)
            window.cancel_work()  # Esc

    window.controller.indexProgress.connect(on_progress)
    with qtbot.waitSignal(window.controller.indexFinished, timeout=60_000) as finished:
        window.start_indexing([str(folder)])
    assert finished.args[0] is False
    kept = lib.store.count_photos()
    batch = window.controller.model.image_batch_size
    assert done_at_cancel[0] <= kept <= done_at_cancel[0] + batch < 64
    assert "Cancelled" in window.index_panel.label.text()
    _, completed = index_and_wait(qtbot, window, [folder])
    assert completed and lib.store.count_photos() == 64
    import faiss

    assert sorted(faiss.vector_to_array(lib.index.index.id_map)) == sorted(lib.store.photo_ids())


def test_searching_during_indexing_sees_what_is_indexed(qtbot, make_window, tmp_path):
    folder = tmp_path / "many"
    for i in range(48):
        make_photo(folder / f"{i:02d}.png", seed=i, size=(400, 300))
    window = make_window()
    results = []

    def on_progress(p):
        if p.phase == "indexing" and p.done and not results:
            window.controller.pause_indexing(True)
            hits = window.controller.searcher.search("anything", n=100, k=0)
            results.append((p.done, len(hits)))
            window.controller.pause_indexing(False)

    window.controller.indexProgress.connect(on_progress)
    index_and_wait(qtbot, window, [folder])
    done, found = results[0]
    assert 0 < found < 48 and found >= done


def test_missing_model_says_what_is_needed(qtbot, make_window, tmp_path):
    window = make_window(model=str(tmp_path / "no-model-here"), wait_model=False)
    with qtbot.waitSignal(window.controller.modelFailed, timeout=MODEL_TIMEOUT) as failed:
        pass
    assert "no-model-here" in failed.args[0]
    qtbot.waitUntil(lambda: window.device_label.text() == "No model loaded", timeout=5000)


def test_keyboard_shortcuts_and_settings_persist(qtbot, make_window, tmp_path):
    window = make_window()
    window.activateWindow()
    window.k_box.setFocus()
    qtbot.keyClick(window, Qt.Key.Key_F, Qt.KeyboardModifier.ControlModifier)
    qtbot.waitUntil(window.search.hasFocus, timeout=2000)
    assert window.add_folder_action.shortcut().toString() == "Ctrl+O"
    window.k_box.setValue(7)
    window.close()
    settings = QSettings(str(tmp_path / "settings.ini"), QSettings.Format.IniFormat)
    assert int(settings.value("k")) == 7 and settings.value("geometry") is not None


def test_download_progress_shows_in_the_status_bar(qtbot, make_window):
    window = make_window()
    assert window.isVisible() and not window.download_bar.isVisible()  # no bar without a download
    window.controller.downloadProgress.emit(300 * 1024 * 1024, 900 * 1024 * 1024, "model.safetensors")
    assert window.download_bar.isVisible()
    assert (window.download_bar.value(), window.download_bar.maximum()) == (300, 900)
    assert window.download_bar.format() == "300 of 900 MB"
    assert "model.safetensors" in window.device_label.text()
    window.controller.modelReady.emit("CPU")  # the download ended and the model loaded
    assert not window.download_bar.isVisible()
    assert window.device_label.text() == "Model ready · CPU"


def test_ctrl_v_in_the_search_field_pastes_a_photo(qtbot, make_window, photo_folder):
    from PySide6.QtGui import QGuiApplication

    window = make_window()
    photo = str(photo_folder / "home" / "photo_00.jpg")
    mime = QMimeData()
    mime.setUrls([QUrl.fromLocalFile(photo)])
    QGuiApplication.clipboard().setMimeData(mime)
    window.search.setFocus()
    window.search.setText("")
    with qtbot.waitSignal(window.controller.similarReady, timeout=30_000):
        qtbot.keyClick(window.search, Qt.Key.Key_V, Qt.KeyboardModifier.ControlModifier)
    assert window.search.text() == ""  # the photo was not pasted as text
    assert window.pages.currentWidget() is window.drop_panel and window.dropped == photo
    QGuiApplication.clipboard().setText("plain words")
    qtbot.keyClick(window.search, Qt.Key.Key_V, Qt.KeyboardModifier.ControlModifier)
    assert window.search.text() == "plain words"


def test_enter_opens_a_result_and_the_context_menu_acts_on_it(qtbot, make_window, photo_folder, monkeypatch):
    from PySide6.QtGui import QDesktopServices, QGuiApplication

    window = make_window()
    index_and_wait(qtbot, window, [photo_folder])
    window.k_box.setValue(0)
    window.search.setText("a dog")
    collect_updates(qtbot, window, window.run_search)
    opened = []
    monkeypatch.setattr(QDesktopServices, "openUrl", lambda url: opened.append(url.toLocalFile()) or True)
    window.grid.setFocus()
    window.grid.setCurrentIndex(window.results.index(1))
    qtbot.keyClick(window.grid, Qt.Key.Key_Down)  # arrows move through the results
    current = window.results.hit_at(window.grid.currentIndex())
    assert window.grid.currentIndex().row() != 1
    qtbot.keyClick(window.grid, Qt.Key.Key_Return)
    assert opened == [current.path]
    actions = dict(window.hit_actions(current))
    assert list(actions) == ["Open", "Open Folder", "Copy Path", "Copy Image", "Find Similar", "Search From This Photo"]
    actions["Copy Path"]()
    assert QGuiApplication.clipboard().text() == current.path
    actions["Open Folder"]()
    assert opened[-1] == str(photo_folder / ("home" if "/home/" in current.path else "trips"))
    failures = []
    window.controller.dropFailed.connect(failures.append)
    with qtbot.waitSignal(window.controller.similarReady, timeout=30_000):
        actions["Find Similar"]()
    assert failures == []
    assert window.pages.currentWidget() is window.drop_panel


def test_folders_can_be_removed_and_captions_imported(qtbot, make_window, photo_folder, tmp_path, monkeypatch):
    window = make_window()
    index_and_wait(qtbot, window, [photo_folder])
    captions = tmp_path / "mine.csv"
    captions.write_text("caption\na dog on the beach\na red car\n")
    name, count = window.controller.import_captions(str(captions), "mine")
    assert (name, count) == ("mine", 2)
    window.refresh_library()
    assert window.drop_panel.collection.findText("mine") >= 0
    monkeypatch.setattr(QMessageBox, "question", lambda *a, **k: QMessageBox.StandardButton.Yes)
    lib = window.controller.library
    threads = []
    real = lib.remove_folder
    monkeypatch.setattr(lib, "remove_folder", lambda p: threads.append(threading.current_thread()) or real(p))
    with qtbot.waitSignal(window.controller.maintenanceDone, timeout=30_000) as done:
        window.remove_folder(str(photo_folder))
    assert threads and threads[0] is not threading.main_thread()  # the window's thread stays free
    assert "12 photos" in done.args[0] and "12 photos" in window.statusBar().currentMessage()
    assert lib.store.count_photos() == 0 and lib.store.folders() == [] and lib.index.ntotal == 0
    assert window.size_label.text().startswith("0 photos")
    assert (photo_folder / "home" / "photo_00.jpg").exists()  # files on disk are not touched


def test_another_model_asks_for_a_rescan_and_rescanning_re_embeds(qtbot, make_window, photo_folder, tmp_path):
    from picsift.engine.models.random_blip import build_random_blip

    first = make_window()
    index_and_wait(qtbot, first, [photo_folder])
    first.close()
    first.controller.library.close()
    other = build_random_blip(tmp_path / "other-model", "tiny", seed=5)
    notices = []
    window = make_window(model=str(other), wait_model=False)
    window.controller.notice.connect(notices.append)
    with qtbot.waitSignal(window.controller.modelReady, timeout=MODEL_TIMEOUT):
        pass
    assert notices and "another model" in notices[0]
    assert window.controller.searcher is None
    _, completed = index_and_wait(qtbot, window, [photo_folder])
    assert completed and window.controller.searcher is not None
    assert window.controller.library.model_id == str(other)


def test_gui_without_a_display_says_so(monkeypatch, capsys):
    import sys as _sys

    from picsift.launcher import main

    monkeypatch.setattr(_sys, "platform", "linux")
    for var in ("DISPLAY", "WAYLAND_DISPLAY", "QT_QPA_PLATFORM"):
        monkeypatch.delenv(var, raising=False)
    assert main(["gui"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("picsift: picsift gui needs a desktop session") and "Traceback" not in err


def test_preferences_persist_and_set_the_cache_budget(qtbot, make_window, monkeypatch, tmp_path):
    from picsift.preferences import PreferencesDialog

    window = make_window()

    def accept(dialog):
        dialog.k.setValue(9)
        dialog.n.setValue(60)
        dialog.cache.setValue(1.5)
        return 1

    monkeypatch.setattr(PreferencesDialog, "exec", accept)
    threads = []
    lib = window.controller.library
    real = lib.set_cache_budget
    monkeypatch.setattr(lib, "set_cache_budget", lambda b: threads.append(threading.current_thread()) or real(b))
    with qtbot.waitSignal(window.controller.maintenanceDone, timeout=30_000):
        window.edit_preferences()
    assert threads and threads[0] is not threading.main_thread()
    assert window.k_box.value() == 9 and window.prefs.n == 60
    assert window.controller.library.tokens.budget_bytes == int(1.5 * 1024**3)
    assert window.controller.library.store.get_meta("cache_budget_bytes") == str(int(1.5 * 1024**3))
    settings = QSettings(str(tmp_path / "settings.ini"), QSettings.Format.IniFormat)
    assert int(settings.value("n")) == 60 and int(settings.value("k")) == 9


def test_dropped_or_pasted_image_data_is_described(qtbot, make_window, monkeypatch):
    from PySide6.QtGui import QColor, QImage, QPixmap

    window = make_window()
    described = []
    monkeypatch.setattr(window, "describe", described.append)
    image = QImage(40, 30, QImage.Format.Format_RGB32)
    image.fill(QColor("red"))
    for data in (image, QPixmap.fromImage(image)):  # sources hand over either kind
        mime = QMimeData()
        mime.setImageData(data)
        assert window.take(mime)
    assert len(described) == 2
    assert all(QImage(p).size().width() == 40 for p in described)
    assert window.take(QMimeData()) is False


def test_window_bench_fills_a_searchable_library(library, tiny_model):
    """`python -m app.bench` measures the window on a library this fills: it must be one search can use."""
    from picsift.bench import fill_library

    fill_library(library, tiny_model, 500)
    assert library.index.ntotal == 500 and library.store.count_photos() == 500
    hits = Searcher(library, tiny_model).search("a dog", n=10, k=0)
    assert len(hits) == 10 and all(h.path.startswith("/photos/") for h in hits)


def test_filters_min_match_sort_and_recent_searches_in_the_window(qtbot, make_window, photo_folder):
    from picsift.engine.search.filters import Filters

    window = make_window()
    index_and_wait(qtbot, window, [photo_folder])
    window.k_box.setValue(3)
    window.search.setText("a red square -circle")
    updates = collect_updates(qtbot, window, window.run_search)
    everything = updates[-1].hits
    assert len(everything) == 12
    # a file-type filter runs the search again, over the 4 JPEGs only
    png_free = collect_updates(qtbot, window, lambda: window.filter_bar.type.setCurrentIndex(
        window.filter_bar.type.findData("jpg")))
    hits = png_free[-1].hits
    assert len(hits) == 4 and all(h.path.endswith(".jpg") for h in hits)
    assert window.current_filters() == Filters(types=("jpg", "jpeg", "jpe"))
    window.filter_bar.type.setCurrentIndex(0)
    qtbot.waitUntil(lambda: window.results.rowCount() == 12, timeout=30_000)
    qtbot.waitUntil(lambda: window.controller._last is not None and window.controller._last[1].done, timeout=30_000)
    # the minimum match hides weak hits without a new search; clearing it shows them again
    last = window.controller._last[1].hits
    cut = sorted(h.match for h in last)[-4]
    window.filter_bar.min_match.setValue(math.floor(cut * 100) / 100)  # the spin box keeps 2 decimals
    shown = [window.results.hit_at(window.results.index(r)) for r in range(window.results.rowCount())]
    assert shown and len(shown) < 12 and all(h.match >= window.filter_bar.min_score for h in shown)
    window.filter_bar.min_match.setValue(0.0)
    assert window.results.rowCount() == 12
    # recent searches are offered in the search field and can be cleared
    assert window.recent.stringList()[0] == "a red square -circle"
    window.clear_recent()
    assert window.recent.stringList() == [] and window.controller.library.recent_queries() == []


def test_a_search_can_start_from_a_photo_in_the_window(qtbot, make_window, photo_folder):
    window = make_window()
    index_and_wait(qtbot, window, [photo_folder])
    window.k_box.setValue(2)
    start = sorted(str(p) for p in photo_folder.rglob("*.png"))[0]
    window.search.setText("at night")
    updates = collect_updates(qtbot, window, lambda: window.search_from_photo(start))
    hits = updates[-1].hits
    assert window.filter_bar.photo == start and window.filter_bar.photo_button.isVisible()
    assert len(hits) == 11 and start not in {h.path for h in hits}
    assert updates[-1].to_score == 2
    updates = collect_updates(qtbot, window, window.filter_bar.photo_button.click)  # stop using the photo
    assert window.filter_bar.photo is None and len(updates[-1].hits) == 12


def test_the_duplicates_view_moves_the_checked_photos_to_the_trash(qtbot, make_window, tmp_path, monkeypatch):
    import os
    import shutil

    import send2trash.plat_other as plat

    data = tmp_path / "trash-data"
    data.mkdir()
    monkeypatch.setattr(plat, "XDG_DATA_HOME", os.fsencode(data))
    monkeypatch.setattr(plat, "HOMETRASH_B", os.fsencode(data / "Trash"))
    monkeypatch.setattr(plat, "HOMETRASH", str(data / "Trash"))
    root = tmp_path / "dups"
    a = make_photo(root / "a.jpg", seed=1, size=(96, 80))
    shutil.copy(a, root / "a-copy.jpg")
    for i in range(3):
        make_photo(root / f"other{i}.png", seed=20 + i)
    window = make_window()
    index_and_wait(qtbot, window, [root])
    with qtbot.waitSignal(window.controller.duplicatesReady, timeout=30_000):
        dialog = window.show_duplicates()
    assert dialog.tree.topLevelItemCount() == 1 and dialog.tree.topLevelItem(0).childCount() == 2
    assert "Exact copies" in dialog.tree.topLevelItem(0).text(0)
    assert not dialog.trash_button.isEnabled()
    dialog.check_all_but_first()
    doomed = dialog.checked()
    assert len(doomed) == 1 and dialog.trash_button.text() == "Move 1 Checked to Trash…"
    monkeypatch.setattr(dialog, "confirm", lambda paths: False)
    dialog.trash_checked()  # declined: nothing moves
    assert os.path.exists(doomed[0])
    monkeypatch.setattr(dialog, "confirm", lambda paths: True)
    with qtbot.waitSignal(window.controller.duplicatesReady, timeout=30_000):  # the view looks again after
        dialog.trash_checked()
    assert not os.path.exists(doomed[0]) and (data / "Trash" / "files" / os.path.basename(doomed[0])).exists()
    assert dialog.tree.topLevelItemCount() == 0 and "1 photo(s) moved to the trash" in dialog.state.text()
    qtbot.waitUntil(lambda: window.size_label.text().startswith("4 photos"), timeout=10_000)
    dialog.close()


def test_excluded_folders_can_be_edited_in_the_window(qtbot, make_window, photo_folder):
    window = make_window()
    index_and_wait(qtbot, window, [photo_folder])
    dialog = window.edit_excluded()
    assert dialog.list.count() == 0 and not dialog.remove_button.isEnabled()
    with qtbot.waitSignal(window.controller.maintenanceDone, timeout=30_000):
        dialog.exclude(str(photo_folder / "trips"))
    assert [dialog.list.item(i).text() for i in range(dialog.list.count())] == [str(photo_folder / "trips")]
    qtbot.waitUntil(lambda: window.size_label.text().startswith("6 photos"), timeout=10_000)
    dialog.list.setCurrentRow(0)
    dialog.include_selected()
    assert dialog.list.count() == 0 and window.controller.library.excluded_folders() == []
    dialog.close()


def test_space_previews_a_result_large_and_arrows_move_through_the_results(qtbot, make_window, tmp_path,
                                                                            monkeypatch):
    import datetime as dt
    import os

    from PySide6.QtGui import QDesktopServices
    from test_query import _jpeg_with_date

    root = tmp_path / "prev"
    for i in range(4):
        _jpeg_with_date(root / f"p{i}.jpg", (120, 80), f"2022:0{i + 1}:02 08:15:00", 50 + i)
    window = make_window()
    index_and_wait(qtbot, window, [root])
    window.k_box.setValue(0)
    window.search.setText("a photo")
    collect_updates(qtbot, window, window.run_search)
    window.grid.setFocus()
    window.grid.setCurrentIndex(window.results.index(0))
    qtbot.keyClick(window.grid, Qt.Key.Key_Space)
    dialog = next(d for d in window.findChildren(type(window).preview_dialog_type()) if d.isVisible())
    first = window.results.hit_at(window.results.index(0))
    assert dialog.row == 0 and os.path.basename(first.path) in dialog.caption.text()
    taken = dt.datetime.fromtimestamp(window.controller.library.store.photo_info(first.path)["taken"])
    assert taken.strftime("%Y-%m-%d %H:%M") in dialog.caption.text() and "120 × 80" in dialog.caption.text()
    assert str(root) in dialog.caption.text() and "result 1 of 4" in dialog.caption.text()
    assert not dialog.image.pixmap().isNull()
    qtbot.keyClick(dialog, Qt.Key.Key_Right)
    assert dialog.row == 1 and window.grid.currentIndex().row() == 1  # the grid follows
    qtbot.keyClick(dialog, Qt.Key.Key_Left)
    qtbot.keyClick(dialog, Qt.Key.Key_Left)  # no row before the first
    assert dialog.row == 0 and not dialog.prev_button.isEnabled()
    opened = []
    monkeypatch.setattr(QDesktopServices, "openUrl", lambda url: opened.append(url.toLocalFile()) or True)
    qtbot.keyClick(dialog, Qt.Key.Key_Return)
    assert opened == [first.path]
    dialog.close()


def test_photos_added_and_deleted_while_the_window_is_open_are_picked_up(qtbot, make_window, photo_folder):
    import os

    window = make_window()
    index_and_wait(qtbot, window, [photo_folder])
    assert window.controller.watcher is not None
    with qtbot.waitSignal(window.controller.indexFinished, timeout=30_000):
        for i in range(3):  # a burst: one indexing run
            make_photo(photo_folder / "new" / f"n{i}.jpg", seed=100 + i)
    qtbot.waitUntil(lambda: window.controller.library.store.count_photos() == 15, timeout=10_000)
    with qtbot.waitSignal(window.controller.indexFinished, timeout=30_000):
        os.remove(photo_folder / "new" / "n0.jpg")
    qtbot.waitUntil(lambda: window.controller.library.store.count_photos() == 14, timeout=10_000)
    assert window.size_label.text().startswith("14 photos")


def test_each_tile_shows_how_well_it_matches(qtbot, make_window, photo_folder):
    window = make_window()
    index_and_wait(qtbot, window, [photo_folder])
    window.k_box.setValue(2)
    window.search.setText("a green field")
    collect_updates(qtbot, window, window.run_search)
    labels = [window.results.data(window.results.index(r), Qt.ItemDataRole.DisplayRole)
              for r in range(window.results.rowCount())]
    hits = [window.results.hit_at(window.results.index(r)) for r in range(window.results.rowCount())]
    assert labels[0].endswith(f"\n{hits[0].rerank_score:.0%} match")
    assert labels[-1].endswith(f"\nscore {hits[-1].score:.2f}") and hits[-1].rerank_score is None


def test_a_typed_date_range_filters_the_search(qtbot, make_window, tmp_path, monkeypatch):
    from PySide6.QtWidgets import QInputDialog

    from test_query import _jpeg_with_date

    root = tmp_path / "dated"
    for i in range(3):
        _jpeg_with_date(root / f"old{i}.jpg", (60, 40), f"2019:05:0{i + 1} 10:00:00", i)
        _jpeg_with_date(root / f"new{i}.jpg", (60, 40), f"2023:05:0{i + 1} 10:00:00", 10 + i)
    window = make_window()
    index_and_wait(qtbot, window, [root])
    window.k_box.setValue(0)
    window.search.setText("a photo")
    collect_updates(qtbot, window, window.run_search)
    answers = iter([("2019-13", True), ("2019", True)])  # a wrong date is asked again, with the reason
    prompts = []

    def get_text(parent, title, label, text=""):
        prompts.append(label)
        return next(answers)

    monkeypatch.setattr(QInputDialog, "getText", staticmethod(get_text))
    bar = window.filter_bar
    updates = collect_updates(qtbot, window, lambda: bar._on_date_activated(bar.date.findData("custom")))
    assert "not a real date" in prompts[1]
    assert bar.date.currentText() == "Dates: 2019" and bar.values()[0] == "2019"
    hits = updates[-1].hits
    assert len(hits) == 3 and all("old" in h.path for h in hits)


def test_a_text_search_in_the_window_shows_the_photo_words_with_the_match_marked(qtbot, make_window, tmp_path):
    from test_ocr import _reader
    from text_photos import text_photo

    _reader()  # skips where Tesseract is missing (never under CI)
    root = tmp_path / "signs"
    root.mkdir()
    text_photo("HAPPY BIRTHDAY", size=(1200, 900), font_px=90).save(root / "party.jpg", quality=92)
    text_photo("No Parking", size=(1200, 900), font_px=90, seed=4).save(root / "sign.jpg", quality=92)
    window = make_window()
    index_and_wait(qtbot, window, [root])
    assert "text:" in window.search.placeholderText()
    window.k_box.setValue(0)
    window.search.setText("text:birth")
    collect_updates(qtbot, window, window.run_search)
    assert window.results.rowCount() == 1
    hit = window.results.hit_at(window.results.index(0))
    assert hit.path.endswith("party.jpg") and [m.lower() for m in hit.text_matches] == ["birth"]
    dialog = window.preview_index(window.results.index(0))
    assert dialog.words.isVisible()
    shown = dialog.words.text()
    assert "Text in the photo:" in shown and "HAPPY" in shown
    assert '<span style="background-color:#ffd54f;color:#000"><b>BIRTH</b></span>DAY' in shown
    dialog.close()


def test_the_preview_shows_a_camera_raw_through_picsift_decoder(qtbot, make_window, tmp_path):
    pytest.importorskip("rawpy")
    from raw_photos import write_dng

    root = tmp_path / "raw"
    root.mkdir()
    write_dng(root / "IMG_0001.dng", size=(384, 256))
    window = make_window()
    index_and_wait(qtbot, window, [root])
    window.k_box.setValue(0)
    window.search.setText("a photo")
    collect_updates(qtbot, window, window.run_search)
    dialog = window.preview_index(window.results.index(0))
    assert not dialog.image.pixmap().isNull() and "cannot be shown" not in dialog.caption.text()
    assert not dialog.words.isVisible()
    dialog.close()
