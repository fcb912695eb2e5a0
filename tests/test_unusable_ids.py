"""Video ids that cannot name a file on this system (too long in bytes, a path over PATH_MAX, a NUL
byte, a lone surrogate) are data problems with file and line under data.on_problem.unsafe_path, in
every format whose ids come from data: through real runs of the dataset stage (Luigi). An id one byte
under the limit (its file name exactly NAME_MAX bytes) is a video like any other."""

from __future__ import annotations

import json
import os
import shutil

import luigi
import pytest

import tasks
from pipeline.datasets import AnnotationError, read_jsonl
from pipeline.paths import UnsafePathError, confined
from videos import make_testsrc_video

NAME_MAX = 255
# Its .mp4 file name is NAME_MAX bytes exactly: found and read.
AT_THE_LIMIT = "é" * 125 + "a"
assert len((AT_THE_LIMIT + ".mp4").encode()) == NAME_MAX

UNUSABLE = {  # name -> id; the JSON formats can hold every one, text formats those a text line can
    "5000 characters": "x" * 5000,
    "256 bytes in 128 characters": "é" * 128,
    "256 bytes with its extension": "é" * 126,
    "path over PATH_MAX": "/".join(["d" * 200] * 25),
    "a NUL byte": "clip\x00.mp4",
    "a lone surrogate": "clip\ud800",
}
TEXT_FORMATS_CANNOT_HOLD = {"custom csv": {"a NUL byte", "a lone surrogate"},  # csv refuses NUL lines
                            "charades": {"a lone surrogate"}}  # not UTF-8: the file would be refused whole
FORMATS = ["tvr", "activitynet", "charades", "custom csv", "custom jsonl"]


def _ids(data_format: str) -> dict[str, str]:
    return {name: video_id for name, video_id in UNUSABLE.items()
            if name not in TEXT_FORMATS_CANNOT_HOLD.get(data_format, set())}


def _dataset(root, data_format: str) -> tuple[dict, dict[str, int]]:
    """The data config section and annotation file of ``data_format`` listing a good video, the one at
    the limit and every unusable id, one per line; returns the line of each unusable id."""
    videos = root / "videos"
    videos.mkdir(parents=True)
    make_testsrc_video(videos / "good.mp4", seconds=3, fps=5, size=(32, 24))
    shutil.copy(videos / "good.mp4", videos / f"{AT_THE_LIMIT}.mp4")
    ids = ["good", AT_THE_LIMIT, *_ids(data_format).values()]
    if data_format == "tvr":
        name, body = "train.jsonl", [json.dumps({"desc_id": k, "desc": f"query {k}", "vid_name": video_id,
                                                 "duration": 3.0, "ts": [0.5, 2.0]}) for k, video_id in enumerate(ids)]
    elif data_format == "activitynet":  # one key per line, as json.dumps(indent=None) per video
        name = "train.json"
        entries = [json.dumps(video_id) + ": " + json.dumps({"duration": 3.0, "timestamps": [[0.5, 2.0]],
                                                              "sentences": ["a test card"]}) for video_id in ids]
        body = ["{", ",\n".join(entries), "}"]
    elif data_format == "charades":
        name, body = "train.txt", [f"{video_id} 0.5 2.0##a test card" for video_id in ids]
    elif data_format == "custom csv":
        name, body = "queries.csv", ["video,text"] + [f"{video_id},a test card" for video_id in ids]
    else:
        name, body = "queries.jsonl", [json.dumps({"video": video_id, "text": "a test card"}) for video_id in ids]
    text = "\n".join(body) + "\n"
    (root / name).write_bytes(text.encode("utf-8", "surrogatepass"))  # the JSON formats escape surrogates
    lines = text.splitlines()
    first = 2 if data_format in ("activitynet", "custom csv") else 1  # the "{" or header line
    line_of = {label: first + 2 + index for index, label in enumerate(_ids(data_format))}
    for label, line in line_of.items():  # the line does hold that id
        assert json.dumps(UNUSABLE[label])[1:20] in lines[line - 1] or UNUSABLE[label][:20] in lines[line - 1]
    fmt = data_format.split()[0]
    data = {"source": "files", "format": fmt, "root": str(root), "videos": "videos", "subtitles": None,
            "annotations": {"train": name, "val": None, "test": None}}
    return data, line_of


