"""Dataset adapters: a dataset's own annotation files -> one internal manifest.

The manifest (written by the PrepareDataset stage) is three JSON-lines files:
``videos.jsonl`` (video_id, path, duration, split), ``queries.jsonl`` (cap_id, video_id, text, ts,
split) and ``subtitles.jsonl`` (video_id, sub: [{text, start, end}]).

Each adapter parses its format into ``RawQuery`` rows; ``assemble_manifest`` then applies the checks
all formats share (empty text, duplicate ids, missing videos, timestamps outside the video) under the
per-problem policy of ``data.on_problem``: fail, or record the problem (file, line, message) in the
manifest and skip, keep or clamp. Nothing is dropped silently.
"""

from __future__ import annotations

import csv
import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.subtitle_files import SUBTITLE_EXTENSIONS, read_subtitle_file

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
}
DEFAULT_PROBLEM_POLICY = {"missing_video": "warn", "bad_timestamps": "fail", "duplicate_id": "fail",
                          "empty_text": "fail"}

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
              "and a folder of videos; see 'Your own data' in README.md",
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

    def find(self, video_id: str) -> Path | None:
        frames = self.root / video_id
        if frames.is_dir():
            return frames
        return next((path for path in self.candidates(video_id)[1:] if path.is_file()), None)

    def candidates(self, video_id: str) -> list[Path]:
        return [self.root / video_id] + [self.root / f"{video_id}{ext}" for ext in self.extensions]

    def expected_path(self, video_id: str) -> Path:
        return self.root / f"{video_id}{self.extensions[0]}"

    def duration(self, path: Path) -> float:
        """Seconds, as the decoder sees the file or folder (a folder: its frame images / frame rate)."""
        from extractors.decode import video_duration  # decord is slow to import; only probing needs it

        return video_duration(path, frames_fps=self.frame_fps)


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


# ---- the shared checks -------------------------------------------------------------------------------


def assemble_manifest(raw_queries: list[RawQuery], videos: VideoFolder, report: ProblemReport,
                      annotated_durations: dict[str, float] | None = None) -> DatasetManifest:
    """Checks the queries of any format and lists their videos with paths and durations.

    A video belongs to one split, except that val and test may share videos and even queries (the
    PRVR references select their checkpoint on the test set: TVR and Charades-STA list the same file
    as val and test); such a video is listed under test, the split evaluation reads. A caption id is
    a duplicate when it appears twice in one split, or in two splits with another video or text.
    Durations come from the annotations when they have them, else from the video itself.
    """
    annotated_durations = annotated_durations or {}
    manifest = DatasetManifest()
    first_seen: dict[str, RawQuery] = {}
    video_splits: dict[str, list[str]] = {}
    resolved: dict[str, dict | None] = {}  # video id -> {"path", "duration"}, None when unusable
    for query in raw_queries:
        if not query.text.strip():
            report.handle("empty_text", query.where, "empty query text")
            continue
        earlier = first_seen.setdefault(query.cap_id, query)
        if earlier is not query and not _same_query_in_val_and_test(earlier, query):
            report.handle("duplicate_id", query.where, f"duplicate query id {query.cap_id} (video "
                          f"{query.video_id}; first at {earlier.where})")
            continue
        _check_split(query, video_splits)
        if query.video_id not in resolved:
            resolved[query.video_id] = _resolve_video(query, videos, annotated_durations.get(query.video_id),
                                                      report)
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
    return manifest


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


def _resolve_video(query: RawQuery, videos: VideoFolder, duration: float | None,
                   report: ProblemReport) -> dict | None:
    path = videos.find(query.video_id)
    if path is None:
        tried = ", ".join(p.name for p in videos.candidates(query.video_id))
        action = report.handle("missing_video", query.where, f"video {query.video_id} not found in {videos.root} "
                               f"(looked for {tried})", can_keep=duration is not None)
        return {"path": str(videos.expected_path(query.video_id)), "duration": duration} if action == "warn" else None
    if duration is None:
        try:
            duration = videos.duration(path)
        except (ValueError, RuntimeError) as err:  # VideoDecodeError is a RuntimeError
            report.handle("missing_video", query.where, f"video {query.video_id}: cannot read its duration: {err}",
                          can_keep=False)
            return None
    return {"path": str(path), "duration": float(duration)}


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
             frame_fps: float = 3.0) -> DatasetManifest:
    """TVR's release format (``tvr_*_release.jsonl`` + ``tvqa_preprocessed_subtitles.jsonl``).

    ``annotations`` maps our split names (train/val/test) to files; a split may be None. Videos are
    files or TVQA frame folders; durations come from the annotations.
    """
    raw, durations = [], {}
    for split, path in _splits(annotations):
        for line_no, row in read_annotation_jsonl(path, ("desc_id", "desc", "vid_name", "duration", "ts")):
            where = Location(path, line_no)
            video_id = str(row["vid_name"])
            durations[video_id] = float(row["duration"])
            raw.append(RawQuery(where, str(row["desc_id"]), video_id, str(row["desc"]), split,
                                _parse_ts(row["ts"], where)))
    manifest = assemble_manifest(raw, VideoFolder(Path(video_dir), _extensions(video_ext), frame_fps),
                                 ProblemReport(policy), durations)
    if subtitles is not None:
        manifest.subtitles = _read_tvqa_subtitles(subtitles, {video["video_id"] for video in manifest.videos})
    return manifest


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


