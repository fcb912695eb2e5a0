"""Dataset adapters on miniatures authored in each dataset's exact file format: counts, ids, timestamps,
splits, subtitles, and every problem reported with its file and line."""

import json

import pytest
from PIL import Image
from videos import make_testsrc_video, run_ffmpeg

from pipeline.datasets import AnnotationError, read_activitynet, read_charades, read_custom, read_tvr
from pipeline.subtitle_files import SubtitleFileError, read_subtitle_file

SKIP_ALL = {"missing_video": "skip", "bad_timestamps": "skip", "duplicate_id": "skip", "empty_text": "skip"}


def _lines(path, rows):
    path.write_text("".join((row if isinstance(row, str) else json.dumps(row)) + "\n" for row in rows))
    return path


def _frames(folder, n_frames):
    """A TVQA-style frame folder: 00001.jpg ... (small grey JPEGs)."""
    folder.mkdir(parents=True)
    for index in range(1, n_frames + 1):
        Image.new("RGB", (32, 24), (index, index, index)).save(folder / f"{index:05d}.jpg")


def make_vp9_video(path, seconds, fps, size=(32, 24)):
    """ffmpeg's testsrc as VP9 in WebM, as ActivityNet's YouTube downloads often are."""
    run_ffmpeg("-f", "lavfi", "-i", f"testsrc=size={size[0]}x{size[1]}:rate={fps}:duration={seconds}",
               "-c:v", "libvpx-vp9", "-deadline", "realtime", "-cpu-used", "8", str(path))
    return path


def _problems(manifest):
    return [(p["problem"], p["file"].rsplit("/", 1)[-1], p["line"], p["action"]) for p in manifest.problems]


# ---- TVR ---------------------------------------------------------------------------------------------

def _tvr_query(desc_id, vid, ts=(1.0, 4.0), desc="Chase puts on his coat", duration=20.0):
    return {"desc_id": desc_id, "desc": desc, "vid_name": vid, "duration": duration, "ts": list(ts), "type": "v"}


@pytest.fixture
def tvr(tmp_path):
    videos = tmp_path / "videos"
    _frames(videos / "house_s01e01_seg02_clip_00", 60)  # 20 s at 3 fps
    _frames(videos / "friends_s01e03_seg02_clip_19", 30)
    make_testsrc_video(videos / "bbt_s02e01_seg01_clip_03.mp4", seconds=8, fps=5, size=(32, 24))  # a file, too
    train = _lines(tmp_path / "tvr_train_release.jsonl", [
        _tvr_query(11, "house_s01e01_seg02_clip_00"),
        _tvr_query(12, "house_s01e01_seg02_clip_00", ts=(15.0, 25.0)),   # line 2: past the 20 s video
        _tvr_query(13, "missing_s01e01_seg01_clip_00"),                  # line 3: no such video
        _tvr_query(11, "friends_s01e03_seg02_clip_19", duration=10.0),   # line 4: duplicate id 11
        _tvr_query(14, "friends_s01e03_seg02_clip_19", desc="  ", duration=10.0),  # line 5: empty text
        _tvr_query(15, "friends_s01e03_seg02_clip_19", ts=(0.0, 9.5), duration=10.0),
    ])
    val = _lines(tmp_path / "tvr_val_release.jsonl", [_tvr_query(21, "bbt_s02e01_seg01_clip_03", duration=8.0)])
    subtitles = _lines(tmp_path / "tvqa_preprocessed_subtitles.jsonl", [
        {"vid_name": "house_s01e01_seg02_clip_00", "sub": [{"text": "House : Everybody lies.", "start": 0.4,
                                                             "end": 2.1}]},
        {"vid_name": "not_in_any_split", "sub": [{"text": "x", "start": 0, "end": 1}]},
    ])
    return {"train": train, "val": val, "test": val}, videos, subtitles


