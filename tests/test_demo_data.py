import json
from collections import Counter
from pathlib import Path

import pytest

from extractors.decode import probe_video
from pipeline.demo_data import SPLITS, build_demo_dataset, plan_demo_dataset

SMALL_DEMO = dict(n_videos=6, seed=3, size=(96, 64), fps=5, n_test=2, n_val=1)
ANNOTATION_FILES = [f"demo_{split}_release.jsonl" for split in SPLITS] + ["demo_subtitles.jsonl", "demo_segments.jsonl"]


def _read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory) -> Path:
    out_dir = tmp_path_factory.mktemp("demo")
    build_demo_dataset(out_dir, **SMALL_DEMO)
    return out_dir


@pytest.fixture(scope="module")
def queries(demo_dir) -> dict[str, list[dict]]:
    return {split: _read_jsonl(demo_dir / f"demo_{split}_release.jsonl") for split in SPLITS}


@pytest.fixture(scope="module")
def segments(demo_dir) -> dict[str, dict]:
    return {video["vid_name"]: video for video in _read_jsonl(demo_dir / "demo_segments.jsonl")}


def test_all_files_exist_and_no_temporary_files_remain(demo_dir):
    assert sorted(p.name for p in (demo_dir / "videos").iterdir()) == [f"demo_v{i:03d}.mp4" for i in range(6)]
    for name in ANNOTATION_FILES:
        assert (demo_dir / name).stat().st_size > 0
    assert not list(demo_dir.rglob("*.tmp"))


def test_queries_have_tvr_fields(queries):
    all_queries = [query for split in SPLITS for query in queries[split]]
    assert all(set(query) == {"desc_id", "desc", "vid_name", "duration", "ts", "type"} for query in all_queries)
    assert all(isinstance(query["desc_id"], int) and query["desc"] for query in all_queries)
    assert len({query["desc_id"] for query in all_queries}) == len(all_queries)
    assert {query["type"] for query in all_queries} <= {"v", "t", "vt"}


def test_every_video_has_two_to_five_queries(queries, segments):
    per_video = {name: 0 for name in segments}
    for split in SPLITS:
        for query in queries[split]:
            per_video[query["vid_name"]] += 1
    assert all(2 <= count <= 5 for count in per_video.values())


def test_splits_are_disjoint_with_requested_sizes(queries):
    videos = {split: {query["vid_name"] for query in queries[split]} for split in SPLITS}
    assert (len(videos["train"]), len(videos["val"]), len(videos["test"])) == (3, 1, 2)
    assert not (videos["train"] & videos["val"] or videos["train"] & videos["test"] or videos["val"] & videos["test"])


def test_video_layout_is_3_to_5_contiguous_segments(segments):
    for video in segments.values():
        bounds = video["segments"]
        assert 3 <= len(bounds) <= 5
        assert bounds[0]["start"] == 0 and bounds[-1]["end"] == video["duration"]
        assert all(a["end"] == b["start"] for a, b in zip(bounds, bounds[1:]))
        assert all(5 <= s["end"] - s["start"] <= 12 for s in bounds)
        assert 20 <= video["duration"] <= 40
        assert len({s["scene"] for s in bounds}) == len(bounds)


def test_query_moments_are_whole_segments_inside_the_video(queries, segments):
    for split in SPLITS:
        for query in queries[split]:
            video = segments[query["vid_name"]]
            start, end = query["ts"]
            assert 0 <= start < end <= query["duration"] == video["duration"]
            assert any([s["start"], s["end"]] == [start, end] for s in video["segments"])


def test_subtitles_lie_inside_their_video_and_mark_query_types(demo_dir, queries, segments):
    subtitles = {video["vid_name"]: video["sub"] for video in _read_jsonl(demo_dir / "demo_subtitles.jsonl")}
    assert subtitles, "some videos must carry subtitles"
    for vid_name, lines in subtitles.items():
        duration = segments[vid_name]["duration"]
        assert all(line["text"] and 0 <= line["start"] < line["end"] <= duration for line in lines)
    for query in (q for split in SPLITS for q in queries[split]):
        start, end = query["ts"]
        spoken = any(start <= line["start"] < end for line in subtitles.get(query["vid_name"], []))
        assert query["type"] == ("vt" if spoken else "v")


def test_videos_decode_with_the_stated_duration_and_size(demo_dir, segments):
    for vid_name, video in segments.items():
        info = probe_video(demo_dir / "videos" / f"{vid_name}.mp4")
        assert (info.width, info.height) == (96, 64)
        assert info.duration == pytest.approx(video["duration"], abs=0.01)
        assert info.n_frames == round(video["duration"] * SMALL_DEMO["fps"])


def test_same_seed_gives_identical_annotations(demo_dir, tmp_path):
    build_demo_dataset(tmp_path, **SMALL_DEMO)
    for name in ANNOTATION_FILES:
        assert (tmp_path / name).read_bytes() == (demo_dir / name).read_bytes(), name


def test_other_seed_gives_other_videos():
    plans_a = plan_demo_dataset(n_videos=6, seed=0, fps=5, n_test=2, n_val=1)
    plans_b = plan_demo_dataset(n_videos=6, seed=1, fps=5, n_test=2, n_val=1)
    assert [p.scenes for p in plans_a] != [p.scenes for p in plans_b]


def test_test_queries_point_to_few_videos_and_their_scenes_are_learnable():
    plans = plan_demo_dataset(n_videos=48, seed=0, fps=10, n_test=16, n_val=8)
    test_plans = [plan for plan in plans if plan.split == "test"]
    scene_contents = [{(s.kind, s.attributes) for s in plan.scenes} for plan in test_plans]
    matches = [
        sum((scene.kind, scene.attributes) in contents for contents in scene_contents)
        for plan in test_plans for scene in plan.scenes
    ]
    assert sum(matches) / len(matches) < 3  # a query's description fits 1-3 of the 16 test videos
    train_kinds = Counter(s.kind for plan in plans if plan.split == "train" for s in plan.scenes)
    assert min(train_kinds[s.kind] for plan in test_plans for s in plan.scenes) >= 3


def test_split_sizes_must_leave_training_videos():
    with pytest.raises(ValueError, match="n_test"):
        plan_demo_dataset(n_videos=6, seed=0, fps=5, n_test=4, n_val=2)


def test_default_splits_are_a_third_test_and_a_sixth_val():
    splits = [plan.split for plan in plan_demo_dataset(n_videos=48, seed=0, fps=10)]
    assert (splits.count("test"), splits.count("val"), splits.count("train")) == (16, 8, 24)
    assert "train" in [plan.split for plan in plan_demo_dataset(n_videos=8, seed=0, fps=10)]
