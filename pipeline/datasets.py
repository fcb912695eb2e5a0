"""Dataset adapters: a dataset's own annotation files -> one internal manifest.

The manifest (written by the PrepareDataset stage) is three JSON-lines files:
``videos.jsonl`` (video_id, path, duration, split), ``queries.jsonl`` (cap_id, video_id, text, ts,
split) and ``subtitles.jsonl`` (video_id, sub: [{text, start, end}]).

Each adapter parses its format into ``RawQuery`` rows; ``assemble_manifest`` then applies the checks
all formats share (empty text, duplicate ids, missing videos, timestamps outside the video) under the
per-problem policy of ``data.on_problem``: fail, or record the problem (file, line, message) in the
manifest and skip, keep or clamp. Nothing is dropped silently.

Readers are strict: a file that is not UTF-8 (a BOM is accepted), a line that is not valid JSON or
holds a key twice, a text or id that is null or not a string, a CSV row whose quoted field runs onto
other lines (an unclosed quote) or whose field count differs from the header's, all fail naming the
file and line. A split, or a whole dataset, left without a usable video fails here, naming the cause.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
import re
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

from extractors.text_policy import is_blank
from pipeline.paths import UnsafePathError, confined, file_kind, shown
from pipeline.subtitle_files import SUBTITLE_EXTENSIONS, read_subtitle_file
from pipeline.text_files import read_text, text_lines

if TYPE_CHECKING:
    from pipeline.video_cache import KnownDurations

log = logging.getLogger("pipeline")

REPO_ROOT = Path(__file__).resolve().parent.parent
SPLITS = ("train", "val", "test")
FORMATS = ("tvr", "activitynet", "charades", "custom")

# What may be done about each problem; the first choice of each is "fail".
PROBLEM_ACTIONS = {
    "missing_video": ("fail", "skip", "warn"),  # warn: keep the queries; the visual stage records the video
    "bad_timestamps": ("fail", "skip", "clamp"),  # clamp: keep the query with ts clamped to [0, duration]
    "duplicate_id": ("fail", "skip"),  # skip: keep the first query with that id
    "empty_text": ("fail", "skip"),
    # a video id leading outside the videos folder (../x, /x, a symlink out) or naming no possible file
    # (too long, a NUL byte, a lone surrogate)
    "unsafe_path": ("fail", "skip"),
    # An annotated duration (TVR, ActivityNet) that differs from the video's own by more than
    # data.duration_tolerance, or from another line's for the same video: skip the video's queries, or
    # use the video's duration, or the (first) annotated one.
    "duration_mismatch": ("fail", "skip", "use_video", "use_annotation"),
}
DEFAULT_PROBLEM_POLICY = {"missing_video": "warn", "bad_timestamps": "fail", "duplicate_id": "fail",
                          "empty_text": "fail", "unsafe_path": "skip", "duration_mismatch": "fail"}
DEFAULT_DURATION_TOLERANCE_S = 1.0

# A timestamp may pass the duration by this much (rounding in the annotation files) without a report.
_TIMESTAMP_SLACK_S = 0.01

DOWNLOAD_HINTS = {
    "tvr": "TVR annotations and subtitles (tvr_*_release.jsonl, tvqa_preprocessed_subtitles.jsonl): "
           "https://github.com/jayleicn/TVRetrieval (folder data/); the video frames (3 fps JPEG folders, one "
           "per vid_name): https://tvqa.cs.unc.edu/download_tvqa.html",
    "activitynet": "ActivityNet Captions (train.json, val_1.json, val_2.json): "
                   "https://cs.stanford.edu/people/ranjaykrishna/densevid/ ; the videos: "
                   "http://activity-net.org/download.html",
    "charades": "Charades-STA (charades_sta_train.txt, charades_sta_test.txt): https://github.com/jiyanggao/TALL ; "
                "the videos (480p release): https://prior.allenai.org/projects/charades",
    "custom": "your own queries file (CSV or JSONL with video, text and optional start, end, split columns) "
              "and a folder of videos; see 'Your own data' in docs/pipeline.md",
}


class AnnotationError(ValueError):
    """A malformed annotation; the message names the file and line."""


class MissingDataError(FileNotFoundError):
    """Data files a config points at are not there; the message lists each and how to get it."""


@dataclass
class DatasetManifest:
    videos: list[dict] = field(default_factory=list)
    queries: list[dict] = field(default_factory=list)
    subtitles: list[dict] = field(default_factory=list)
    problems: list[dict] = field(default_factory=list)  # {problem, file, line, message, action}


@dataclass(frozen=True)
class Location:
    file: Path
    line: int

    def __str__(self) -> str:
        return f"{self.file}:{self.line}"


@dataclass
class RawQuery:
    """One query as an adapter read it, before the checks every format shares."""

    where: Location
    cap_id: str
    video_id: str
    text: str
    split: str
    ts: list[float] | None
    duration: float | None = None  # as annotated (TVR, ActivityNet); None: the video's own


class ProblemReport:
    """Applies ``data.on_problem``: raise, or record the problem for the stage manifest and go on."""

    def __init__(self, policy: dict[str, str] | None = None):
        self.policy = {**DEFAULT_PROBLEM_POLICY, **(policy or {})}
        self.problems: list[dict] = []

    def handle(self, problem: str, where: Location, message: str, can_keep: bool = True) -> str:
        """The action taken ("skip", "warn", "clamp"); raises AnnotationError when the policy is fail.

        ``can_keep=False`` turns "warn" into "skip" (e.g. a missing video whose duration is unknown).
        """
        action = self.policy[problem]
        if action == "fail":
            raise AnnotationError(f"{where}: {message} (data.on_problem.{problem}: fail)")
        if action == "warn" and not can_keep:
            action = "skip"
        self.problems.append({"problem": problem, "file": str(where.file), "line": where.line,
                              "message": message, "action": action})
        log.warning("%s: %s (%s)", where, message, action)
        return action


@dataclass(frozen=True)
class VideoFolder:
    """Where a dataset's videos live: files ``<id><ext>`` or folders of JPEG/PNG frames ``<id>/``."""

    root: Path
    extensions: tuple[str, ...] = (".mp4",)
    frame_fps: float = 3.0  # frame rate of frame folders (TVQA ships 3 fps frames)
    known_durations: "KnownDurations | None" = None  # durations kept from earlier runs, by video identity

    def find(self, video_id: str) -> Path | None:
        """The video's folder of frames or file; UnsafePathError if the id leads outside ``root``."""
        frames = confined(self.root, video_id)
        if file_kind(frames) == "dir":
            return frames
        files = (confined(self.root, f"{video_id}{ext}") for ext in self.extensions)
        return next((path for path in files if file_kind(path) == "file"), self._in_show_folder(video_id))

    def _in_show_folder(self, video_id: str) -> Path | None:
        """TVQA's layout as distributed: ``<show>_frames/<vid_name>/`` (``frames_hq/bbt_frames/s01e01_...``)."""
        folders = self._show_folder_index.get(video_id, [])
        if len(folders) > 1:
            raise AnnotationError(f"video {video_id} has a frame folder in several show folders: "
                                  f"{', '.join(str(folder) for folder in folders)}")
        return confined(self.root, folders[0].relative_to(self.root)) if folders else None

    @cached_property
    def _show_folder_index(self) -> dict[str, list[Path]]:
        """vid_name -> its folders under the ``*_frames/`` subfolders of ``root`` (listed once)."""
        index: dict[str, list[Path]] = {}
        for show in sorted(self.root.glob("*_frames")) if self.root.is_dir() else ():
            if show.is_dir():
                for entry in sorted(os.scandir(show), key=lambda entry: entry.name):
                    if entry.is_dir():
                        index.setdefault(entry.name, []).append(show / entry.name)
        return index

    def candidates(self, video_id: str) -> list[Path]:
        return [self.root / video_id] + [self.root / f"{video_id}{ext}" for ext in self.extensions]

    def expected_path(self, video_id: str) -> Path:
        return self.root / f"{video_id}{self.extensions[0]}"

    def duration(self, path: Path) -> float:
        """Seconds, as the decoder sees the file or folder (a folder: its frame images / frame rate)."""
        from extractors.decode import video_duration  # decord is slow to import; only probing needs it

        if self.known_durations is None:
            return video_duration(path, frames_fps=self.frame_fps)
        return self.known_durations.of(path, self.frame_fps, lambda: video_duration(path, frames_fps=self.frame_fps))


