"""Processes: decoding workers die with their parent, SIGTERM leaves a resumable partial file and
exits promptly, and a full disk is reported as such."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import luigi
import pytest
import torch

import tasks
from amdnet.atomic import DiskFullError, atomic_path, write_json_atomic
from amdnet.config import TrainConfig
from models import create_model
from models.checkpoints import save_checkpoint
from pipeline.video_cache import ENTRY_SUFFIX, read_feature_entry
from test_stage_lock import StageProcess, assert_same_features, fresh_workdir, prepared, stage_folders  # noqa: F401


def _children(pid: int) -> list[int]:
    """Processes whose parent is `pid` (Linux /proc)."""
    children = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            state_and_after = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # exited meanwhile
            continue
        if int(state_and_after[1]) == pid:
            children.append(int(stat.parent.name))
    return children


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"  # a zombie is dead
    except OSError:
        return False


def _wait_until_gone(pids: list[int], timeout: float) -> list[int]:
    deadline = time.monotonic() + timeout
    while any(_alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    return [pid for pid in pids if _alive(pid)]


def _running_extraction(prepared, tmp_path) -> tuple[StageProcess, str, list[int]]:
    """An extraction process past its first video, paused (SIGSTOP) so that it is surely mid-extraction
    when the test signals it; the workdir override; its decoding workers."""
    workdir = fresh_workdir(prepared, tmp_path)
    process = StageProcess(prepared.config, workdir, tmp_path / "stage.log")
    process.start()
    process.wait_for_videos(1)
    os.kill(process.pid, signal.SIGSTOP)
    workers = _children(process.pid)
    assert len(workers) >= 2, f"expected two decoding workers, found {workers}"
    return process, workdir, workers


def test_sigterm_stops_promptly_keeps_a_resumable_partial_and_takes_the_workers_along(prepared, tmp_path):
    process, workdir, workers = _running_extraction(prepared, tmp_path)
    clock = time.monotonic()
    os.kill(process.pid, signal.SIGTERM)
    os.kill(process.pid, signal.SIGCONT)
    assert process.finish(timeout=60) != 0
    assert time.monotonic() - clock < 15, "SIGTERM did not stop the extraction promptly"
    assert _wait_until_gone(workers, 5) == []
    assert "SIGTERM" in process.log

    (folder,) = stage_folders(workdir)
    assert not (folder / "manifest.json").exists() and not (folder / "features.h5").exists()
    assert not list(folder.glob("shards/*/*/report.json"))  # the shard is not taken as complete
    rerun = tasks.VisualPart(dataset=str(prepared.config), set=workdir, part="clip")
    entries = list(rerun.cache.folder.glob(f"*/*{ENTRY_SUFFIX}"))
    for entry in entries:  # every finished video's entry reads as it is
        features, attrs = read_feature_entry(entry)
        assert features.shape[0] == len(attrs["timestamps"])
    assert 1 <= len(entries) < 8

    assert luigi.build([rerun], local_scheduler=True, log_level="WARNING")
    assert json.loads((folder / "manifest.json").read_text())["from_cache"] == len(entries)
    assert_same_features(folder / "features.h5", prepared.reference)


def test_decoding_workers_exit_when_their_parent_is_killed(prepared, tmp_path):
    process, _, workers = _running_extraction(prepared, tmp_path)
    os.kill(process.pid, signal.SIGKILL)  # the main process only, as the OOM killer would
    assert process.finish() == -signal.SIGKILL
    assert _wait_until_gone(workers, 5) == [], "decoding workers outlived their parent"


@pytest.fixture
def tiny_disk(tmp_path):
    """A 64 KiB tmpfs, full after a few writes."""
    mount_point = tmp_path / "tiny_disk"
    mount_point.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount_point)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {mounted.stderr.strip()}")
    yield mount_point
    # Lazily: a failed write's traceback may still hold the unlinked temporary file open.
    subprocess.run(["umount", "--lazy", str(mount_point)], check=True)


def test_a_full_disk_is_named_when_a_checkpoint_is_saved(tiny_disk):
    best = tiny_disk / "best.pt"
    best.write_bytes(b"the previous checkpoint")
    model = create_model("amdnet", 512, 512, hidden_size=64)  # ~1 MB of weights: cannot fit
    with pytest.raises(DiskFullError, match=f"no space left on {tiny_disk} ") as error:
        save_checkpoint(best, model, TrainConfig(), (512, 512))
    assert "basic_ios" not in str(error.value) and "while writing best.pt" in str(error.value)
    assert sorted(p.name for p in tiny_disk.iterdir()) == ["best.pt"]  # no temporary file left behind
    assert best.read_bytes() == b"the previous checkpoint"


def test_a_full_disk_is_named_for_plain_files_too(tiny_disk):
    with pytest.raises(DiskFullError, match=f"no space left on {tiny_disk} "):
        write_json_atomic(tiny_disk / "log.json", ["a record of the run"] * 20_000)
    assert list(tiny_disk.iterdir()) == []


def test_other_write_errors_are_not_called_a_full_disk(tmp_path):
    with pytest.raises(RuntimeError, match="a bug, not the disk"):
        with atomic_path(tmp_path / "x.pt") as temporary:
            torch.save(torch.zeros(3), temporary)
            raise RuntimeError("a bug, not the disk")
    with pytest.raises(IsADirectoryError):
        write_json_atomic(tmp_path, {})
