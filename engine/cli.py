"""The `picsift` command: the engine driven from a terminal.

The only place where engine errors become messages and exit codes.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import sys
import time
from pathlib import Path

from . import __version__
from .errors import PicsiftError

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


def _common(nested: bool = False) -> argparse.ArgumentParser:
    """The options every command takes, before the command or after it. Only the top level carries the
    defaults (nested=False); after a command, and after a sub-command's own (collections import), they are
    nested: set only when given there, since argparse copies a sub-parser's defaults over the values given
    before its command. So one given after the command wins over the same one given before it."""
    def default(value):
        return argparse.SUPPRESS if nested else value

    p = argparse.ArgumentParser(add_help=False)
    g = p.add_argument_group("library and model", "also taken before the command; given in both places, "
                                                  "the one after the command wins" if nested else None)
    g.add_argument("--library", metavar="DIR", default=default(None),
                   help="library folder (default: $PICSIFT_HOME or the user data folder)")
    g.add_argument("--model", metavar="ID_OR_DIR", default=default(None),
                   help="hub id or local checkpoint folder (default: the library's model, else "
                        "Salesforce/blip-itm-base-coco)")
    g.add_argument("--ce-model", "--rerank-model", dest="ce_model", metavar="ID_OR_DIR", default=default(None),
                   help="rerank with the cross-encoder of another checkpoint (separately trained BE and CE); "
                        "default: the --model checkpoint's own")
    g.add_argument("--device", default=default("auto"), choices=["auto", "cuda", "mps", "cpu"], help="default: auto")
    g.add_argument("--precision", default=default("auto"), choices=["auto", "fp32", "fp16", "bf16"],
                   help="auto: fp16 on a GPU, bf16 for photos and reranking on a CPU with bf16 instructions "
                        "(fp32 without); fp32 keeps the exact path")
    g.add_argument("--json", action="store_true", default=default(False), help="print machine-readable JSON")
    g.add_argument("-q", "--quiet", action="store_true", default=default(False), help="no progress bars or notices")
    return p


def parse_size(text: str) -> int:
    """'4G', '500M', '1.5GB', '0' -> bytes."""
    t = text.strip().upper().removesuffix("B")
    units = {"K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}
    try:
        if t and t[-1] in units:
            size = int(float(t[:-1]) * units[t[-1]])
        else:
            size = int(float(t))
    except (ValueError, OverflowError):  # OverflowError: 'inf'
        size = -1
    if size < 0:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (examples: 4G, 500M, 0)")
    return size


def _whole_number(text: str, least: int) -> int:
    try:
        value = int(text)
    except ValueError:
        value = None
    if value is None or value < least:
        raise argparse.ArgumentTypeError(f"expected a whole number of {least} or more, not {text!r}")
    return value


def positive_int(text: str) -> int:
    """A count: results, photos, a batch size."""
    return _whole_number(text, 1)


def non_negative_int(text: str) -> int:
    """A depth where 0 means off (-k), or a seed."""
    return _whole_number(text, 0)


def parse_sizes(text: str) -> list[int]:
    """'10000,100000' -> collection sizes for the bench, each one or more."""
    parts = [x.strip() for x in text.split(",") if x.strip()]
    if not parts or not all(x.isdigit() and int(x) > 0 for x in parts):
        raise argparse.ArgumentTypeError(f"expected collection sizes of 1 or more, like 10000,100000, not {text!r}")
    return [int(x) for x in parts]


class _Parser(argparse.ArgumentParser):
    """A usage error is one line that names the way to the help, not the whole usage block."""

    def error(self, message: str):
        self.exit(EXIT_USAGE, f"{self.prog}: {message} (see: {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    common = _common(nested=True)  # after a command: see _common
    parser = _Parser(
        prog="picsift", description="Find photos in your folders by meaning: retrieve fast, rerank smart.",
        epilog="The library and model options go before the command or after it (picsift --library L search x, "
               "picsift search x --library L); given in both places, the one after the command wins.",
        parents=[_common()])
    parser.add_argument("--version", action="version", version=f"picsift {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("index", parents=[common], help="add folders to the library and index their photos")
    p.add_argument("folders", nargs="*", metavar="FOLDER", help="folders to add (none: rescan the library's folders)")
    p.add_argument("--batch-size", type=positive_int, default=None, help="photos per model batch and commit")
    p.add_argument("--cache-budget", type=parse_size, metavar="SIZE",
                   help="disk the rerank cache may use, kept with the library (e.g. 2G, 500M; 0 turns it off; "
                        "default 4G); photos beyond it are encoded again when a query reranks them")
    p.add_argument("--text-languages", metavar="LANGS",
                   help="languages the words in photos are read in, kept with the library: Tesseract's names "
                        "joined by + (default eng; eng+deu, fra, ...), or off to read no text")
    p.add_argument("--cluster", metavar="ray|ray://ADDRESS",
                   help="decode and encode the photos on a Ray cluster: ray starts a local one for the job, "
                        "ray://ADDRESS joins an existing one (pip install 'picsift[cluster]'); the library stays "
                        "here and merges the job's shards as they arrive")
    p.add_argument("--shards", metavar="URL",
                   help="with --cluster: where the job writes its shards, a folder or fsspec URL every node can "
                        "write (default: a folder in the library)")
    p.add_argument("--actors", type=positive_int, metavar="N",
                   help="with --cluster: encoder actors, each loading the model once (default: one per GPU, "
                        "else one per 2 CPUs)")
    p.add_argument("--raw-with-jpeg", choices=["one", "both"],
                   help="a camera RAW beside a JPEG of the same name: one photo, the JPEG (the default, kept "
                        "with the library), or both files as photos")

    for name, helptext in (("search", "find photos matching a text"),):
        p = sub.add_parser(name, parents=[common], help=helptext)
        p.add_argument("query", nargs="?", default="",
                       help="what to look for, in words; -word moves away from a word, 2:word weighs it twice, "
                            "quotes keep words together (-\"people walking\")")
        p.add_argument("-n", type=positive_int, default=20, help="results to show (default 20)")
        p.add_argument("-k", type=non_negative_int, default=20, help="rerank the top k with the cross-encoder (0 = off)")
        p.add_argument("--photo", metavar="FILE",
                       help="start from a photo: the words then say how the results should differ ('at night')")
        p.add_argument("--in", dest="scope", metavar="FOLDER", help="only photos under this folder")
        p.add_argument("--date", metavar="RANGE",
                       help="only photos taken then (EXIF date, else the file's): 2024, 2024-05, 2023-06..2024-02, "
                            "2024.., 'this year', 'last month', 'last 30 days'")
        p.add_argument("--type", dest="types", metavar="EXT[,EXT]", help="only these file types (jpg,png,heic,…)")
        p.add_argument("--orientation", choices=["landscape", "portrait", "square"])
        p.add_argument("--min-score", type=float, metavar="S",
                       help="hide hits that match less: the CE probability (0-1) when reranked, else the BE cosine")
        p.add_argument("--sort", choices=["relevance", "date"], default="relevance",
                       help="relevance (default) or date taken, newest first (of the hits found)")
        p.add_argument("--no-history", action="store_true", help="do not add the query to the recent ones")

        p.add_argument("--li-candidates", type=non_negative_int, default=200, metavar="N",
                       help="with a model that has a late-interaction (LI) head: the BE's top N that the LI stage "
                            "orders before the CE reranks the top k (default 200; 0 = no LI stage)")

    p = sub.add_parser("duplicates", parents=[common],
                       help="groups of exact and near-duplicate photos, largest groups first (nothing is deleted)")
    p.add_argument("--threshold", type=float, default=0.95, metavar="COS",
                   help="BE cosine at or above which two photos are near-duplicate candidates (default 0.95)")
    p.add_argument("--hamming", type=non_negative_int, default=10, metavar="BITS",
                   help="the perceptual hashes of a near-duplicate pair differ in at most this many of 64 bits "
                        "(default 10)")

    p = sub.add_parser("trash", parents=[common],
                       help="move photos to the system trash (never a permanent delete) and out of the library")
    p.add_argument("paths", nargs="+", metavar="PHOTO")
    p.add_argument("--yes", action="store_true", help="do not ask for confirmation")

    p = sub.add_parser("folders", parents=[common], help="the library's folders and excluded folders")
    p.add_argument("action", nargs="?", choices=["list", "exclude", "include"], default="list",
                   help="list (default); exclude PATH: stop indexing it and forget its photos (files untouched); "
                        "include PATH: index it again from the next index")
    p.add_argument("path", nargs="?", metavar="PATH")

    p = sub.add_parser("watch", parents=[common],
                       help="keep the library current: index photo changes in its folders as they happen (Ctrl+C stops)")
    p.add_argument("--debounce", type=float, default=2.0, metavar="S",
                   help="seconds of quiet after a change before indexing (default 2)")

    p = sub.add_parser("install-desktop-entry", parents=[common],
                       help="add picsift to the desktop's application menu (Linux: a freedesktop entry and icon)")
    p.add_argument("--remove", action="store_true", help="take the entry and icon away again")

    p = sub.add_parser("recent", parents=[common], help="the library's recent queries, newest first")
    p.add_argument("--clear", action="store_true", help="forget them")

    p = sub.add_parser("captions", parents=[common], help="captions that describe a photo best")
    p.add_argument("image", help="a photo file, indexed or not")
    p.add_argument("-n", type=positive_int, default=10, help="captions to show (default 10)")
    p.add_argument("-k", type=non_negative_int, default=20, help="rerank the top k with the cross-encoder (0 = off)")
    p.add_argument("--collection", help="caption collection (default: the built-in one)")

    p = sub.add_parser("similar", parents=[common], help="photos most similar to a photo")
    p.add_argument("image", help="a photo file, indexed or not")
    p.add_argument("-n", type=positive_int, default=20, help="results to show (default 20)")

    sub.add_parser("status", parents=[common], help="library, model, device and counts")

    p = sub.add_parser("collections", parents=[common], help="caption collections")
    csub = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    ci = csub.add_parser("import", parents=[common], help="import captions: .txt (one a line), .csv, COCO .json")
    ci.add_argument("file")
    ci.add_argument("--name", help="collection name (default: the file name)")
    csub.add_parser("list", parents=[common], help="list collections")

    p = sub.add_parser("bench", parents=[common], help="measure this machine: indexing, search, rerank, disk")
    p.add_argument("folder", help="a folder of at least 20 real photos (indexed into a temporary library)")
    p.add_argument("--photos", type=positive_int, default=48, help="photos to index (default 48, at least 20)")
    p.add_argument("--sizes", type=parse_sizes, default=[10_000, 100_000, 1_000_000],
                   help="library sizes of the FAISS and end-to-end query figures (default 10000,100000,1000000)")
    p.add_argument("--queries", type=positive_int, default=5, help="text queries per library size (default 5)")
    p.add_argument("--cache-budget", type=parse_size, default=None, metavar="SIZE",
                   help="rerank-cache budget the large libraries are measured under (default 4G, the app's)")
    p.add_argument("--repeat-queries", type=positive_int, default=20,
                   help="distinct queries of the repeated-query workload, each asked 3 times (default 20)")
    p.add_argument("--plot", metavar="PNG", help="also plot query latency against library size (matplotlib)")

    p = sub.add_parser("gui", parents=[common], help="open the desktop window")
    p.add_argument("folders", nargs="*", metavar="FOLDER", help="folders to add and index on start")

    p = sub.add_parser("make-random-model", parents=[common],
                       help="write a random-weight BLIP checkpoint folder (for trying picsift offline and tests)")
    p.add_argument("folder")
    p.add_argument("--preset", default="tiny", choices=["tiny", "base"],
                   help="tiny: a few MB, fast; base: the real architecture (about 900 MB)")
    p.add_argument("--seed", type=non_negative_int, default=0)
    p.add_argument("--li-keep", type=positive_int, metavar="M",
                   help="also a random late-interaction head keeping M image tokens (width 128, no codes)")
    p.add_argument("--shrunk-ce", type=positive_int, metavar="F",
                   help="also a shrunk-CE overlay reading the patch grid pooled F x F (the random CE's own weights)")

    from .training.commands import add_parsers

    add_parsers(sub, common, positive_int, non_negative_int, parse_sizes)
    from .cluster.commands import add_parsers as add_cluster_parsers

    add_cluster_parsers(sub, common, positive_int)
    return parser


class Session:
    """Opens the library and the model lazily, as a command needs them."""

    def __init__(self, args: argparse.Namespace):
        self.args = args
        self._library = None
        self._model = None
        self.once = _Once()

    @property
    def library(self):
        if self._library is None:
            from .library import Library
            from .paths import library_dir

            # Only these commands start a library; the others, pointed at a mistyped folder, must not.
            create = self.args.command in ("index", "gui") or (
                self.args.command == "collections" and self.args.action == "import")
            # Writers and status check the whole database on open; searches only a small one (cost: about
            # 0.3 s at 200,000 photos), and any damage a query meets is reported the same way.
            check = True if create or self.args.command == "status" else None
            self._library = Library(library_dir(self.args.library), create=create, check=check)
        return self._library

    @property
    def model_id(self) -> str:
        from .models import DEFAULT_MODEL

        return self.args.model or self.library.model_id or DEFAULT_MODEL

    @property
    def model(self):
        if self._model is None:
            # A search that does not rerank needs only the BE's text side: load nothing else (unless the
            # library's model has an LI stage that orders the BE's candidates).
            text_only = self.args.command == "search" and getattr(self.args, "k", None) == 0 \
                and not self.uses_late()
            self._model = self.load_model(text_only)
        return self._model

    def uses_late(self) -> bool:
        """Whether this search runs an LI stage: the library's model has one and --li-candidates is not 0."""
        if not getattr(self.args, "li_candidates", 0):
            return False
        if self.args.model:
            from .models.late import has_head
            from .models.registry import cached_folder

            folder = cached_folder(self.args.model)
            return folder is not None and has_head(folder)
        return bool(self.library.li_key)

    @property
    def ce_model(self) -> str | None:
        ce_model = getattr(self.args, "ce_model", None)
        if ce_model is None and not self.args.model:
            ce_model = self.library.store.get_meta("ce_source")  # the library's separately trained CE
        return ce_model

    def load_model(self, text_only: bool = False, light: bool = False):
        from .models import load_model

        return load_model(self.model_id, device=self.args.device, precision=self.args.precision,
                          ce_model=self.ce_model, text_only=text_only, light=light)

    def notice(self, msg: str) -> None:
        """Something the engine wants the user to read; shown once however many records carry it."""
        if self.once.first_time(msg):
            _say(self.args, shown(msg))

    def close(self) -> None:
        if self._library is not None:
            self._library.close()