def test_tvr_reads_frame_folders_splits_subtitles_and_records_problems(tvr):
    annotations, videos, subtitles = tvr
    policy = {**SKIP_ALL, "bad_timestamps": "clamp"}
    manifest = read_tvr(annotations, videos, ".mp4", subtitles, policy)

    # PRVR convention: TVR val is both val and test; a query listed in both is kept in both.
    assert [(q["cap_id"], q["split"]) for q in manifest.queries] == [
        ("11", "train"), ("12", "train"), ("15", "train"), ("21", "val"), ("21", "test")]
    assert manifest.queries[1]["ts"] == [15.0, 20.0]  # clamped to the annotated duration
    assert manifest.queries[2] == {"cap_id": "15", "video_id": "friends_s01e03_seg02_clip_19",
                                   "text": "Chase puts on his coat", "ts": [0.0, 9.5], "split": "train"}
    by_id = {v["video_id"]: v for v in manifest.videos}
    assert sorted(by_id) == ["bbt_s02e01_seg01_clip_03", "friends_s01e03_seg02_clip_19", "house_s01e01_seg02_clip_00"]
    assert by_id["house_s01e01_seg02_clip_00"]["path"] == str(videos / "house_s01e01_seg02_clip_00")
    assert by_id["house_s01e01_seg02_clip_00"]["duration"] == 20.0  # from the annotation
    assert by_id["bbt_s02e01_seg01_clip_03"]["path"].endswith(".mp4")
    assert by_id["bbt_s02e01_seg01_clip_03"]["split"] == "test"
    assert manifest.subtitles == [{"video_id": "house_s01e01_seg02_clip_00",
                                   "sub": [{"text": "House : Everybody lies.", "start": 0.4, "end": 2.1}]}]
    assert _problems(manifest) == [
        ("bad_timestamps", "tvr_train_release.jsonl", 2, "clamp"),
        ("missing_video", "tvr_train_release.jsonl", 3, "skip"),
        ("duplicate_id", "tvr_train_release.jsonl", 4, "skip"),
        ("empty_text", "tvr_train_release.jsonl", 5, "skip"),
    ]
    assert "missing_s01e01_seg01_clip_00 not found" in manifest.problems[1]["message"]


@pytest.mark.parametrize("problem, line, message", [
    ("bad_timestamps", 2, r"ts must be \[start, end\].*got \[15, 25\]"),
    ("missing_video", 3, "video missing_s01e01_seg01_clip_00 not found"),
    ("duplicate_id", 4, "duplicate query id 11"),
    ("empty_text", 5, "empty query text"),
])
def test_tvr_problem_set_to_fail_names_file_and_line(tvr, problem, line, message):
    annotations, videos, subtitles = tvr
    with pytest.raises(AnnotationError, match=rf"tvr_train_release\.jsonl:{line}: {message}.*on_problem\.{problem}"):
        read_tvr(annotations, videos, ".mp4", subtitles, {**SKIP_ALL, problem: "fail"})


# ---- ActivityNet Captions ----------------------------------------------------------------------------