@pytest.mark.parametrize("data_format", FORMATS)
def test_unusable_ids_are_skipped_and_recorded_with_file_and_line(data_format, make_config, run_stages, tmp_path):
    data, line_of = _dataset(tmp_path / "data", data_format)
    config = make_config({"data": data}, name="ids.yaml")
    dataset = tasks.PrepareDataset(dataset=str(config))
    assert run_stages.build([dataset]) == ["dataset"]

    videos = read_jsonl(dataset.out_dir / "videos.jsonl")
    assert [video["video_id"] for video in videos] == ["good", AT_THE_LIMIT]
    assert all(video["duration"] == pytest.approx(3.0, abs=0.01) for video in videos)
    problems = json.loads((dataset.out_dir / "manifest.json").read_text())["problems"]
    annotation = str(tmp_path / "data" / data["annotations"]["train"])
    assert sorted((p["problem"], p["file"], p["line"], p["action"]) for p in problems) == sorted(
        ("unsafe_path", annotation, line, "skip") for line in line_of.values())
    for problem in problems:  # the message says why, and shows a long id by its start
        assert len(problem["message"]) < 600 and "\n" not in problem["message"]
        assert "cannot be a file name" in problem["message"] or "not a usable name" in problem["message"]


class _Failures:
    def __init__(self):
        self.errors: list[BaseException] = []

    def __call__(self, task, error):
        self.errors.append(error)


@pytest.mark.parametrize("data_format", FORMATS)
def test_unusable_ids_fail_naming_file_and_line_when_the_policy_says_fail(data_format, make_config, tmp_path):
    data, line_of = _dataset(tmp_path / "data", data_format)
    data["on_problem"] = {"unsafe_path": "fail"}
    config = make_config({"data": data}, name="ids.yaml")
    failures = _Failures()
    luigi.Task.event_handler(luigi.Event.FAILURE)(failures)
    try:
        assert not luigi.build([tasks.PrepareDataset(dataset=str(config))], local_scheduler=True, log_level="CRITICAL")
    finally:
        luigi.Task.remove_event_handler(luigi.Event.FAILURE, failures)
    (error,) = failures.errors
    assert isinstance(error, AnnotationError)  # not an OSError from the file system
    message = str(error)
    first = min(line_of.values())
    assert message.startswith(f"{tmp_path / 'data' / data['annotations']['train']}:{first}: video id ")
    assert message.endswith("(data.on_problem.unsafe_path: fail)") and "\n" not in message and len(message) < 600


@pytest.mark.parametrize("label", sorted(UNUSABLE))
def test_confined_refuses_what_cannot_be_a_file_name(label, tmp_path):
    with pytest.raises(UnsafePathError):
        confined(tmp_path, UNUSABLE[label] + ".mp4")
    with pytest.raises(UnsafePathError):  # the same under a root that does not exist yet
        confined(tmp_path / "not" / "yet", UNUSABLE[label] + ".mp4")


def test_names_up_to_the_limits_are_accepted(tmp_path):
    assert confined(tmp_path, f"{AT_THE_LIMIT}.mp4") == tmp_path / f"{AT_THE_LIMIT}.mp4"
    assert confined(tmp_path, "a" * NAME_MAX).name == "a" * NAME_MAX
    room = os.pathconf(tmp_path, "PC_PATH_MAX") - len(os.fsencode(tmp_path)) - 2  # one "/", one NUL
    folders, rest = divmod(room, 100)
    if rest == 0:  # end on a name, not on a "/"
        folders, rest = folders - 1, 100
    deep = ("d" * 99 + "/") * folders + "f" * rest
    assert len(deep.encode()) == room and confined(tmp_path, deep) == tmp_path / deep
    with pytest.raises(UnsafePathError, match="PATH_MAX|at most"):
        confined(tmp_path, deep + "f")