def read_jsonl(path: Path) -> list[dict]:
    """A manifest file we wrote ourselves (annotation files go through ``read_annotation_jsonl``)."""
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def read_annotation_jsonl(path: Path, required: tuple[str, ...]) -> list[tuple[int, dict]]:
    """Parse a JSON-lines file; every line must be an object holding the ``required`` fields, each key
    once, with no NaN or Infinity. A BOM before the first line is accepted."""
    path = Path(path)
    if not path.is_file():
        raise AnnotationError(f"{path}: annotation file not found")
    rows = []
    for line_no, line in enumerate(text_lines(path, AnnotationError), start=1):
        if not line.strip():
            continue
        row = _parse_json(line, Location(path, line_no))
        if not isinstance(row, dict):
            raise AnnotationError(f"{path}:{line_no}: expected a JSON object")
        missing = [key for key in required if key not in row]
        if missing:
            raise AnnotationError(f"{path}:{line_no}: missing field(s) {', '.join(missing)}")
        rows.append((line_no, row))
    if not rows:
        raise AnnotationError(f"{path}: the file holds no line of data")
    return rows


class _DuplicateKey(ValueError):
    pass


def _parse_json(text: str, where: Location):
    """One JSON value; a key twice in one object, NaN or Infinity is an error naming ``where``."""
    try:
        return json.loads(text, object_pairs_hook=_object_without_duplicates, parse_constant=_no_constant)
    except _DuplicateKey as err:
        raise AnnotationError(f"{where}: {err}") from None
    except json.JSONDecodeError as err:
        line = where.line + err.lineno - 1
        raise AnnotationError(f"{where.file}:{line}: not valid JSON ({err.msg})") from None


