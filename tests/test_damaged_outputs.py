"""Damaged outputs are not complete: through real Luigi runs, a per-video cache entry or a stage's file
that is truncated, emptied, overwritten or deleted, and an upstream folder a stage reads in place that is
deleted, are noticed, named, and made again by the next run, with the same results as before."""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

import luigi
import numpy as np
import pytest
from luigi.task_register import Register

import tasks
from conftest import make_tiny_config
from pipeline.explain import explain, format_report
from pipeline.stage import verify_published
from pipeline.video_cache import record_path
from storage import FeatureFile

DAMAGES = ("truncated", "zero-length", "garbage", "head overwritten", "deleted")


def damage(path: Path, how: str) -> None:
    """Damages ``path`` as a full disk, a killed copy or a hand would."""
    size = path.stat().st_size
    if how == "truncated":
        os.truncate(path, size // 2)
    elif how == "zero-length":
        os.truncate(path, 0)
    elif how == "garbage":  # other bytes, same size
        path.write_bytes(np.random.default_rng(0).integers(0, 256, size, dtype=np.uint8).tobytes())
    elif how == "head overwritten":
        with open(path, "r+b") as f:
            f.write(b"\xff" * 16)
    elif how == "deleted":
        path.unlink()
    else:
        raise ValueError(how)


def _fresh(cls, config, **params):
    Register.clear_instance_cache()  # a new command: fingerprints and files looked at again
    return cls(dataset=str(config), **params)


def _features(path: Path) -> dict[str, np.ndarray]:
    """Every entry of a feature file by id (``<group>/<id>`` outside the root group)."""
    with FeatureFile(path) as features:
        return {(entry_id if not name else f"{name}/{entry_id}"): rows
                for name in features.groups for entry_id, rows in features.group(name).items()}


def _decoded(task, key: str = "decoded") -> list[str]:
    """The videos a per-video stage decoded (its shards', or with "remade" its own, for lost entries)."""
    return sorted(json.loads((task.out_dir / "manifest.json").read_text())[key])


@pytest.fixture(scope="module")
def demo_files(tmp_path_factory):
    demo = tasks.DemoDataset(dataset=str(make_tiny_config(tmp_path_factory.mktemp("damaged_demo"))))
    assert luigi.build([demo], local_scheduler=True, log_level="WARNING")
    return demo.out_dir


@pytest.fixture
def files_dataset(demo_files, tmp_path, make_config):
    root = tmp_path / "raw"
    shutil.copytree(demo_files, root, ignore=shutil.ignore_patterns("manifest.json", ".lock"))
    return make_config({"data": {"source": "files", "root": str(root)}}, name="files.yaml"), root


def _edit_a_query(root: Path) -> None:
    """A new dataset fingerprint, so a new stage folder for every per-video stage: its shards run."""
    path = root / "demo_train_release.jsonl"
    lines = path.read_text().splitlines()
    first = json.loads(lines[0])
    lines[0] = json.dumps({**first, "desc": first["desc"] + " again"})
    path.write_text("\n".join(lines) + "\n")


def test_damaged_cache_entries_are_named_and_extracted_again(files_dataset, run_stages, caplog):
    config, root = files_dataset
    part = _fresh(tasks.VisualPart, config, part="clip")
    run_stages.build([part])
    before = _features(part.features)
    videos = sorted(before)
    entries = {video["video_id"]: part.cache.path(video) for video in part.videos()}
    hows = {videos[0]: "truncated", videos[1]: "zero-length", videos[2]: "garbage",
            videos[3]: "head overwritten", videos[4]: "record deleted"}
    for video_id, how in hows.items():
        damage(record_path(entries[video_id]), "deleted") if how == "record deleted" else damage(entries[video_id], how)

    _edit_a_query(root)
    with caplog.at_level(logging.WARNING, logger="pipeline"):
        run_stages.build([_fresh(tasks.VisualPart, config, part="clip")])
    part = _fresh(tasks.VisualPart, config, part="clip")
    assert _decoded(part) == sorted(hows)  # the damaged ones only, made again
    assert _decoded(part, "remade") == []  # by the shards (on any worker), not left to the assembly
    after = _features(part.features)
    assert after.keys() == before.keys() and all(np.array_equal(after[key], before[key]) for key in before)
    for video_id in hows:  # each named: the video and its file
        assert any(video_id in record.getMessage() and str(entries[video_id]) in record.getMessage()
                   for record in caplog.records), video_id
    assert all(part.cache.entry_problem(entry) is None for entry in entries.values())


@pytest.mark.parametrize("how", ["truncated", "deleted"])
def test_entries_lost_after_their_shard_ran_are_made_again_by_the_stage(files_dataset, run_stages, how):
    config, _ = files_dataset
    part = _fresh(tasks.VisualPart, config, part="clip")
    run_stages.build([part])
    before = _features(part.features)
    lost = sorted(before)[2]
    damage(part.features, "deleted")  # the stage is assembled again, from shards that already ran
    damage(part.cache.path(next(v for v in part.videos() if v["video_id"] == lost)), how)

    assert run_stages.build([_fresh(tasks.VisualPart, config, part="clip")]) == ["visual-clip"]
    part = _fresh(tasks.VisualPart, config, part="clip")
    assert _decoded(part, "remade") == [lost]
    after = _features(part.features)
    assert all(np.array_equal(after[key], before[key]) for key in before)


# ---- stage folders ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """The tiny demo's graph up to the search index, built once; each test leaves it complete again."""
    config = make_tiny_config(tmp_path_factory.mktemp("damaged_graph"), {"search": {"split": "test"}})
    assert luigi.build([tasks.Index(dataset=str(config))], local_scheduler=True, log_level="WARNING")
    return config


def _graph(config) -> dict[str, tasks.Stage]:
    return {stage.stage: stage for stage in tasks._graph(_fresh(tasks.Index, config))}


def _targets(stages: dict) -> dict[str, Path]:
    """One file of each kind of output: features, an index, a jsonl manifest, a demo video."""
    return {"visual-clip": stages["visual-clip"].features, "queries": stages["queries"].features,
            "index": stages["index"].out_dir / "index.h5", "dataset": stages["dataset"].out_dir / "queries.jsonl"}


def _contents(stages: dict) -> dict[str, bytes]:
    return {name: path.read_bytes() for name, path in _targets(stages).items()}


@pytest.mark.parametrize("shift", range(len(DAMAGES)))
def test_damaged_stage_files_make_their_stage_incomplete_and_are_rebuilt(built, run_stages, shift):
    stages = _graph(built)
    before = {name: _features(path) for name, path in _targets(stages).items() if name in ("visual-clip", "queries")}
    targets = _targets(stages)
    hows = {name: DAMAGES[(i + shift) % len(DAMAGES)] for i, name in enumerate(targets)}  # each, over the shifts
    for name, path in targets.items():
        damage(path, hows[name])
    for name, path in targets.items():
        problems = verify_published(stages[name].out_dir)
        assert problems and str(path) in problems[0], (name, hows[name], problems)
        assert not stages[name].complete()
    report = format_report(explain(_fresh(tasks.Index, built)))
    assert "its outputs are damaged" in report and str(targets["index"]) in report

    ran = run_stages.build([_fresh(tasks.Index, built), tasks.QueryFeatures(dataset=str(built))])
    # Each damaged stage, and VisualFeatures, which reads the part's features file in place; the
    # others' fingerprints are unchanged, so nothing else reruns. (QueryFeatures is asked for: the
    # index needs a trained model, not the query features, and Train is complete.)
    assert ran == sorted({*targets, "visual"}), hows
    stages = _graph(built)
    assert all(verify_published(stage.out_dir) == [] for stage in stages.values())
    for name, features in before.items():
        after = _features(_targets(stages)[name])
        assert after.keys() == features.keys() and all(np.array_equal(after[k], features[k]) for k in features)


def test_a_deleted_upstream_folder_read_in_place_makes_the_reader_incomplete(built, run_stages):
    stages = _graph(built)
    shutil.rmtree(stages["visual-clip"].out_dir)  # VisualFeatures points at its features.h5
    assert not stages["visual"].complete()
    assert str(stages["visual-clip"].features) in verify_published(stages["visual"].out_dir)[0]
    train = _fresh(tasks.Train, built, set="train.max_epochs=1")  # a stage not built yet, reading them
    assert run_stages.build([train]) == ["train", "visual", "visual-clip"]
    assert _decoded(_fresh(tasks.VisualPart, built, part="clip")) == []  # from the cache


def test_a_deleted_demo_video_makes_the_dataset_stage_incomplete(built, run_stages):
    stages = _graph(built)
    video = sorted((stages["demo_data"].out_dir / "videos").glob("*.mp4"))[0]
    damage(video, "deleted")
    assert not stages["demo_data"].complete() and not stages["dataset"].complete()
    # A new part folder decodes the demo's videos where DemoDataset wrote them: both are made again first.
    part = _fresh(tasks.VisualPart, built, set="visual.size=96", part="clip")
    assert run_stages.build([part]) == ["dataset", "demo_data", "visual-clip"]
    assert video.is_file() and json.loads((part.out_dir / "manifest.json").read_text())["failures"] == {}
