"""Stage folders that a newer folder of the same lineage replaces, deleted only while nobody reads them.

A stage whose output describes a collection that changes (the search index, ``tasks.Index``) records
a *lineage* in its manifest: what the folder is an output of, without the collection's current
content. When it publishes a new folder, the older complete folders of its lineage are superseded.

Readers (a searcher, a server) hold a shared flock on ``<folder>/.readers`` for as long as they use
the folder (``held_for_reading``). The publisher tries an exclusive flock on it without waiting and
deletes only the folders it gets: renamed aside first (one atomic step), so a reader that comes
later finds no folder, never half of one, and says so. A folder a reader holds is left, and removed
by a later publication or by ``python -m pipeline.video_cache clean`` (``make clean-cache``). The
kernel drops a flock when its holder exits, however it exits, so a killed server blocks nothing.
"""
from __future__ import annotations

import fcntl
import json
import logging
import os
import shutil
from pathlib import Path

log = logging.getLogger("pipeline")

READERS_FILE = ".readers"
MANIFEST_FILE = "manifest.json"
_ASIDE_PREFIX = ".superseded-"  # a folder being deleted


class SupersededFolder(RuntimeError):
    """The folder was deleted (superseded by a newer one) before this reader could hold it."""


class ReaderHold:
    """A shared lock on a folder's readers file; released by ``close`` (or when the process ends)."""

    def __init__(self, file):
        self.file = file

    def close(self) -> None:
        self.file.close()

    def __enter__(self) -> "ReaderHold":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def held_for_reading(folder: Path, required: str = MANIFEST_FILE) -> ReaderHold:
    """Holds ``folder`` for a reader; raises SupersededFolder if it is gone (or ``required`` in it is)."""
    folder = Path(folder)
    try:
        file = open(folder / READERS_FILE, "a+b")
    except FileNotFoundError:
        raise SupersededFolder(f"{folder}: removed (superseded by a newer one); run the command again") from None
    fcntl.flock(file.fileno(), fcntl.LOCK_SH)  # waits only while a publisher is deleting this very folder
    if not (folder / required).exists():
        file.close()
        raise SupersededFolder(f"{folder}: removed (superseded by a newer one); run the command again")
    return ReaderHold(file)


def lineage_folders(stage_root: Path, lineage: str) -> list[Path]:
    """The complete folders under ``stage_root`` whose manifest names ``lineage``, newest first."""
    found = []
    for manifest in Path(stage_root).glob(f"*/{MANIFEST_FILE}"):
        record = _read_manifest(manifest)
        if record.get("lineage") == lineage and not manifest.parent.name.startswith("."):
            found.append((record.get("finished_at", ""), manifest.parent))
    return [folder for _, folder in sorted(found, key=lambda pair: pair[0], reverse=True)]


def retire_superseded(stage_root: Path, lineage: str, keep: Path, dry_run: bool = False) -> tuple[list[Path], list[Path]]:
    """Deletes the folders of ``lineage`` under ``stage_root`` other than ``keep`` that no reader holds;
    returns (deleted, left because a reader holds them). ``dry_run``: only says which would be deleted."""
    deleted, held = [], []
    for folder in lineage_folders(stage_root, lineage):
        if folder.resolve() == Path(keep).resolve():
            continue
        if dry_run or _delete_unless_read(folder):
            deleted.append(folder)
        else:
            held.append(folder)
    for aside in Path(stage_root).glob(f"{_ASIDE_PREFIX}*"):  # left by a publisher killed while deleting
        if not dry_run:
            shutil.rmtree(aside, ignore_errors=True)
    if held:
        log.info("kept %d superseded folders that a reader still holds: %s", len(held), ", ".join(map(str, held)))
    return deleted, held


def retire_all_superseded(dataset_dir: Path, dry_run: bool = False) -> tuple[list[Path], list[Path]]:
    """``retire_superseded`` for every lineage of every stage of a dataset, keeping each one's newest."""
    deleted, held = [], []
    lineages = {}
    for manifest in sorted(Path(dataset_dir).glob(f"*/*/{MANIFEST_FILE}")):
        lineage = _read_manifest(manifest).get("lineage")
        if lineage is not None:
            lineages[(manifest.parent.parent, lineage)] = True
    for stage_root, lineage in lineages:
        newest = lineage_folders(stage_root, lineage)[0]
        gone, kept = retire_superseded(stage_root, lineage, newest, dry_run)
        deleted += gone
        held += kept
    return deleted, held


def _read_manifest(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):  # being deleted, or not ours
        return {}


def _delete_unless_read(folder: Path) -> bool:
    try:
        file = open(folder / READERS_FILE, "a+b")
    except FileNotFoundError:  # deleted meanwhile by another publisher
        return True
    with file:
        try:
            fcntl.flock(file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        aside = folder.with_name(f"{_ASIDE_PREFIX}{folder.name}")
        os.rename(folder, aside)
        shutil.rmtree(aside)
    return True
