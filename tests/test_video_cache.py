"""The per-video cache: what reruns is counted in videos decoded, from the stages' manifests.

Editing or adding a query extracts no video; touching an annotation file reruns nothing; replacing a
video's file re-extracts that video only; adding videos extracts only them; switching back to an
earlier backbone reuses its features; the shard count changes neither a fingerprint nor a feature.
"""

import json
import os
import shutil
import subprocess
import sys

import luigi
import numpy as np
import pytest

import tasks
from conftest import make_tiny_config
from luigi.task_register import Register
from pipeline.datasets import folder_videos
from pipeline.explain import explain, format_report
from pipeline.sharding import assign_shards
from pipeline.video_cache import (
    CACHE_FOLDER,
    ENTRY_SUFFIX,
    RECORD_SUFFIX,
    VideoCache,
    clean,
    read_feature_entry,
    used_entries,
    video_identity,
    write_feature_entry,
)
from storage import FeatureFile
from videos import run_ffmpeg


@pytest.fixture(scope="module")
def demo_files(tmp_path_factory):
    """The tiny demo's files (8 videos, TVR formats), generated once for the module."""
    demo = tasks.DemoDataset(dataset=str(make_tiny_config(tmp_path_factory.mktemp("demo_files"))))
    assert luigi.build([demo], local_scheduler=True, log_level="WARNING")
    return demo.out_dir


@pytest.fixture
def dataset(demo_files, tmp_path, make_config):
    """A files dataset on a fresh copy of the demo's files: (config path, data root)."""
    root = tmp_path / "raw"
    shutil.copytree(demo_files, root, ignore=shutil.ignore_patterns("manifest.json", ".lock"))
    return make_config({"data": {"source": "files", "root": str(root)}}, name="files.yaml"), root


def _decoded(task) -> list[str]:
    """The videos a per-video stage decoded (not found in the cache) when it was last built."""
    return json.loads((task.out_dir / "manifest.json").read_text())["decoded"]


def _features(task) -> dict[str, np.ndarray]:
    return dict(FeatureFile(task.features).group().items())


def _part(config, overrides=""):
    # A new instance, as a new command makes: Luigi caches task instances, and with them fingerprints
    # computed before the files changed.
    Register.clear_instance_cache()
    return tasks.VisualPart(dataset=str(config), set=overrides, part="clip")


def _rewrite_first_line(path, change) -> None:
    lines = path.read_text().splitlines()
    lines[0] = json.dumps(change(json.loads(lines[0])))
    path.write_text("\n".join(lines) + "\n")


def test_editing_or_adding_a_query_extracts_no_video(dataset, run_stages):
    config, root = dataset
    stages = [_part(config), tasks.QueryFeatures(dataset=str(config))]
    run_stages.build(stages)
    assert len(_decoded(stages[0])) == 8
    train = root / "demo_train_release.jsonl"

    _rewrite_first_line(train, lambda query: {**query, "desc": query["desc"] + " at night"})
    stages = [_part(config), tasks.QueryFeatures(dataset=str(config))]
    assert run_stages.build(stages) == ["dataset", "queries", "visual-clip"]
    assert _decoded(stages[0]) == []  # assembled from the cache

    extra = json.loads(train.read_text().splitlines()[0])
    train.write_text(train.read_text() + json.dumps({**extra, "desc_id": 999999, "desc": "a new query"}) + "\n")
    stages = [_part(config), tasks.QueryFeatures(dataset=str(config))]
    assert run_stages.build(stages) == ["dataset", "queries", "visual-clip"]
    assert _decoded(stages[0]) == []


def test_touching_the_annotation_files_reruns_nothing(dataset, run_stages):
    config, root = dataset
    run_stages.build([_part(config)])
    for path in root.glob("*.jsonl"):
        os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 10**9))
    assert run_stages.build([_part(config)]) == []


@pytest.mark.parametrize("transcode", [False, True])
def test_replacing_a_video_re_extracts_that_video_only(dataset, run_stages, transcode):
    config, root = dataset
    overrides = f"visual.transcode.enabled={str(transcode).lower()}"
    run_stages.build([_part(config, overrides)])
    before = _features(_part(config, overrides))
    replaced = sorted(before)[3]
    video = root / "videos" / f"{replaced}.mp4"
    edited = video.with_name("edited.mp4")
    run_ffmpeg("-i", str(video), "-vf", "negate", "-c:v", "libx264", "-pix_fmt", "yuv420p", str(edited))
    edited.replace(video)  # same name and duration, other pixels

    run_stages.build([_part(config, overrides)])
    part = _part(config, overrides)
    assert _decoded(part) == [replaced]
    if transcode:
        assert _decoded(tasks.Transcode(dataset=str(config), set=overrides)) == [replaced]
    after = _features(part)
    assert sorted(after) == sorted(before)
    for video_id in before:
        assert np.array_equal(after[video_id], before[video_id]) == (video_id != replaced), video_id


