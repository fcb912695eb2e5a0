"""data.video_identity means the same at every level (dataset stage, per-video cache, index): through
real Luigi runs, a video replaced by another of the same size with its modification time restored is
noticed with ``content`` (that video alone is decoded again) and, as documented, not with ``file``;
``content`` hashes no video on a no-op rerun, and only the replaced one after a replacement."""

from __future__ import annotations

import os
import shutil

import luigi
import numpy as np
import pytest
from luigi.task_register import Register

import tasks
from conftest import make_tiny_config
from pipeline.video_cache import HASHES_FILE
from test_damaged_outputs import _decoded, _features
from videos import run_ffmpeg


@pytest.fixture(scope="module")
def demo_files(tmp_path_factory):
    demo = tasks.DemoDataset(dataset=str(make_tiny_config(tmp_path_factory.mktemp("identity_demo"))))
    assert luigi.build([demo], local_scheduler=True, log_level="WARNING")
    return demo.out_dir


@pytest.fixture
def padded_pair(demo_files, tmp_path):
    """A files dataset whose video ``replaced`` has a twin: other pixels, same duration, same size
    (both padded with zeros at the end, which demuxers skip). -> (root, video path, twin path)."""
    root = tmp_path / "raw"
    shutil.copytree(demo_files, root, ignore=shutil.ignore_patterns("manifest.json", ".lock"))
    video = sorted((root / "videos").glob("*.mp4"))[3]
    twin = tmp_path / "twin.mp4"
    run_ffmpeg("-i", str(video), "-vf", "negate", "-c:v", "libx264", "-pix_fmt", "yuv420p", str(twin))
    size = max(video.stat().st_size, twin.stat().st_size) + 64
    for path in (video, twin):
        with open(path, "ab") as f:
            f.write(b"\0" * (size - path.stat().st_size))
    return root, video, twin


def _replace_keeping_size_and_mtime(video, twin) -> None:
    stat = video.stat()
    shutil.copyfile(twin, video)  # written in place: same name, same size, other bytes
    os.utime(video, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert (video.stat().st_size, video.stat().st_mtime_ns) == (stat.st_size, stat.st_mtime_ns)


def _part(config):
    Register.clear_instance_cache()
    return tasks.VisualPart(dataset=str(config), part="clip")


def _index_fingerprint(config) -> str:
    Register.clear_instance_cache()
    return tasks.Index(dataset=str(config)).fingerprint


@pytest.mark.parametrize("mode", ["file", "content"])
def test_a_same_size_replacement_with_restored_mtime(padded_pair, make_config, run_stages, mode):
    root, video, twin = padded_pair
    config = make_config({"data": {"source": "files", "root": str(root), "video_identity": mode}})
    run_stages.build([_part(config)])
    before, index_before = _features(_part(config).features), _index_fingerprint(config)

    _replace_keeping_size_and_mtime(video, twin)
    ran = run_stages.build([_part(config)])
    if mode == "file":  # what the docs say `file` cannot notice
        assert ran == [] and _index_fingerprint(config) == index_before
        return
    assert ran == ["dataset", "visual-clip"]
    assert _decoded(_part(config)) == [video.stem]
    assert _index_fingerprint(config) != index_before  # the index is rebuilt from the new features
    after = _features(_part(config).features)
    for video_id, features in before.items():
        assert np.array_equal(after[video_id], features) == (video_id != video.stem), video_id


def test_content_hashes_are_reused_only_while_the_stat_is_unchanged(padded_pair, make_config, run_stages):
    root, video, twin = padded_pair
    config = make_config({"data": {"source": "files", "root": str(root), "video_identity": "content"}})
    run_stages.build([_part(config)])
    assert (_part(config).out_dir.parent.parent / HASHES_FILE).is_file()

    dataset = _fresh_dataset(config)
    assert dataset.fingerprint and dataset._hashes.hashed_bytes == 0  # a no-op rerun reads no video

    _replace_keeping_size_and_mtime(video, twin)
    dataset = _fresh_dataset(config)
    dataset.fingerprint
    assert dataset._hashes.hashed_bytes == video.stat().st_size  # the replaced video alone

    os.utime(video, ns=(video.stat().st_atime_ns, video.stat().st_mtime_ns))  # ctime moves: hashed again
    dataset = _fresh_dataset(config)
    dataset.fingerprint
    assert dataset._hashes.hashed_bytes == video.stat().st_size


def _fresh_dataset(config):
    Register.clear_instance_cache()
    return tasks.PrepareDataset(dataset=str(config))
