"""Strict annotation readers: every way a file can lose or invent data fails naming its file and line
(unclosed CSV quotes, missing columns, null or non-string texts, non-UTF-8 bytes, keys given twice),
a BOM is accepted everywhere, annotated durations are checked against the videos, and a split or a
dataset left without a usable video fails at the dataset stage."""

import json

import luigi
import pytest
from PIL import Image

import tasks
from pipeline.bundle import read_caption_file
from pipeline.datasets import AnnotationError, MissingDataError, read_activitynet, read_charades, read_custom, read_tvr
from pipeline.subtitle_files import SubtitleFileError, read_subtitle_file

SKIP_ALL = {"missing_video": "skip", "bad_timestamps": "skip", "duplicate_id": "skip", "empty_text": "skip"}


def _frames(folder, n_frames):
    """A folder of frames shown at 3 fps: n_frames / 3 seconds."""
    folder.mkdir(parents=True)
    for index in range(n_frames):
        Image.new("RGB", (16, 12), (8 * index % 256, 0, 0)).save(folder / f"{index + 1:05d}.jpg")
    return folder


@pytest.fixture
def videos(tmp_path):
    """Three videos as frame folders: a and b last 10 s, c 3 s."""
    root = tmp_path / "videos"
    for name, n_frames in (("a", 30), ("b", 30), ("c", 9)):
        _frames(root / name, n_frames)
    return root


def _write(path, text: str | bytes):
    (path.write_bytes if isinstance(text, bytes) else path.write_text)(text)
    return path


def _jsonl(path, rows):
    return _write(path, "".join((row if isinstance(row, str) else json.dumps(row)) + "\n" for row in rows))


def _tvr(desc_id, vid, duration=10.0, desc="a person opens a door", ts=(1.0, 2.0)):
    return {"desc_id": desc_id, "desc": desc, "vid_name": vid, "duration": duration, "ts": list(ts), "type": "v"}


# ---- CSV -----------------------------------------------------------------------------------------

HEADER = "video,text,start,end,split\n"


@pytest.mark.parametrize("body, message", [
    # an unclosed quote that a later quote closes would swallow the rows between into one query
    ('a,"a dog runs,1,2,train\nb,a cat sleeps,1,2,train\nb,the cat wakes",1,2,train\n',
     r"queries\.csv:2: a quoted field runs from line 2 to line 4"),
    ('a,"a dog runs,1,2,train\nb,a cat sleeps,1,2,train\nb,"the cat wakes",1,2,train\n',
     r"queries\.csv:2: malformed CSV .*unclosed quote"),
    # an unclosed quote that nothing closes would swallow the rest of the file
    ('a,a dog runs,1,2,train\nb,"a cat sleeps,1,2,train\nb,the cat wakes,1,2,train\n',
     r"queries\.csv:3: .*unclosed quote"),
    ('a,"a dog" runs,1,2,train\n', r"queries\.csv:2: malformed CSV"),
    ('a,a dog runs,1,2\n', r"queries\.csv:2: 4 fields, but the header has 5"),
    ('a,a dog runs,1,2,train,extra\n', r"queries\.csv:2: 6 fields, but the header has 5"),
    ("", r"queries\.csv: the file holds no row of data"),
])
def test_csv_rows_that_would_lose_or_invent_queries_name_file_and_line(tmp_path, videos, body, message):
    path = _write(tmp_path / "queries.csv", HEADER + body)
    with pytest.raises(AnnotationError, match=message):
        read_custom({"train": path}, videos)


@pytest.mark.parametrize("header, message", [
    ("video,start,end\n", r"queries\.csv:1: the header lacks column\(s\) text"),
    ("clip,text\n", r"queries\.csv:1: the header lacks column\(s\) video"),
    ("video,text,text\n", r"queries\.csv:1: the header names column 'text' twice"),
])
def test_csv_header_problems_name_file_and_line(tmp_path, videos, header, message):
    path = _write(tmp_path / "queries.csv", header + "a,x,y\n")
    with pytest.raises(AnnotationError, match=message):
        read_custom({"train": path}, videos)


def test_csv_quoted_commas_bom_and_crlf_are_read(tmp_path, videos):
    path = _write(tmp_path / "queries.csv", ("\ufeff" + HEADER + 'a,"a dog, running",1,2,train\nb,"say ""hi""",,,test\n')
                  .replace("\n", "\r\n").encode("utf-8"))
    manifest = read_custom({"train": path}, videos)
    assert [(q["video_id"], q["text"], q["split"]) for q in manifest.queries] == [
        ("a", "a dog, running", "train"), ("b", 'say "hi"', "test")]


# ---- JSON lines, JSON, text ------------------------------------------------------------------------