def _object_without_duplicates(pairs: list[tuple[str, object]]) -> dict:
    result = {}
    for key, value in pairs:
        if key in result:
            raise _DuplicateKey(f"key {key!r} appears twice in one object")
        result[key] = value
    return result


def _no_constant(name: str):
    raise _DuplicateKey(f"{name} is not a number JSON allows")


def _string(value, what: str, where: Location) -> str:
    """A text field: a JSON null or a number is an error, never the text "None" or "3"."""
    if not isinstance(value, str):
        raise AnnotationError(f"{where}: {what} must be a string, got {_json_kind(value)}")
    return value


def _identifier(value, what: str, where: Location) -> str:
    """An id: a string or an integer (TVR's desc_id), never null, a float or a boolean."""
    if isinstance(value, bool) or not isinstance(value, (str, int)) or value == "":
        raise AnnotationError(f"{where}: {what} must be a string or an integer, got {_json_kind(value)}")
    return str(value)


def _seconds(value, what: str, where: Location) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise AnnotationError(f"{where}: {what} must be a number of seconds >= 0, got {_json_kind(value)}")
    return float(value)


def _json_kind(value) -> str:
    return "null" if value is None else f"{type(value).__name__} {value!r}"[:80]


# ---- the shared checks -------------------------------------------------------------------------------


def assemble_manifest(raw_queries: list[RawQuery], videos: VideoFolder, report: ProblemReport,
                      duration_tolerance: float = DEFAULT_DURATION_TOLERANCE_S) -> DatasetManifest:
    """Checks the queries of any format and lists their videos with paths and durations.

    A video belongs to one split, except that val and test may share videos and even queries (the
    PRVR references select their checkpoint on the test set: TVR and Charades-STA list the same file
    as val and test); such a video is listed under test, the split evaluation reads. A caption id is
    a duplicate when it appears twice in one split, or in two splits with another video or text.
    Every video found is probed for its duration; an annotated duration must agree with it, and with
    the video's other lines, within ``duration_tolerance`` seconds (else a duration_mismatch problem).
    """
    manifest = DatasetManifest()
    first_seen: dict[str, RawQuery] = {}
    video_splits: dict[str, list[str]] = {}
    resolved: dict[str, dict | None] = {}  # video id -> {"path", "duration"}, None when unusable
    found: set[str] = set()  # videos whose file or frame folder exists
    annotated: dict[str, RawQuery] = {}  # video id -> its first query with an annotated duration
    for query in raw_queries:
        if is_blank(query.text):
            report.handle("empty_text", query.where, "empty query text (no visible character)")
            continue
        earlier = first_seen.setdefault(query.cap_id, query)
        if earlier is not query and not _same_query_in_val_and_test(earlier, query):
            report.handle("duplicate_id", query.where, f"duplicate query id {query.cap_id} (video "
                          f"{query.video_id}; first at {earlier.where})")
            continue
        _check_split(query, video_splits)
        if not _same_annotated_duration(query, annotated, duration_tolerance, report):
            continue
        if query.video_id not in resolved:
            resolved[query.video_id] = _resolve_video(query, videos, duration_tolerance, report, found)
        video = resolved[query.video_id]
        if video is None:
            continue
        ts = query.ts if query.ts is None else _checked_ts(query, video["duration"], report)
        if ts is _SKIP:
            continue
        video_splits.setdefault(query.video_id, []).append(query.split)
        manifest.queries.append({"cap_id": query.cap_id, "video_id": query.video_id, "text": query.text.strip(),
                                 "ts": ts, "split": query.split})
    manifest.videos = [{"video_id": video_id, "path": resolved[video_id]["path"],
                        "duration": resolved[video_id]["duration"],
                        "split": "test" if "test" in splits else splits[0]}
                       for video_id, splits in video_splits.items()]
    manifest.problems = report.problems
    _check_every_split_has_videos(raw_queries, manifest, found, videos)
    return manifest


def _same_annotated_duration(query: RawQuery, annotated: dict[str, RawQuery], tolerance: float,
                             report: ProblemReport) -> bool:
    """False when the query is to be skipped: its line annotates its video with another duration than
    an earlier line did (policy: use_annotation keeps the first line's, use_video the video's)."""
    if query.duration is None:
        return True
    first = annotated.setdefault(query.video_id, query)
    if abs(first.duration - query.duration) <= tolerance:
        return True
    action = report.handle("duration_mismatch", query.where, f"video {query.video_id} is annotated as "
                           f"{query.duration:g} s long here but {first.duration:g} s at {first.where}")
    return action != "skip"


