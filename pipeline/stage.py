"""Stage plumbing shared by every Luigi task: config, fingerprint, output folder, manifest.

Each stage writes to ``<workdir>/<dataset>/<stage>/<fingerprint>/``. The fingerprint hashes the config
values the stage reads (minus those that cannot change results), the stage's code version and the
fingerprints of the stages it requires; so editing a config reruns exactly the stale stages, and
switching back finds the earlier outputs. ``manifest.json`` is written last: its presence is what marks a
stage complete.

A stage folder has one writer at a time: ``run`` holds ``stage_lock`` on it for the whole build, so a
second process for the same folder waits, then finds the first one's output (or, if the first one
died, resumes its partial files). The folder's name comes from the config, so it is confined to the
workdir (``pipeline.paths``).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import platform
import signal
import socket
import sys
import threading
import time
from contextlib import contextmanager
from datetime import datetime, timezone
from functools import cached_property
from importlib import metadata
from pathlib import Path
from typing import Any, ClassVar, Iterator

import luigi

from amdnet.atomic import write_json_atomic
from pipeline.config import ConfigError, load_config, result_subset
from pipeline.integrity import file_record, record_problem
from pipeline.paths import UnsafePathError, confined, plain_name

log = logging.getLogger("pipeline")

LOCK_FILE = ".lock"  # in each stage folder; its content says who holds the lock, the lock is the OS's
MANIFEST = "manifest.json"
# Not outputs: the lock, the manifest itself, shard reports (execution records, pipeline.sharding)
# and the temporary files of writers.
_UNRECORDED_NAMES, _UNRECORDED_FOLDERS = (LOCK_FILE, MANIFEST), ("shards",)
_LOCK_POLL_S = 0.5
_LOCK_REPORT_EVERY_S = 60.0

_RECORDED_LIBRARIES = ("torch", "torchvision", "decord", "open_clip_torch", "transformers", "h5py",
                       "numpy", "luigi")


class StageFailed(RuntimeError):
    """A stage could not produce a trustworthy output (e.g. too many inputs failed)."""


class Terminated(KeyboardInterrupt):
    """SIGTERM arrived during a build. A KeyboardInterrupt, so Luigi stops instead of running on, and
    every ``with`` block on the way out closes its files: partial outputs stay resumable."""


@contextmanager
def stage_lock(folder: Path, shared: bool = False) -> Iterator[None]:
    """Holds an exclusive OS lock on ``folder`` for the block: one writer per folder, across processes.

    The lock is flock(2) on ``<folder>/.lock``, so the kernel drops it when its holder exits, however
    it exits (kill -9 and the OOM killer included): a lock file left behind blocks nobody. Its content
    (pid, host, command, start time) only tells a waiting process, which logs it, who holds the lock.
    ``shared``: many holders at once, none while an exclusive holder has it (the per-video cache:
    extractions share it, its clean-up takes it alone).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK_FILE
    descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)  # not inherited by exec'd children
    try:
        _wait_for_lock(descriptor, path, fcntl.LOCK_SH if shared else fcntl.LOCK_EX)
        if shared:  # several holders: the file says who last held it alone
            yield
            return
        holder = {"pid": os.getpid(), "host": socket.gethostname(), "command": " ".join(sys.argv),
                  "since": datetime.now(timezone.utc).isoformat(timespec="seconds")}
        os.ftruncate(descriptor, 0)
        os.pwrite(descriptor, (json.dumps(holder) + "\n").encode(), 0)
        yield
        os.ftruncate(descriptor, 0)  # released: nobody holds it
    finally:
        os.close(descriptor)  # releases the lock


def lock_holder(folder: Path) -> str:
    """Who holds (or last held) the lock of ``folder``, as its lock file says."""
    try:
        holder = json.loads((Path(folder) / LOCK_FILE).read_text())
        return f"pid {holder['pid']} on {holder['host']} since {holder['since']}: {holder['command']}"
    except (OSError, ValueError, KeyError, TypeError):  # not written yet, or being rewritten
        return "a process that has not said who it is yet"