class _Once(logging.Filter):
    """Engine notices arrive twice over, as a log warning and inside progress records: let each
    text through once."""

    def __init__(self) -> None:
        super().__init__()
        self._seen: set[str] = set()

    def first_time(self, msg: str) -> bool:
        if msg in self._seen:
            return False
        self._seen.add(msg)
        return True

    def filter(self, record: logging.LogRecord) -> bool:
        return self.first_time(record.getMessage())


class _OneLine(logging.Formatter):
    """A log message as text output writes paths; a traceback after it keeps its lines."""

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802
        return shown(super().formatMessage(record))


# Characters that would break a line of text output or reorder it on screen: C0/C1 controls (a
# newline in a file name), line and paragraph separators, bidirectional overrides, and the lone
# surrogates that stand for undecodable bytes in a file name (printing one raises UnicodeEncodeError).
_UNPRINTABLE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u200e\u200f\u202a-\u202e\u2066-\u2069"
                          "\ud800-\udfff]")


def shown(text: str) -> str:
    """A path, caption or message as one line of text output, its unprintable characters escaped
    as Python writes them (a newline as \\n). JSON output keeps the exact string."""
    return _UNPRINTABLE.sub(lambda m: repr(m.group())[1:-1], text)


def format_size(size: float) -> str:
    """Bytes in binary units, the ones sizes are given in (--cache-budget 2G is '2.0 GiB')."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024:
            return f"{size:.0f} B" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TiB"


def _say(args, *msg) -> None:
    if not args.quiet:
        print(*msg, file=sys.stderr)


def cmd_index(s: Session) -> int:
    from tqdm import tqdm

    from .index.indexer import index_folders

    args = s.args
    folders = args.folders or s.library.store.folders()
    if not folders:
        raise PicsiftError("No folders given and the library has none yet: picsift index FOLDER")
    # Checked here rather than read from the engine's progress messages: the error must show
    # under -q too, and when no folder is usable no model is loaded and no library created.
    from .paths import normalize_path
    from .index.scanner import folder_problem

    checked = [(f, folder_problem(normalize_path(f))) for f in folders]
    problems = [p for _, p in checked if p]
    if len(problems) == len(folders):
        raise PicsiftError(shown("; ".join(problems)).capitalize() + ".")
    folders = [f for f, p in checked if not p]
    cluster = None
    if args.cluster is not None:  # a wrong address or a missing extra is one sentence, before any work
        from .cluster.job import ClusterOptions, import_ray, parse_cluster

        cluster = ClusterOptions(address=parse_cluster(args.cluster), shards=args.shards, actors=args.actors)
        import_ray()
    elif args.shards or args.actors:
        raise PicsiftError("--shards and --actors belong to --cluster")
    if args.text_languages is not None:
        langs = args.text_languages.strip()
        if langs.lower() != "off" and not re.fullmatch(r"[A-Za-z_]+(\+[A-Za-z_]+)*", langs):
            raise PicsiftError(f"--text-languages takes Tesseract language names joined by +, such as eng or "
                               f"eng+deu, or off; not '{shown(langs)}'")
        s.library.set_text_languages(None if langs.lower() == "off" else langs)
    if args.raw_with_jpeg is not None:
        s.library.set_raw_with_jpeg(args.raw_with_jpeg)
    if args.cache_budget is not None:
        dropped = s.library.set_cache_budget(args.cache_budget)
        _say(args, f"Rerank cache budget: {format_size(args.cache_budget)}"
                   + (f" ({dropped} cached photos dropped to fit)" if dropped else ""))
    model = s.model
    _say(args, f"Library: {shown(str(s.library.folder))}\nModel: {shown(model.model_id)} on {model.describe_device()}")
    options = {"batch_size": args.batch_size} if args.batch_size else {}
    if cluster is not None:
        from .cluster.indexer import ClusterIndexer

        runs = ClusterIndexer(s.library, model, cluster, **options).run(folders)
    else:
        runs = index_folders(s.library, model, folders, **options)
    bar, bar_phase = None, None
    last = None
    try:
        for progress in runs:
            last = progress
            for m in progress.messages:
                s.notice(m)
            if progress.phase in ("indexing", "late", "caching", "reading") and progress.phase != bar_phase \
                    and progress.total \
                    and not args.quiet and not args.json:
                if bar is not None:
                    bar.close()
                bar_phase = progress.phase
                bar = tqdm(total=progress.total, unit="photo", dynamic_ncols=True, file=sys.stderr,
                           desc={"caching": "Reranker features", "late": "LI tokens",
                                 "reading": "Text in photos"}.get(bar_phase))
            if bar is not None:
                bar.update(progress.done - bar.n)
                if progress.current:
                    bar.set_postfix_str(shown(os.path.basename(progress.current))[-30:], refresh=False)
            for path, reason in progress.skipped_files:
                if bar is not None:
                    bar.write(f"skipped {shown(path)}: {shown(reason)}", file=sys.stderr)
                else:
                    _say(args, f"skipped {shown(path)}: {shown(reason)}")
    finally:  # on Ctrl+C too: the bar's last drawing comes before the interrupted message, not after it
        if bar is not None:
            bar.close()
    summary = {"embedded": last.embedded, "moved": last.moved, "unchanged": last.unchanged,
               "removed": last.removed, "skipped": last.skipped, "photos": s.library.store.count_photos(),
               "cancelled": last.phase == "cancelled", "not_indexed": problems}
    if args.json:
        print(json.dumps(summary))
    else:
        print(last.summary() + f" The library has {summary['photos']} photos.")
    if problems:
        print(f"picsift: {shown('; '.join(problems))}; the other folders were indexed.", file=sys.stderr)
        return EXIT_ERROR
    return EXIT_OK


def _print_hits(s: Session, hits, kind: str) -> None:
    args = s.args
    if args.json:
        print(json.dumps([h.to_json() for h in hits], ensure_ascii=False))
        return
    if not hits:
        if kind == "caption":
            print("No captions found.")
        elif s.library.store.count_photos():
            print(f"No photos matched under {shown(args.scope)}." if getattr(args, "scope", None)
                  else "No photos matched.")
            if "text:" in (getattr(args, "query", "") or "").lower() and not s.library.text.count()[1]:
                langs = s.library.text_languages
                print("No photo of the library has text read in it" + (
                    f" yet ({langs}): 'picsift index' reads it where Tesseract is installed." if langs else
                    ": reading it is off ('picsift index --text-languages eng' turns it on)."))
        else:
            print("The library has no photos yet. Index a folder first: picsift index FOLDER")
        return
    for h in hits:
        li = f"  li {h.li_score:+.3f}" if h.li_score is not None else ""
        rr = f"  ce {h.rerank_score:.3f}" if h.rerank_score is not None else ""
        print(f"{h.rank:3d}. {h.score:+.3f}{li}{rr}  {shown(h.path if h.path is not None else h.text)}")
        if h.text_matches:
            print("       text: " + " · ".join(shown(" ".join(m.split())) for m in h.text_matches))


def _search_while_ce_loads(s: Session, filters=None):
    """A reranked terminal search that starts its work at once: the whole model (the CE) loads in a
    thread while the BE's text side, which loads in a fraction of the time, embeds the query and FAISS
    finds the candidates; the CE then reranks that same search session."""
    import threading

    from .search.searcher import Searcher, _final_hits

    args = s.args
    library = s.library  # opened here, before the thread reads the library's model names
    loaded: dict = {}

    def load() -> None:
        try:
            loaded["model"] = s.load_model()
        except BaseException as exc:  # raised again in the main thread
            loaded["error"] = exc

    thread = threading.Thread(target=load, name="picsift-load-ce", daemon=True)
    thread.start()
    session = Searcher(library, s.load_model(text_only=True), li_candidates=args.li_candidates).session(
        args.query, n=args.n, scope=args.scope, filters=filters, photo=args.photo)
    session.retrieve(max(args.n, args.k))
    thread.join()
    if "error" in loaded:
        raise loaded["error"]
    s._model = loaded["model"]
    session.searcher = Searcher(library, s._model, li_candidates=args.li_candidates)
    return _final_hits(session.stream(args.k))


def cmd_search(s: Session) -> int:
    from .models.registry import light_rerank_loads, text_side_loads_alone
    from .search.searcher import Searcher

    from .search.query import parse_query
    from .search.searcher import _final_hits, arrange, check_photo_file

    args = s.args
    t0 = time.perf_counter()
    filters = _search_filters(args)
    if args.photo:
        check_photo_file(args.photo)
    parsed = parse_query(args.query, args.photo)  # a query with nothing to look for stops here, before loading
    reranks_text = args.k > 0 and parsed.positive_text and not args.photo and s._model is None
    if reranks_text and not s.uses_late() and light_rerank_loads(s.model_id, s.ce_model):
        # the text side and the CE in NumPy score what the rerank cache holds; the vision encoder loads
        # only for a candidate that is not cached
        s._model = s.load_model(light=True)
        session = Searcher(s.library, s._model, li_candidates=args.li_candidates).session(
            args.query, n=args.n, scope=args.scope, filters=filters)
        hits = _final_hits(session.stream(args.k))
    elif reranks_text and text_side_loads_alone(s.model_id):
        hits = _search_while_ce_loads(s, filters)
    else:
        # a photo outside the library needs the vision encoder: the whole model loads
        model = s.model if not args.photo or s._model is not None else s.load_model()
        session = Searcher(s.library, model, li_candidates=args.li_candidates).session(
            args.query, n=args.n, scope=args.scope, filters=filters, photo=args.photo)
        hits = _final_hits(session.stream(args.k))
    hits = arrange(hits, s.library, args.min_score, args.sort)
    if not args.no_history:
        try:
            s.library.remember_query(args.query)
        except PicsiftError:
            pass  # a library another process is writing: the history is not worth failing a search for
    if not args.json:
        late = f"LI ordered the BE's top {args.li_candidates}, " if hits and hits[0].li_rank else ""
        extra = [f"{parsed.describe()}"] if not parsed.plain else []
        if filters is not None:
            extra.append(filters.describe())
        if args.min_score is not None:
            extra.append(f"match at least {args.min_score:g}")
        if args.sort == "date":
            extra.append("newest first")
        _say(args, f"{len(hits)} results in {1000 * (time.perf_counter() - t0):.0f} ms "
                   f"({late}reranked top {min(args.k, len(hits)) if parsed.positive_text else 0})"
                   + ("; " + "; ".join(extra) if extra else ""))
    _print_hits(s, hits, "photo")
    return EXIT_OK


def _search_filters(args):
    """The filters a search's options ask for, or None."""
    from .search.filters import Filters, parse_date_range, parse_types

    lo = hi = None
    if args.date:
        lo, hi = parse_date_range(args.date)
    f = Filters(taken_from=lo, taken_to=hi, types=parse_types(args.types) if args.types else (),
                orientation=args.orientation)
    return None if f.empty else f