def _check_every_split_has_videos(raw_queries: list[RawQuery], manifest: DatasetManifest, found: set[str],
                                  videos: VideoFolder) -> None:
    """A split (or a dataset) without one usable video fails now, not after extraction and training."""
    if not raw_queries:
        raise AnnotationError("no query in the annotation files")
    for split in dict.fromkeys(query.split for query in raw_queries):
        listed = list(dict.fromkeys(query.video_id for query in raw_queries if query.split == split))
        usable = {query["video_id"] for query in manifest.queries if query["split"] == split} & found
        if usable:
            continue
        present = [video_id for video_id in listed if video_id in found]
        if not present:
            tried = ", ".join(path.name for path in videos.candidates(listed[0]))
            raise MissingDataError(f"split {split}: 0 of {len(listed):,} videos found under {videos.root} "
                                   f"(for {listed[0]}, looked for {tried}); check data.root, data.videos and "
                                   f"data.video_ext")
        kinds = sorted({problem["problem"] for problem in manifest.problems})
        raise AnnotationError(f"split {split}: {len(present):,} of {len(listed):,} videos found under "
                              f"{videos.root}, but none is left with a query (problems: {', '.join(kinds) or 'none'}; "
                              f"see data.on_problem)")


_SKIP = object()


def _same_query_in_val_and_test(first: RawQuery, second: RawQuery) -> bool:
    return ({first.split, second.split} == {"val", "test"} and first.video_id == second.video_id
            and first.text == second.text)


def _check_split(query: RawQuery, video_splits: dict[str, list[str]]) -> None:
    splits = set(video_splits.get(query.video_id, [])) | {query.split}
    if len(splits) > 1 and not splits <= {"val", "test"}:
        other = next(split for split in video_splits[query.video_id] if split != query.split)
        raise AnnotationError(f"{query.where}: video {query.video_id} is already in split {other}; "
                              f"a video may not be in the train split and another one")


def _resolve_video(query: RawQuery, videos: VideoFolder, tolerance: float, report: ProblemReport,
                   found: set[str]) -> dict | None:
    duration = query.duration
    try:
        path = videos.find(query.video_id)
    except UnsafePathError as err:  # refused, never followed
        report.handle("unsafe_path", query.where, f"video id {shown(query.video_id)}: {err}", can_keep=False)
        return None
    except AnnotationError as err:
        raise AnnotationError(f"{query.where}: {err}") from None
    if path is None:
        tried = ", ".join(p.name for p in videos.candidates(query.video_id))
        action = report.handle("missing_video", query.where, f"video {query.video_id} not found in {videos.root} "
                               f"(looked for {tried})", can_keep=duration is not None)
        return {"path": str(videos.expected_path(query.video_id)), "duration": duration} if action == "warn" else None
    found.add(query.video_id)
    try:
        real_duration = videos.duration(path)
    except (ValueError, RuntimeError) as err:  # VideoDecodeError is a RuntimeError
        action = report.handle("missing_video", query.where, f"video {query.video_id}: cannot read its duration: "
                               f"{err}", can_keep=duration is not None)
        return {"path": str(path), "duration": duration} if action == "warn" else None
    if duration is not None and abs(real_duration - duration) > tolerance:
        action = report.handle("duration_mismatch", query.where, f"video {query.video_id} is annotated as "
                               f"{duration:g} s long, but {path} lasts {real_duration:g} s (data.duration_tolerance: "
                               f"{tolerance:g} s)")
        if action == "skip":
            return None
        duration = real_duration if action == "use_video" else duration
    return {"path": str(path), "duration": float(real_duration if duration is None else duration)}


def _checked_ts(query: RawQuery, duration: float, report: ProblemReport):
    start, end = query.ts
    if 0 <= start <= end <= duration + _TIMESTAMP_SLACK_S:
        return [start, min(end, duration)]
    action = report.handle("bad_timestamps", query.where, f"ts must be [start, end] with 0 <= start <= end <= "
                           f"duration ({duration:g} s of video {query.video_id}), got [{start:g}, {end:g}]")
    if action == "clamp" and start <= end and start < duration:
        return [max(0.0, start), min(end, duration)]
    return _SKIP


def _parse_ts(value, where: Location) -> list[float]:
    if not (isinstance(value, (list, tuple)) and len(value) == 2
            and all(isinstance(t, (int, float)) and not isinstance(t, bool) for t in value)):
        raise AnnotationError(f"{where}: timestamps must be [start, end] numbers, got {value!r}")
    return [float(value[0]), float(value[1])]


# ---- the adapters ------------------------------------------------------------------------------------