def read_activitynet(annotations: dict[str, Path | None], video_dir: Path, video_ext: str | list[str] = ".mp4",
                     policy: dict[str, str] | None = None) -> DatasetManifest:
    """ActivityNet Captions: ``{video_id: {duration, timestamps, sentences}}`` per JSON file.

    Caption ids follow the PRVR bundle: ``<video_id>#enc#<k>``, k the sentence's index in its video.
    A problem's line is that of its video's key in the file (the released files are one line each).
    """
    raw, durations = [], {}
    for split, path in _splits(annotations):
        entries, key_lines = _read_json_object(path)
        for video_id, entry in entries.items():
            where = Location(path, key_lines.get(video_id, 1))
            if not isinstance(entry, dict) or not {"duration", "timestamps", "sentences"} <= set(entry):
                raise AnnotationError(f"{where}: video {video_id} needs duration, timestamps and sentences")
            if len(entry["timestamps"]) != len(entry["sentences"]):
                raise AnnotationError(f"{where}: video {video_id} has {len(entry['timestamps'])} timestamps "
                                      f"but {len(entry['sentences'])} sentences")
            durations[video_id] = float(entry["duration"])
            for k, (ts, sentence) in enumerate(zip(entry["timestamps"], entry["sentences"])):
                raw.append(RawQuery(where, f"{video_id}#enc#{k}", video_id, str(sentence), split,
                                    _parse_ts(ts, where)))
    return assemble_manifest(raw, VideoFolder(Path(video_dir), _extensions(video_ext)), ProblemReport(policy),
                             durations)


_OBJECT_KEY_RE = re.compile(r'"((?:[^"\\]|\\.)*)"\s*:\s*\{')


def _read_json_object(path: Path) -> tuple[dict, dict[str, int]]:
    """A JSON file holding one object, and the line of each key whose value is an object."""
    if not Path(path).is_file():
        raise AnnotationError(f"{path}: annotation file not found")
    text = Path(path).read_text(encoding="utf-8")
    try:
        content = json.loads(text)
    except json.JSONDecodeError as err:
        raise AnnotationError(f"{path}:{err.lineno}: not valid JSON ({err.msg})") from None
    if not isinstance(content, dict):
        raise AnnotationError(f"{path}:1: expected one JSON object mapping video ids to annotations")
    key_lines = {}
    for match in _OBJECT_KEY_RE.finditer(text):
        key_lines.setdefault(json.loads(f'"{match[1]}"'), text.count("\n", 0, match.start()) + 1)
    return content, key_lines


def read_charades(annotations: dict[str, Path | None], video_dir: Path, video_ext: str | list[str] = ".mp4",
                  policy: dict[str, str] | None = None) -> DatasetManifest:
    """Charades-STA: ``VIDEOID START END##sentence`` per line; durations are probed from the videos.

    Caption ids follow the PRVR bundle: ``<video_id>#enc#<k>``, k counting the video's lines in its file.
    """
    raw = []
    for split, path in _splits(annotations):
        if not Path(path).is_file():
            raise AnnotationError(f"{path}: annotation file not found")
        per_video: dict[str, int] = {}
        for line_no, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), start=1):
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
    return assemble_manifest(raw, VideoFolder(Path(video_dir), _extensions(video_ext)), ProblemReport(policy))