def cmd_duplicates(s: Session) -> int:
    from .duplicates import find_duplicates

    args = s.args
    if not 0.0 < args.threshold <= 1.0:
        raise PicsiftError("--threshold is a cosine between 0 and 1.")
    groups = find_duplicates(s.library, cosine=args.threshold, max_hamming=args.hamming)
    if args.json:
        print(json.dumps([g.to_json() for g in groups], ensure_ascii=False))
        return EXIT_OK
    if not groups:
        print("No duplicates found.")
        return EXIT_OK
    extra = sum(len(g.members) - 1 for g in groups)
    print(f"{len(groups)} group(s) of duplicates; {extra} photo(s) beyond the first of each. The first of a "
          "group has the most pixels (then the largest file, then the oldest date).")
    for n, g in enumerate(groups, 1):
        print(f"\n{n}. {'exact copies' if g.exact else 'near-duplicates'}, {len(g.members)} photos")
        for m in g.members:
            size = f"{m.width}x{m.height}" if m.width and m.height else "size unknown"
            when = time.strftime("%Y-%m-%d %H:%M", time.localtime(m.taken)) if m.taken else "date unknown"
            print(f"   {format_size(m.size):>9}  {size:>11}  {when}  {shown(m.path)}")
    print("\nMove the ones you do not want to the trash with: picsift trash PHOTO...")
    return EXIT_OK