def test_adding_videos_to_a_folder_collection_extracts_only_them(demo_files, tmp_path, make_config, run_stages):
    folder = tmp_path / "collection"
    folder.mkdir()
    videos = sorted((demo_files / "videos").glob("*.mp4"))
    for video in videos[:5]:
        shutil.copy2(video, folder / video.name)
    config = make_config({"data": {"source": "folder", "root": str(folder)}}, name="folder.yaml")
    run_stages.build([_part(config)])
    before = _features(_part(config))
    assert len(_decoded(_part(config))) == 5

    for video in videos[5:]:
        shutil.copy2(video, folder / video.name)
    report = format_report(explain(_part(config)))  # why the dataset stage runs again, in words
    assert "number of video files: 5 -> 8" in report and "video files added, removed or replaced" in report
    run_stages.build([_part(config)])
    assert sorted(_decoded(_part(config))) == sorted(video.name for video in videos[5:])
    after = _features(_part(config))
    assert len(after) == 8 and all(np.array_equal(after[key], value) for key, value in before.items())


def test_switching_back_to_an_earlier_backbone_reuses_its_features(dataset, run_stages):
    config, root = dataset
    run_stages.build([_part(config)])
    first = _features(_part(config))
    other = "visual.parts.clip.model=TinyViT-16-test"
    run_stages.build([_part(config, other)])
    assert len(_decoded(_part(config, other))) == 8
    # A new dataset fingerprint (an edited query) gives the first backbone a new stage folder: its
    # features come from the cache, as they were.
    _rewrite_first_line(root / "demo_train_release.jsonl", lambda query: {**query, "desc": "edited"})
    run_stages.build([_part(config)])
    assert _decoded(_part(config)) == []
    again = _features(_part(config))
    assert again.keys() == first.keys() and all(np.array_equal(again[key], first[key]) for key in first)


def test_the_shard_count_changes_no_fingerprint_and_no_feature(make_config, run_stages, tmp_path):
    one = make_config({"visual": {"shards": 1}}, name="one.yaml")
    three = make_config({"visual": {"shards": 3}, "workdir": str(tmp_path / "other_work")}, name="three.yaml")
    assert _part(one).fingerprint == _part(three).fingerprint
    run_stages.build([_part(one), _part(three)])
    reports = sorted(_part(three).out_dir.glob("shards/3/*/report.json"))
    assert len(reports) == 3
    assigned = [json.loads(report.read_text())["videos"] for report in reports]
    assert sorted(sum(assigned, [])) == sorted(_features(_part(one)))  # each video in exactly one shard
    features_one, features_three = _features(_part(one)), _features(_part(three))
    assert features_one.keys() == features_three.keys()
    assert all(np.array_equal(features_one[key], features_three[key]) for key in features_one)


def test_shards_are_balanced_by_duration_and_stable():
    durations = [100, 90, 40, 35, 30, 25, 20, 5, 5, 5]
    videos = [{"video_id": f"v{index}", "duration": seconds} for index, seconds in enumerate(durations)]
    shards = assign_shards(videos, 3)
    totals = sorted(sum(video["duration"] for video in shard) for shard in shards)
    assert totals[-1] - totals[0] <= 20  # position in the list decides nothing: v0 and v1 are apart
    assert not any({"v0", "v1"} <= {video["video_id"] for video in shard} for shard in shards)
    assert assign_shards(list(reversed(videos)), 3) == [list(reversed(shard)) for shard in shards]


def test_a_worker_reads_and_assigns_a_stages_videos_once_for_all_its_shards(dataset, run_stages):
    config, _ = dataset
    run_stages.build([tasks.PrepareDataset(dataset=str(config))])
    part = _part(config)
    reads, read = [], part.videos
    part.videos = lambda: reads.append(1) or read()  # counts how often videos.jsonl is read and sorted
    assert [part.shard_videos(3, index) for index in range(3)] == assign_shards(read(), 3)
    assert [part.shard_videos(2, index) for index in range(2)] == assign_shards(read(), 2)
    assert len(reads) == 2  # once per shard count, not once per shard


def test_folder_videos_lists_videos_and_frame_folders_in_walk_order(tmp_path):
    root = tmp_path / "collection"
    (root / "b" / "frames").mkdir(parents=True)
    for name in ("00001.jpg", "00002.JPG"):
        (root / "b" / "frames" / name).write_bytes(b"")
    for name in ("z.mp4", "a.MKV", "notes.txt", ".mp4", "..mp4"):
        (root / name).write_bytes(b"")
    (root / "b" / "c.webm").write_bytes(b"")
    outside = tmp_path / "outside.mp4"
    outside.write_bytes(b"")
    (root / "link_out.mp4").symlink_to(outside)  # resolves outside the root: left out
    (root / "link_in.mp4").symlink_to(root / "z.mp4")  # inside: kept
    (root / "linked_folder").symlink_to(root / "b", target_is_directory=True)  # listed, not entered
    expected = [root / name for name in ("..mp4", "a.MKV", "link_in.mp4", "z.mp4")] + \
        [root / "b" / "c.webm", root / "b" / "frames"]
    assert folder_videos(root) == expected


