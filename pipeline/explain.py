"""What the cache will do, and why: every stage of a graph, complete or not, its folder, and for a stage
that will run, what changed since the nearest earlier run of it. ``--force`` makes stages rerun.

    python -m pipeline.explain --dataset demo --set "train.lr=1e-4"
    python -m pipeline.explain --dataset demo --force visual-clip      # it and every stage after it rerun
    make explain DATASET=demo SET="train.lr=1e-4" [FORCE=visual-clip]

A stage's earlier runs are the other folders beside its own, ``<workdir>/<dataset>/<stage>/*/``, each with
the ``fingerprint_inputs`` its manifest recorded: the config values the stage reads, its code version and
its upstream fingerprints. The nearest earlier run is the one with the fewest differing values (then the
most recent); the stage will run because of exactly those values. A stage that finished but whose recorded
files are damaged since (``pipeline.stage.verify_published``: deleted, truncated, overwritten, or an upstream
file it reads in place gone) is shown with each damaged file: the next run rebuilds it in place.

Forcing a stage moves its folder aside, to ``<fingerprint>.forced-<UTC time>``, and so for every stage
that depends on it; the next run rebuilds them, and the moved folders stay as earlier runs (delete them
when no longer wanted). A forced per-video stage's cache entries are moved aside the same way, so its
videos are decoded again (``make clean-cache`` deletes them). Each folder is moved while holding its
lock, so a run writing it is waited for, never moved under it.
"""

from __future__ import annotations

import argparse
import json
import os
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import luigi

from pipeline.config import ConfigError
from pipeline.sharding import PerVideoStage
from pipeline.stage import MANIFEST, Stage, stage_lock, verify_published

FORCED_SUFFIX = ".forced-"
_MAX_VALUE_CHARS = 60


@dataclass
class StageStatus:
    stage: Stage
    complete: bool
    earlier: Path | None = None  # the nearest earlier run's folder
    changes: dict[str, tuple[Any, Any]] | None = None  # key -> (earlier value, value now); None: no earlier run
    unfinished: bool = False  # this stage's own folder exists without a manifest: a run in progress or killed
    damaged: list[str] | None = None  # its manifest is there, but recorded files are not as written


def graph_stages(task: luigi.Task) -> list[Stage]:
    """The stages ``task`` needs (itself included when it is a stage), upstream first, each once."""
    found: dict[Path, Stage] = {}

    def visit(node: luigi.Task) -> None:
        children = node.upstream().values() if isinstance(node, Stage) else luigi.task.flatten(node.requires())
        for child in children:
            visit(child)
        if isinstance(node, Stage):
            found.setdefault(node.out_dir, node)

    visit(task)
    return list(found.values())


def explain(task: luigi.Task) -> list[StageStatus]:
    return [stage_status(stage) for stage in graph_stages(task)]


def stage_status(stage: Stage) -> StageStatus:
    problems = verify_published(stage.out_dir)
    if not problems:
        return StageStatus(stage, complete=True)
    if (stage.out_dir / MANIFEST).is_file():  # finished once, damaged since: rebuilt in place
        return StageStatus(stage, complete=False, damaged=problems)
    now = _as_json(stage._fingerprint_payload())
    runs = []
    for folder, inputs, finished in earlier_runs(stage):
        changes = differences(inputs, now)
        runs.append((len(changes), _sort_time(finished), folder, changes))
    unfinished = stage.out_dir.is_dir()
    if not runs:
        return StageStatus(stage, complete=False, unfinished=unfinished)
    _, _, folder, changes = min(runs, key=lambda run: (run[0], -run[1]))
    return StageStatus(stage, complete=False, earlier=folder, changes=changes, unfinished=unfinished)


def earlier_runs(stage: Stage) -> list[tuple[Path, dict, str]]:
    """(folder, fingerprint inputs, finish time) of every finished run of ``stage`` in other folders."""
    runs = []
    for manifest_path in sorted(stage.out_dir.parent.glob("*/manifest.json")):
        if manifest_path.parent == stage.out_dir:
            continue
        try:
            manifest = json.loads(manifest_path.read_text())
            runs.append((manifest_path.parent, manifest["fingerprint_inputs"], manifest.get("finished_at", "")))
        except (OSError, ValueError, KeyError):  # being written, or not a manifest of ours: not a run
            continue
    return runs


def differences(before: dict, now: dict) -> dict[str, tuple[Any, Any]]:
    """Dotted key -> (value before, value now) of every leaf value that differs; a key missing on one
    side has the value None there."""
    flat_before, flat_now = _flatten(before), _flatten(now)
    keys = sorted(flat_before.keys() | flat_now.keys())
    return {key: (flat_before.get(key), flat_now.get(key)) for key in keys
            if flat_before.get(key) != flat_now.get(key)}


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(value, dict) or not value:
        return {prefix: value}
    flat = {}
    for key, item in value.items():
        flat.update(_flatten(item, f"{prefix}.{key}" if prefix else str(key)))
    return flat


def _as_json(payload: dict) -> dict:
    """The payload as the manifest stores it (tuples become lists, paths strings), for comparison."""
    return json.loads(json.dumps(payload, default=str))


def _sort_time(finished: str) -> float:
    try:
        return datetime.fromisoformat(finished).timestamp()
    except ValueError:
        return 0.0