def cmd_trash(s: Session) -> int:
    from .duplicates import TrashResult, trash, trashable

    args = s.args
    photos, refused = trashable(s.library, args.paths)  # confirmed, and moved, are the library's photos only
    told = False
    if photos and not args.yes:
        _say_not_moved(refused)
        told = True
        if not sys.stdin.isatty():
            raise PicsiftError("Give --yes to move photos to the trash without a terminal to confirm in.")
        answer = input(f"Move {len(photos)} photo(s) to the trash and out of the library? [y/N] ")
        if answer.strip().lower() not in ("y", "yes"):
            photos = []
    result = trash(s.library, photos) if photos else TrashResult()
    failed = refused + result.failed
    if args.json:
        print(json.dumps({"moved": result.moved, "failed": [{"path": p, "reason": r} for p, r in failed]},
                         ensure_ascii=False))
    else:
        print(f"{len(result.moved)} photo(s) moved to the trash and out of the library." if result.moved
              else "Nothing moved.")
        _say_not_moved(result.failed if told else failed)
    return EXIT_ERROR if failed else EXIT_OK


def _say_not_moved(failed) -> None:
    for p, why in failed:
        print(f"Not moved: {shown(p)}: {why}", file=sys.stderr)


def cmd_folders(s: Session) -> int:
    args = s.args
    lib = s.library
    if args.action != "list" and not args.path:
        raise PicsiftError(f"picsift folders {args.action} needs a folder: picsift folders {args.action} PATH")
    if args.action == "exclude":
        gone = lib.exclude_folder(args.path)
        _say(args, f"Excluded {shown(args.path)}: {gone} photo(s) left the library (the files are untouched). "
                   "'picsift folders include' undoes it.")
    elif args.action == "include":
        if not lib.include_folder(args.path):
            raise PicsiftError(f"{args.path} is not an excluded folder.")
        _say(args, f"{shown(args.path)} is indexed again from the next 'picsift index'.")
    folders, excluded = lib.store.folders(), lib.excluded_folders()
    if args.json:
        print(json.dumps({"folders": folders, "excluded": excluded}, ensure_ascii=False))
    elif args.action == "list":
        print("\n".join(f"Folder:   {shown(f)}" for f in folders) or "No folders yet.")
        for f in excluded:
            print(f"Excluded: {shown(f)}")
    return EXIT_OK