@pytest.mark.parametrize("row, message", [
    ({"video": "a", "text": None}, r":2: text must be a string, got null"),
    ({"video": "a", "text": 42}, r":2: text must be a string, got int 42"),
    ({"video": "a", "text": ["a", "dog"]}, r":2: text must be a string, got list"),
    ({"video": None, "text": "x"}, r":2: video must be a string, got null"),
    ({"video": "a", "text": "x", "id": 1.5}, r":2: id must be a string or an integer, got float 1.5"),
    ({"video": "a", "text": "x", "split": 3}, r":2: split must be a string, got int 3"),
    ({"video": "a", "text": "x", "start": True, "end": 2}, r":2: start and end must both be numbers"),
    ('{"video": "a", "text": "x", "text": "y"}', r":2: key 'text' appears twice in one object"),
    ('{"video": "a", "text": "x", "start": NaN, "end": 2}', r":2: NaN is not a number JSON allows"),
    ({"text": "x"}, r":2: missing field\(s\) video"),
])
def test_custom_jsonl_fields_are_strict(tmp_path, videos, row, message):
    path = _jsonl(tmp_path / "queries.jsonl", [{"video": "b", "text": "fine"}, row])
    with pytest.raises(AnnotationError, match=r"queries\.jsonl" + message):
        read_custom({"train": path}, videos)


@pytest.mark.parametrize("field, value, message", [
    ("desc", None, "desc must be a string, got null"),
    ("desc", 7, "desc must be a string, got int 7"),
    ("vid_name", None, "vid_name must be a string, got null"),
    ("desc_id", None, "desc_id must be a string or an integer, got null"),
    ("desc_id", True, "desc_id must be a string or an integer, got bool True"),
    ("duration", "10", "duration must be a number of seconds >= 0, got str '10'"),
    ("duration", -1, "duration must be a number of seconds >= 0, got int -1"),
])
def test_tvr_fields_are_strict(tmp_path, videos, field, value, message):
    path = _jsonl(tmp_path / "train.jsonl", [_tvr(1, "a"), {**_tvr(2, "b"), field: value}])
    with pytest.raises(AnnotationError, match=rf"train\.jsonl:2: {message}"):
        read_tvr({"train": path}, videos)


def test_a_bom_is_accepted_in_jsonl_as_in_csv(tmp_path, videos):
    custom = _write(tmp_path / "queries.jsonl", "\ufeff" + json.dumps({"video": "a", "text": "x"}) + "\n")
    assert [q["text"] for q in read_custom({"train": custom}, videos).queries] == ["x"]
    tvr = _write(tmp_path / "train.jsonl", "\ufeff" + json.dumps(_tvr(1, "a")) + "\n")
    assert [q["cap_id"] for q in read_tvr({"train": tvr}, videos).queries] == ["1"]
    charades = _write(tmp_path / "charades.txt", "\ufeffa 1.0 2.0##a person opens a door\n")
    assert [q["video_id"] for q in read_charades({"train": charades}, videos).queries] == ["a"]


NOT_UTF8 = "caf\u00e9 au lait".encode("latin-1")  # 'é' as the single byte 0xe9


@pytest.mark.parametrize("name, content, read", [
    ("queries.csv", HEADER.encode() + b"b," + NOT_UTF8 + b",1,2,train\n",
     lambda path, videos: read_custom({"train": path}, videos)),
    ("queries.jsonl", b'{"video": "a", "text": "x"}\n{"video": "b", "text": "' + NOT_UTF8 + b'"}\n',
     lambda path, videos: read_custom({"train": path}, videos)),
    ("train.jsonl", json.dumps(_tvr(1, "a")).encode() + b"\n" + json.dumps(_tvr(2, "b")).encode()
     .replace(b"a person", NOT_UTF8) + b"\n", lambda path, videos: read_tvr({"train": path}, videos)),
    ("charades.txt", b"a 1.0 2.0##fine\nb 1.0 2.0##" + NOT_UTF8 + b"\n",
     lambda path, videos: read_charades({"train": path}, videos)),
    ("train.json", b'{"a": {"duration": 10, "timestamps": [[1, 2]], "sentences": ["x"]},\n'
     b'"b": {"duration": 10, "timestamps": [[1, 2]], "sentences": ["' + NOT_UTF8 + b'"]}}\n',
     lambda path, videos: read_activitynet({"train": path}, videos)),
    ("train.caption.txt", b"a#enc#0 fine\nb#enc#0 " + NOT_UTF8 + b"\n", lambda path, videos: read_caption_file(path, "train")),
])
def test_a_file_that_is_not_utf8_is_named_with_its_line(tmp_path, videos, name, content, read):
    path = _write(tmp_path / name, content)
    with pytest.raises(AnnotationError, match=rf"{name.replace('.', '[.]')}:2: not UTF-8 text \(byte \d+"):
        read(path, videos)