def read_tvr(annotations: dict[str, Path | None], video_dir: Path, video_ext: str | list[str] = ".mp4",
             subtitles: Path | None = None, policy: dict[str, str] | None = None,
             frame_fps: float = 3.0, duration_tolerance: float = DEFAULT_DURATION_TOLERANCE_S,
             known_durations: "KnownDurations | None" = None) -> DatasetManifest:
    """TVR's release format (``tvr_*_release.jsonl`` + ``tvqa_preprocessed_subtitles.jsonl``).

    ``annotations`` maps our split names (train/val/test) to files; a split may be None. Videos are
    files or TVQA frame folders, flat (``<vid_name>/``) or as TVQA distributes them
    (``<show>_frames/<vid_name>/``); annotated durations are checked against the videos.
    """
    raw = []
    for split, path in _splits(annotations):
        for line_no, row in read_annotation_jsonl(path, ("desc_id", "desc", "vid_name", "duration", "ts")):
            where = Location(path, line_no)
            raw.append(RawQuery(where, _identifier(row["desc_id"], "desc_id", where),
                                _string(row["vid_name"], "vid_name", where), _string(row["desc"], "desc", where),
                                split, _parse_ts(row["ts"], where), _seconds(row["duration"], "duration", where)))
    manifest = assemble_manifest(raw, VideoFolder(Path(video_dir), _extensions(video_ext), frame_fps, known_durations),
                                 ProblemReport(policy), duration_tolerance)
    if subtitles is not None:
        manifest.subtitles = _read_tvqa_subtitles(subtitles, {video["video_id"] for video in manifest.videos})
    return manifest


def _read_tvqa_subtitles(path: Path, video_ids: set[str]) -> list[dict]:
    result, first_line = [], {}
    for line_no, row in read_annotation_jsonl(path, ("vid_name", "sub")):
        where = Location(path, line_no)
        video_id = _string(row["vid_name"], "vid_name", where)
        if video_id in first_line:
            raise AnnotationError(f"{where}: subtitles of {video_id} again (first at line {first_line[video_id]})")
        first_line[video_id] = line_no
        if not isinstance(row["sub"], list):
            raise AnnotationError(f"{where}: sub must be a list of {{text, start, end}}, got {_json_kind(row['sub'])}")
        if video_id not in video_ids:
            continue
        sentences = []
        for sentence in row["sub"]:
            if not isinstance(sentence, dict) or not {"text", "start", "end"} <= set(sentence):
                raise AnnotationError(f"{where}: a subtitle needs text, start and end")
            sentences.append({"text": _string(sentence["text"], "a subtitle's text", where),
                              "start": _seconds(sentence["start"], "a subtitle's start", where),
                              "end": _seconds(sentence["end"], "a subtitle's end", where)})
        result.append({"video_id": video_id, "sub": sentences})
    return result


def read_activitynet(annotations: dict[str, Path | None], video_dir: Path, video_ext: str | list[str] = ".mp4",
                     policy: dict[str, str] | None = None,
                     duration_tolerance: float = DEFAULT_DURATION_TOLERANCE_S,
                     known_durations: "KnownDurations | None" = None) -> DatasetManifest:
    """ActivityNet Captions: ``{video_id: {duration, timestamps, sentences}}`` per JSON file.

    Caption ids follow the PRVR bundle: ``<video_id>#enc#<k>``, k the sentence's index in its video.
    A problem's line is that of its video's key in the file (the released files are one line each).
    """
    raw = []
    for split, path in _splits(annotations):
        entries, key_lines = _read_json_object(path)
        for video_id, entry in entries.items():
            where = Location(path, key_lines.get(video_id, 1))
            if not isinstance(entry, dict) or not {"duration", "timestamps", "sentences"} <= set(entry):
                raise AnnotationError(f"{where}: video {video_id} needs duration, timestamps and sentences")
            if not (isinstance(entry["timestamps"], list) and isinstance(entry["sentences"], list)):
                raise AnnotationError(f"{where}: video {video_id}: timestamps and sentences must be lists")
            if len(entry["timestamps"]) != len(entry["sentences"]):
                raise AnnotationError(f"{where}: video {video_id} has {len(entry['timestamps'])} timestamps "
                                      f"but {len(entry['sentences'])} sentences")
            duration = _seconds(entry["duration"], f"the duration of video {video_id}", where)
            for k, (ts, sentence) in enumerate(zip(entry["timestamps"], entry["sentences"])):
                raw.append(RawQuery(where, f"{video_id}#enc#{k}", video_id,
                                    _string(sentence, f"sentence {k} of video {video_id}", where), split,
                                    _parse_ts(ts, where), duration))
    return assemble_manifest(raw, VideoFolder(Path(video_dir), _extensions(video_ext), known_durations=known_durations),
                             ProblemReport(policy), duration_tolerance)


_OBJECT_KEY_RE = re.compile(r'"((?:[^"\\]|\\.)*)"\s*:\s*\{')


def _read_json_object(path: Path) -> tuple[dict, dict[str, int]]:
    """A JSON file holding one object, and the line of each key whose value is an object. A key twice
    in one object (a video listed twice) is an error naming the line of its second appearance."""
    if not Path(path).is_file():
        raise AnnotationError(f"{path}: annotation file not found")
    text = read_text(path, AnnotationError)
    key_lines: dict[str, list[int]] = {}
    for match in _OBJECT_KEY_RE.finditer(text):
        key_lines.setdefault(json.loads(f'"{match[1]}"'), []).append(text.count("\n", 0, match.start()) + 1)
    twice = next((key for key, lines in key_lines.items() if len(lines) > 1), None)
    if twice is not None:
        raise AnnotationError(f"{path}:{key_lines[twice][1]}: video {twice} again (first at line {key_lines[twice][0]})")
    content = _parse_json(text, Location(Path(path), 1))
    if not isinstance(content, dict):
        raise AnnotationError(f"{path}:1: expected one JSON object mapping video ids to annotations")
    if not content:
        raise AnnotationError(f"{path}: the file holds no video")
    return content, {key: lines[0] for key, lines in key_lines.items()}


