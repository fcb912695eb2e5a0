"""Reading the text files users hand us (annotations, captions, subtitles): UTF-8, strictly.

A leading byte order mark is dropped, whatever the format. A file that is not UTF-8 fails with the
line and byte offset of the first byte that is not, instead of a bare ``UnicodeDecodeError``.
"""

from __future__ import annotations

from pathlib import Path


def read_text(path: Path, error: type[Exception]) -> str:
    """The text of a UTF-8 file, a leading BOM dropped; ``error`` (naming file, line and byte) if it
    is not UTF-8."""
    data = Path(path).read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        raise error(f"{path}:{line}: not UTF-8 text (byte {err.start}, {data[err.start:err.start + 1]!r}); "
                    f"save the file as UTF-8") from None


def text_lines(path: Path, error: type[Exception]) -> list[str]:
    """The lines of a UTF-8 file (see ``read_text``); line k of the file is item k - 1. Only '\\n'
    (with an optional '\\r' before it) ends a line, so the numbers match what editors show."""
    return [line.removesuffix("\r") for line in read_text(path, error).split("\n")]
