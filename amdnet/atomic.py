"""Atomic file output: write to a temporary path in the same folder, rename on success."""
from __future__ import annotations

import json
import os
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_path(path: Path):
    """Yields a temporary sibling path; it replaces `path` only if the block succeeds."""
    path = Path(path)
    temporary = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        yield temporary
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def write_text_atomic(path: Path, text: str):
    with atomic_path(path) as temporary:
        temporary.write_text(text, encoding="utf-8")


def write_json_atomic(path: Path, value):
    write_text_atomic(path, json.dumps(value, indent=2, default=str) + "\n")


def write_jsonl_atomic(path: Path, records):
    write_text_atomic(path, "".join(json.dumps(record) + "\n" for record in records))