def cmd_watch(s: Session) -> int:
    """Index the library's folders once, then again whenever photos in them change, until interrupted."""
    import queue

    from .index.indexer import index_folders
    from .watch import FolderWatcher

    args = s.args
    lib = s.library
    folders = lib.store.folders()
    if not folders:
        raise PicsiftError("The library has no folders yet: picsift index FOLDER")
    model = s.model
    changed: queue.Queue = queue.Queue()
    watcher = FolderWatcher(changed.put, debounce=max(0.1, args.debounce))
    for problem in watcher.watch(folders, lib.excluded_folders()):
        print(f"picsift: {problem}", file=sys.stderr)

    def run(batch: list[str]) -> None:
        last = None
        for last in index_folders(lib, model, batch):
            pass
        if last is not None:
            print(f"{time.strftime('%H:%M:%S')} {', '.join(shown(f) for f in batch)}: {last.summary()}", flush=True)

    try:
        run(folders)
        _say(args, f"Watching {len(folders)} folder(s) for photo changes; Ctrl+C stops.")
        while True:
            batch = changed.get()
            watcher.excluded = lib.excluded_folders()
            current = set(lib.store.folders())
            run([f for f in batch if f in current] or batch)
    finally:
        watcher.stop()


def cmd_recent(s: Session) -> int:
    if s.args.clear:
        s.library.clear_recent_queries()
        _say(s.args, "Recent queries cleared.")
        return EXIT_OK
    recent = s.library.recent_queries()
    if s.args.json:
        print(json.dumps(recent, ensure_ascii=False))
    else:
        print("\n".join(shown(q) for q in recent) if recent else "No recent queries.")
    return EXIT_OK


