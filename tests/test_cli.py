"""The `picsift` command end to end: exit codes, JSON output, messages, and where libraries live."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

from conftest import make_photo
from picsift.engine.captions import DEFAULT_COLLECTION, read_captions
from picsift.engine.cli import main
from picsift.engine.paths import DEFAULT_COLLECTION_FILE


def run(capsys, *argv) -> tuple[int, str, str]:
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def run_json(capsys, *argv):
    rc, out, err = run(capsys, *argv, "--json")
    assert rc == 0, err
    return json.loads(out)


def photo_paths(folder) -> set[str]:
    return {str(p) for p in Path(folder).rglob("*") if p.is_file()}


@pytest.fixture
def indexed(photo_folder, tiny_model_dir, capsys):
    """photo_folder indexed with the tiny model into the test's own PICSIFT_HOME."""
    summary = run_json(capsys, "index", photo_folder, "--model", tiny_model_dir)
    assert summary["embedded"] == 12
    return photo_folder


def check_ranks(hits):
    assert [h["rank"] for h in hits] == list(range(1, len(hits) + 1))


# ----- index -------------------------------------------------------------------


def test_index_embeds_once_then_finds_nothing_new(photo_folder, tiny_model_dir, capsys, _isolated_home):
    first = run_json(capsys, "index", photo_folder, "--model", tiny_model_dir)
    assert first["embedded"] == 12
    assert first["photos"] == 12
    assert first["unchanged"] == 0 and first["skipped"] == 0 and first["cancelled"] is False

    second = run_json(capsys, "index", photo_folder, "--model", tiny_model_dir)
    assert second["embedded"] == 0
    assert second["unchanged"] == 12
    assert second["photos"] == 12

    # Text mode, no --model and no folder: the library remembers both.
    rc, out, err = run(capsys, "index")
    assert rc == 0, err
    assert "Nothing new to embed" in out
    assert "12 photos" in out
    assert (_isolated_home / "library.db").is_file()


def test_index_without_folders_in_an_empty_library_is_an_error(capsys, tiny_model_dir):
    rc, out, err = run(capsys, "index", "--model", tiny_model_dir)
    assert rc == 1
    assert out == ""
    assert err.startswith("picsift: ") and "picsift index FOLDER" in err
    assert "Traceback" not in err


# ----- search ------------------------------------------------------------------


def test_search_reranks_exactly_the_top_k(indexed, capsys):
    library_photos = photo_paths(indexed)
    hits = run_json(capsys, "search", "a dog", "-n", "5", "-k", "3")  # no --model: the library's own
    assert isinstance(hits, list) and len(hits) == 5
    check_ranks(hits)
    for h in hits:
        assert set(h) == {"rank", "path", "score", "rerank_score", "match"}
        assert h["path"] in library_photos
    assert len({h["path"] for h in hits}) == 5
    reranked, rest = hits[:3], hits[3:]
    assert all(h["rerank_score"] is not None and 0.0 <= h["rerank_score"] <= 1.0 for h in reranked)
    assert all(h["rerank_score"] is None for h in rest)
    rr = [h["rerank_score"] for h in reranked]
    assert rr == sorted(rr, reverse=True)
    assert [h["score"] for h in rest] == sorted((h["score"] for h in rest), reverse=True)

    # Without reranking: the BE order, best cosine first.
    plain = run_json(capsys, "search", "a dog", "-n", "5", "-k", "0")
    assert len(plain) == 5
    check_ranks(plain)
    assert all(h["rerank_score"] is None for h in plain)
    scores = [h["score"] for h in plain]
    assert scores == sorted(scores, reverse=True)
    # The reranked ones are the BE top 3, reordered; their cosines are unchanged; the rest keeps BE order.
    assert {h["path"] for h in reranked} == {h["path"] for h in plain[:3]}
    assert [h["path"] for h in rest] == [h["path"] for h in plain[3:]]
    be = {h["path"]: h["score"] for h in plain}
    for h in hits:
        assert h["score"] == pytest.approx(be[h["path"]], abs=1e-5)


def test_search_k_larger_than_n_widens_n(indexed, capsys):
    hits = run_json(capsys, "search", "a dog", "-n", "5", "-k", "8")
    assert len(hits) == 8
    check_ranks(hits)
    rr = [h["rerank_score"] for h in hits]
    assert None not in rr
    assert rr == sorted(rr, reverse=True)