def _wait_for_lock(descriptor: int, path: Path, mode: int) -> None:
    started = reported = None
    while True:
        try:
            fcntl.flock(descriptor, mode | fcntl.LOCK_NB)
        except BlockingIOError:
            now = time.monotonic()
            if reported is None or now - reported >= _LOCK_REPORT_EVERY_S:
                started, reported = started or now, now
                log.warning("%s is being written by another process (%s); waiting for it to finish",
                            path.parent, lock_holder(path.parent))
            time.sleep(_LOCK_POLL_S)
            continue
        if started is not None:
            log.warning("%s: the other process is done after %.0f s; going on", path.parent,
                        time.monotonic() - started)
        return


@contextmanager
def sigterm_raises() -> Iterator[None]:
    """SIGTERM raises Terminated in the block (once; a second SIGTERM kills as usual)."""
    if threading.current_thread() is not threading.main_thread():  # only the main thread gets signals
        yield
        return

    def terminate(signum, frame):
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        raise Terminated(f"SIGTERM (pid {os.getpid()}): stopping; partial outputs are kept for a rerun")

    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def published_files(stage_dir: Path) -> list[Path]:
    """The files a stage published in its folder (relative paths, sorted), as recorded in its manifest."""
    stage_dir = Path(stage_dir)
    found = []
    for folder, subfolders, files in os.walk(stage_dir):
        if Path(folder) == stage_dir:
            subfolders[:] = [name for name in subfolders if name not in _UNRECORDED_FOLDERS]
        for name in files:
            if name in _UNRECORDED_NAMES and Path(folder) == stage_dir or name.startswith(".") or \
                    name.endswith(".partial"):
                continue
            found.append((Path(folder) / name).relative_to(stage_dir))
    return sorted(found)


def file_records(stage_dir: Path, in_place: list[Path]) -> dict:
    """What a manifest records of a stage's files: ``published`` (relative to its folder) and
    ``in_place`` (absolute paths in other stage folders), each file's size and checksum."""
    return {"published": {path.as_posix(): file_record(stage_dir / path) for path in published_files(stage_dir)},
            "in_place": {str(path): file_record(path) for path in in_place}}


def verify_published(stage_dir: Path) -> list[str]:
    """What is wrong with a stage folder, one line a problem (``[]``: complete and intact): no
    manifest, an unreadable one, or a recorded file (published, or read in place from another stage
    folder) missing or not as it was written. Cheap: a stat and two small reads a file."""
    stage_dir = Path(stage_dir)
    try:
        records = json.loads((stage_dir / MANIFEST).read_text())["files"]
        published, in_place = records["published"], records["in_place"]
    except FileNotFoundError:
        return [f"{stage_dir}: no {MANIFEST} (never finished)"]
    except (OSError, ValueError, KeyError, TypeError):
        return [f"{stage_dir / MANIFEST}: unreadable, or written by an older version without file records"]
    checks = [(stage_dir / name, record) for name, record in published.items()] + \
             [(Path(name), record) for name, record in in_place.items()]
    return [problem for path, record in checks if (problem := record_problem(path, record)) is not None]


def hash_payload(payload: dict) -> str:
    canonical = json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def library_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in _RECORDED_LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


class DatasetTask(luigi.Task):
    """Any task of the graph: it works on one dataset config, with optional overrides."""

    dataset = luigi.Parameter(description="a config name from configs/ or a path to a YAML file")
    set = luigi.Parameter(default="", description='config overrides, e.g. "visual.fps=2 train.lr=1e-4"')

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # A bad config fails as the task is created (for the root task: as Luigi parses the command
        # line), before any graph is built; tasks.py turns the ConfigError into its message alone.
        load_config(self.dataset, self.set)

    @cached_property
    def config(self) -> dict:
        return load_config(self.dataset, self.set)