def cmd_captions(s: Session) -> int:
    from tqdm import tqdm

    from .search.searcher import Searcher, check_photo_file

    args = s.args
    check_photo_file(args.image)
    searcher = Searcher(s.library, s.model)
    bar = None
    for done, total in searcher.prepare_captions(args.collection):
        if bar is None and not args.quiet:
            bar = tqdm(total=total, unit="caption", desc="Preparing captions (first use)", file=sys.stderr)
        if bar is not None:
            bar.update(done - bar.n)
    if bar is not None:
        bar.close()
    hits = searcher.captions(args.image, n=args.n, k=args.k, collection=args.collection)
    _print_hits(s, hits[: args.n], "caption")
    return EXIT_OK


def cmd_similar(s: Session) -> int:
    from .search.searcher import Searcher

    hits = Searcher(s.library, s.model).similar(s.args.image, n=s.args.n)
    _print_hits(s, hits, "photo")
    return EXIT_OK


def cmd_status(s: Session) -> int:
    from .models import DEFAULT_MODEL
    from .models.device import pick_device

    args = s.args
    st = s.library.status()
    device, reason = pick_device(args.device)
    st["device"] = f"{device} ({reason})"
    st["model"] = st["model"] or (args.model or DEFAULT_MODEL)
    if args.json:
        print(json.dumps(st, ensure_ascii=False))
        return EXIT_OK
    print(f"Library:     {shown(st['library'])}")
    print(f"Model:       {shown(st['model'])}")
    print(f"Device:      {st['device']}")
    print(f"Photos:      {st['photos']} in {len(st['folders'])} folder(s)")
    for f in st["folders"]:
        print(f"             {shown(f)}")
    cache = st["rerank_cache"]
    if st.get("ce_model"):
        print(f"Reranker:    {shown(st['ce_model'])}")
    for m in st.get("models", []):
        if not m["active"]:
            print(f"Also:        {shown(m['name'])}: {m['photos']} of {st['readable']} photos embedded (not searched)")
    layout = f"; {cache['layout']}" if cache.get("layout") else ""
    print(f"Rerank cache: {cache['photos']} of {st['photos']} photos cached, {format_size(cache['bytes'])} of "
          f"{format_size(cache['budget_bytes'])}{layout}")
    li = st.get("late_interaction")
    if li:
        print(f"LI tokens:   {li['photos']} of {st['photos']} photos, {format_size(li['bytes'])}")
    text = st["text_in_photos"]
    print(f"Text:        {text['with_text']} of {text['read']} photos read have words"
          + (f" (languages {text['languages']})" if text["languages"] else " (reading text is off)"))
    if st.get("read_only"):
        print("Read-only:   searching works; indexing needs write access")
    print(f"Skipped:     {st['skipped']}")
    reasons: dict[str, int] = {}
    for e in st["errors"]:
        reasons[e["reason"]] = reasons.get(e["reason"], 0) + 1
    for reason, count in sorted(reasons.items(), key=lambda kv: -kv[1]):
        print(f"             {count:5d}  {shown(reason)}")
    print(f"Collections: {', '.join(c['name'] + ' (' + str(c['captions']) + ')' for c in st['collections']) or 'none yet (the built-in one is added on first use)'}")
    return EXIT_OK


