"""Command line: index a collection, search it, serve the search page.

    python -m search --dataset demo "a red square moving left" -k 5      # ranked table (--json: JSON lines)
    python -m search index --dataset demo --folder /path/to/videos       # index your own folder with demo's model
    python -m search serve --dataset demo [--folder ...] [--host 127.0.0.1 --port 8000]
    python -m search recall --dataset demo [--folder ...]    # approximate search's recall@10 against exact

The model is the one the dataset's config trains (built first if needed); the collection is that
dataset's videos, or every video under --folder (nested folders, any container ffmpeg reads).
Indexing runs through Luigi, so an index that is up to date is reused at once.
"""
from __future__ import annotations

import argparse
import json
import logging
import shlex
import sys
from pathlib import Path

from pipeline.config import ConfigError
from pipeline.datasets import MissingDataError
from search.searcher import SearchError


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
    return Index(dataset=dataset, set=overrides, collection=collection)


def build_index(task) -> None:
    """Runs the Index stage (and whatever it needs) unless its output is already there."""
    import luigi

    if task.complete():
        return
    print(f"indexing into {task.out_dir} ...", file=sys.stderr)
    if not luigi.build([task], local_scheduler=True, log_level="WARNING"):
        raise _Failure(f"indexing failed (see the log above); nothing was written to {task.out_dir}")


def open_searcher(task):
    from search.searcher import Searcher

    build_index(task)
    config = task.config
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
    parser.add_argument("--dataset", required=True, help="the config whose trained model is used (e.g. demo)")
    parser.add_argument("--set", default="", help='config overrides, e.g. "search.split=test"')
    parser.add_argument("--folder", help="index and search every video under this folder instead of the dataset's")


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
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()  # "Loading weights" bars would bury the answer
    try:
        task = index_task(args.dataset, args.set, args.folder)
        if command == "index":
            build_index(task)
            print(task.out_dir)
            return 0
        searcher = open_searcher(task)
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
