"""Subtitle files that sit next to a user's videos: SubRip (.srt) and WebVTT (.vtt).

Both are blocks separated by blank lines; a block holds an optional cue id, one timing line
``start --> end`` and the text lines. SRT writes ``00:01:02,500``; WebVTT ``00:01:02.500`` or
``01:02.500`` and may add cue settings after the end time. Markup such as ``<i>`` or ``<v Bob>`` is
dropped. A malformed timing line, or a file that is not UTF-8, is reported with its file and line number.
"""

from __future__ import annotations

import re
from pathlib import Path

from extractors.text_policy import is_blank
from pipeline.text_files import text_lines

SUBTITLE_EXTENSIONS = (".srt", ".vtt")

_TIMING_RE = re.compile(r"^\s*(?P<start>[\d:.,]+)\s+-->\s+(?P<end>[\d:.,]+)")
_TIME_RE = re.compile(r"^(?:(\d+):)?(\d{1,2}):(\d{1,2})[.,](\d{1,3})$")
_MARKUP_RE = re.compile(r"<[^>]*>")
# WebVTT blocks that carry no cue: the header, comments, style and region definitions.
_VTT_NON_CUE_PREFIXES = ("WEBVTT", "NOTE", "STYLE", "REGION")


class SubtitleFileError(ValueError):
    """A malformed subtitle file; the message names the file and line."""


def read_subtitle_file(path: Path) -> list[dict]:
    """The sentences of an .srt or .vtt file: [{"text", "start", "end"}] in seconds, in file order."""
    path = Path(path)
    lines = text_lines(path, SubtitleFileError)
    sentences = []
    for first_line_no, block in _blocks(lines):
        if block[0].strip().startswith(_VTT_NON_CUE_PREFIXES):
            continue
        timing_index = next((i for i, line in enumerate(block[:2]) if "-->" in line), None)
        if timing_index is None:
            raise SubtitleFileError(f"{path}:{first_line_no}: expected a 'start --> end' timing line")
        timing_line_no = first_line_no + timing_index
        start, end = _parse_timing(block[timing_index], f"{path}:{timing_line_no}")
        text = " ".join(_MARKUP_RE.sub("", line).strip() for line in block[timing_index + 1:]).strip()
        if not is_blank(text):
            sentences.append({"text": text, "start": start, "end": end})
    return sentences


def _blocks(lines: list[str]) -> list[tuple[int, list[str]]]:
    """Runs of non-blank lines, each with the (1-based) line number of its first line."""
    blocks, current, first_line_no = [], [], 0
    for line_no, line in enumerate(lines, start=1):
        if line.strip():
            if not current:
                first_line_no = line_no
            current.append(line)
        elif current:
            blocks.append((first_line_no, current))
            current = []
    if current:
        blocks.append((first_line_no, current))
    return blocks


def _parse_timing(line: str, where: str) -> tuple[float, float]:
    match = _TIMING_RE.match(line)
    if match is None:
        raise SubtitleFileError(f"{where}: cannot read the timing line {line.strip()!r}")
    start, end = _seconds(match["start"], where), _seconds(match["end"], where)
    if end < start:
        raise SubtitleFileError(f"{where}: the cue ends ({end} s) before it starts ({start} s)")
    return start, end


def _seconds(text: str, where: str) -> float:
    match = _TIME_RE.match(text)
    if match is None:
        raise SubtitleFileError(f"{where}: {text!r} is not a time like 00:01:02,500")
    hours, minutes, seconds, fraction = match.groups()
    return int(hours or 0) * 3600 + int(minutes) * 60 + int(seconds) + int(fraction.ljust(3, "0")) / 1000