def test_subtitle_files_not_utf8_or_with_a_bom(tmp_path):
    path = _write(tmp_path / "clip.srt", b"1\n00:00:01,000 --> 00:00:02,000\nfine\n\n2\n00:00:03,000 --> "
                                         b"00:00:04,000\n" + NOT_UTF8 + b"\n")
    with pytest.raises(SubtitleFileError, match=r"clip\.srt:7: not UTF-8 text"):
        read_subtitle_file(path)
    path = _write(tmp_path / "clip.vtt", "\ufeffWEBVTT\n\n00:01.000 --> 00:02.000\nhello\n")
    assert read_subtitle_file(path) == [{"text": "hello", "start": 1.0, "end": 2.0}]


def test_tvqa_subtitles_are_strict(tmp_path, videos):
    train = _jsonl(tmp_path / "train.jsonl", [_tvr(1, "a")])
    for rows, message in (
        ([{"vid_name": "a", "sub": [{"text": None, "start": 0, "end": 1}]}], ":1: a subtitle's text must be a string"),
        ([{"vid_name": "a", "sub": []}, {"vid_name": "a", "sub": []}], ":2: subtitles of a again"),
        ([{"vid_name": "a", "sub": None}], ":1: sub must be a list"),
    ):
        subtitles = _jsonl(tmp_path / "subs.jsonl", rows)
        with pytest.raises(AnnotationError, match=rf"subs\.jsonl{message}"):
            read_tvr({"train": train}, videos, subtitles=subtitles)


def test_activitynet_video_twice_and_null_sentence(tmp_path, videos):
    path = _write(tmp_path / "train.json", '{"a": {"duration": 10, "timestamps": [[1, 2]], "sentences": ["x"]},\n'
                                           '"a": {"duration": 10, "timestamps": [[1, 2]], "sentences": ["y"]}}\n')
    with pytest.raises(AnnotationError, match=r"train\.json:2: video a again \(first at line 1\)"):
        read_activitynet({"train": path}, videos)
    path = _write(tmp_path / "train.json", json.dumps({"a": {"duration": 10, "timestamps": [[1, 2]],
                                                             "sentences": [None]}}))
    with pytest.raises(AnnotationError, match=r"train\.json:1: sentence 0 of video a must be a string, got null"):
        read_activitynet({"train": path}, videos)


# ---- annotated durations ---------------------------------------------------------------------------

def test_annotated_duration_is_checked_against_the_video(tmp_path, videos):
    # c is a 3 s folder of frames annotated as 20 s: 300 feature rows of a repeated last frame otherwise
    path = _jsonl(tmp_path / "train.jsonl", [_tvr(1, "a"), _tvr(2, "c", duration=20.0, ts=(1.0, 15.0)),
                                             _tvr(3, "c", duration=20.0, ts=(0.5, 2.0))])
    with pytest.raises(AnnotationError, match=r"train\.jsonl:2: video c is annotated as 20 s long, but .*/c lasts "
                                              r"3 s \(data\.duration_tolerance: 1 s\).*duration_mismatch: fail"):
        read_tvr({"train": path}, videos)

    skipped = read_tvr({"train": path}, videos, policy={"duration_mismatch": "skip"})
    assert [q["cap_id"] for q in skipped.queries] == ["1"]
    assert [(p["problem"], p["line"], p["action"]) for p in skipped.problems] == [("duration_mismatch", 2, "skip")]

    by_video = read_tvr({"train": path}, videos, policy={"duration_mismatch": "use_video", "bad_timestamps": "skip"})
    assert {v["video_id"]: v["duration"] for v in by_video.videos} == {"a": 10.0, "c": 3.0}
    assert [q["cap_id"] for q in by_video.queries] == ["1", "3"]  # 1-15 s does not fit in 3 s
    assert [p["problem"] for p in by_video.problems] == ["duration_mismatch", "bad_timestamps"]

    as_annotated = read_tvr({"train": path}, videos, policy={"duration_mismatch": "use_annotation"})
    assert {v["video_id"]: v["duration"] for v in as_annotated.videos} == {"a": 10.0, "c": 20.0}

    # within data.duration_tolerance: no problem (3 fps frame folders round the length to a third of a second)
    close = _jsonl(tmp_path / "close.jsonl", [_tvr(1, "a", duration=10.6), _tvr(2, "c", duration=2.5)])
    assert read_tvr({"train": close}, videos).problems == []
    with pytest.raises(AnnotationError, match="duration_mismatch"):
        read_tvr({"train": close}, videos, duration_tolerance=0.2)


