"""Command line: index a collection, search it, serve the search page.

    python -m search --dataset demo "a red square moving left" -k 5      # ranked table (--json: JSON lines)
    python -m search index --dataset demo --folder /path/to/videos       # index your own folder with demo's model
    python -m search serve --dataset demo [--folder ...] [--host 127.0.0.1 --port 8000]
    python -m search recall --dataset demo [--folder ...]    # approximate search's recall@10 against exact

The model is the dataset's config's (model.name): the one it trains (built first if needed), or a
training-free one (clip-zero-shot) built from its options; the collection is that dataset's videos,
or every video under --folder (nested folders, any container ffmpeg reads).
Indexing runs through Luigi, so an index that is up to date is reused at once. Its log (Luigi's
lines, the libraries', the decoders') goes to a file, named on the one line that sums it up;
--verbose prints it instead.

Start-up is what a query needs: this module imports neither torch nor Luigi before it knows the
command, and a search loads the memory-mapped index, one text encoder and the model.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import sys
from contextlib import contextmanager, nullcontext
from datetime import datetime
from pathlib import Path
from typing import Iterator

from pipeline.config import ConfigError
from pipeline.datasets import MissingDataError
from pipeline.paths import confined, plain_name
from search.errors import SearchError


LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class _Failure(Exception):
    """An error the command reports in one line."""


def index_task(dataset: str, overrides: str = "", folder: str | None = None):
    """The Index stage of `dataset`'s model over its own videos, or over every video under `folder`."""
    from tasks import Index

    collection = ""
    if folder is not None:
        path = Path(folder).expanduser().resolve()
        if not path.is_dir():
            raise _Failure(f"--folder {folder}: not a folder")
        collection = f"data.source=folder {shlex.quote(f'data.root={path}')}"
    task = Index(dataset=dataset, set=overrides, collection=collection)
    _check_method(task.config)
    return task


def _check_method(config: dict) -> None:
    """search.method=approximate with a model that has no approximate search: one line, before any work."""
    if config["search"]["method"] == "approximate":
        from search.approximate import choose_method  # torch and FAISS: only when approximate search is asked for

        try:
            choose_method("approximate", 0, config["search"]["exact_max_videos"], config["model"]["name"])
        except ValueError as error:
            raise _Failure(str(error)) from None


def log_path(task) -> Path:
    """Where indexing logs go unless --verbose: one file per dataset in its work folder, each run
    appended (it is named before the stage's fingerprint is known: computing it may log too)."""
    return confined(task.config["workdir"], Path(plain_name(task.config["name"])) / "logs" / "index.log")


@contextmanager
def _everything_to(path: Path) -> Iterator[None]:
    """Everything printed inside goes to `path`, nothing to the terminal: log records (the root
    logger's, at INFO), Python's stderr (progress bars) and file descriptor 2, where C libraries
    (decord's and ffmpeg's own lines) and worker processes write."""
    path.parent.mkdir(parents=True, exist_ok=True)
    root = logging.getLogger()
    handlers, level, stderr = root.handlers[:], root.level, sys.stderr
    sys.stderr.flush()
    saved_fd = os.dup(2)
    with open(path, "a", buffering=1) as log:
        log.write(f"---- {datetime.now().isoformat(timespec='seconds')} {shlex.join(sys.argv)}\n")
        handler = logging.StreamHandler(log)
        handler.setFormatter(logging.Formatter(LOG_FORMAT, datefmt="%H:%M:%S"))
        root.handlers, sys.stderr = [handler], log
        root.setLevel(logging.INFO)
        os.dup2(log.fileno(), 2)
        try:
            yield
        finally:
            log.flush()
            os.dup2(saved_fd, 2)
            os.close(saved_fd)
            root.handlers, sys.stderr = handlers, stderr
            root.setLevel(level)


def build_index(task, verbose: bool = False) -> bool:
    """Runs the Index stage (and whatever it needs) unless its output is already there; whether it ran.
    Its log (and that of checking it, e.g. a video left out) goes to `log_path(task)`, or to the
    terminal when `verbose`."""
    import luigi.configuration

    log = log_path(task)
    quiet = nullcontext if verbose else lambda: _everything_to(log)
    with quiet():
        if task.complete():
            return False
    print(f"indexing into {task.out_dir} ..." + ("" if verbose else f" (log: {log})"), file=sys.stderr)
    luigi.configuration.get_config().set("core", "no_configure_logging", "true")  # ours, not logging.cfg's
    with quiet():
        done = luigi.build([task], local_scheduler=True)
    if not done:
        raise _Failure(f"indexing failed (see {'the log above' if verbose else log}); "
                       f"nothing was written to {task.out_dir}")
    return True


def _manifest(stage) -> dict:
    return json.loads((stage.out_dir / "manifest.json").read_text())


