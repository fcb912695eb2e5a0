"""The dataset stage probes a video's duration once per identity: a rerun for an edited annotation line
probes no video, a replaced video is probed again alone, and a damaged durations file only costs
probing again. Through real Luigi runs of PrepareDataset on real video files; probes are counted by
wrapping the real probe."""

from __future__ import annotations

import json
import shutil

import pytest
from luigi.task_register import Register

import extractors.decode
import tasks
from pipeline.video_cache import DURATIONS_FILE
from test_damaged_outputs import demo_files, files_dataset  # noqa: F401 (fixtures)


@pytest.fixture
def probes(monkeypatch) -> list[str]:
    """The paths the dataset stage probes, in order (the real probe runs)."""
    probed, real_probe = [], extractors.decode.video_duration

    def counted(path, *args, **kwargs):
        probed.append(str(path))
        return real_probe(path, *args, **kwargs)

    monkeypatch.setattr(extractors.decode, "video_duration", counted)
    return probed


def _dataset(config) -> tasks.PrepareDataset:
    Register.clear_instance_cache()
    return tasks.PrepareDataset(dataset=str(config))


def _durations(config) -> dict[str, float]:
    videos = (_dataset(config).out_dir / "videos.jsonl").read_text().splitlines()
    return {record["video_id"]: record["duration"] for record in map(json.loads, videos)}


def _edit_first_query(root) -> None:
    annotations = root / "demo_train_release.jsonl"
    lines = annotations.read_text().splitlines(keepends=True)
    first = json.loads(lines[0])
    first["desc"] += " again"
    annotations.write_text(json.dumps(first) + "\n" + "".join(lines[1:]))


def test_an_edited_annotation_probes_no_video(files_dataset, run_stages, probes):  # noqa: F811
    config, root = files_dataset
    run_stages.build([_dataset(config)])
    videos = _durations(config)
    assert sorted(probes) == sorted({str(path) for path in probes}) and len(probes) == len(videos)

    probes.clear()
    _edit_first_query(root)
    assert run_stages.build([_dataset(config)]) == ["dataset"]
    assert probes == []
    assert _durations(config) == videos
    kept = json.loads((_dataset(config).dataset_dir / DURATIONS_FILE).read_text())
    assert len(kept) == len(videos)  # the last run's entries only


def test_a_replaced_video_alone_is_probed_again(files_dataset, run_stages, probes, make_config):  # noqa: F811
    config, root = files_dataset
    run_stages.build([_dataset(config)])
    durations = _durations(config)
    shorter, longer = sorted(durations, key=durations.get)[0], sorted(durations, key=durations.get)[-1]
    assert durations[shorter] < durations[longer]
    probes.clear()

    shutil.copyfile(root / "videos" / f"{longer}.mp4", root / "videos" / f"{shorter}.mp4")
    # The annotations now disagree with the video's length: the video's own is taken.
    tolerant = make_config({"data": {"source": "files", "root": str(root), "on_problem": {"duration_mismatch": "use_video"}}},
                           name="tolerant.yaml")  # same workdir and dataset name: the same durations file
    assert run_stages.build([_dataset(tolerant)]) == ["dataset"]
    assert probes == [str(root / "videos" / f"{shorter}.mp4")]
    assert _durations(tolerant)[shorter] == pytest.approx(durations[longer], abs=1e-3)


@pytest.mark.parametrize("damage", [b"", b"{not json", b"[1, 2]", b'{"x": "not a number"}'])
def test_a_damaged_durations_file_is_probed_again(files_dataset, run_stages, probes, damage):  # noqa: F811
    config, root = files_dataset
    run_stages.build([_dataset(config)])
    videos = _durations(config)
    (_dataset(config).dataset_dir / DURATIONS_FILE).write_bytes(damage)
    probes.clear()

    _edit_first_query(root)
    assert run_stages.build([_dataset(config)]) == ["dataset"]
    assert len(probes) == len(videos)
    assert _durations(config) == videos