def test_search_text_mode_lists_the_hits(indexed, capsys):
    rc, out, err = run(capsys, "search", "a dog", "-n", "4", "-k", "2")
    assert rc == 0, err
    lines = out.strip().splitlines()
    assert len(lines) == 4
    assert lines[0].lstrip().startswith("1.")
    assert all(any(p in line for p in photo_paths(indexed)) for line in lines)
    assert "4 results" in err


def test_search_in_subfolder_returns_only_its_photos(indexed, tiny_model_dir, capsys):
    # A sibling whose name starts like the subfolder's must not leak in.
    make_photo(indexed / "trips-old" / "x.png", seed=99)
    assert run_json(capsys, "index")["embedded"] == 1
    trips = indexed / "trips"
    hits = run_json(capsys, "search", "a dog", "--in", trips, "-k", "2")
    expected = photo_paths(trips)
    assert len(expected) == 6
    assert {h["path"] for h in hits} == expected
    assert all(h["path"].startswith(str(trips) + os.sep) for h in hits)
    check_ranks(hits)

    all_hits = run_json(capsys, "search", "a dog", "-k", "0")
    assert len(all_hits) == 13


def test_search_in_a_folder_with_no_photos_finds_nothing(indexed, tmp_path, capsys):
    empty = tmp_path / "elsewhere"
    empty.mkdir()
    assert run_json(capsys, "search", "a dog", "--in", empty) == []


# ----- similar and captions ----------------------------------------------------


def test_similar_excludes_the_photo_itself(indexed, capsys):
    library_photos = photo_paths(indexed)
    photo = str(indexed / "home" / "photo_00.jpg")
    hits = run_json(capsys, "similar", photo, "-n", "3")
    assert len(hits) == 3
    check_ranks(hits)
    paths = [h["path"] for h in hits]
    assert photo not in paths
    assert len(set(paths)) == 3 and set(paths) <= library_photos
    scores = [h["score"] for h in hits]
    assert scores == sorted(scores, reverse=True)


def test_captions_imports_the_built_in_collection(indexed, tmp_path, capsys):
    status = run_json(capsys, "status")
    assert status["collections"] == []
    # Any file, indexed or not.
    outside = make_photo(tmp_path / "outside" / "new.png", seed=500)
    for image in (indexed / "trips" / "photo_01.png", outside):
        hits = run_json(capsys, "captions", image, "-n", "5")
        assert len(hits) == 5
        check_ranks(hits)
        builtin = set(read_captions(DEFAULT_COLLECTION_FILE))
        for h in hits:
            assert "path" not in h
            assert isinstance(h["text"], str) and h["text"] in builtin
            assert h["rerank_score"] is not None  # default k 20 >= n: all shown are reranked
        rr = [h["rerank_score"] for h in hits]
        assert rr == sorted(rr, reverse=True)
    cols = {c["name"]: c["captions"] for c in run_json(capsys, "status")["collections"]}
    assert cols == {DEFAULT_COLLECTION: len(read_captions(DEFAULT_COLLECTION_FILE))}


def test_captions_from_an_own_collection(indexed, tmp_path, capsys):
    f = tmp_path / "mine.txt"
    f.write_text("a dog on a beach\na cat on a sofa\na red car\n", encoding="utf-8")
    run_json(capsys, "collections", "import", f, "--name", "mine")
    hits = run_json(capsys, "captions", indexed / "home" / "photo_00.jpg", "--collection", "mine", "-n", "5")
    assert sorted(h["text"] for h in hits) == ["a cat on a sofa", "a dog on a beach", "a red car"]


def test_captions_with_an_unknown_collection_is_an_error(indexed, capsys):
    rc, out, err = run(capsys, "captions", indexed / "home" / "photo_00.jpg", "--collection", "nope")
    assert rc == 1
    assert out == ""
    assert err.startswith("picsift: ") and "nope" in err
    assert len(err.strip().splitlines()) == 1


def test_captions_of_a_missing_file_is_an_error(indexed, tmp_path, capsys):
    rc, out, err = run(capsys, "captions", tmp_path / "missing.jpg")
    assert rc == 1
    assert out == ""
    assert len(err.strip().splitlines()) == 1 and err.startswith("picsift: ")
    assert "Traceback" not in err


# ----- status and skipped files --------------------------------------------------


