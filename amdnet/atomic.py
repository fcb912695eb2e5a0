"""Atomic file output: write to a temporary path in the same folder, rename on success.

A write that fails because the disk is full raises DiskFullError naming the folder ("no space left
on <folder>"), whatever the writer reported: an OSError with errno ENOSPC, or torch.save's bare
"basic_ios::clear: iostream error".
"""
from __future__ import annotations

import errno
import json
import os
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable

# Less free space than this after a failed write means the write failed for want of space.
_FULL_BELOW_BYTES = 1 << 20


class DiskFullError(OSError):
    """A write failed because its file system is full; the message names the folder."""


@contextmanager
def atomic_path(path: Path):
    """Yields a temporary sibling path; it replaces `path` only if the block succeeds."""
    path = Path(path)
    temporary = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        yield temporary
        os.replace(temporary, path)
    except (OSError, RuntimeError) as err:
        if _disk_full(err, path.parent):
            raise DiskFullError(errno.ENOSPC, f"no space left on {path.parent} (while writing {path.name}; "
                                              f"{shutil.disk_usage(path.parent).free:,} bytes free)") from err
        raise
    finally:
        temporary.unlink(missing_ok=True)


def _disk_full(err: Exception, folder: Path) -> bool:
    if isinstance(err, DiskFullError):
        return False  # already explained, by an inner atomic_path
    if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    # torch.save (and other C++ writers) report a failed write without its cause: check the space left.
    return isinstance(err, RuntimeError) and shutil.disk_usage(folder).free < _FULL_BELOW_BYTES


def write_text_atomic(path: Path, text: str):
    write_lines_atomic(path, (text,))


def write_json_atomic(path: Path, value):
    write_text_atomic(path, json.dumps(value, indent=2, default=str) + "\n")


def write_lines_atomic(path: Path, pieces: Iterable[str]):
    """The concatenation of ``pieces``, written as they come: the text is never held whole."""
    with atomic_path(path) as temporary, open(temporary, "w", encoding="utf-8") as file:
        file.writelines(pieces)


def write_jsonl_atomic(path: Path, records: Iterable):
    write_lines_atomic(path, (json.dumps(record) + "\n" for record in records))
