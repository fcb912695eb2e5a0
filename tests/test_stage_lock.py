"""One writer per stage folder: real processes running the same stage wait for each other, build it
once, take over from one that died, and publish exactly what a single run publishes."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import luigi
import numpy as np
import pytest
import yaml

import tasks
from conftest import REPO, TINY, _merge
from pipeline.stage import LOCK_FILE, stage_lock
from storage import FeatureFile

# Two decoding workers (what a kill must take down too) and 2 fps, so that an extraction lasts long
# enough for a second process to arrive while it runs. The second process differs by a result-neutral
# override (visual.max_failed_fraction): the same stage folder, another command line.
LOCK_TEST = {"visual": {"fps": 2.0, "num_workers": 2}}

# A real `luigi.build` of the visual-clip stage in its own process. The slow imports happen before the
# start signal on stdin, so that tests can start two processes at the same moment.
_RUN_STAGE = """
import sys
import luigi, open_clip, pipeline.features, tasks
print("ready", file=sys.stderr, flush=True)
sys.stdin.readline()
task = tasks.VisualPart(dataset=sys.argv[1], set=sys.argv[2], part="clip")
sys.exit(0 if luigi.build([task], local_scheduler=True) else 1)
"""


@dataclass
class Prepared:
    config: Path
    workdir: Path
    reference: Path  # features.h5 of one undisturbed run


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Prepared:
    """The tiny demo with its dataset stage built, and the visual features of a single in-process run."""
    root = tmp_path_factory.mktemp("stage_lock")
    demo = yaml.safe_load((REPO / "configs" / "demo.yaml").read_text())
    config = root / "tiny.yaml"
    config.write_text(yaml.safe_dump({**_merge(_merge(demo, TINY), LOCK_TEST), "workdir": str(root / "work")}))
    part = tasks.VisualPart(dataset=str(config), part="clip")
    assert luigi.build([part], local_scheduler=True, log_level="WARNING")
    return Prepared(config, root / "work", part.features)


def fresh_workdir(prepared: Prepared, tmp_path: Path) -> str:
    """A workdir holding the prepared upstream stages but no visual features; as a --set override."""
    work = tmp_path / "work"
    shutil.copytree(prepared.workdir, work, ignore=shutil.ignore_patterns("visual-*", "cache"))
    return f"workdir={work}"


class StageProcess:
    """The visual-clip stage of `config` with `overrides`, in a real process; its log in `log_path`.
    It imports at once and starts the stage on `start()`."""

    def __init__(self, config: Path, overrides: str, log_path: Path):
        self.log_path = log_path
        with open(log_path, "w") as log:
            self.process = subprocess.Popen([sys.executable, "-c", _RUN_STAGE, str(config), overrides], cwd=REPO,
                                            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=log, text=True)

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def start(self) -> None:
        self.wait_for("ready", timeout=300)
        self.process.stdin.write("go\n")
        self.process.stdin.close()

    def wait_for(self, pattern: str, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while not re.search(pattern, self.log):
            assert self.process.poll() is None, f"exited before {pattern!r}:\n{self.log[-3000:]}"
            assert time.monotonic() < deadline, f"no {pattern!r} within {timeout} s:\n{self.log[-3000:]}"
            time.sleep(0.05)

    def videos_done(self) -> int:
        counts = re.findall(r"visual features:.*?(\d+)/\d+ \[", self.log)
        return int(counts[-1]) if counts else 0

    def wait_for_videos(self, count: int, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while self.videos_done() < count:
            assert self.process.poll() is None, f"exited before {count} videos:\n{self.log[-3000:]}"
            assert time.monotonic() < deadline, f"not {count} videos within {timeout} s:\n{self.log[-3000:]}"
            time.sleep(0.05)

    def finish(self, timeout: float = 300) -> int:
        try:
            return self.process.wait(timeout)
        finally:
            if self.process.poll() is None:
                self.process.kill()

    @property
    def extracted(self) -> bool:
        return "visual features:" in self.log


def assert_same_features(path: Path, reference: Path) -> None:
    """Same keys, timestamps and features, bit for bit (a resumed run too: each video is encoded in
    batches of its own, whatever else was decoded with it)."""
    features, expected = FeatureFile(path).group(), FeatureFile(reference).group()
    assert sorted(features.ids) == sorted(expected.ids) and len(features) == 8
    for video_id in expected.ids:
        np.testing.assert_array_equal(features.read(video_id), expected.read(video_id))
        np.testing.assert_array_equal(features.read(video_id, "timestamps"), expected.read(video_id, "timestamps"))


def stage_folders(workdir_override: str) -> list[Path]:
    workdir = Path(workdir_override.split("=", 1)[1])
    return sorted(workdir.glob("*/visual-clip/*"))


def test_lock_waits_for_its_holder_names_it_and_outlives_it_not(tmp_path, caplog):
    folder, other = tmp_path / "stage", tmp_path / "other-workdir-stage"
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time\nfrom pipeline.stage import stage_lock\n"
                               "with stage_lock(sys.argv[1]):\n    print('held', flush=True)\n    time.sleep(300)",
                               str(folder)], cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        clock = time.monotonic()
        with stage_lock(other):  # another folder (e.g. the same stage under another workdir): not blocked
            pass
        assert time.monotonic() - clock < 1.0

        acquired = threading.Event()

        def take():
            with stage_lock(folder):
                acquired.set()
                assert json.loads((folder / LOCK_FILE).read_text())["pid"] == os.getpid()

        waiter = threading.Thread(target=take)
        with caplog.at_level("WARNING", logger="pipeline"):
            waiter.start()
            assert not acquired.wait(2.0)  # the holder is alive: wait
            assert f"pid {holder.pid} on " in caplog.text and "waiting for it to finish" in caplog.text
            holder.kill()  # kill -9: the kernel drops the lock with the process
            holder.wait()
            assert acquired.wait(5.0)
            waiter.join()
    finally:
        holder.kill()
        holder.wait()
    assert (folder / LOCK_FILE).read_text() == ""  # released cleanly: names nobody


def test_a_lock_file_left_by_a_dead_process_blocks_nobody(tmp_path):
    folder = tmp_path / "stage"
    dead = subprocess.run([sys.executable, "-c", "import os, sys\nfrom pipeline.stage import stage_lock\n"
                           "with stage_lock(sys.argv[1]):\n    os.kill(os.getpid(), 9)", str(folder)], cwd=REPO)
    assert dead.returncode == -signal.SIGKILL
    assert json.loads((folder / LOCK_FILE).read_text())["pid"] != os.getpid()  # the dead holder's record
    clock = time.monotonic()
    with stage_lock(folder):
        assert json.loads((folder / LOCK_FILE).read_text())["pid"] == os.getpid()
    assert time.monotonic() - clock < 1.0


def test_two_processes_started_together_build_the_stage_once(prepared, tmp_path):
    workdir = fresh_workdir(prepared, tmp_path)
    first = StageProcess(prepared.config, workdir, tmp_path / "first.log")
    second = StageProcess(prepared.config, f"{workdir} visual.max_failed_fraction=0.5", tmp_path / "second.log")
    first.start()
    second.start()
    assert first.finish() == 0, first.log[-3000:]
    assert second.finish() == 0, second.log[-3000:]
    assert [first.extracted, second.extracted].count(True) == 1, "the stage was built twice"
    (folder,) = stage_folders(workdir)
    assert_same_features(folder / "features.h5", prepared.reference)
    manifest = json.loads((folder / "manifest.json").read_text())
    assert (len(manifest["decoded"]), manifest["from_cache"]) == (8, 0)


def test_a_process_arriving_mid_extraction_waits_then_uses_the_result(prepared, tmp_path):
    workdir = fresh_workdir(prepared, tmp_path)
    first = StageProcess(prepared.config, workdir, tmp_path / "first.log")
    second = StageProcess(prepared.config, f"{workdir} visual.max_failed_fraction=0.5", tmp_path / "second.log")
    first.start()
    first.wait_for_videos(1)
    os.kill(first.pid, signal.SIGSTOP)  # paused mid-extraction, holding the folder, until the second waits
    second.start()
    second.wait_for("waiting for it to finish")
    assert f"pid {first.pid} on " in second.log
    os.kill(first.pid, signal.SIGCONT)
    assert first.finish() == 0, first.log[-3000:]
    assert second.finish() == 0, second.log[-3000:]
    assert "built meanwhile by another process; using its output" in second.log and not second.extracted
    (folder,) = stage_folders(workdir)
    assert_same_features(folder / "features.h5", prepared.reference)


def test_the_waiting_process_takes_over_when_the_writer_is_killed(prepared, tmp_path):
    workdir = fresh_workdir(prepared, tmp_path)
    first = StageProcess(prepared.config, workdir, tmp_path / "first.log")
    second = StageProcess(prepared.config, f"{workdir} visual.max_failed_fraction=0.5", tmp_path / "second.log")
    first.start()
    first.wait_for_videos(2)
    os.kill(first.pid, signal.SIGSTOP)  # paused mid-extraction, holding the folder, until the second waits
    second.start()
    second.wait_for("waiting for it to finish")
    os.kill(first.pid, signal.SIGKILL)  # the main process only: its decoding workers must follow it
    assert first.finish() == -signal.SIGKILL
    assert second.finish() == 0, second.log[-3000:]
    assert second.extracted
    (folder,) = stage_folders(workdir)
    assert_same_features(folder / "features.h5", prepared.reference)
    resumed = json.loads((folder / "manifest.json").read_text())["from_cache"]
    assert 1 <= resumed < 8  # what the killed run had finished was kept, not thrown away
