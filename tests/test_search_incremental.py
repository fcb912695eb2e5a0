"""An index that grows by what changed (search/index.py, tasks.Index, pipeline/superseded.py).

A folder collection of real small videos is indexed with the tiny demo model (conftest's session
`demo`) by real Luigi runs; videos are added, removed and replaced. Each run must encode through the
model only the videos that changed, and the index it writes must answer exactly as a full rebuild of
the same collection does (ids, order, scores to 1e-6, spans); browser proxies are made once per
video; a superseded index folder is deleted when the new one is published, unless a searcher holds it.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import h5py
import luigi
import numpy as np
import pytest

import tasks
from pipeline.superseded import SupersededFolder, held_for_reading
from pipeline.video_cache import clean
from search.index import INDEX_FILE
from search.searcher import Searcher
from videos import run_ffmpeg

QUERIES = ("a test card", "colour bars", "a red square moving left", "a fractal zoom")


def _video(path: Path, source: str, seconds: float = 3.0) -> None:
    """An H.264 file of one of ffmpeg's generated patterns (`source`: testsrc, smptebars, mandelbrot...)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    container = ["-f", "matroska"] if path.suffix == ".mkv" else ["-movflags", "+faststart"]
    run_ffmpeg("-f", "lavfi", "-i", f"{source}=size=96x64:rate=10", "-t", str(seconds), "-c:v", "libx264",
               "-preset", "ultrafast", "-pix_fmt", "yuv420p", *container, str(path))


def _index(config: Path, folder: Path, overrides: str = "") -> tasks.Index:
    """Runs the Index stage over the folder as it is now; returns the task."""
    luigi.task_register.Register.clear_instance_cache()  # a new process would see the folder afresh
    task = tasks.Index(dataset=str(config), set=overrides, collection=f"data.source=folder data.root={folder}")
    assert luigi.build([task], local_scheduler=True, log_level="WARNING")
    return task


def _manifest(task: tasks.Index) -> dict:
    return json.loads((task.out_dir / "manifest.json").read_text())


def _assert_same_answers(task: tasks.Index, rebuilt: Path) -> None:
    """The incremental index answers every query as the full rebuild in ``rebuilt`` does."""
    span_rule = task.config["evaluate"]["span_rule"]
    incremental, full = Searcher(task.out_dir, span_rule), Searcher(rebuilt, span_rule)
    try:
        assert incremental.video_ids == full.video_ids and incremental.playable == full.playable
        for query in QUERIES:
            found, expected = incremental.search(query, k=10), full.search(query, k=10)
            assert [hit.video_id for hit in found] == [hit.video_id for hit in expected], query
            np.testing.assert_allclose([hit.score for hit in found], [hit.score for hit in expected], atol=1e-6, rtol=0)
            np.testing.assert_allclose([[hit.start, hit.end] for hit in found],
                                       [[hit.start, hit.end] for hit in expected], atol=1e-6, rtol=0)
            assert {hit.method for hit in found} == {full.method}
    finally:
        incremental.hold.close()
        full.hold.close()


def _full_rebuild(task: tasks.Index, folder: Path) -> Path:
    """The same collection indexed from scratch (no superseded index), beside the stage folders."""
    folder.mkdir(parents=True)
    report = task.build_into(folder, previous=None)
    assert report["encoded"] == report["inputs"]["indexed"] and report["reused"] == 0
    return folder