def test_activitynet_caption_ids_durations_and_problem_lines(tmp_path):
    videos = tmp_path / "videos"
    videos.mkdir()
    # Annotated durations are checked against the videos (within data.duration_tolerance, 1 s).
    make_testsrc_video(videos / "v_QOlSCBRmfWY.mp4", seconds=83, fps=1, size=(32, 24))
    make_vp9_video(videos / "v_ehGHCYKzyZ8.webm", seconds=62, fps=1)
    make_testsrc_video(videos / "v_nwznKOuZM7w.mkv", seconds=30, fps=1, size=(32, 24))
    train = tmp_path / "train.json"
    train.write_text(json.dumps({  # indented, so each video key has its own line
        "v_QOlSCBRmfWY": {"duration": 82.73, "timestamps": [[0.83, 19.86], [17.37, 60.81], [56.26, 79.42]],
                          "sentences": ["A young woman is seen standing in a room.", "She begins dancing.", " "]},
        "v_gone": {"duration": 50.0, "timestamps": [[1, 2]], "sentences": ["a video that was taken down"]},
        "v_ehGHCYKzyZ8": {"duration": 61.72, "timestamps": [[0, 65.0]], "sentences": ["A man plays a drum."]},
    }, indent=1))
    val_1 = tmp_path / "val_1.json"
    val_1.write_text(json.dumps({"v_nwznKOuZM7w": {"duration": 30.0, "timestamps": [[2.5, 12.0]],
                                                    "sentences": ["A dog catches a frisbee."]}}))
    manifest = read_activitynet({"train": train, "val": None, "test": val_1}, videos, [".mp4", ".mkv", ".webm"],
                                {**SKIP_ALL, "bad_timestamps": "clamp"})

    assert [(q["cap_id"], q["split"], q["ts"]) for q in manifest.queries] == [
        ("v_QOlSCBRmfWY#enc#0", "train", [0.83, 19.86]), ("v_QOlSCBRmfWY#enc#1", "train", [17.37, 60.81]),
        ("v_ehGHCYKzyZ8#enc#0", "train", [0.0, 61.72]), ("v_nwznKOuZM7w#enc#0", "test", [2.5, 12.0])]
    assert {(v["video_id"], v["duration"], v["path"].rsplit(".", 1)[-1], v["split"]) for v in manifest.videos} == {
        ("v_QOlSCBRmfWY", 82.73, "mp4", "train"), ("v_ehGHCYKzyZ8", 61.72, "webm", "train"),
        ("v_nwznKOuZM7w", 30.0, "mkv", "test")}
    lines = train.read_text().splitlines()
    line_of = {vid: next(i for i, text in enumerate(lines, 1) if f'"{vid}"' in text)
               for vid in ("v_QOlSCBRmfWY", "v_gone", "v_ehGHCYKzyZ8")}
    assert _problems(manifest) == [("empty_text", "train.json", line_of["v_QOlSCBRmfWY"], "skip"),
                                   ("missing_video", "train.json", line_of["v_gone"], "skip"),
                                   ("bad_timestamps", "train.json", line_of["v_ehGHCYKzyZ8"], "clamp")]


def test_activitynet_sentence_count_mismatch_is_an_error(tmp_path):
    path = tmp_path / "train.json"
    path.write_text(json.dumps({"v_a": {"duration": 9.0, "timestamps": [[0, 1], [1, 2]], "sentences": ["one"]}}))
    with pytest.raises(AnnotationError, match=r"train\.json:1: video v_a has 2 timestamps but 1 sentences"):
        read_activitynet({"train": path}, tmp_path, ".mp4")


# ---- Charades-STA ------------------------------------------------------------------------------------

def test_charades_probes_durations_and_reports_lines(tmp_path):
    videos = tmp_path / "videos"
    videos.mkdir()
    make_testsrc_video(videos / "AO8RW.mp4", seconds=2, fps=10, size=(64, 48))
    make_testsrc_video(videos / "Y6R7T.mp4", seconds=3, fps=10, size=(64, 48))
    train = tmp_path / "charades_sta_train.txt"
    train.write_text("AO8RW 0.0 1.2##a person is putting a book on a shelf.\n"
                     "AO8RW 0.5 2.0##person begins to play on a phone.\n"
                     "\n"
                     "ZZZZZ 1.0 2.0##a person in a missing video.\n"
                     "AO8RW 1.5 6.9##the person closes the door.\n")
    test = tmp_path / "charades_sta_test.txt"
    test.write_text("Y6R7T 0.3 2.2##a person sits down on a chair.\n")
    manifest = read_charades({"train": train, "test": test}, videos, ".mp4", {**SKIP_ALL, "bad_timestamps": "clamp"})

    assert [(q["cap_id"], q["split"], q["text"]) for q in manifest.queries] == [
        ("AO8RW#enc#0", "train", "a person is putting a book on a shelf."),
        ("AO8RW#enc#1", "train", "person begins to play on a phone."),
        ("AO8RW#enc#2", "train", "the person closes the door."),
        ("Y6R7T#enc#0", "test", "a person sits down on a chair.")]
    durations = {v["video_id"]: v["duration"] for v in manifest.videos}
    assert durations == pytest.approx({"AO8RW": 2.0, "Y6R7T": 3.0}, abs=0.01)
    assert manifest.queries[2]["ts"] == pytest.approx([1.5, 2.0], abs=0.01)  # clamped to the probed duration
    assert _problems(manifest) == [("missing_video", "charades_sta_train.txt", 4, "skip"),
                                   ("bad_timestamps", "charades_sta_train.txt", 5, "clamp")]