def test_lines_that_disagree_about_a_videos_duration_are_a_problem(tmp_path, videos):
    path = _jsonl(tmp_path / "train.jsonl", [_tvr(1, "a"), _tvr(2, "b"), _tvr(3, "a", duration=30.0)])
    with pytest.raises(AnnotationError, match=r"train\.jsonl:3: video a is annotated as 30 s long here but 10 s at "
                                              r".*train\.jsonl:1"):
        read_tvr({"train": path}, videos)
    manifest = read_tvr({"train": path}, videos, policy={"duration_mismatch": "skip"})
    assert [q["cap_id"] for q in manifest.queries] == ["1", "2"]
    assert {v["video_id"]: v["duration"] for v in manifest.videos}["a"] == 10.0  # never silently overridden


def test_activitynet_durations_are_checked_too(tmp_path, videos):
    path = _write(tmp_path / "val_1.json", json.dumps({"a": {"duration": 10.2, "timestamps": [[1, 2]], "sentences": ["x"]},
                                                       "c": {"duration": 9.0, "timestamps": [[1, 2]], "sentences": ["y"]}},
                                                      indent=1))
    with pytest.raises(AnnotationError, match=r"val_1\.json:\d+: video c is annotated as 9 s long, but .* lasts 3 s"):
        read_activitynet({"test": path}, videos)


# ---- a split or a dataset without a usable video ----------------------------------------------------

def test_a_split_whose_videos_are_all_missing_fails_naming_the_folder(tmp_path, videos):
    train = _jsonl(tmp_path / "train.jsonl", [_tvr(1, "a"), _tvr(2, "b")])
    test = _jsonl(tmp_path / "test.jsonl", [_tvr(3, "gone_1"), _tvr(4, "gone_2"), _tvr(5, "gone_3")])
    # the default policy (missing_video: warn) would keep their queries for the visual stage to fail on
    with pytest.raises(MissingDataError, match=rf"split test: 0 of 3 videos found under {videos} \(for gone_1, "
                                               r"looked for gone_1, gone_1\.mp4\)"):
        read_tvr({"train": train, "test": test}, videos)
    with pytest.raises(MissingDataError, match=r"split train: 0 of 2 videos found under .*elsewhere"):
        read_tvr({"train": train}, tmp_path / "elsewhere")


def test_a_split_left_without_queries_by_the_problem_policy_fails(tmp_path, videos):
    path = _jsonl(tmp_path / "train.jsonl", [_tvr(1, "a", ts=(5.0, 50.0)), _tvr(2, "b", ts=(8.0, 12.0))])
    with pytest.raises(AnnotationError, match=r"split train: 2 of 2 videos found under .*, but none is left with a "
                                              r"query \(problems: bad_timestamps"):
        read_tvr({"train": path}, videos, policy=SKIP_ALL)


def test_prepare_dataset_stage_fails_and_caches_nothing(tmp_path, videos, make_config):
    queries = _write(tmp_path / "queries.csv", HEADER + "gone,a missing video,,,train\nalso_gone,x,,,test\n")
    config = make_config({"data": {"source": "files", "format": "custom", "root": str(tmp_path), "videos": "videos",
                                   "annotations": {"train": queries.name, "val": None, "test": None},
                                   "subtitles": None}}, name="custom.yaml")
    stage = tasks.PrepareDataset(dataset=str(config))
    assert not luigi.build([stage], local_scheduler=True, log_level="CRITICAL")
    assert not (stage.out_dir / "manifest.json").exists()
    with pytest.raises(MissingDataError, match="split train: 0 of 1 videos found under"):
        stage.build(stage.out_dir)


# ---- the custom format's split rules ------------------------------------------------------------------

def test_custom_split_rules(tmp_path, videos):
    path = _jsonl(tmp_path / "queries.jsonl", [
        {"video": "a", "text": "no split: the file's split"},
        {"video": "b", "text": "val", "split": "val"},
        {"video": "b", "text": "and test", "split": "test"},
        {"video": "c", "text": "null split", "split": None},
    ])
    manifest = read_custom({"train": path}, videos)
    assert [q["split"] for q in manifest.queries] == ["train", "val", "test", "train"]
    assert {v["video_id"]: v["split"] for v in manifest.videos} == {"a": "train", "b": "test", "c": "train"}
    path = _jsonl(tmp_path / "queries.jsonl", [{"video": "b", "text": "x", "split": "test"},
                                               {"video": "b", "text": "y", "split": "train"}])
    with pytest.raises(AnnotationError, match=r"queries\.jsonl:2: video b is already in split test"):
        read_custom({"train": path}, videos)
