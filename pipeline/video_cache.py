"""Per-video results, keyed by what they depend on: the video file and the settings that make them.

A per-video stage (Transcode, each VisualPart) does its work video by video into a cache shared by
every run of the dataset, ``<workdir>/<name>/cache/<stage>/<settings key>/<video key>.<ext>``:

- the *settings key* hashes the stage's code version and the config values that change its results
  (``VideoCache.for_stage``); devices, batch sizes and worker counts are not among them;
- the *video key* hashes the video's identity and duration. The identity (``video_identity``) is the
  file's path relative to the data root, size and modification time, or with
  ``data.video_identity: content`` a hash of its bytes (a collection copied or touched elsewhere then
  keeps its features). A frame folder's identity covers every frame file in it.

So editing a query reuses every video's features, replacing a video's file re-extracts that video,
adding videos extracts only the new ones, and switching back to an earlier backbone finds the earlier
features. An entry is written under a temporary name and renamed, so it is complete or absent, and it
never changes once written: a stage folder assembled from entries (a copy, see ``tasks.VisualPart``)
can list them in ``cache_entries.txt`` and ``clean`` removes only entries no stage folder lists.

    python -m pipeline.video_cache clean --dataset demo [--dry-run]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import socket
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import h5py
import numpy as np

from amdnet.atomic import write_text_atomic

log = logging.getLogger("pipeline")

CACHE_FOLDER = "cache"  # under <workdir>/<name>/, beside the stage folders
ENTRIES_FILE = "cache_entries.txt"  # in a stage folder: the cache entries it was assembled from
_HASH_CHUNK = 1 << 20


def _digest(payload) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:24]


def content_hash(path: Path) -> str:
    """sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(_HASH_CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def _relative(path: Path, root: Path) -> str:
    try:
        return path.resolve().relative_to(root.resolve()).as_posix()
    except ValueError:  # not under the data root (a bundle-relative or absolute path): keep it whole
        return str(path.resolve())


def video_identity(path: Path, root: Path, mode: str) -> str:
    """What a video's results are keyed by: ``mode`` "file" (path relative to ``root``, size,
    modification time) or "content" (its bytes: the same file anywhere has the same identity)."""
    path = Path(path)
    if not path.exists():  # kept in the manifest by data.on_problem; extraction will report it
        return _digest({"missing": _relative(path, root)})
    files = sorted(p for p in path.iterdir() if p.is_file()) if path.is_dir() else [path]
    if mode == "content":
        return _digest({"content": [[p.name if path.is_dir() else "", content_hash(p)] for p in files]})
    stats = [[p.name, stat.st_size, stat.st_mtime_ns] for p, stat in zip(files, map(Path.stat, files))]
    return _digest({"path": _relative(path, root), "files": stats})


def videos_digest(paths: list[Path], root: Path) -> dict:
    """A cheap summary of a collection's video files (path, size, modification time; a frame folder by
    its own stat, without listing it): what changes when a video is added, removed or replaced."""
    stats = []
    for path in paths:
        stat = path.stat()
        stats.append([_relative(path, root), stat.st_size if path.is_file() else 0, stat.st_mtime_ns])
    return {"count": len(paths), "digest": _digest(stats)}


class VideoCache:
    """The cache entries of one per-video stage with one set of settings: ``<video key><suffix>`` files."""

    def __init__(self, folder: Path, suffix: str):
        self.folder, self.suffix = Path(folder), suffix

    @classmethod
    def for_stage(cls, dataset_dir: Path, stage: str, settings: dict, suffix: str) -> "VideoCache":
        return cls(Path(dataset_dir) / CACHE_FOLDER / stage / _digest(settings), suffix)

    def path(self, video: dict, *extra) -> Path:
        """The entry of a videos.jsonl record; ``extra`` adds values the result also depends on."""
        key = _digest([video["identity"], video["duration"], *extra])
        return self.folder / key[:2] / f"{key}{self.suffix}"

    @contextmanager
    def writing(self, entry: Path) -> Iterator[Path]:
        """A temporary path, unique to this process on this host, that becomes ``entry`` if the block
        succeeds: two processes writing the same entry never write the same file."""
        entry.parent.mkdir(parents=True, exist_ok=True)
        temporary = entry.with_name(f".{entry.name}.{socket.gethostname()}-{os.getpid()}.partial")
        try:
            yield temporary
            os.replace(temporary, entry)
        finally:
            temporary.unlink(missing_ok=True)


def write_feature_entry(cache: VideoCache, entry: Path, features: np.ndarray, **attrs) -> None:
    """One video's features (T, D) with their attributes (timestamps, ...) as one small HDF5 file."""
    with cache.writing(entry) as temporary:
        with h5py.File(temporary, "w") as f:
            dataset = f.create_dataset("features", data=features)
            for name, value in attrs.items():
                dataset.attrs[name] = value


def read_feature_entry(entry: Path) -> tuple[np.ndarray, dict]:
    with h5py.File(entry, "r") as f:
        return f["features"][()], dict(f["features"].attrs)


def write_entries_list(stage_dir: Path, entries: list[Path], cache_root: Path) -> None:
    lines = sorted({entry.relative_to(cache_root).as_posix() for entry in entries})
    write_text_atomic(stage_dir / ENTRIES_FILE, "".join(f"{line}\n" for line in lines))


# ---- clean-up ------------------------------------------------------------------------------------


def used_entries(dataset_dir: Path) -> set[str]:
    """Cache entries (relative to the cache folder) that some stage folder of the dataset lists, in its
    ``cache_entries.txt`` (assembled stages) or in a shard report (stages not assembled yet)."""
    used: set[str] = set()
    for listing in Path(dataset_dir).glob(f"*/*/{ENTRIES_FILE}"):
        used.update(line for line in listing.read_text().splitlines() if line)
    for report in Path(dataset_dir).glob("*/*/shards/*/*/report.json"):
        used.update(json.loads(report.read_text()).get("entries", []))
    return used


def clean(dataset_dir: Path, dry_run: bool = False) -> tuple[int, int]:
    """Removes the cache entries no stage folder uses (and leftovers of killed writers); returns the
    number of files and bytes removed (or that would be, with ``dry_run``). Holds the cache lock
    exclusively, so it waits for running extractions, which hold it shared. Superseded stage folders
    (older indexes of a collection, pipeline.superseded) that no reader holds go first, and with them
    their claim on entries (browser proxies)."""
    from pipeline.stage import stage_lock
    from pipeline.superseded import retire_all_superseded

    deleted, held = retire_all_superseded(dataset_dir, dry_run)
    for folder in deleted:
        print(f"{folder}: {'would remove' if dry_run else 'removed'} (superseded)")
    for folder in held:
        print(f"{folder}: superseded, kept while a searcher reads it")
    cache_root = Path(dataset_dir) / CACHE_FOLDER
    if not cache_root.is_dir():
        return 0, 0
    with stage_lock(cache_root, shared=False):
        used = used_entries(dataset_dir)
        unused = [path for path in sorted(cache_root.rglob("*"))
                  if path.is_file() and path.name != ".lock" and path.relative_to(cache_root).as_posix() not in used]
        removed_bytes = sum(path.stat().st_size for path in unused)
        if not dry_run:
            for path in unused:
                path.unlink()
            for folder in sorted((p for p in cache_root.rglob("*") if p.is_dir()), reverse=True):
                if not any(folder.iterdir()):
                    folder.rmdir()
    return len(unused), removed_bytes


def main() -> None:
    from pipeline.config import ConfigError, load_config
    from pipeline.paths import UnsafePathError, confined, plain_name

    parser = argparse.ArgumentParser(description="Remove per-video cache entries that no stage folder uses.")
    parser.add_argument("command", choices=("clean",))
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--set", default="", help="config overrides (only workdir and name matter here)")
    parser.add_argument("--dry-run", action="store_true", help="only say what would be removed")
    args = parser.parse_args()
    try:
        config = load_config(args.dataset, args.set)
        dataset_dir = confined(config["workdir"], plain_name(config["name"]))
    except (ConfigError, UnsafePathError) as err:
        raise SystemExit(f"config error: {err}") from None
    files, size = clean(dataset_dir, dry_run=args.dry_run)
    verb = "would remove" if args.dry_run else "removed"
    print(f"{dataset_dir / CACHE_FOLDER}: {verb} {files} unused entries ({size / 2**20:.1f} MiB)")


if __name__ == "__main__":
    main()