def test_charades_malformed_line_names_file_and_line(tmp_path):
    path = tmp_path / "charades_sta_test.txt"
    path.write_text("AO8RW 0.0 1.2##fine\nAO8RW 0.0##no end time\n")
    with pytest.raises(AnnotationError, match=r"charades_sta_test\.txt:2: expected 'VIDEOID START END##sentence'"):
        read_charades({"test": path}, tmp_path, ".mp4")


# ---- custom videos -----------------------------------------------------------------------------------

def test_custom_csv_with_splits_ids_frame_folders_and_subtitle_files(tmp_path):
    videos = tmp_path / "videos"
    videos.mkdir()
    make_testsrc_video(videos / "beach.mp4", seconds=3, fps=10, size=(64, 48))
    _frames(videos / "kitchen", 6)  # 2 s at 3 fps
    (videos / "beach.srt").write_text("1\n00:00:00,500 --> 00:00:01,250\n<i>Look at the</i>\nwaves!\n\n"
                                      "2\n00:00:02,000 --> 00:00:02,900\nBye.\n")
    (videos / "kitchen.vtt").write_text("WEBVTT\n\nNOTE made by hand\n\n00:00.200 --> 00:01.000 align:start\n"
                                        "<v Ann>Pass the salt</v>\n")
    queries = tmp_path / "queries.csv"
    queries.write_text("video,text,start,end,split,id\n"
                       "beach.mp4,waves roll onto the sand,0.5,2.0,,\n"
                       "kitchen,someone chops onions,,,test,q-onions\n"
                       "\"beach.mp4\",\"a gull, flying\",1,2.5,train,\n"
                       "garden.mp4,a missing video,,,train,\n"
                       "kitchen,a pot boils over,1.0,9.0,test,\n")
    manifest = read_custom({"train": queries}, videos, [".mp4", ".mov"], {**SKIP_ALL, "bad_timestamps": "skip"})

    assert [(q["cap_id"], q["video_id"], q["split"], q["ts"]) for q in manifest.queries] == [
        ("beach#enc#0", "beach", "train", [0.5, 2.0]),  # no split: the split the file is listed under
        ("q-onions", "kitchen", "test", None),
        ("beach#enc#1", "beach", "train", [1.0, 2.5])]
    assert manifest.queries[2]["text"] == "a gull, flying"
    durations = {v["video_id"]: v["duration"] for v in manifest.videos}
    assert durations == pytest.approx({"beach": 3.0, "kitchen": 2.0}, abs=0.01)
    assert {v["video_id"]: v["split"] for v in manifest.videos} == {"beach": "train", "kitchen": "test"}
    assert manifest.subtitles == [
        {"video_id": "beach", "sub": [{"text": "Look at the waves!", "start": 0.5, "end": 1.25},
                                      {"text": "Bye.", "start": 2.0, "end": 2.9}]},
        {"video_id": "kitchen", "sub": [{"text": "Pass the salt", "start": 0.2, "end": 1.0}]}]
    assert _problems(manifest) == [("missing_video", "queries.csv", 5, "skip"),
                                   ("bad_timestamps", "queries.csv", 6, "skip")]


def test_custom_jsonl_bad_split_and_video_in_train_and_test(tmp_path):
    queries = _lines(tmp_path / "queries.jsonl", [{"video": "a", "text": "x", "split": "dev"}])
    with pytest.raises(AnnotationError, match=r"queries\.jsonl:1: split must be one of train, val, test"):
        read_custom({"train": queries}, tmp_path, ".mp4")
    _frames(tmp_path / "a", 3)
    queries = _lines(tmp_path / "queries.jsonl", [{"video": "a", "text": "x"}, {"video": "a", "text": "y",
                                                                               "split": "test"}])
    with pytest.raises(AnnotationError, match=r"queries\.jsonl:2: video a is already in split train"):
        read_custom({"train": queries}, tmp_path, ".mp4")


def test_subtitle_file_with_a_bad_timing_line_names_file_and_line(tmp_path):
    path = tmp_path / "clip.srt"
    path.write_text("1\n00:00:01,000 --> 00:00:02,000\nfine\n\n2\n00:00:03 --> 00:00:04,000\nbroken\n")
    with pytest.raises(SubtitleFileError, match=r"clip\.srt:6: '00:00:03' is not a time"):
        read_subtitle_file(path)