def describe_change(stage: Stage, key: str, before: Any, now: Any) -> str:
    """One change in words: a config value, the code version, an upstream stage or an input file."""
    kind, _, rest = key.partition(".")
    if kind == "config":
        return f"{rest}: {_short(before)} -> {_short(now)}"
    if kind == "version":
        return f"code version of the stage: {before} -> {now}"
    if kind == "upstream":
        upstream = stage.upstream().get(rest)
        return f"upstream {upstream.stage if upstream else rest} changed" if now is not None else \
            f"upstream {rest} no longer used"
    if kind == "files":
        return f"input file {rest} changed" if before and now else f"input file {rest} {'added' if now else 'removed'}"
    if kind == "videos":  # the dataset's video folder, summarised (pipeline.video_cache.videos_digest)
        return f"number of video files: {before} -> {now}" if rest == "count" else \
            "video files added, removed or replaced"
    return f"{key}: {_short(before)} -> {_short(now)}"


def _short(value: Any) -> str:
    text = "(absent)" if value is None else json.dumps(value)
    return text if len(text) <= _MAX_VALUE_CHARS else text[: _MAX_VALUE_CHARS - 3] + "..."


def format_report(statuses: list[StageStatus]) -> str:
    width = max(len(status.stage.stage) for status in statuses)
    lines = []
    for status in statuses:
        stage = status.stage
        state = "complete" if status.complete else "will run"
        lines.append(f"{stage.stage:<{width}}  {state:<8}  {_shown(stage.out_dir)}")
        if status.complete:
            continue
        if status.damaged:
            lines.append(f"{'':<{width}}    its outputs are damaged; the next run rebuilds it:")
            lines += [f"{'':<{width}}      {problem}" for problem in status.damaged]
            continue
        if status.unfinished:
            lines.append(f"{'':<{width}}    its folder has no manifest yet: a run is writing it, or was stopped "
                         f"(the next run resumes from its partial files)")
        if status.changes is None:
            lines.append(f"{'':<{width}}    no earlier run of this stage")
            continue
        since = _shown(status.earlier)
        if not status.changes:
            why = "forced" if FORCED_SUFFIX in status.earlier.name else "same inputs"
            lines.append(f"{'':<{width}}    {why}: nothing changed since {since}")
            continue
        lines.append(f"{'':<{width}}    changed since the nearest earlier run ({since}):")
        lines += [f"{'':<{width}}      {describe_change(stage, key, *values)}"
                  for key, values in status.changes.items()]
    return "\n".join(lines)


def _shown(path: Path) -> str:
    """A folder as the user would type it: relative to the current folder when inside it."""
    path = Path(path).absolute()
    return os.path.relpath(path) if path.is_relative_to(Path.cwd()) else str(path)


def force(task: luigi.Task, stage_names: list[str]) -> list[tuple[Path, Path]]:
    """Moves aside the folders of the named stages of ``task``'s graph and of every stage that depends
    on one of them, so that they rerun; -> (folder, where it went) for each folder that existed."""
    stages = graph_stages(task)
    known = [stage.stage for stage in stages]
    unknown = [name for name in stage_names if name not in known]
    if unknown:
        raise ValueError(f"--force {' '.join(unknown)}: no such stage in this graph; its stages: {', '.join(known)}")
    forced = [stage for stage in stages if _depends_on(stage, set(stage_names))]
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S.%fZ")
    moved = []
    for stage in forced:
        folder = stage.out_dir
        if not folder.is_dir():
            continue
        destination = folder.with_name(f"{folder.name}{FORCED_SUFFIX}{stamp}")
        with stage_lock(folder):  # a run writing this folder finishes first
            os.rename(folder, destination)  # atomic: the stage is complete or absent, never half there
        moved.append((folder, destination))
    for stage in forced:  # a forced per-video stage decodes its videos again: its cache entries go aside too
        if isinstance(stage, PerVideoStage) and stage.cache.folder.is_dir():
            cache = stage.cache.folder
            destination = cache.with_name(f"{cache.name}{FORCED_SUFFIX}{stamp}")
            with stage_lock(stage.cache_root):  # extractions (which hold it shared) finish first
                os.rename(cache, destination)
            moved.append((cache, destination))
    return moved


def _depends_on(stage: Stage, names: set[str]) -> bool:
    return stage.stage in names or any(_depends_on(upstream, names) for upstream in stage.upstream().values())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Show each stage of a pipeline graph: complete or not, its "
                                                 "folder, and why a stage will run; optionally force stages.")
    parser.add_argument("--dataset", required=True, help="a config name from configs/ or a path to a YAML file")
    parser.add_argument("--set", default="", help='config overrides, e.g. "train.lr=1e-4"')
    parser.add_argument("--task", default="FullPipeline", help="the task whose graph is shown (default FullPipeline)")
    parser.add_argument("--force", nargs="+", default=[], metavar="STAGE",
                        help="stages to rerun, with every stage that depends on them (e.g. visual-clip train)")
    args = parser.parse_args(argv)
    import tasks  # the graph; imported here so that `import pipeline.explain` stays light

    try:
        task_class = getattr(tasks, args.task, None)
        if not (isinstance(task_class, type) and issubclass(task_class, luigi.Task)):
            raise ValueError(f"--task {args.task}: not a task of tasks.py")
        task = task_class(dataset=args.dataset, set=args.set)
        for folder, destination in force(task, args.force):
            print(f"forced: moved {_shown(folder)} to {_shown(destination)}")
        print(format_report(explain(task)))
    except ConfigError as err:
        raise SystemExit(f"config error: {err}") from None
    except ValueError as err:  # an unknown stage name in --force
        raise SystemExit(f"error: {err}") from None


if __name__ == "__main__":
    main()