def cmd_collections(s: Session) -> int:
    from .captions import import_collection

    args = s.args
    if args.action == "import":
        name, count = import_collection(s.library, args.file, args.name)
        if args.json:
            print(json.dumps({"name": name, "captions": count}))
        else:
            print(f"Imported {count} captions as collection '{shown(name)}'.")
        return EXIT_OK
    cols = s.library.store.collections()
    if args.json:
        print(json.dumps(cols))
    else:
        for c in cols:
            print(f"{shown(c['name'])}: {c['captions']} captions ({shown(c['source'])})")
        if not cols:
            print("No collections yet; the built-in one is added on first use of 'picsift captions'.")
    return EXIT_OK


def cmd_make_random_model(s: Session) -> int:
    from .models.random_blip import build_random_blip

    path = build_random_blip(s.args.folder, s.args.preset, seed=s.args.seed)
    if s.args.li_keep:
        import torch
        from transformers import BlipConfig

        from .models.late_head import head_for, save_head

        torch.manual_seed(s.args.seed)
        save_head(head_for(BlipConfig.from_pretrained(path), keep_image=s.args.li_keep), path)
    if s.args.shrunk_ce:
        from transformers import BlipForImageTextRetrieval

        from .models import shrunk_ce

        try:
            shrunk_ce.pooled_tokens(_grid_tokens(path), s.args.shrunk_ce)
        except ValueError as exc:
            raise PicsiftError(f"--shrunk-ce {s.args.shrunk_ce} does not fit the {s.args.preset} preset: {exc}") from exc
        model = BlipForImageTextRetrieval.from_pretrained(path)
        shrunk_ce.save(model, path, shrunk_ce.ShrunkConfig(pool=s.args.shrunk_ce))
    if s.args.json:
        print(json.dumps({"path": str(path), "preset": s.args.preset, "seed": s.args.seed, "li_keep": s.args.li_keep,
                          "shrunk_ce": s.args.shrunk_ce}))
        return EXIT_OK
    print(f"Wrote a random-weight BLIP retrieval checkpoint ({s.args.preset}) to {shown(str(path))}. Its "
          "rankings are meaningless; use it to try picsift without a download: --model " + shown(str(path)))
    return EXIT_OK


