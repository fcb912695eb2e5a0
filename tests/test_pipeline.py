"""The Luigi graph end to end on a tiny demo: fingerprints decide exactly which stages rerun."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import tasks
from pipeline.config import load_config
from pipeline.stage import StageFailed
from pipeline.video_cache import clean
from storage import FeatureFile

REPO = Path(__file__).resolve().parent.parent
ALL_STAGES = sorted(["demo_data", "dataset", "visual-clip", "visual", "queries", "subtitles", "train", "evaluate"])


def _evaluate(config, overrides=""):
    return tasks.Evaluate(dataset=str(config), set=overrides)


def test_fingerprints_rerun_exactly_the_stale_stages(make_config, run_stages):
    config = make_config()
    assert run_stages.build([_evaluate(config)]) == ALL_STAGES
    assert run_stages.build([_evaluate(config)]) == []

    # A different visual backbone: visual features and everything downstream of them.
    assert run_stages.build([_evaluate(config, "visual.parts.clip.model=TinyViT-16-test")]) == \
        ["evaluate", "train", "visual", "visual-clip"]
    # A training setting: training and evaluation only.
    assert run_stages.build([_evaluate(config, "train.lr=0.001")]) == ["evaluate", "train"]
    # Settings that cannot change results: nothing.
    neutral = ("visual.device=cpu visual.batch_size=3 visual.num_workers=1 text.batch_size=5 "
               "train.num_workers=1 evaluate.chunk_size=7 visual.max_failed_fraction=0.5")
    assert run_stages.build([_evaluate(config, neutral)]) == []
    # Subtitles live on the sampling grid: a new fps reruns them, but never query encoding.
    assert run_stages.build([_evaluate(config, "visual.fps=2")]) == \
        ["evaluate", "subtitles", "train", "visual", "visual-clip"]
    # Back to the first config: every output is found again.
    assert run_stages.build([_evaluate(config)]) == []


def test_stage_manifest_records_what_happened(make_config, run_stages):
    config = make_config()
    part = tasks.VisualPart(dataset=str(config), part="clip")
    visual = tasks.VisualFeatures(dataset=str(config))
    run_stages.build([visual])
    manifest = json.loads((part.out_dir / "manifest.json").read_text())
    assert manifest["fingerprint"] == part.fingerprint == part.out_dir.name
    assert part.out_dir.parent.name == "visual-clip"
    assert manifest["config"] == load_config(str(config))
    dataset_fingerprint = tasks.PrepareDataset(dataset=str(config)).fingerprint
    assert manifest["fingerprint_inputs"]["upstream"] == {"videos": dataset_fingerprint}
    assert manifest["inputs"]["videos"] == 8 and manifest["failures"] == {}
    assert manifest["started_at"] <= manifest["finished_at"]
    assert {"torch", "decord", "open_clip_torch", "h5py"} <= set(manifest["libraries"])
    combined = json.loads((visual.out_dir / "manifest.json").read_text())
    assert combined["fingerprint_inputs"]["upstream"] == {"dataset": dataset_fingerprint, "part-clip": part.fingerprint}
    # One per-frame part is used as it is: the visual stage points at the part's file, no copy.
    assert visual.features == part.features and combined["features"] == str(part.features)
    assert not (visual.out_dir / "features.h5").exists()
    features = FeatureFile(visual.features)
    videos = features.group()
    assert len(videos) == 8 and features.attrs["fingerprint"] == part.fingerprint and features.attrs["fps"] == 1.0
    first = sorted(videos.ids)[0]
    assert videos.dim == features.attrs["dim"] and len(videos.read(first, "timestamps")) == len(videos.read(first))


def _copy_demo_as_files_dataset(make_config, run_stages, tmp_path):
    """The tiny demo's files, copied to a plain folder and read back with `data.source: files`."""
    demo_config = make_config()
    run_stages.build([tasks.DemoDataset(dataset=str(demo_config))])
    root = tmp_path / "raw"
    shutil.copytree(tasks.DemoDataset(dataset=str(demo_config)).out_dir, root)
    return root