def test_add_remove_replace_encode_only_what_changed(demo, tmp_path):
    config, _, _ = demo
    folder = tmp_path / "footage"
    _video(folder / "bars.mp4", "smptebars")
    _video(folder / "card.mkv", "testsrc")  # browsers do not play .mkv: a proxy
    _video(folder / "fractal.mp4", "mandelbrot")

    first = _index(config, folder)
    assert _manifest(first)["encoded"] == 3 and _manifest(first)["proxies"] == 1
    with h5py.File(first.out_dir / INDEX_FILE) as f:
        proxy = Path(f["playable"][()][1].decode())
    assert proxy.suffix == ".mp4" and "cache" in proxy.parts and proxy.is_file()
    proxy_made, lineage = proxy.stat().st_mtime_ns, _manifest(first)["lineage"]

    _video(folder / "zebra.mp4", "rgbtestsrc")  # added
    added = _index(config, folder)
    manifest = _manifest(added)
    assert (manifest["encoded"], manifest["reused"], manifest["inputs"]["indexed"]) == (1, 3, 4)
    assert manifest["superseded_index"] == str(first.out_dir) and manifest["lineage"] == lineage
    assert not first.out_dir.exists()  # superseded and nobody read it: deleted once the new one was published
    assert proxy.stat().st_mtime_ns == proxy_made  # the unchanged .mkv was not transcoded again
    _assert_same_answers(added, _full_rebuild(added, tmp_path / "full-added"))

    (folder / "bars.mp4").unlink()  # removed
    removed = _index(config, folder)
    assert (_manifest(removed)["encoded"], _manifest(removed)["reused"]) == (0, 3)
    _assert_same_answers(removed, _full_rebuild(removed, tmp_path / "full-removed"))

    _video(folder / "fractal.mp4", "testsrc2", seconds=4.0)  # replaced: another file under the same name
    replaced = _index(config, folder)
    assert (_manifest(replaced)["encoded"], _manifest(replaced)["reused"]) == (1, 2)
    _assert_same_answers(replaced, _full_rebuild(replaced, tmp_path / "full-replaced"))
    with h5py.File(replaced.out_dir / INDEX_FILE) as f:
        assert [value.decode() for value in f["video_ids"][()]] == ["card.mkv", "fractal.mp4", "zebra.mp4"]
        assert np.isclose(f["durations"][1], 4.0, atol=0.2)
    assert proxy.stat().st_mtime_ns == proxy_made

    # A new checkpoint re-encodes everything: another lineage, nothing reused, the old index kept.
    retrained = _index(config, folder, "train.max_epochs=1")
    assert (_manifest(retrained)["encoded"], _manifest(retrained)["reused"]) == (3, 0)
    assert replaced.out_dir.is_dir()


def test_a_superseded_index_that_a_searcher_holds_is_kept_until_released(demo, tmp_path):
    config, _, _ = demo
    folder = tmp_path / "footage"
    _video(folder / "bars.mp4", "smptebars")
    first = _index(config, folder)
    searcher = Searcher(first.out_dir, first.config["evaluate"]["span_rule"])
    _video(folder / "card.mp4", "testsrc")
    second = _index(config, folder)
    assert first.out_dir.is_dir()  # a searcher holds it: left for later
    assert [hit.video_id for hit in searcher.search("a test card", k=5)] == ["bars.mp4"]  # it still answers
    dataset_dir = second.out_dir.parent.parent
    clean(dataset_dir)
    assert first.out_dir.is_dir()  # still held
    searcher.hold.close()
    clean(dataset_dir, dry_run=True)
    assert first.out_dir.is_dir()
    clean(dataset_dir)
    assert not first.out_dir.exists() and second.out_dir.is_dir()
    with pytest.raises(SupersededFolder, match="superseded"):
        held_for_reading(first.out_dir)


def test_an_approximate_index_updates_its_first_stage(demo, tmp_path):
    """The first stage is the superseded index's with the added video's vectors, its quantiser kept
    while the videos added since it was trained stay within RETRAIN_GROWTH (15%) of those it was
    trained on (1 of 7), then trained anew (2 of 7). Every video is a candidate in so small an index,
    so it answers as the full rebuild does."""
    config, _, _ = demo
    folder = tmp_path / "footage"
    sources = ("smptebars", "testsrc", "mandelbrot", "rgbtestsrc", "testsrc2", "smptehdbars", "yuvtestsrc")
    for number, source in enumerate(sources):
        _video(folder / f"{number}.mp4", source, seconds=2.0)
    overrides = "search.method=approximate"
    first = _index(config, folder, overrides)
    assert _manifest(first)["approximate"]["quantiser"] == "trained"
    os.replace(folder / "1.mp4", folder / "renamed-1.mp4")  # a removal and an addition
    second = _index(config, folder, overrides)
    report = _manifest(second)["approximate"]
    assert (report["quantiser"], report["added"], report["removed"], report["trained_videos"]) == ("kept", 1, 1, 7)
    assert report["trained_in"] == first.out_dir.name and _manifest(second)["encoded"] == 1
    _assert_same_answers(second, _full_rebuild(second, tmp_path / "full"))
    os.replace(folder / "2.mp4", folder / "renamed-2.mp4")
    third = _index(config, folder, overrides)
    report = _manifest(third)["approximate"]
    assert (report["quantiser"], report["trained_in"], report["trained_videos"]) == ("trained", third.out_dir.name, 7)
    assert _manifest(third)["encoded"] == 1