def test_status_counts_photos_and_lists_skipped_files(indexed, capsys, _isolated_home):
    status = run_json(capsys, "status")
    assert status["photos"] == 12
    assert status["errors"] == [] and status["skipped"] == 0
    assert status["folders"] == [str(indexed)]
    assert status["library"] == str(_isolated_home)
    assert status["model"]  # the tiny model's folder

    bad = indexed / "bad.jpg"
    bad.write_bytes(b"")
    notes = indexed / "home" / "notes.png"
    notes.write_text("this is not a picture\n", encoding="utf-8")
    rc, out, err = run(capsys, "index", indexed, "--json")
    assert rc == 0, err
    summary = json.loads(out)
    assert summary["skipped"] == 2 and summary["embedded"] == 0 and summary["photos"] == 12

    status = run_json(capsys, "status")
    assert status["photos"] == 12
    assert status["skipped"] == 2
    errors = {e["path"]: e for e in status["errors"]}
    assert set(errors) == {str(bad), str(notes)}
    for e in status["errors"]:
        assert set(e) >= {"path", "reason"}
        assert isinstance(e["reason"], str) and e["reason"]
    assert "empty" in errors[str(bad)]["reason"]
    assert "not an image" in errors[str(notes)]["reason"]

    # The text mode lists the reasons too.
    rc, out, err = run(capsys, "status")
    assert rc == 0
    assert "Photos:      12" in out
    assert errors[str(bad)]["reason"] in out and errors[str(notes)]["reason"] in out


# ----- collections --------------------------------------------------------------


def test_collections_import_and_list(tmp_path, capsys):
    f = tmp_path / "caps.csv"
    f.write_text("id,caption\n1,a dog\n2,a cat\n3,a dog\n4,a bird\n", encoding="utf-8")
    assert run_json(capsys, "collections", "import", f, "--name", "mine") == {"name": "mine", "captions": 3}
    cols = run_json(capsys, "collections", "list")
    assert [(c["name"], c["captions"]) for c in cols] == [("mine", 3)]
    # Importing again under the same name replaces it; no --name: the file's name.
    assert run_json(capsys, "collections", "import", f, "--name", "mine") == {"name": "mine", "captions": 3}
    assert run_json(capsys, "collections", "import", f) == {"name": "caps", "captions": 3}
    cols = run_json(capsys, "collections", "list")
    assert sorted((c["name"], c["captions"]) for c in cols) == [("caps", 3), ("mine", 3)]

    rc, out, err = run(capsys, "collections", "list")
    assert rc == 0 and "mine: 3 captions" in out


def test_collections_options_before_the_action_are_kept(tmp_path, capsys, _isolated_home):
    """Every command takes --library and --json, also when written before `import` or `list`."""
    f = tmp_path / "caps.txt"
    f.write_text("a dog\na cat\n", encoding="utf-8")
    lib = tmp_path / "other-lib"
    rc, out, err = run(capsys, "collections", "--library", lib, "--json", "import", f, "--name", "mine")
    assert rc == 0, err
    assert json.loads(out) == {"name": "mine", "captions": 2}
    assert (lib / "library.db").is_file()
    assert not (_isolated_home / "library.db").exists()
    rc, out, err = run(capsys, "collections", "--json", "--library", lib, "list")
    assert rc == 0, err
    assert [(c["name"], c["captions"]) for c in json.loads(out)] == [("mine", 2)]


def test_collections_import_of_a_bad_file_is_an_error(tmp_path, capsys):
    f = tmp_path / "bad.csv"
    f.write_text("id,label\n1,x\n", encoding="utf-8")
    rc, out, err = run(capsys, "collections", "import", f, "--json")
    assert rc == 1 and out == ""
    assert err.startswith("picsift: ") and "caption column" in err
    assert run_json(capsys, "collections", "list") == []


# ----- a model that cannot be found ----------------------------------------------


def _assert_one_error_line(err: str, model: str) -> None:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("picsift:")
    assert model in lines[0]
    assert "Traceback" not in err


def test_index_with_a_missing_model_folder(photo_folder, capsys, _isolated_home):
    rc, out, err = run(capsys, "index", photo_folder, "--model", "/nonexistent/folder")
    assert rc == 1
    assert "Traceback" not in out
    _assert_one_error_line(err, "/nonexistent/folder")