def test_corrupt_and_missing_videos_are_recorded_not_fatal(make_config, run_stages, tmp_path):
    root = _copy_demo_as_files_dataset(make_config, run_stages, tmp_path)
    # Three training videos: every split keeps a readable video (an empty split fails the dataset stage).
    train_ids = sorted({json.loads(line)["vid_name"] for line in (root / "demo_train_release.jsonl").open()})
    videos = [root / "videos" / f"{video_id}.mp4" for video_id in train_ids[:3]]
    videos[0].unlink()                                             # missing
    videos[1].write_bytes(videos[1].read_bytes()[:2000])           # truncated mp4
    videos[2].write_text("this is not a video\n")                  # a text file named .mp4
    config = make_config({"data": {"source": "files", "root": str(root)}}, name="files.yaml")

    run_stages.build([tasks.PrepareDataset(dataset=str(config))])
    strict = tasks.VisualPart(dataset=str(config), part="clip")
    run_stages.build(strict.requires()["shards"])  # a shard records its failures; the stage decides
    with pytest.raises(StageFailed, match="3 of 8 videos failed"):
        strict.run()
    assert not (strict.out_dir / "manifest.json").exists()

    lenient = tasks.VisualPart(dataset=str(config), part="clip", set="visual.max_failed_fraction=0.5")
    run_stages.build([tasks.VisualFeatures(dataset=str(config), set="visual.max_failed_fraction=0.5")])
    manifest = json.loads((lenient.out_dir / "manifest.json").read_text())
    failures = manifest["failures"]
    assert sorted(failures) == sorted(v.stem for v in videos[:3])
    for video in videos[:3]:
        assert str(video) in failures[video.stem]
    readable = sorted(set(path.stem for path in (root / "videos").glob("*.mp4")) - set(v.stem for v in videos))
    assert sorted(FeatureFile(lenient.features).group().ids) == readable and len(readable) == 5


def test_killed_extraction_leaves_nothing_complete_and_resumes(make_config, tmp_path):
    # The real CLIP ViT-B/32 architecture is slow enough on CPU to be killed between two videos.
    config = make_config({"visual": {"parts": {"clip": {"model": "ViT-B-32"}}, "size": 224}})
    command = [str(Path(sys.executable).with_name("luigi")), "--module", "tasks", "VisualPart", "--part", "clip",
               "--dataset", str(config)]
    visual = tasks.VisualPart(dataset=str(config), part="clip")

    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               start_new_session=True)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and process.poll() is None and not _cache_entries(visual):
        time.sleep(0.05)
    assert process.poll() is None, "extraction finished before it could be killed"
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()

    assert not visual.features.exists() and not (visual.out_dir / "manifest.json").exists()
    assert not any(visual.out_dir.glob("shards/*/*/report.json")), "a killed shard must not look complete"
    done_before = _cache_entries(visual)
    assert 1 <= done_before < 8

    rerun = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    manifest = json.loads((visual.out_dir / "manifest.json").read_text())
    assert manifest["inputs"] == {"videos": 8}
    assert (len(manifest["decoded"]), manifest["from_cache"]) == (8 - done_before, done_before)
    assert len(FeatureFile(visual.features).group()) == 8
    # What the killed writer left (a temporary file under its own name) goes with the cache clean-up,
    # which keeps every entry the stage folder was assembled from.
    clean(visual.out_dir.parent.parent)
    assert not list(visual.cache.folder.rglob("*.partial")) and _cache_entries(visual) == 8


def _cache_entries(stage) -> int:
    """Per-video results the stage has in its cache (complete ones: partial files have another name)."""
    return len(list(stage.cache.folder.glob(f"*/*{stage.cache_suffix}")))


def test_reduced_demo_retrieves_far_above_chance(make_config, run_stages, single_thread):
    # The whole demo dataset and training recipe; only the visual backbone is a tiny CLIP.
    config = make_config(base={"visual": {"parts": {"clip": {"model": "TinyViT-32-test"}}, "size": 64, "fps": 2.0,
                                          "num_workers": 0}})
    evaluate = _evaluate(config)
    run_stages.build([evaluate])
    metrics = json.loads((evaluate.out_dir / "metrics.json").read_text())
    n_videos = metrics["n_videos"]
    assert n_videos == 16 and metrics["n_queries"] >= 48
    chance = {k: 100 * min(k, n_videos) / n_videos for k in (1, 5, 10, 100)}  # R@1 6.25, R@5 31.25, SumR 200
    assert metrics["R@1"] >= 1.5 * chance[1]
    assert metrics["R@5"] >= chance[5] + 12.5
    assert metrics["SumR"] >= sum(chance.values()) + 30
    assert (evaluate.out_dir / "predictions.jsonl").is_file()
