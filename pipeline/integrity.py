"""Cheap checks that a published file is still the file that was published.

A stage folder, and each per-video cache entry, records for every file it publishes (and every file of
another stage folder it reads in place) a *file record*: its size and a CRC-32 of its first and last
64 KiB. Checking one costs a stat and two reads, whatever the file's size, and catches what happens
to outputs in practice: a file deleted, truncated (a full disk, a killed copy), emptied, or replaced by
other bytes. It does not catch bytes changed in the middle of a file larger than 128 KiB with its size
kept (nothing short of reading the whole file does).
"""

from __future__ import annotations

import os
import zlib
from pathlib import Path

_END_BYTES = 64 * 1024


def file_record(path: Path) -> dict:
    """``{"size": bytes, "ends": crc}`` of ``path`` as it is now."""
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        return {"size": size, "ends": _ends_crc(f, size)}


def record_problem(path: Path, record: dict) -> str | None:
    """What is wrong with ``path`` against its ``record`` (missing, other size, other bytes), or None."""
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size != record["size"]:
                return f"{path}: {size:,} bytes, {record['size']:,} when it was written (truncated or replaced)"
            if _ends_crc(f, size) != record["ends"]:
                return f"{path}: its bytes changed since it was written"
    except FileNotFoundError:
        return f"{path}: missing"
    except IsADirectoryError:
        return f"{path}: a folder, not the file that was written"
    except OSError as err:
        return f"{path}: unreadable ({err.strerror or err})"
    return None


def _ends_crc(f, size: int) -> int:
    head = f.read(_END_BYTES)
    if size <= 2 * _END_BYTES:  # small file: all of it
        return zlib.crc32(head + f.read())
    f.seek(size - _END_BYTES)
    return zlib.crc32(f.read(_END_BYTES), zlib.crc32(head))