def test_search_with_a_missing_hub_model(capsys, _isolated_home):
    from picsift.engine.library import Library

    Library(_isolated_home).close()  # an existing library: the model is what is missing
    rc, out, err = run(capsys, "search", "x", "--model", "some-org/missing-model")
    assert rc == 1
    assert out == ""
    _assert_one_error_line(err, "some-org/missing-model")


def test_a_folder_that_is_not_a_checkpoint(photo_folder, tmp_path, capsys):
    not_a_model = tmp_path / "not-a-model"
    not_a_model.mkdir()
    (not_a_model / "readme.txt").write_text("nothing here", encoding="utf-8")
    rc, out, err = run(capsys, "index", photo_folder, "--model", not_a_model)
    assert rc == 1
    _assert_one_error_line(err, str(not_a_model))


# ----- where libraries live ------------------------------------------------------


def test_library_option_puts_the_library_there(photo_folder, tiny_model_dir, tmp_path, capsys, _isolated_home):
    lib = tmp_path / "my-lib"
    summary = run_json(capsys, "index", photo_folder, "--model", tiny_model_dir, "--library", lib)
    assert summary["embedded"] == 12
    assert (lib / "library.db").is_file()
    assert not (_isolated_home / "library.db").exists()
    status = run_json(capsys, "status", "--library", lib)
    assert status["library"] == str(lib) and status["photos"] == 12
    # The default library (PICSIFT_HOME) was not made: status says so, and does not make it either.
    rc, out, err = run(capsys, "status", "--json")
    assert rc == 1 and out == "" and str(_isolated_home) in err
    assert not _isolated_home.exists()


def test_picsift_home_puts_the_library_there(photo_folder, tiny_model_dir, tmp_path, capsys, monkeypatch):
    home = tmp_path / "elsewhere-home"
    monkeypatch.setenv("PICSIFT_HOME", str(home))
    assert run_json(capsys, "index", photo_folder, "--model", tiny_model_dir)["embedded"] == 12
    assert (home / "library.db").is_file()
    status = run_json(capsys, "status")
    assert status["library"] == str(home) and status["photos"] == 12


def test_two_libraries_do_not_see_each_others_photos(tiny_model_dir, tmp_path, capsys):
    a_photos = [make_photo(tmp_path / "a" / f"a{i}.png", seed=200 + i) for i in range(3)]
    b_photos = [make_photo(tmp_path / "b" / f"b{i}.png", seed=300 + i) for i in range(4)]
    lib_a, lib_b = tmp_path / "lib-a", tmp_path / "lib-b"
    assert run_json(capsys, "index", tmp_path / "a", "--model", tiny_model_dir, "--library", lib_a)["photos"] == 3
    assert run_json(capsys, "index", tmp_path / "b", "--model", tiny_model_dir, "--library", lib_b)["photos"] == 4

    hits_a = run_json(capsys, "search", "a dog", "--library", lib_a, "-k", "0")
    hits_b = run_json(capsys, "search", "a dog", "--library", lib_b, "-k", "0")
    assert {h["path"] for h in hits_a} == set(a_photos)
    assert {h["path"] for h in hits_b} == set(b_photos)
    similar = run_json(capsys, "similar", a_photos[0], "--library", lib_b, "-n", "10")
    assert {h["path"] for h in similar} == set(b_photos)
    assert run_json(capsys, "status", "--library", lib_a)["folders"] == [str(tmp_path / "a")]
    assert run_json(capsys, "status", "--library", lib_b)["folders"] == [str(tmp_path / "b")]


# ----- global options before the command -----------------------------------------


GLOBAL_OPTIONS = ("--library", "L", "--model", "M", "--ce-model", "C", "--device", "cpu", "--precision", "fp32",
                  "--json", "-q")


@pytest.mark.parametrize("command", [("search", "x"), ("index", "F"), ("collections", "import", "f.txt")])
def test_global_options_before_the_command_parse_as_after_it(command):
    from picsift.engine.cli import build_parser

    parser = build_parser()
    before = parser.parse_args([*GLOBAL_OPTIONS, *command])
    after = parser.parse_args([*command, *GLOBAL_OPTIONS])
    assert vars(before) == vars(after)
    assert (before.library, before.model, before.ce_model, before.device, before.precision, before.json,
            before.quiet) == ("L", "M", "C", "cpu", "fp32", True, True)
    # none given anywhere: the same defaults as ever
    plain = vars(parser.parse_args(list(command)))
    assert {k: plain[k] for k in ("library", "model", "ce_model", "device", "precision", "json", "quiet")} == {
        "library": None, "model": None, "ce_model": None, "device": "auto", "precision": "auto", "json": False,
        "quiet": False}