def index_summary(task, built: bool) -> str:
    """One line: how many videos the index holds, how many had their features extracted now or found
    in the cache, how many were left out and why, and which manifests list them."""
    dataset, visual = task.upstream()["dataset"], task.upstream()["visual"]
    parts = [stage for name, stage in visual.upstream().items() if name.startswith("part-")]
    index_report = _manifest(task)
    indexed = index_report["inputs"]["indexed"]
    extracted = set().union(*(_manifest(part).get("decoded", []) for part in parts))
    reasons: dict[str, int] = {}
    for problem in _manifest(dataset).get("problems", []):
        if problem.get("action") == "skip":
            reasons[problem["problem"]] = reasons.get(problem["problem"], 0) + 1
    failed = set().union(*(_manifest(part).get("failures", {}) for part in parts))
    if failed:
        reasons["failed to decode"] = len(failed)
    missing = len(set(index_report.get("missing_features", [])) - failed)
    if missing:
        reasons["no features"] = missing
    skipped = sum(reasons.values())
    details = ", ".join(str(stage.out_dir / "manifest.json") for stage in (dataset, *parts, task))
    line = (f"{'indexed' if built else 'index up to date:'} {indexed} videos in {task.out_dir} "
            f"(features: {len(extracted)} extracted, {max(0, indexed - len(extracted))} from the cache)")
    if skipped:
        line += f"; skipped {skipped}: " + ", ".join(f"{count} {why}" for why, count in sorted(reasons.items()))
    return line + f"; details: {details}"


def open_searcher(task, verbose: bool = False):
    """The index (built first if needed, with its summary line on stderr) and its Searcher."""
    if build_index(task, verbose):
        print(index_summary(task, built=True), file=sys.stderr)
    config = task.config
    if config["text"]["encoder"] == "hf-text":
        from transformers.utils import logging as transformers_logging

        transformers_logging.disable_progress_bar()  # "Loading weights" bars would bury the answer
    from search.searcher import Searcher

    return Searcher(task.out_dir, span_rule=config["evaluate"]["span_rule"], device=config["search"]["device"])


def print_recall(task, searcher, k: int, n_clip_queries: int) -> None:
    from search.approximate import ApproximateSettings
    from search.recall import measure_recall, query_texts, query_vectors

    split = task.config["search"]["split"]
    queries, described = query_vectors(searcher, query_texts(task.upstream_dir("dataset"), split), n_clip_queries)
    settings = ApproximateSettings.from_config(task.config["search"]["approximate"])
    result = measure_recall(searcher, queries, k, settings)
    print(f"recall@{result['k']} of approximate search against exact: {result['recall']:.3f} "
          f"({described}, {result['videos']} videos; the index searches {result['index_method']}ly; "
          f"first stage: {result['first_stage']}, {settings}; approximate p50 {result['approximate_p50_ms']:.1f} ms)")


def format_table(hits) -> str:
    rows = [("rank", "video", "score", "moment (s)", "path")]
    rows += [(str(hit.rank), hit.video_id, f"{hit.score:.4f}", f"{hit.start:.1f}-{hit.end:.1f}", hit.path)
             for hit in hits]
    widths = [max(len(row[column]) for row in rows) for column in range(4)]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(row[:4], widths)) + "  " + row[4]
                     for row in rows)


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dataset", required=True, help="the config whose model is used (e.g. demo)")
    parser.add_argument("--set", default="", help='config overrides, e.g. "search.split=test"')
    parser.add_argument("--folder", help="index and search every video under this folder instead of the dataset's")
    parser.add_argument("--verbose", action="store_true", help="print the indexing log (Luigi's, the libraries') "
                                                               "instead of writing it to a file")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    command = argv[0] if argv and argv[0] in ("index", "serve", "recall") else "search"
    parser = argparse.ArgumentParser(prog=f"python -m search{'' if command == 'search' else ' ' + command}",
                                     description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    _common(parser)
    if command == "search":
        parser.add_argument("query")
        parser.add_argument("-k", type=int, default=None, help="results (default: search.k of the config)")
        parser.add_argument("--json", action="store_true", help="one JSON object per result")
    if command == "recall":
        parser.add_argument("-k", type=int, default=10, help="recall@k (default 10)")
        parser.add_argument("--queries", type=int, default=200, help="clip queries when the collection has no texts")
    if command == "serve":
        parser.add_argument("--host", help="default: search.host of the config (127.0.0.1)")
        parser.add_argument("--port", type=int, help="default: search.port of the config (8000)")
    args = parser.parse_args(argv if command == "search" else argv[1:])
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format=LOG_FORMAT, datefmt="%H:%M:%S")
    try:
        task = index_task(args.dataset, args.set, args.folder)
        if command == "index":
            print(index_summary(task, built=build_index(task, args.verbose)))
            return 0
        searcher = open_searcher(task, args.verbose)
        if command == "recall":
            print_recall(task, searcher, args.k, args.queries)
            return 0
        if command == "serve":
            from search.api import serve

            serve(searcher, args.host or task.config["search"]["host"], args.port or task.config["search"]["port"],
                  default_k=task.config["search"]["k"])
            return 0
        hits = searcher.search(args.query, task.config["search"]["k"] if args.k is None else args.k)
    except (SearchError, _Failure, ConfigError, MissingDataError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if args.json:
        for hit in hits:
            print(json.dumps(hit.to_dict()))
    else:
        print(format_table(hits))
        print(f"{searcher.method} search over {len(searcher.video_ids)} videos")
    return 0
