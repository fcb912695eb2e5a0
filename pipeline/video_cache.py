"""Per-video results, keyed by what they depend on: the video file and the settings that make them.

A per-video stage (Transcode, each VisualPart) does its work video by video into a cache shared by
every run of the dataset, ``<workdir>/<name>/cache/<stage>/<settings key>/<video key>.<ext>``:

- the *settings key* hashes the stage's code version and the config values that change its results
  (``VideoCache.for_stage``); devices, batch sizes and worker counts are not among them;
- the *video key* hashes the video's identity and duration; the identity (``data.video_identity``)
  is decided by one rule (``video_identity``), which the dataset stage's fingerprint uses too:

  - ``file`` (the default): the file's path relative to the data root, its size and its modification
    time. Cheap (one stat a file). It cannot notice a file replaced by another of the same size whose
    modification time was set back to the old one (``touch -r``, ``cp -p``, ``rsync -t`` of an edited
    copy): use ``content`` where that can happen;
  - ``content``: a sha256 of the file's bytes (a collection copied or touched elsewhere keeps its
    features). A hash is reused while the file's size, modification time, inode and status-change
    time (ctime) are all unchanged, from ``<workdir>/<name>/content_hashes.json``: the kernel sets
    ctime on every write, rename and link, and a user cannot set it back, so a replaced file is
    always hashed again, while a no-op rerun reads no video.

  A frame folder's identity covers every frame file in it, by the same rule.

So editing a query reuses every video's features, replacing a video's file re-extracts that video,
adding videos extracts only the new ones, and switching back to an earlier backbone finds the earlier
features. An entry is written under a temporary name and renamed, so it is complete or absent, and it
never changes once written; beside it, ``<entry>.sum`` records its size and checksum
(``pipeline.integrity``), written first: an entry that no longer matches its record (truncated,
emptied, overwritten) or has none is damaged, is named in a warning (file and video) and made again
by the next run that needs it (``VideoCache.discard_damaged``). A stage folder assembled from entries
(a copy, see ``tasks.VisualPart``) lists them in ``cache_entries.txt``, and ``clean`` removes only
entries no stage folder lists.

    python -m pipeline.video_cache clean --dataset demo [--dry-run]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import os
import socket
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from stat import S_ISDIR, S_ISLNK
from typing import Iterator

import numpy as np

from amdnet.atomic import write_json_atomic, write_text_atomic
from pipeline.integrity import file_record, record_problem

log = logging.getLogger("pipeline")

CACHE_FOLDER = "cache"  # under <workdir>/<name>/, beside the stage folders
ENTRIES_FILE = "cache_entries.txt"  # in a stage folder: the cache entries it was assembled from
HASHES_FILE = "content_hashes.json"  # under <workdir>/<name>/: content hashes reused while stat is unchanged
DURATIONS_FILE = "video_durations.json"  # under <workdir>/<name>/: durations by video identity (KnownDurations)
RECORD_SUFFIX = ".sum"  # <entry>.sum: the entry's size and checksum (pipeline.integrity)
# A feature entry (write_feature_entry): its name in its header, and its file suffix. A per-video stage
# puts it in its cache settings, so a new format is a new settings key: older entries are never misread.
ENTRY_FORMAT = "prvr-feature-entry-1"
ENTRY_SUFFIX = ".entry"
IDENTITY_MODES = ("file", "content")
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


class _JsonMemo:
    """Per-video results kept in one JSON file between runs. Several processes may use it at once: each
    rewrites it atomically, and an entry any of them lost is computed again, never taken from a file it
    does not match."""

    def __init__(self, store: Path | None):
        self.store = None if store is None else Path(store)
        self._known: dict = self._load()
        self._changed = False

    def _load(self) -> dict:
        if self.store is None or not self.store.is_file():
            return {}
        try:
            known = json.loads(self.store.read_text())
        except (OSError, ValueError):  # being replaced, or damaged: compute again
            return {}
        return known if isinstance(known, dict) else {}

    def save(self) -> None:
        if self._changed and self.store is not None:
            self.store.parent.mkdir(parents=True, exist_ok=True)  # before any stage folder, on a first run
            write_json_atomic(self.store, self._known)
            self._changed = False


class ContentHashes(_JsonMemo):
    """Content hashes of files, reused while a file's (size, mtime, inode, ctime) is unchanged, kept in
    ``HASHES_FILE``."""

    def __init__(self, store: Path | None):
        super().__init__(store)
        self.hashed_bytes = 0  # read this run (what ``content`` cost)

    def of(self, path: Path, stat: os.stat_result) -> str:
        key = os.path.abspath(path)
        signature = [stat.st_size, stat.st_mtime_ns, stat.st_ino, stat.st_ctime_ns]
        known = self._known.get(key)
        if isinstance(known, list) and known[:4] == signature:
            return known[4]
        digest = content_hash(path)
        self.hashed_bytes += stat.st_size
        self._known[key], self._changed = [*signature, digest], True
        return digest


class KnownDurations(_JsonMemo):
    """Durations of videos by their identity (``video_identity``), kept in ``DURATIONS_FILE``: the
    dataset stage probes only the videos it has not seen, so a changed annotation line or one added
    video costs one probe, not one per video of the collection (about 2-4 ms each here, an hour at a
    million videos). A key holds the probe's ``version`` and the frame rate of frame folders; the file
    keeps the entries of the last run only, so it stays the size of the collection."""

    def __init__(self, store: Path | None, identity_of, version: str):
        super().__init__(store)
        self.identity_of, self.version = identity_of, version
        self._used: dict[str, float] = {}
        self.probed = 0  # videos probed this run

    def of(self, path: Path, frame_fps: float, probe) -> float:
        """The duration of ``path``: known, or ``probe()`` (whose errors propagate, and are not kept)."""
        key = f"{self.version} {frame_fps!r} {self.identity_of(path)}"
        known = self._known.get(key)
        if not isinstance(known, float):
            known, self._changed = float(probe()), True
            self.probed += 1
        self._used[key] = known
        return known

    def save(self) -> None:
        self._changed = self._changed or self._used.keys() != self._known.keys()
        self._known = self._used
        super().save()


def _relative(path: Path, root: Path, is_link: bool | None = None) -> str:
    """``path`` relative to ``root``, both with links resolved; the whole resolved path when outside.
    String operations and one realpath per folder: this runs once per video on every command.
    ``is_link``: whether ``path`` is a symbolic link, when the caller knows (None: look)."""
    text = os.fspath(path)
    if os.path.islink(text) if is_link is None else is_link:
        real = os.path.realpath(text)
    else:
        real = os.path.join(_resolved_folder(os.path.dirname(text) or "."), os.path.basename(text))
    prefix = _resolved_folder(os.fspath(root)).rstrip(os.sep) + os.sep
    return real[len(prefix):] if real.startswith(prefix) else real


@lru_cache(maxsize=1024)
def _resolved_folder(folder: str) -> str:
    """A folder with its links resolved, once per process: a collection has few folders, many videos."""
    return os.path.realpath(folder)


def video_identity(path: Path, root: Path, mode: str, hashes: ContentHashes | None = None) -> str:
    """What a video's results are keyed by, the one rule of every level (dataset stage, per-video
    cache, index): ``mode`` "file" (path relative to ``root``, size, modification time of each file)
    or "content" (the sha256 of each file's bytes, reused from ``hashes`` while its stat is
    unchanged: the same bytes anywhere have the same identity). A frame folder: each frame file."""
    if mode not in IDENTITY_MODES:
        raise ValueError(f"video identity {mode!r}: expected one of {', '.join(IDENTITY_MODES)}")
    path = path if isinstance(path, Path) else Path(path)  # Path(a Path) parses it again
    try:
        link_stat = os.lstat(path)
    except FileNotFoundError:  # kept in the manifest by data.on_problem; extraction will report it
        return _digest({"missing": _relative(path, root)})
    is_link = S_ISLNK(link_stat.st_mode)
    try:  # one syscall for a plain file: its lstat is its stat
        files = _files_with_stats(path, os.stat(path) if is_link else link_stat)
    except FileNotFoundError:  # a link to nothing
        return _digest({"missing": _relative(path, root, is_link)})
    if mode == "content":
        hashes = hashes or ContentHashes(None)
        return _digest({"content": [[name, hashes.of(file, stat)] for name, file, stat in files]})
    return _digest({"path": _relative(path, root, is_link), "files": [[file.name, stat.st_size, stat.st_mtime_ns]
                                                                      for _, file, stat in files]})


def _files_with_stats(path: Path, stat: os.stat_result) -> list[tuple[str, Path, os.stat_result]]:
    """(name in the identity, file, its stat): a file as "", a frame folder's files by name, sorted;
    ``stat``: the stat of ``path`` itself."""
    if not S_ISDIR(stat.st_mode):
        return [("", path, stat)]
    with os.scandir(path) as entries:
        found = sorted((entry.name, Path(entry.path), entry.stat()) for entry in entries if entry.is_file())
    return found


def videos_digest(identities: dict[str, str]) -> dict:
    """A summary of a collection (video path -> identity): what changes when a video is added,
    removed, renamed or (as its identity mode notices) replaced."""
    return {"count": len(identities), "digest": _digest(sorted(identities.items()))}


class VideoCache:
    """The cache entries of one per-video stage with one set of settings: ``<video key><suffix>`` files."""

    def __init__(self, folder: Path, suffix: str):
        self.folder, self.suffix = Path(folder), suffix
        self._paths: dict[tuple, Path] = {}  # entry paths by key inputs: a stage asks for each several times

    @classmethod
    def for_stage(cls, dataset_dir: Path, stage: str, settings: dict, suffix: str) -> "VideoCache":
        return cls(Path(dataset_dir) / CACHE_FOLDER / stage / _digest(settings), suffix)

    def path(self, video: dict, *extra) -> Path:
        """The entry of a videos.jsonl record; ``extra`` adds values the result also depends on."""
        inputs = (video["identity"], video["duration"], *extra)
        path = self._paths.get(inputs)
        if path is None:
            key = _digest(list(inputs))
            path = self._paths[inputs] = self.folder / key[:2] / f"{key}{self.suffix}"
        return path

    @contextmanager
    def writing(self, entry: Path) -> Iterator[Path]:
        """A temporary path, unique to this process on this host, that becomes ``entry`` if the block
        succeeds: two processes writing the same entry never write the same file. The entry's record
        is written before the entry appears, so an entry without one was not written whole."""
        entry.parent.mkdir(parents=True, exist_ok=True)
        temporary = entry.with_name(f".{entry.name}.{socket.gethostname()}-{os.getpid()}.partial")
        try:
            yield temporary
            write_json_atomic(record_path(entry), file_record(temporary))
            os.replace(temporary, entry)
        finally:
            temporary.unlink(missing_ok=True)

    def entry_problem(self, entry: Path) -> str | None:
        """Why an existing entry cannot be used (it does not match its record, or has none), or None."""
        try:
            record = json.loads(record_path(entry).read_text())
        except FileNotFoundError:
            return f"{entry}: no record of its size and checksum ({record_path(entry).name}): not written whole"
        except (OSError, ValueError) as err:
            return f"{record_path(entry)}: unreadable ({err})"
        return record_problem(entry, record)

    def discard_damaged(self, videos: list[dict]) -> dict[str, str]:
        """Removes the damaged entries of ``videos`` (missing ones are not damaged: just not made yet),
        each named in a warning, so that the stage makes them again; -> video id -> what was wrong."""
        damaged = {}
        for video in videos:
            entry = self.path(video)
            problem = self.entry_problem(entry)
            if problem is not None and entry.is_file():  # (looked at only then: one stat less a video)
                log.warning("video %s: its cache entry is damaged, making it again: %s", video["video_id"], problem)
                entry.unlink(missing_ok=True)
                record_path(entry).unlink(missing_ok=True)
                damaged[video["video_id"]] = problem
        return damaged


def record_path(entry: Path) -> Path:
    return entry.with_name(entry.name + RECORD_SUFFIX)


def write_feature_entry(cache: VideoCache, entry: Path, features: np.ndarray, **attrs) -> None:
    """One video's features (T, D) with their attributes (timestamps, ...) as one small entry file
    (``ENTRY_FORMAT``: a JSON header line, then the arrays' bytes); array attributes are stored as
    arrays, the others as JSON values."""
    arrays = {"features": np.ascontiguousarray(features)}
    values = {}
    for name, value in attrs.items():
        if np.ndim(value) > 0:
            arrays[name] = np.ascontiguousarray(value)
        else:
            values[name] = value.item() if isinstance(value, np.generic) else value
    header = {"format": ENTRY_FORMAT, "arrays": [[name, array.dtype.str, list(array.shape)]
                                                 for name, array in arrays.items()], "values": values}
    with cache.writing(entry) as temporary:
        with open(temporary, "wb") as f:
            f.write(json.dumps(header, separators=(",", ":")).encode() + b"\n")
            for array in arrays.values():
                f.write(array.tobytes())


def read_feature_entry(entry: Path) -> tuple[np.ndarray, dict]:
    """The features (T, D) and attributes of an entry ``write_feature_entry`` wrote: one read of the file."""
    with open(entry, "rb") as f:  # not Path(entry).read_bytes(): parsing a path is a third of the cost
        data = f.read()
    try:
        end = data.index(b"\n")
        header = json.loads(data[:end])
        if header["format"] != ENTRY_FORMAT:
            raise ValueError(f"format {header['format']!r}, expected {ENTRY_FORMAT!r}")
        arrays, offset = {}, end + 1
        for name, dtype, shape in header["arrays"]:
            dtype = np.dtype(dtype)
            if dtype.hasobject or not all(isinstance(n, int) and n >= 0 for n in shape):
                raise ValueError(f"array {name!r}: {dtype} {shape}")
            count = math.prod(shape)
            arrays[name] = np.frombuffer(data, dtype, count, offset).reshape(shape)
            offset += count * dtype.itemsize
        if offset != len(data):
            raise ValueError(f"{len(data) - offset} bytes after the arrays its header lists")
        features = arrays.pop("features")
    except (ValueError, TypeError, KeyError) as err:
        raise ValueError(f"{entry}: not a feature cache entry ({err})") from None
    return features, {**arrays, **header["values"]}


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
                  if path.is_file() and path.name != ".lock" and _entry_of(path, cache_root) not in used]
        removed_bytes = sum(path.stat().st_size for path in unused)
        if not dry_run:
            for path in unused:
                path.unlink()
            for folder in sorted((p for p in cache_root.rglob("*") if p.is_dir()), reverse=True):
                if not any(folder.iterdir()):
                    folder.rmdir()
    return len(unused), removed_bytes


def _entry_of(path: Path, cache_root: Path) -> str:
    """The entry a cache file belongs to (an entry's record belongs to the entry), relative to the cache."""
    name = path.relative_to(cache_root).as_posix()
    return name.removesuffix(RECORD_SUFFIX)


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