def test_a_global_option_given_before_and_after_the_command_takes_the_one_after():
    from picsift.engine.cli import build_parser

    args = build_parser().parse_args(["--library", "A", "--device", "cuda", "search", "x", "--library", "B"])
    assert args.library == "B" and args.device == "cuda"  # the one not repeated is kept from before


def test_search_with_global_options_before_the_command_finds_what_after_finds(photo_folder, tiny_model_dir, tmp_path,
                                                                        capsys, _isolated_home):
    lib = tmp_path / "lib"
    summary = run_json(capsys, "--library", lib, "--model", tiny_model_dir, "index", photo_folder)
    assert summary["embedded"] == 12 and (lib / "library.db").is_file()
    assert not _isolated_home.exists()
    # --json before the command gives JSON
    rc, out, err = run(capsys, "--library", lib, "--json", "search", "a red square", "-n", "5", "-k", "3", "--no-history")
    assert rc == 0, err
    before = json.loads(out)
    assert len(before) == 5 and all(h["path"].startswith(str(photo_folder)) for h in before)
    after = run_json(capsys, "search", "a red square", "-n", "5", "-k", "3", "--no-history", "--library", lib)
    assert before == after
    rc_b, out_b, _ = run(capsys, "--library", lib, "search", "a red square", "-n", "5", "-k", "3", "--no-history")
    rc_a, out_a, _ = run(capsys, "search", "a red square", "-n", "5", "-k", "3", "--no-history", "--library", lib)
    assert rc_b == rc_a == 0 and out_b == out_a and str(photo_folder) in out_b


@pytest.mark.parametrize("before, after", [
    (["--device", "gpu", "search", "x"], ["search", "x", "--device", "gpu"]),
    (["--precision", "fp8", "search", "x"], ["search", "x", "--precision", "fp8"]),
    (["--json", "--library"], ["search", "x", "--json", "--library"]),  # no value left for it
])
def test_a_bad_global_option_before_the_command_is_refused_as_after_it(before, after, capsys, _isolated_home):
    def refusal(argv):
        with pytest.raises(SystemExit) as exc:
            main(argv)
        out, err = capsys.readouterr()
        assert exc.value.code == 2 and out == ""
        lines = err.strip().splitlines()
        assert len(lines) == 1, err
        return lines[0]

    option = before[-1] if before[-1].startswith("--") else before[0]
    told_after, told_before = refusal(after), refusal(before)
    assert told_after.startswith(f"picsift search: argument {option}: ")
    assert told_before.startswith(f"picsift: argument {option}: ")
    # the same words, told by the parser that met the option
    assert told_before.removeprefix("picsift: ").removesuffix(" (see: picsift --help)") == \
        told_after.removeprefix("picsift search: ").removesuffix(" (see: picsift search --help)")
    assert not _isolated_home.exists()  # the command did not run


# ----- make-random-model ---------------------------------------------------------


def test_make_random_model_writes_a_loadable_checkpoint(tmp_path, photo_folder, capsys):
    folder = tmp_path / "blip-tiny"
    rc, out, err = run(capsys, "make-random-model", folder)
    assert rc == 0, err
    assert str(folder) in out
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    assert config["model_type"] == "blip"
    processor_configs = [p.name for p in folder.iterdir() if "processor" in p.name and p.suffix == ".json"]
    assert processor_configs, sorted(p.name for p in folder.iterdir())
    # The folder works as --model.
    assert run_json(capsys, "index", photo_folder, "--model", folder)["embedded"] == 12


def test_sizes_parse_for_the_cache_budget():
    import argparse

    from picsift.engine.cli import parse_size

    assert parse_size("4G") == 4 * 1024**3 and parse_size("500M") == 500 * 1024**2
    assert parse_size("1.5GB") == int(1.5 * 1024**3) and parse_size("0") == 0
    for nonsense in ("lots", "-1G", "inf", "nan"):
        with pytest.raises(argparse.ArgumentTypeError):
            parse_size(nonsense)


# ----- numbers that mean nothing -------------------------------------------------


