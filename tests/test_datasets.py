"""The TVR-format adapter: a malformed line is reported with its file and line number."""

import json

import pytest
from PIL import Image

from pipeline.datasets import AnnotationError, read_tvr


def _write(path, rows):
    path.write_text("".join((row if isinstance(row, str) else json.dumps(row)) + "\n" for row in rows))
    return path


def _query(desc_id, vid, ts=(1.0, 2.0), desc="a red box moves left"):
    return {"desc_id": desc_id, "desc": desc, "vid_name": vid, "duration": 10.0, "ts": list(ts), "type": "v"}


def _frames(folder, n_frames):
    folder.mkdir(parents=True)
    for index in range(n_frames):
        Image.new("RGB", (16, 12), (index, 0, 0)).save(folder / f"{index + 1:05d}.jpg")


def test_reads_queries_videos_and_subtitles(tmp_path):
    for video in ("a", "b", "c"):
        _frames(tmp_path / "videos" / video, 30)  # 10 s at 3 fps, as annotated
    train = _write(tmp_path / "train.jsonl", [_query(1, "a"), _query(2, "a"), _query(3, "b")])
    test = _write(tmp_path / "test.jsonl", [_query(4, "c", ts=(0.0, 10.0))])
    subs = _write(tmp_path / "subs.jsonl", [{"vid_name": "a", "sub": [{"text": "hi", "start": 0.5, "end": 1.0}]},
                                           {"vid_name": "zzz", "sub": []}])
    manifest = read_tvr({"train": train, "val": None, "test": test}, tmp_path / "videos", ".mp4", subs)
    assert [(v["video_id"], v["split"]) for v in manifest.videos] == [("a", "train"), ("b", "train"), ("c", "test")]
    assert manifest.videos[0]["path"].endswith("videos/a")
    assert [q["cap_id"] for q in manifest.queries] == ["1", "2", "3", "4"]
    assert manifest.queries[3] == {"cap_id": "4", "video_id": "c", "text": "a red box moves left",
                                   "ts": [0.0, 10.0], "split": "test"}
    assert manifest.subtitles == [{"video_id": "a", "sub": [{"text": "hi", "start": 0.5, "end": 1.0}]}]


@pytest.mark.parametrize("bad_line, message", [
    ('{"desc_id": 2, "desc": "x"', ":2: not valid JSON"),
    ('[1, 2]', ":2: expected a JSON object"),
    ('{"desc_id": 2, "desc": "x"}', ":2: missing field"),
    (json.dumps(_query(2, "a", desc="   ")), ":2: empty query text"),
    (json.dumps(_query(2, "a", ts=(5.0, 1.0))), r":2: ts must be \[start, end\]"),
])
def test_malformed_line_names_file_and_line(tmp_path, bad_line, message):
    train = _write(tmp_path / "train.jsonl", [_query(1, "a"), bad_line])
    with pytest.raises(AnnotationError, match=rf"train\.jsonl{message}"):
        read_tvr({"train": train}, tmp_path, ".mp4", None)


def test_duplicate_ids_and_missing_files_are_reported(tmp_path):
    train = _write(tmp_path / "train.jsonl", [_query(1, "a"), _query(1, "b")])
    with pytest.raises(AnnotationError, match="duplicate query id 1"):
        read_tvr({"train": train}, tmp_path, ".mp4", None)
    with pytest.raises(AnnotationError, match="nowhere.jsonl: annotation file not found"):
        read_tvr({"train": tmp_path / "nowhere.jsonl"}, tmp_path, ".mp4", None)