def test_clean_removes_only_entries_no_stage_folder_uses(dataset, run_stages):
    config, _ = dataset
    other = "visual.parts.clip.model=TinyViT-16-test"
    run_stages.build([_part(config), _part(config, other)])
    dataset_dir = _part(config).out_dir.parent.parent
    assert clean(dataset_dir) == (0, 0)  # both stage folders use all their entries
    shutil.rmtree(_part(config, other).out_dir)
    files, size = clean(dataset_dir, dry_run=True)
    assert files == 16 and size > 0 and len(list(_part(config, other).cache.folder.rglob(f"*{ENTRY_SUFFIX}"))) == 8  # and records
    assert clean(dataset_dir) == (files, size)
    assert not _part(config, other).cache.folder.exists()
    kept = {path.relative_to(dataset_dir / CACHE_FOLDER).as_posix()
            for path in (dataset_dir / CACHE_FOLDER).rglob(f"*{ENTRY_SUFFIX}")}
    assert kept == used_entries(dataset_dir) and len(kept) == 8
    assert len(list((dataset_dir / CACHE_FOLDER).rglob(f"*{ENTRY_SUFFIX}{RECORD_SUFFIX}"))) == 8  # each kept with its record
    assert run_stages.build([_part(config)]) == []  # the remaining stage is untouched


def test_identity_by_file_stats_or_by_content(demo_files, tmp_path):
    video = sorted((demo_files / "videos").glob("*.mp4"))[0]
    copy = tmp_path / "elsewhere" / "videos" / video.name
    copy.parent.mkdir(parents=True)
    shutil.copy(video, copy)  # same bytes, another root and modification time
    assert video_identity(copy, tmp_path / "elsewhere", "content") == video_identity(video, demo_files, "content")
    assert video_identity(copy, tmp_path / "elsewhere", "file") != video_identity(video, demo_files, "file")
    before = video_identity(copy, tmp_path / "elsewhere", "file")
    os.utime(copy, ns=(copy.stat().st_atime_ns, copy.stat().st_mtime_ns + 10**9))  # touched: same bytes
    assert video_identity(copy, tmp_path / "elsewhere", "file") != before
    assert video_identity(copy, tmp_path / "elsewhere", "content") == video_identity(video, demo_files, "content")
    frames = tmp_path / "frames"
    frames.mkdir()
    for index in range(3):
        (frames / f"{index:05d}.jpg").write_bytes(bytes([index]) * 10)
    folder_before = video_identity(frames, tmp_path, "content")
    (frames / "00001.jpg").write_bytes(b"other")  # one frame replaced: the folder's identity changes
    assert video_identity(frames, tmp_path, "content") != folder_before


def test_a_feature_entry_reads_back_as_written_and_a_foreign_file_is_named(tmp_path):
    cache = VideoCache(tmp_path / "cache", ENTRY_SUFFIX)
    entry = cache.path({"identity": "x", "duration": 2.0})
    features = np.random.default_rng(0).standard_normal((5, 7), dtype=np.float32)
    write_feature_entry(cache, entry, features, timestamps=np.arange(5) / 3.0, pyav=np.bool_(True))
    read, attrs = read_feature_entry(entry)
    assert read.dtype == np.float32 and np.array_equal(read, features)
    assert attrs["timestamps"].dtype == np.float64 and np.array_equal(attrs["timestamps"], np.arange(5) / 3.0)
    assert attrs["pyav"] is True and cache.entry_problem(entry) is None
    write_feature_entry(cache, entry, np.zeros((0, 7), np.float32), timestamps=np.zeros(0), pyav=False)  # no rows
    assert read_feature_entry(entry)[0].shape == (0, 7)
    for foreign in (b"\x89HDF\r\n\x1a\n" + bytes(100), b'{"format": "prvr-feature-entry-1", "arrays": '
                    b'[["features", "<f4", [5, 7]]], "values": {}}\n' + bytes(12)):  # HDF5; a cut entry
        entry.write_bytes(foreign)
        with pytest.raises(ValueError, match=f"{entry}: not a feature cache entry"):
            read_feature_entry(entry)


def test_the_entry_format_is_part_of_a_visual_parts_settings_key(dataset, monkeypatch):
    config, _ = dataset
    before = _part(config).cache.folder
    monkeypatch.setattr(tasks, "ENTRY_FORMAT", "prvr-feature-entry-2")
    assert _part(config).cache.folder != before  # entries of another format are never read as this one's


def test_assembling_a_part_imports_no_model_code():
    # Assembling copies bytes: importing torch for it cost seconds a process (VisualPart assemble,
    # and VisualFeatures, which reads a single part in place).
    code = "import sys, tasks, pipeline.part_assembly; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