def read_charades(annotations: dict[str, Path | None], video_dir: Path, video_ext: str | list[str] = ".mp4",
                  policy: dict[str, str] | None = None, known_durations: "KnownDurations | None" = None) -> DatasetManifest:
    """Charades-STA: ``VIDEOID START END##sentence`` per line; durations are probed from the videos.

    Caption ids follow the PRVR bundle: ``<video_id>#enc#<k>``, k counting the video's lines in its file.
    """
    raw = []
    for split, path in _splits(annotations):
        if not Path(path).is_file():
            raise AnnotationError(f"{path}: annotation file not found")
        per_video: dict[str, int] = {}
        lines = text_lines(path, AnnotationError)
        if not any(line.strip() for line in lines):
            raise AnnotationError(f"{path}: the file holds no line of data")
        for line_no, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            where = Location(path, line_no)
            head, sep, sentence = line.partition("##")
            fields = head.split()
            if not sep or len(fields) != 3:
                raise AnnotationError(f"{where}: expected 'VIDEOID START END##sentence', got {line.strip()!r}")
            video_id, start, end = fields
            try:
                ts = [float(start), float(end)]
            except ValueError:
                raise AnnotationError(f"{where}: START and END must be numbers, got {start!r} {end!r}") from None
            k = per_video.get(video_id, 0)
            per_video[video_id] = k + 1
            raw.append(RawQuery(where, f"{video_id}#enc#{k}", video_id, sentence, split, ts))
    return assemble_manifest(raw, VideoFolder(Path(video_dir), _extensions(video_ext), known_durations=known_durations),
                             ProblemReport(policy))


def read_custom(annotations: dict[str, Path | None], video_dir: Path, video_ext: str | list[str] = ".mp4",
                policy: dict[str, str] | None = None, frame_fps: float = 3.0,
                known_durations: "KnownDurations | None" = None) -> DatasetManifest:
    """A user's own queries: CSV (header row) or JSON lines with ``video``, ``text`` and optional
    ``start``/``end`` (seconds), ``split`` and ``id``; subtitles are ``<video>.srt``/``.vtt`` files
    next to the videos.

    ``video`` is the video's file name in the videos folder, with or without its extension. A row
    without a split (empty cell, JSON null or no key) takes the split its file is listed under in
    ``data.annotations``. All rows of one video must end up in the same split, except that val and
    test may share a video; a video in train and in val or test is an error naming the line. Caption
    ids are the ``id`` column, else ``<video_id>#enc#<k>``.
    """
    videos = VideoFolder(Path(video_dir), _extensions(video_ext), frame_fps, known_durations)
    raw, per_video = [], {}
    for split, path in _splits(annotations):
        for where, row in _read_query_rows(path):
            video_id = _strip_extension(_string(row["video"], "video", where).strip(), videos.extensions)
            k = per_video.get(video_id, 0)
            per_video[video_id] = k + 1
            cap_id = f"{video_id}#enc#{k}" if row.get("id") in (None, "") else _identifier(row["id"], "id", where)
            raw.append(RawQuery(where, cap_id, video_id, _string(row["text"], "text", where),
                                _row_split(row, split, where), _row_ts(row, where)))
    manifest = assemble_manifest(raw, videos, ProblemReport(policy))
    manifest.subtitles = _read_subtitle_files(videos.root, [video["video_id"] for video in manifest.videos])
    return manifest


def _read_query_rows(path: Path) -> list[tuple[Location, dict]]:
    if Path(path).suffix.lower() == ".csv":
        return _read_csv_rows(Path(path))
    return [(Location(path, line_no), row) for line_no, row in read_annotation_jsonl(path, ("video", "text"))]


def _read_csv_rows(path: Path) -> list[tuple[Location, dict]]:
    """Rows of a CSV file with a header, one row per line: a quoted field that runs onto other lines
    (almost always an unclosed quote, which would swallow the rows after it) is an error."""
    if not path.is_file():
        raise AnnotationError(f"{path}: queries file not found")
    reader = csv.reader(io.StringIO(read_text(path, AnnotationError), newline=""), strict=True)
    rows, header, end = [], None, 0
    while True:
        start = end + 1
        try:
            record = next(reader, None)
        except csv.Error as err:
            raise AnnotationError(f"{path}:{start}: malformed CSV ({err}); an unclosed quote?") from None
        end = reader.line_num
        if record is None:
            break
        if end > start:
            raise AnnotationError(f"{path}:{start}: a quoted field runs from line {start} to line {end}: an "
                                  f"unclosed quote? Each row must be on one line")
        if not record:
            continue
        where = Location(path, start)
        if header is None:
            header = _csv_header(record, where)
        elif len(record) != len(header):
            raise AnnotationError(f"{where}: {len(record)} fields, but the header has {len(header)} "
                                  f"({', '.join(header)})")
        else:
            rows.append((where, dict(zip(header, record))))
    if not rows:
        raise AnnotationError(f"{path}: the file holds no row of data")
    return rows