class Stage(DatasetTask):
    """A pipeline stage. Subclasses set ``stage``, ``version``, ``reads`` and implement ``build``."""

    stage: ClassVar[str]
    version: ClassVar[str]  # bump when a code change alters this stage's results
    reads: ClassVar[tuple[str, ...]] = ()  # config sections ("visual") or keys ("visual.fps")

    def upstream(self) -> dict[str, "Stage"]:
        """The stages this one requires, by name; ``requires`` returns exactly these."""
        return {}

    def requires(self) -> dict[str, "Stage"]:
        return self.upstream()

    @cached_property
    def fingerprint(self) -> str:
        return hash_payload(self._fingerprint_payload())

    def _fingerprint_payload(self) -> dict:
        return {"stage": self.stage, "version": self.version,
                "config": result_subset(self.config, self.reads),
                "upstream": {name: task.fingerprint for name, task in self.upstream().items()}}

    @property
    def dataset_dir(self) -> Path:
        """``<workdir>/<name>``, where every stage folder of the dataset (and its cache) lives; ``name``
        must be one folder name inside workdir."""
        try:
            return confined(self.config["workdir"], plain_name(self.config["name"]))
        except UnsafePathError as err:
            raise ConfigError(f"{self.dataset}: the output folder of stage {self.stage!r} (from 'name' "
                              f"{self.config['name']!r}): {err}") from None

    @property
    def out_dir(self) -> Path:
        """``<workdir>/<name>/<stage>/<fingerprint>``."""
        try:
            return self.dataset_dir / plain_name(self.stage) / self.fingerprint
        except UnsafePathError as err:  # a stage name made from a config value (a visual part's)
            raise ConfigError(f"{self.dataset}: the output folder of stage {self.stage!r}: {err}") from None

    def output(self) -> luigi.LocalTarget:
        return luigi.LocalTarget(str(self.out_dir / MANIFEST))

    def complete(self) -> bool:
        return not verify_published(self.out_dir)

    def upstream_dir(self, name: str) -> Path:
        return self.upstream()[name].out_dir

    def in_place_inputs(self) -> list[Path]:
        """Files of other stage folders that this stage's outputs point at instead of copying (read
        in place later): recorded in the manifest, so that losing one makes this stage incomplete."""
        return []

    def run(self) -> None:
        with stage_lock(self.out_dir), sigterm_raises():
            problems = verify_published(self.out_dir)
            if not problems:  # another process built it while this one waited for the lock
                log.warning("%s: built meanwhile by another process; using its output", self.out_dir)
                return
            if (self.out_dir / MANIFEST).is_file():
                log.warning("%s: rebuilding it, its outputs are damaged: %s", self.out_dir, "; ".join(problems))
                (self.out_dir / MANIFEST).unlink()  # incomplete from now on, whatever happens next
            self._build_and_record()

    def _build_and_record(self) -> None:
        started = datetime.now(timezone.utc)
        clock = time.perf_counter()
        report = self.build(self.out_dir)
        files = file_records(self.out_dir, self.in_place_inputs())
        write_json_atomic(self.out_dir / MANIFEST, {
            "stage": self.stage,
            "fingerprint": self.fingerprint,
            "dataset": self.config["name"],
            "config": self.config,
            "fingerprint_inputs": self._fingerprint_payload(),
            "upstream": {name: str(task.out_dir) for name, task in self.upstream().items()},
            "started_at": started.isoformat(),
            "finished_at": datetime.now(timezone.utc).isoformat(),
            "seconds": round(time.perf_counter() - clock, 3),
            "libraries": library_versions(),
            **report,
            "files": files,
        })

    def build(self, out_dir: Path) -> dict[str, Any]:
        """Write the stage's outputs into ``out_dir``; return counts and failures for the manifest."""
        raise NotImplementedError