def read_custom(annotations: dict[str, Path | None], video_dir: Path, video_ext: str | list[str] = ".mp4",
                policy: dict[str, str] | None = None, frame_fps: float = 3.0) -> DatasetManifest:
    """A user's own queries: CSV (header row) or JSON lines with ``video``, ``text`` and optional
    ``start``/``end`` (seconds), ``split`` and ``id``; subtitles are ``<video>.srt``/``.vtt`` files
    next to the videos.

    ``video`` is the video's file name in the videos folder, with or without its extension. A row
    without a split takes the split its file is listed under in ``data.annotations``. Caption ids are
    the ``id`` column, else ``<video_id>#enc#<k>``.
    """
    videos = VideoFolder(Path(video_dir), _extensions(video_ext), frame_fps)
    raw, per_video = [], {}
    for split, path in _splits(annotations):
        for where, row in _read_query_rows(path):
            video_id = _strip_extension(str(row["video"]).strip(), videos.extensions)
            k = per_video.get(video_id, 0)
            per_video[video_id] = k + 1
            raw.append(RawQuery(where, str(row.get("id") or f"{video_id}#enc#{k}"), video_id, str(row["text"]),
                                _row_split(row, split, where), _row_ts(row, where)))
    manifest = assemble_manifest(raw, videos, ProblemReport(policy))
    manifest.subtitles = _read_subtitle_files(videos.root, [video["video_id"] for video in manifest.videos])
    return manifest


def _read_query_rows(path: Path) -> list[tuple[Location, dict]]:
    if Path(path).suffix.lower() == ".csv":
        if not Path(path).is_file():
            raise AnnotationError(f"{path}: queries file not found")
        with open(path, encoding="utf-8-sig", newline="") as f:
            reader = csv.DictReader(f)
            missing = {"video", "text"} - set(reader.fieldnames or [])
            if missing:
                raise AnnotationError(f"{path}:1: the header lacks column(s) {', '.join(sorted(missing))}")
            # reader.line_num is the last line of the record, which is its line unless a quoted cell spans lines
            return [(Location(path, reader.line_num), row) for row in reader]
    return [(Location(path, line_no), row) for line_no, row in read_annotation_jsonl(path, ("video", "text"))]


def _strip_extension(name: str, extensions: tuple[str, ...]) -> str:
    suffix = Path(name).suffix
    return name[: -len(suffix)] if suffix and suffix.lower() in extensions else name


def _row_split(row: dict, default: str, where: Location) -> str:
    split = (row.get("split") or default).strip()
    if split not in SPLITS:
        raise AnnotationError(f"{where}: split must be one of {', '.join(SPLITS)}, got {split!r}")
    return split


def _row_ts(row: dict, where: Location) -> list[float] | None:
    start, end = row.get("start"), row.get("end")
    if start in (None, "") and end in (None, ""):
        return None
    try:
        return [float(start), float(end)]
    except (TypeError, ValueError):
        raise AnnotationError(f"{where}: start and end must both be numbers (or both empty), "
                              f"got {start!r} and {end!r}") from None


def _read_subtitle_files(video_dir: Path, video_ids: list[str]) -> list[dict]:
    result = []
    for video_id in video_ids:
        path = next((video_dir / f"{video_id}{ext}" for ext in SUBTITLE_EXTENSIONS
                     if (video_dir / f"{video_id}{ext}").is_file()), None)
        if path is not None:
            result.append({"video_id": video_id, "sub": read_subtitle_file(path)})
    return result


def _splits(annotations: dict[str, Path | None]) -> list[tuple[str, Path]]:
    return [(split, Path(path)) for split, path in annotations.items() if path is not None]


def _extensions(video_ext: str | list[str]) -> tuple[str, ...]:
    return (video_ext,) if isinstance(video_ext, str) else tuple(video_ext)


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


def read_dataset(data: dict, root: Path) -> DatasetManifest:
    """The manifest of the dataset a ``data`` config section describes (paths relative to ``root``)."""
    annotations = {split: None if name is None else root / name for split, name in data["annotations"].items()}
    video_dir, policy = root / data["videos"], data["on_problem"]
    if data["format"] == "tvr":
        subtitles = None if data["subtitles"] is None else root / data["subtitles"]
        return read_tvr(annotations, video_dir, data["video_ext"], subtitles, policy, data["frame_fps"])
    if data["format"] == "custom":
        return read_custom(annotations, video_dir, data["video_ext"], policy, data["frame_fps"])
    reader = {"activitynet": read_activitynet, "charades": read_charades}[data["format"]]
    return reader(annotations, video_dir, data["video_ext"], policy)