def _csv_header(record: list[str], where: Location) -> list[str]:
    header = [name.strip() for name in record]
    missing = {"video", "text"} - set(header)
    if missing:
        raise AnnotationError(f"{where}: the header lacks column(s) {', '.join(sorted(missing))}")
    twice = next((name for name in header if header.count(name) > 1), None)
    if twice is not None:
        raise AnnotationError(f"{where}: the header names column {twice!r} twice")
    return header


def _strip_extension(name: str, extensions: tuple[str, ...]) -> str:
    suffix = Path(name).suffix
    return name[: -len(suffix)] if suffix and suffix.lower() in extensions else name


def _row_split(row: dict, default: str, where: Location) -> str:
    value = row.get("split")
    split = default if value in (None, "") else _string(value, "split", where).strip()
    if split not in SPLITS:
        raise AnnotationError(f"{where}: split must be one of {', '.join(SPLITS)}, got {split!r}")
    return split


def _row_ts(row: dict, where: Location) -> list[float] | None:
    start, end = row.get("start"), row.get("end")
    if start in (None, "") and end in (None, ""):
        return None
    not_numbers = f"{where}: start and end must both be numbers (or both empty), got {start!r} and {end!r}"
    if isinstance(start, bool) or isinstance(end, bool):  # float(True) would be 1.0
        raise AnnotationError(not_numbers)
    try:
        ts = [float(start), float(end)]
    except (TypeError, ValueError):
        raise AnnotationError(not_numbers) from None
    if not all(math.isfinite(t) for t in ts):
        raise AnnotationError(f"{where}: start and end must be finite numbers, got {start!r} and {end!r}")
    return ts


def _read_subtitle_files(video_dir: Path, video_ids: list[str]) -> list[dict]:
    result = []
    for video_id in video_ids:
        candidates = (_subtitle_file_name(video_dir, f"{video_id}{ext}") for ext in SUBTITLE_EXTENSIONS)
        path = next((candidate for candidate in candidates if candidate is not None and file_kind(candidate) == "file"),
                    None)
        if path is not None:
            result.append({"video_id": video_id, "sub": read_subtitle_file(path)})
    return result


def _subtitle_file_name(video_dir: Path, name: str) -> Path | None:
    """The subtitle file ``name`` in ``video_dir``; None, with a warning, where it is refused (a symbolic
    link out of the folder, or a name too long for a file: an id one byte short of the limit)."""
    try:
        return confined(video_dir, name)
    except UnsafePathError as error:
        log.warning("subtitles %s left out: %s", shown(name), error)
        return None


def _splits(annotations: dict[str, Path | None]) -> list[tuple[str, Path]]:
    return [(split, Path(path)) for split, path in annotations.items() if path is not None]


def _extensions(video_ext: str | list[str]) -> tuple[str, ...]:
    return (video_ext,) if isinstance(video_ext, str) else tuple(video_ext)


# ---- a plain folder of videos (data.source: folder): a collection to search, no annotations -----------

# Containers ffmpeg reads that people keep footage in; a folder holding only JPEG/PNG frames is one video.
FOLDER_VIDEO_EXTENSIONS = (".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".mpg", ".mpeg", ".ts", ".mts",
                           ".m2ts", ".flv", ".wmv", ".ogv", ".3gp")
_FRAME_SUFFIXES = (".jpg", ".jpeg", ".png")


def folder_videos(root: Path) -> list[Path]:
    """Every video file and frame folder under ``root`` (nested folders allowed), sorted. Entries that
    resolve outside ``root`` (symbolic links) are left out: a collection never reads beyond its root."""
    root = Path(root)
    if not root.is_dir():
        raise MissingDataError(f"data.root {root}: not a folder (data.source: folder indexes the videos in it)")
    resolved_root = root.resolve()
    found, outside = [], []
    for folder, subfolders, files in _walk(os.fspath(root)):
        names = sorted(entry.name for entry in files)
        if names and not subfolders and all(_suffix(name).lower() in _FRAME_SUFFIXES for name in names):
            found.append(Path(folder))  # a folder of frames (a folder walked into is no link: inside)
            continue
        links = {entry.name for entry in files if entry.is_symlink()}  # no syscall: scandir's d_type
        for name in names:
            if _suffix(name).lower() not in FOLDER_VIDEO_EXTENSIONS:
                continue
            path = Path(folder, name)
            # Only links can lead outside (the walk does not enter linked folders): only they are resolved.
            (outside if name in links and not path.resolve().is_relative_to(resolved_root) else found).append(path)
    for path in sorted(outside):
        log.warning("%s resolves outside data.root %s: left out", path, root)
    return found


