"""Sharded extraction under a real central scheduler (luigid on 127.0.0.1): two workers share one
graph and run each shard once; a worker killed with -9 in the middle of a shard leaves nothing that
looks complete and the other worker finishes the shard; two processes with local schedulers may
duplicate work but corrupt nothing. Every case ends with the features of a single-process run."""

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import luigi
import numpy as np
import pytest

import tasks
from conftest import make_tiny_config
from luigi.task_register import Register
from luigid import REPO, central_scheduler, start_worker  # noqa: F401 (central_scheduler is a fixture)
from pipeline.video_cache import ENTRY_SUFFIX
from storage import FeatureFile

SHARDS = 4


def _part(config, overrides=""):
    Register.clear_instance_cache()  # the stage as a new command sees it
    return tasks.VisualPart(dataset=str(config), set=overrides, part="clip")


def _task_args(config, overrides=""):
    return ["VisualPart", "--part", "clip", "--dataset", str(config), "--set", overrides]


def _features(path: Path) -> dict[str, np.ndarray]:
    return dict(FeatureFile(path).group().items())


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict[str, np.ndarray]:
    """The features of one process, one shard, in a work folder of its own (the tiny demo)."""
    config = make_tiny_config(tmp_path_factory.mktemp("reference"), {"visual": {"shards": 1}})
    assert luigi.build([_part(config)], local_scheduler=True, log_level="WARNING")
    return _features(_part(config).features)


def _assert_same(features: dict, reference: dict) -> None:
    assert features.keys() == reference.keys() and len(features) == 8
    for key, value in reference.items():
        assert np.array_equal(features[key], value), key


def _shard_runs(logs: list[Path]) -> Counter:
    """How many times each shard task was started, from the workers' Luigi logs ("... running   <task>")."""
    started = Counter()
    for log in logs:
        started.update(re.findall(r"running\s+(VisualPartShard\([^)]*\))", log.read_text()))
    return started


def test_two_workers_share_the_shards_and_run_each_once(make_config, tmp_path, central_scheduler, reference):
    config = make_config({"visual": {"shards": SHARDS}})
    logs = [tmp_path / f"worker-{n}.log" for n in range(2)]
    workers = [start_worker(central_scheduler, _task_args(config), log_path=log) for log in logs]
    assert [worker.wait(timeout=600) for worker in workers] == [0, 0], logs[0].read_text()[-3000:]

    runs = _shard_runs(logs)
    assert len(runs) == SHARDS and set(runs.values()) == {1}, runs
    assert central_scheduler.count_tasks("DONE")["VisualPartShard"] == SHARDS
    part = _part(config)
    manifest = json.loads((part.out_dir / "manifest.json").read_text())
    assert sorted(manifest["decoded"]) == sorted(set(manifest["decoded"])) and len(manifest["decoded"]) == 8
    _assert_same(_features(part.features), reference)


def test_a_worker_killed_in_a_shard_leaves_it_to_the_other(make_config, tmp_path, central_scheduler, reference):
    config = make_config({"visual": {"shards": 1}})  # one shard of 8 videos: killed between two of them
    part = _part(config)
    victim = start_worker(central_scheduler, _task_args(config), log_path=tmp_path / "victim.log")
    survivor = start_worker(central_scheduler, _task_args(config), log_path=tmp_path / "survivor.log")
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and victim.poll() is None and not list(part.cache.folder.glob(f"*/*{ENTRY_SUFFIX}")):
        time.sleep(0.02)
    assert victim.poll() is None, "the worker finished before it could be killed"
    if "running   VisualPartShard" not in (tmp_path / "victim.log").read_text():
        victim, survivor = survivor, victim  # the other one took the shard: kill that one
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait()
    assert not list(part.out_dir.glob("shards/*/*/report.json")), "a killed shard must not look complete"

    assert survivor.wait(timeout=600) == 0
    manifest = json.loads((part.out_dir / "manifest.json").read_text())
    assert 1 <= manifest["from_cache"] < 8  # what the killed worker finished was kept, the rest redone
    assert len(manifest["decoded"]) + manifest["from_cache"] == 8
    _assert_same(_features(part.features), reference)


def test_two_local_schedulers_at_once_duplicate_work_but_corrupt_nothing(make_config, tmp_path, reference):
    config = make_config({"visual": {"shards": SHARDS}})
    command = [str(Path(sys.executable).with_name("luigi")), "--module", "tasks", *_task_args(config),
               "--local-scheduler", "--no-lock"]
    processes = [subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
                 for _ in range(2)]
    for process in processes:
        assert process.wait(timeout=600) == 0, process.stderr.read()[-3000:]
    part = _part(config)
    assert len(list(part.out_dir.glob(f"shards/{SHARDS}/*/report.json"))) == SHARDS
    assert not list(part.out_dir.rglob("*.partial")) and not list(part.cache.folder.rglob("*.partial"))
    _assert_same(_features(part.features), reference)