@pytest.mark.parametrize("argv", [
    ("search", "x", "-n", "-3"), ("search", "x", "-n", "0"), ("search", "x", "-k", "-1"),
    ("captions", "p.jpg", "-n", "-1"), ("captions", "p.jpg", "-k", "-2"), ("similar", "p.jpg", "-n", "-5"),
    ("index", "--batch-size", "-4"), ("index", "--batch-size", "0"), ("index", "--cache-budget=-1G"),
    ("bench", "f", "--photos", "-2"), ("bench", "f", "--sizes", "1000,-5"),
    ("make-random-model", "d", "--seed", "-1"),
])
def test_meaningless_numbers_are_refused_in_one_line(argv, capsys, _isolated_home):
    with pytest.raises(SystemExit) as exc:
        main(list(argv))
    assert exc.value.code == 2
    out, err = capsys.readouterr()
    assert out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    option = next(a for a in argv if a.startswith("-")).split("=")[0]
    assert lines[0].startswith(f"picsift {argv[0]}: argument {option}")
    assert not _isolated_home.exists()  # the command did not run


# ----- folders and libraries that are not there ----------------------------------


def test_index_names_missing_folders_and_still_indexes_the_others(photo_folder, tiny_model_dir, tmp_path, capsys):
    missing = tmp_path / "no-such-folder"
    a_file = photo_folder / "home" / "photo_00.jpg"
    rc, out, err = run(capsys, "index", photo_folder, missing, a_file, "--model", tiny_model_dir, "--json")
    assert rc == 1
    summary = json.loads(out)
    assert summary["embedded"] == 12 and summary["photos"] == 12
    assert summary["not_indexed"] == [f"folder not found: {missing}", f"not a folder: {a_file}"]
    last = err.strip().splitlines()[-1]
    assert last.startswith("picsift: ") and str(missing) in last and str(a_file) in last
    # -q hides progress, not the error.
    rc, out, err = run(capsys, "index", photo_folder, missing, "-q")
    assert rc == 1 and "Nothing new to embed" in out
    assert err.strip().splitlines() == [f"picsift: folder not found: {missing}; the other folders were indexed."]
    assert run_json(capsys, "status")["folders"] == [str(photo_folder)]


def test_index_of_only_missing_folders_fails_before_loading_anything(tmp_path, capsys, _isolated_home):
    rc, out, err = run(capsys, "index", tmp_path / "nope", "--model", tmp_path / "no-model-either")
    assert rc == 1 and out == ""
    assert err.strip().splitlines() == [f"picsift: Folder not found: {tmp_path / 'nope'}."]
    assert not _isolated_home.exists()


@pytest.mark.parametrize("argv", [("status",), ("status", "--json"), ("search", "a dog"), ("captions", "PHOTO"),
                                  ("similar", "PHOTO"), ("collections", "list")])
def test_reading_a_library_that_is_not_there_creates_nothing(argv, photo_folder, tmp_path, capsys):
    argv = [photo_folder / "home" / "photo_00.jpg" if a == "PHOTO" else a for a in argv]
    for lib, why in ((tmp_path / "mistyped", "no such folder"), (photo_folder, "the folder holds no library")):
        before = photo_paths(photo_folder)
        rc, out, err = run(capsys, *argv, "--library", lib)
        assert rc == 1 and out == ""
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("picsift: No library at ") and str(lib) in lines[0]
        assert why in lines[0]
        assert not (tmp_path / "mistyped").exists()
        assert photo_paths(photo_folder) == before  # no library.db written among the photos


# ----- what text output says -----------------------------------------------------


def test_the_index_hint_shows_only_when_the_library_has_no_photos(indexed, tiny_model_dir, tmp_path, capsys):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    rc, out, err = run(capsys, "search", "a dog", "--in", elsewhere)
    assert rc == 0
    assert out.strip() == f"No photos matched under {elsewhere}."

    empty_lib = tmp_path / "empty-lib"
    run_json(capsys, "index", elsewhere, "--model", tiny_model_dir, "--library", empty_lib)
    for argv in (("search", "a dog"), ("similar", indexed / "home" / "photo_00.jpg")):
        rc, out, err = run(capsys, *argv, "--library", empty_lib)
        assert rc == 0
        assert "Index a folder first" in out and "No photos matched" not in out


