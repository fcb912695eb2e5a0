"""Dataset adapters: a dataset's own annotation files -> one internal manifest.

The manifest (written by the PrepareDataset stage) is three JSON-lines files:
``videos.jsonl`` (video_id, path, duration, split), ``queries.jsonl`` (cap_id, video_id, text, ts,
split) and ``subtitles.jsonl`` (video_id, sub: [{text, start, end}]).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path


class AnnotationError(ValueError):
    """A malformed annotation; the message names the file and line."""


@dataclass
class DatasetManifest:
    videos: list[dict] = field(default_factory=list)
    queries: list[dict] = field(default_factory=list)
    subtitles: list[dict] = field(default_factory=list)


def read_jsonl(path: Path) -> list[dict]:
    """A manifest file we wrote ourselves (annotation files go through ``read_annotation_jsonl``)."""
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def read_annotation_jsonl(path: Path, required: tuple[str, ...]) -> list[tuple[int, dict]]:
    """Parse a JSON-lines file; every line must be an object holding the ``required`` fields."""
    path = Path(path)
    if not path.is_file():
        raise AnnotationError(f"{path}: annotation file not found")
    rows = []
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise AnnotationError(f"{path}:{line_no}: not valid JSON ({err.msg})") from None
            if not isinstance(row, dict):
                raise AnnotationError(f"{path}:{line_no}: expected a JSON object")
            missing = [key for key in required if key not in row]
            if missing:
                raise AnnotationError(f"{path}:{line_no}: missing field(s) {', '.join(missing)}")
            rows.append((line_no, row))
    return rows


def read_tvr(annotations: dict[str, Path | None], video_dir: Path, video_ext: str,
             subtitles: Path | None) -> DatasetManifest:
    """TVR's release format (``tvr_*_release.jsonl`` + ``tvqa_preprocessed_subtitles.jsonl``).

    ``annotations`` maps our split names (train/val/test) to files; a split may be None.
    """
    manifest = DatasetManifest()
    video_split: dict[str, str] = {}
    durations: dict[str, float] = {}
    for split, path in annotations.items():
        if path is None:
            continue
        for line_no, row in read_annotation_jsonl(path, ("desc_id", "desc", "vid_name", "duration", "ts")):
            where = f"{path}:{line_no}"
            video_id, ts = str(row["vid_name"]), row["ts"]
            text = str(row["desc"]).strip()
            if not text:
                raise AnnotationError(f"{where}: empty query text")
            if not (isinstance(ts, list) and len(ts) == 2 and 0 <= ts[0] <= ts[1]):
                raise AnnotationError(f"{where}: ts must be [start, end] with 0 <= start <= end, got {ts!r}")
            if video_split.setdefault(video_id, split) != split:
                raise AnnotationError(f"{where}: video {video_id} is already in split {video_split[video_id]}")
            durations[video_id] = float(row["duration"])
            manifest.queries.append({"cap_id": str(row["desc_id"]), "video_id": video_id, "text": text,
                                     "ts": [float(ts[0]), float(ts[1])], "split": split})
    _check_unique_cap_ids(manifest.queries)
    manifest.videos = [{"video_id": vid, "path": str(Path(video_dir) / f"{vid}{video_ext}"),
                        "duration": durations[vid], "split": split} for vid, split in video_split.items()]
    if subtitles is not None:
        manifest.subtitles = _read_tvqa_subtitles(subtitles, set(video_split))
    return manifest


def _check_unique_cap_ids(queries: list[dict]) -> None:
    seen = set()
    for query in queries:
        if query["cap_id"] in seen:
            raise AnnotationError(f"duplicate query id {query['cap_id']} (video {query['video_id']})")
        seen.add(query["cap_id"])


def _read_tvqa_subtitles(path: Path, video_ids: set[str]) -> list[dict]:
    result = []
    for line_no, row in read_annotation_jsonl(path, ("vid_name", "sub")):
        if row["vid_name"] not in video_ids:
            continue
        sentences = []
        for sentence in row["sub"]:
            if not {"text", "start", "end"} <= set(sentence):
                raise AnnotationError(f"{path}:{line_no}: a subtitle needs text, start and end")
            sentences.append({"text": str(sentence["text"]), "start": float(sentence["start"]),
                              "end": float(sentence["end"])})
        result.append({"video_id": str(row["vid_name"]), "sub": sentences})
    return result