def _walk(folder: str):
    """``os.walk(folder)``'s order (top-down, subfolders sorted; linked folders listed, not entered),
    with each file's ``os.DirEntry``: a folder of 20k videos is listed without a syscall per video."""
    try:
        with os.scandir(folder) as scanned:
            entries = list(scanned)
    except OSError:  # as os.walk: an unreadable folder is skipped
        return
    subfolders, files = [], []
    for entry in entries:
        try:
            is_folder = entry.is_dir()
        except OSError:
            is_folder = False
        (subfolders if is_folder else files).append(entry)
    subfolders.sort(key=lambda entry: entry.name)
    yield folder, [entry.name for entry in subfolders], files
    for entry in subfolders:
        if not entry.is_symlink():
            yield from _walk(entry.path)


def _suffix(name: str) -> str:
    """``Path(name).suffix``, without building a Path (once per file of a collection)."""
    dot = name.rfind(".")
    return name[dot:] if 0 < dot < len(name) - 1 else ""


def read_folder(root: Path, frame_fps: float, known_durations: "KnownDurations | None" = None) -> DatasetManifest:
    """Every video under ``root`` with its duration; unreadable ones are listed as problems, not fatal."""
    from extractors.decode import VideoDecodeError

    manifest, videos = DatasetManifest(), VideoFolder(Path(root), frame_fps=frame_fps, known_durations=known_durations)
    for path in folder_videos(root):
        video_id = path.relative_to(root).as_posix()  # unique; an opaque key everywhere (pipeline.paths)
        try:
            duration = videos.duration(path)
            if not 0 < duration < float("inf"):
                raise VideoDecodeError(path, f"no usable duration ({duration})")
        except VideoDecodeError as error:
            manifest.problems.append({"problem": "unreadable_video", "file": str(path), "line": 0,
                                      "message": str(error), "action": "skip"})
            log.warning("%s (skipped)", error)
            continue
        manifest.videos.append({"video_id": video_id, "path": str(path), "duration": duration, "split": None})
    if not manifest.videos:
        raise MissingDataError(f"data.root {root}: no readable video ({', '.join(FOLDER_VIDEO_EXTENSIONS)}) "
                               f"or frame folder in it")
    return manifest


# ---- from a config -----------------------------------------------------------------------------------


def resolve_data_root(root: str | None) -> Path:
    """``data.root``; a relative root is relative to the repository, so any working directory works."""
    return REPO_ROOT / (root or ".")


def expected_data_files(data: dict, root: Path) -> dict[str, Path]:
    """The files and folders a ``data`` config section points at, by config key."""
    expected = {f"data.annotations.{split}": root / name for split, name in data["annotations"].items()
                if name is not None}
    if data["subtitles"] is not None:
        expected["data.subtitles"] = root / data["subtitles"]
    expected["data.videos"] = root / data["videos"]
    return expected


def check_data_files(data: dict, root: Path, dataset: str) -> None:
    """Raises MissingDataError naming every missing file, where it was expected and how to get it."""
    missing = {key: path for key, path in expected_data_files(data, root).items() if not path.exists()}
    if missing:
        listing = "\n".join(f"  {key:<24} {path}" for key, path in missing.items())
        raise MissingDataError(
            f"dataset {dataset!r}: {len(missing)} expected data file(s) missing:\n{listing}\n"
            f"How to get them: {DOWNLOAD_HINTS[data['format']]}\n"
            f"Put them under {root} (data.root), or point the config elsewhere, e.g. "
            f"--set \"data.root=/path/to/{dataset}\". To train on the released PRVR feature bundle instead "
            f"(no videos needed): --set \"features.source=bundle\".")


def read_dataset(data: dict, root: Path, known_durations: "KnownDurations | None" = None) -> DatasetManifest:
    """The manifest of the dataset a ``data`` config section describes (paths relative to ``root``);
    videos' durations come from ``known_durations`` where it has them, else from probing the video."""
    if data["source"] == "folder":
        return read_folder(root, data["frame_fps"], known_durations)
    annotations = {split: None if name is None else root / name for split, name in data["annotations"].items()}
    video_dir, policy = root / data["videos"], data["on_problem"]
    if data["format"] == "tvr":
        subtitles = None if data["subtitles"] is None else root / data["subtitles"]
        return read_tvr(annotations, video_dir, data["video_ext"], subtitles, policy, data["frame_fps"],
                        data["duration_tolerance"], known_durations)
    if data["format"] == "custom":
        return read_custom(annotations, video_dir, data["video_ext"], policy, data["frame_fps"], known_durations)
    if data["format"] == "activitynet":
        return read_activitynet(annotations, video_dir, data["video_ext"], policy, data["duration_tolerance"],
                                known_durations)
    return read_charades(annotations, video_dir, data["video_ext"], policy, known_durations)