def test_a_model_change_is_announced_once(indexed, tmp_path, capsys):
    other = tmp_path / "other\nmodel"
    assert run(capsys, "make-random-model", other, "--seed", "1")[0] == 0
    rc, out, err = run(capsys, "index", "--model", other)
    assert rc == 0, err
    assert err.count("as well") == 1, err
    assert f"embedded with '{tmp_path}/other\\nmodel' as well" in err  # escaped like every path in text output
    assert err.count("Search now uses") == 1
    assert "12 embedded" in out


def test_control_characters_in_paths_are_escaped_in_text_but_exact_in_json(tiny_model_dir, tmp_path, capsys):
    folder = tmp_path / "my\nphotos"
    weird = make_photo(folder / "two\nlines\x1b.png", seed=1)
    plain = make_photo(folder / "plain.png", seed=2)
    (folder / "broken\r.jpg").write_bytes(b"")
    rc, out, err = run(capsys, "index", folder, "--model", tiny_model_dir)
    assert rc == 0, err
    assert f"skipped {tmp_path}/my\\nphotos/broken\\r.jpg: " in err
    assert f"Library: {tmp_path}" in err

    escaped = f"{tmp_path}/my\\nphotos/two\\nlines\\x1b.png"
    rc, out, err = run(capsys, "search", "a dog", "-k", "0")
    lines = out.splitlines()
    assert len(lines) == 2 and sum(line.endswith(escaped) for line in lines) == 1
    rc, out, err = run(capsys, "similar", plain, "-n", "1")
    assert out.splitlines() == [out.rstrip("\n")] and out.rstrip().endswith(escaped)
    rc, out, err = run(capsys, "status")
    assert f"             {tmp_path}/my\\nphotos\n" in out

    assert {h["path"] for h in run_json(capsys, "search", "a dog", "-k", "0")} == {weird, plain}
    assert run_json(capsys, "status")["folders"] == [str(folder)]


def test_shown_escapes_what_would_break_a_line_and_keeps_the_rest():
    from picsift.engine.cli import shown

    assert shown("a\nb\tc\x1b[2Jd\x7f\u202eevil\u2028\udcff") == "a\\nb\\tc\\x1b[2Jd\\x7f\\u202eevil\\u2028\\udcff"
    assert shown("café/フォト/📷 ünd — x.jpg") == "café/フォト/📷 ünd — x.jpg"


def test_sizes_are_shown_in_binary_units(indexed, capsys):
    rc, out, err = run(capsys, "index", "--cache-budget", "2G")
    assert rc == 0
    assert "Rerank cache budget: 2.0 GiB" in err
    rc, out, err = run(capsys, "status")
    line = next(x for x in out.splitlines() if x.startswith("Rerank cache:"))
    assert re.fullmatch(r"Rerank cache: 12 of 12 photos cached, \d+\.\d (KiB|MiB) of 2\.0 GiB; 17 image tokens a photo "
                        r"\(the full grid\)", line), line


def test_format_size_uses_binary_units():
    from picsift.engine.cli import format_size, parse_size

    assert [format_size(n) for n in (0, 1023, 1024, 1536 * 1024, 5 * 1024**4)] == [
        "0 B", "1023 B", "1.0 KiB", "1.5 MiB", "5.0 TiB"]
    for text in ("2G", "500M", "1.5G", "64K"):
        assert format_size(parse_size(text)) == {"2G": "2.0 GiB", "500M": "500.0 MiB", "1.5G": "1.5 GiB",
                                                 "64K": "64.0 KiB"}[text]


def test_ctrl_c_while_indexing_leaves_the_message_last(photo_folder, tiny_model_dir, capsys, monkeypatch):
    import gc

    import picsift.engine.index.indexer
    from picsift.engine.index.indexer import IndexProgress

    def interrupted(library, model, folders, **options):
        yield IndexProgress("scanning")
        yield IndexProgress("indexing", total=12)
        yield IndexProgress("indexing", done=4, total=12, current=str(photo_folder / "home" / "photo_00.jpg"))
        raise KeyboardInterrupt

    monkeypatch.setattr(picsift.engine.index.indexer, "index_folders", interrupted)
    rc, out, err = run(capsys, "index", photo_folder, "--model", tiny_model_dir)
    gc.collect()  # a bar nobody closed draws itself once more when it is collected
    err += capsys.readouterr().err
    assert rc == 130 and out == ""
    before, message, after = err.partition("picsift: interrupted")
    assert message and "4/12" in before
    assert after.count("\n") == 1 and after.endswith("resume.\n"), repr(after)