def _grid_tokens(folder) -> int:
    """Image tokens of a checkpoint's vision encoder: CLS and the patch grid."""
    cfg = json.loads((Path(folder) / "config.json").read_text())["vision_config"]
    return (cfg["image_size"] // cfg["patch_size"]) ** 2 + 1


def cmd_bench(s: Session) -> int:
    import tempfile

    from .bench import BenchError, plot_curve, run_bench
    from .models import DEFAULT_MODEL, is_cached, load_model
    from .models.random_blip import build_random_blip
    from .token_cache import DEFAULT_BUDGET_BYTES

    args = s.args
    sizes = args.sizes
    if args.plot:
        try:
            import matplotlib  # noqa: F401  (checked now, not after minutes of measuring)
        except ImportError:
            raise BenchError("--plot needs matplotlib: pip install 'picsift[bench]'") from None
    with tempfile.TemporaryDirectory(prefix="picsift-bench-model-") as tmp:
        model_id = args.model or DEFAULT_MODEL
        note = model_id
        if not args.model and not is_cached(DEFAULT_MODEL):
            _say(args, f"{DEFAULT_MODEL} is not cached: measuring its architecture with random weights (same cost).")
            model_id = str(build_random_blip(Path(tmp) / "blip-base", "base"))
            note = f"random-weight BLIP base (architecture of {DEFAULT_MODEL})"
        model = load_model(model_id, device=args.device, precision=args.precision)
        curve: list = []
        figures = []
        if not args.json:
            print(f"model: {note}\ndevice: {model.describe_device()}")
            print(f"{'figure':38s} {'value':>12s}  unit      note")
        budget = args.cache_budget if args.cache_budget is not None else DEFAULT_BUDGET_BYTES
        for fig in run_bench(model, args.folder, photos=args.photos, sizes=sizes, curve=curve, queries=args.queries,
                             cache_budget_bytes=budget, repeat_queries=args.repeat_queries):
            figures.append(fig)
            if not args.json and fig.name != "device":
                value = fig.value if isinstance(fig.value, str) else f"{fig.value:,}"
                print(f"{fig.name:38s} {value:>12s}  {fig.unit:9s} {fig.note}", flush=True)
        if args.json:
            print(json.dumps([{"name": "model", "value": note, "unit": "", "note": ""}]
                             + [f.to_json() for f in figures]))
        if args.plot:
            threads = next((f.value for f in figures if f.name == "threads"), "?")
            plot_curve(curve, args.plot, title=f"picsift query latency ({model.device}, {threads} threads, "
                                                f"{model.precision})")
            _say(args, f"plot written to {args.plot}")
    return EXIT_OK


COMMANDS = {"index": cmd_index, "search": cmd_search, "recent": cmd_recent, "duplicates": cmd_duplicates, "folders": cmd_folders, "watch": cmd_watch,
            "trash": cmd_trash, "captions": cmd_captions, "similar": cmd_similar,
            "status": cmd_status, "bench": cmd_bench, "collections": cmd_collections, "make-random-model": cmd_make_random_model}


def main(argv: list[str] | None = None, extra_commands: dict | None = None) -> int:
    """Run one command. extra_commands lets the app package add the window (`gui`) without the
    engine importing it."""
    args = build_parser().parse_args(argv)
    level = logging.ERROR if args.quiet else logging.WARNING
    logging.basicConfig(level=level, format="%(message)s")
    from .cluster.commands import COMMANDS as CLUSTER_COMMANDS
    from .training.commands import COMMANDS as TRAINING_COMMANDS

    handlers = {**COMMANDS, **TRAINING_COMMANDS, **CLUSTER_COMMANDS, **(extra_commands or {})}
    if args.command not in handlers:
        print("picsift: the desktop window is not part of this installation (the app package is missing).",
              file=sys.stderr)
        return EXIT_USAGE
    session = Session(args)
    # The engine's own warnings (notices) go to stderr through the session's filter, which lets
    # each text through once: the same notice also arrives in progress records.
    engine_log = logging.getLogger("picsift")
    to_stderr = logging.StreamHandler(sys.stderr)
    to_stderr.setFormatter(_OneLine("%(message)s"))
    to_stderr.addFilter(session.once)
    saved = engine_log.level, engine_log.propagate
    engine_log.addHandler(to_stderr)
    engine_log.setLevel(level)
    engine_log.propagate = False
    try:
        return handlers[args.command](session)
    except PicsiftError as exc:
        print(f"picsift: {shown(str(exc))}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("picsift: interrupted; everything committed so far is kept, run the command again to resume.",
              file=sys.stderr)
        return EXIT_INTERRUPTED
    finally:
        session.close()
        engine_log.removeHandler(to_stderr)
        engine_log.setLevel(saved[0])
        engine_log.propagate = saved[1]


if __name__ == "__main__":
    sys.exit(main())