def test_a_separate_cross_encoder_reranks_and_the_library_remembers_it(indexed, tmp_path, capsys, tiny_model_dir):
    """Sep+Coop: the BE of one checkpoint, the CE of another; vectors stay the BE's, the rerank is the CE's."""
    from picsift.engine.library import Library
    from picsift.engine.models import load_model

    ce_dir = tmp_path / "ce"
    assert run(capsys, "make-random-model", ce_dir, "--seed", "4")[0] == 0
    rc, out, err = run(capsys, "index", "--model", tiny_model_dir, "--rerank-model", ce_dir, "--json")
    assert rc == 0, err
    assert json.loads(out)["embedded"] == 0  # the BE is unchanged: no photo is embedded again
    # ...but the new CE's image tokens are computed at indexing time, as the library's own CE's were.
    with Library(os.environ["PICSIFT_HOME"]) as lib:
        sep_key = load_model(str(tiny_model_dir), device="cpu", ce_model=str(ce_dir)).ce.key
        assert lib.tokens.count(sep_key) == 12
    rc, out, err = run(capsys, "search", "a dog on the beach", "-n", "5", "-k", "5", "--json")
    hits = json.loads(out)
    own = load_model(str(tiny_model_dir), device="cpu")
    sep = load_model(str(tiny_model_dir), device="cpu", ce_model=str(ce_dir))
    from picsift.engine.search.searcher import Searcher

    with Library(os.environ["PICSIFT_HOME"]) as lib:
        expected = Searcher(lib, sep).search("a dog on the beach", n=5, k=5)
        theirs = Searcher(lib, own).search("a dog on the beach", n=5, k=5)
    # The CLI scored fresh fp32 features, these read them back from the int8 cache: within its 0.02 bound.
    assert [h["rerank_score"] for h in hits] == pytest.approx([h.rerank_score for h in expected], abs=0.02)
    got, other_ce = {h["path"]: h["rerank_score"] for h in hits}, {h.path: h.rerank_score for h in theirs}
    assert max(abs(got[p] - other_ce[p]) for p in got.keys() & other_ce.keys()) > 0.05  # not the BE's own CE
    rc, out, err = run(capsys, "status")
    assert f"Reranker:    {ce_dir}" in out
    assert "Rerank cache: 12 of 12 photos cached" in out  # under the new CE's key


def test_reranked_search_embeds_the_query_while_the_ce_loads(indexed, tiny_model_dir, capsys, monkeypatch,
                                                            _isolated_home):
    """`search -k K` with a CE that cannot load in NumPy (a shrunk CE, say) loads the whole model in a thread
    while the text side embeds the query; the reranked order is the one the whole model alone gives."""
    import threading

    import picsift.engine.models.registry as registry
    from picsift.engine import cli
    from picsift.engine.library import Library
    from picsift.engine.models import load_model
    from picsift.engine.search.searcher import Searcher

    text_side_done = threading.Event()
    full_waited = []
    real = cli.Session.load_model

    def load(self, text_only=False):
        if text_only:
            model = real(self, text_only=True)
            text_side_done.set()
            return model
        # The whole model's load only finishes once the text side has loaded: a search that loaded them one
        # after the other (whole model first) would wait here for the full timeout.
        full_waited.append(text_side_done.wait(timeout=30))
        return real(self, text_only=False)

    monkeypatch.setattr(cli.Session, "load_model", load)
    monkeypatch.setattr(registry, "light_rerank_loads", lambda *a, **k: False)
    hits = run_json(capsys, "search", "a dog", "-n", "6", "-k", "4")
    assert full_waited == [True]
    assert len(hits) == 6 and [h["rerank_score"] is not None for h in hits] == [True] * 4 + [False] * 2

    model = load_model(str(tiny_model_dir), device="cpu", precision="auto")
    lib = Library(_isolated_home)
    try:
        ref = Searcher(lib, model).search("a dog", n=6, k=4)
    finally:
        lib.close()
    assert [h["path"] for h in hits] == [h.path for h in ref]
    assert [h["rerank_score"] for h in hits[:4]] == pytest.approx([h.rerank_score for h in ref[:4]], abs=1e-6)
