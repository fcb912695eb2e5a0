"""The scheduler a command uses (pipeline.scheduler), luigid through make, and the worker command that
`make worker`, `make workers` and the SLURM script share (scripts/luigi_worker.sh)."""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import luigi.configuration
import luigi.interface
import pytest

from luigid import REPO, LuigidServer, central_scheduler, free_port, start_worker  # noqa: F401 (central_scheduler is a fixture)
from pipeline.scheduler import SCHEDULER_URL_ENV, scheduler_settings, use_requested_scheduler

LUIGI = str(Path(sys.executable).with_name("luigi"))
WORKER_TIMEOUT_S = 120
URL = "http://scheduler.example:8082/"


# ---- which scheduler: the decision ----

def test_no_flag_and_no_variable_keep_the_local_scheduler():
    assert scheduler_settings(["--module", "tasks", "Features", "--dataset", "demo"], {}) == {}
    assert scheduler_settings(["Features"], {SCHEDULER_URL_ENV: ""}) == {}


@pytest.mark.parametrize("flags", [["--scheduler-host", "node7"], ["--scheduler-port", "9000"],
                                   ["--scheduler-url", URL], ["--scheduler-host=node7"],
                                   ["--scheduler-host", "node7", "--scheduler-port", "9000"]])
def test_a_scheduler_flag_selects_the_central_scheduler(flags):
    # Luigi builds the address from the flags themselves; only the local scheduler is switched off.
    argv = ["--module", "tasks", "Features", *flags, "--dataset", "demo"]
    assert scheduler_settings(argv, {}) == {"local_scheduler": "false"}


def test_the_variable_selects_the_central_scheduler_at_its_url():
    assert scheduler_settings(["Features"], {SCHEDULER_URL_ENV: URL}) == {"local_scheduler": "false",
                                                                         "scheduler_url": URL}


def test_command_line_flags_take_precedence_over_the_variable():
    argv = ["Features", "--scheduler-host", "node7"]
    assert scheduler_settings(argv, {SCHEDULER_URL_ENV: URL}) == {"local_scheduler": "false"}
    assert scheduler_settings(["Features", "--local-scheduler"], {SCHEDULER_URL_ENV: URL}) == {}


def test_local_scheduler_with_a_scheduler_flag_is_refused():
    with pytest.raises(SystemExit, match="--local-scheduler contradicts --scheduler-port"):
        scheduler_settings(["Features", "--local-scheduler", "--scheduler-port", "9000"], {})


def test_other_arguments_are_left_alone():
    # A value that merely contains a flag's name, and a longer flag, are not scheduler flags.
    argv = ["Features", "--set", "name=--scheduler-host", "--scheduler-hostname", "x"]
    assert scheduler_settings(argv, {}) == {}


@pytest.fixture
def core_config():
    """Luigi's config with the [core] keys the test changes restored afterwards (one config per process)."""
    config = luigi.configuration.get_config()
    saved = {key: config.get("core", key, None) for key in ("local_scheduler", "scheduler_url")}
    yield config
    for key, value in saved.items():
        if value is None:
            config.remove_option("core", key)
        else:
            config.set("core", key, value)


def test_luigi_reads_the_settings_where_it_chooses_its_scheduler(core_config, monkeypatch):
    # luigi.interface.core is what _schedule_and_run asks, after `--module tasks` has been imported.
    core_config.set("core", "local_scheduler", "true")
    monkeypatch.setattr(sys, "argv", ["luigi", "--module", "tasks", "Features"])
    monkeypatch.setenv(SCHEDULER_URL_ENV, URL)
    use_requested_scheduler()
    chosen = luigi.interface.core()
    assert (chosen.local_scheduler, chosen.scheduler_url) == (False, URL)


# ---- the same command with and without luigid ----

def _dead_scheduler_address(tmp_path) -> dict[str, str]:
    """An environment in which Luigi's default central scheduler address is a port nobody listens on,
    tried once: a command that used a central scheduler would fail there at once."""
    config = tmp_path / "dead-scheduler.cfg"
    config.write_text(f"[core]\nscheduler_port = {free_port()}\nrpc_retry_attempts = 1\nrpc_retry_wait = 0\n")
    env = {key: value for key, value in os.environ.items() if key != SCHEDULER_URL_ENV}
    return {**env, "LUIGI_CONFIG_PATH": str(config)}


def test_a_worker_runs_its_tasks_through_luigid_and_a_plain_command_needs_none(make_config, tmp_path,
                                                                               central_scheduler):
    config = str(make_config())
    task = ["PrepareDataset", "--dataset", config]
    log = tmp_path / "worker.log"
    worker = start_worker(central_scheduler, task, log_path=log)
    assert worker.wait(timeout=WORKER_TIMEOUT_S) == 0, log.read_text()[-3000:]
    done = central_scheduler.count_tasks("DONE")
    assert (done["DemoDataset"], done["PrepareDataset"]) == (1, 1)  # luigid scheduled them: it took effect

    plain = subprocess.run([LUIGI, "--module", "tasks", *task], cwd=REPO, env=_dead_scheduler_address(tmp_path),
                           capture_output=True, text=True, timeout=WORKER_TIMEOUT_S)
    assert plain.returncode == 0, plain.stderr


# ---- luigid and workers through make, and the SLURM script ----

def _make(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    # -o: never rebuild the virtualenv from a test, even if pyproject.toml is newer than its stamp.
    return subprocess.run(["make", "-s", "-o", ".venv/.installed", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=60, env={**os.environ, **(env or {})})


def _eventually(condition, timeout_s: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)
    return True


def _answers_empty(server: LuigidServer) -> bool:
    try:
        return server.tasks() == {}
    except OSError:  # not listening yet
        return False


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False


def test_make_luigid_serves_saves_its_state_and_stops_by_its_pid_file(tmp_path):
    port, folder = free_port(), tmp_path / "luigid"
    pid_file = folder / "luigid.pid"
    started = _make("luigid", f"SCHEDULER_PORT={port}", f"LUIGID_DIR={folder}")
    assert started.returncode == 0, started.stderr
    # make returns when luigid has detached, before the daemon writes its pid file and listens.
    assert _eventually(lambda: pid_file.exists() and pid_file.read_text().strip().isdigit())
    pid = int(pid_file.read_text())
    try:
        assert _eventually(lambda: _answers_empty(LuigidServer("127.0.0.1", port, pid, folder, folder / "state")))
    finally:
        stopped = _make("luigid-stop", f"LUIGID_DIR={folder}")
        if not _eventually(lambda: not _running(pid)):
            os.kill(pid, signal.SIGKILL)
            pytest.fail("make luigid-stop left luigid running")
    assert stopped.returncode == 0, stopped.stderr
    assert (folder / "state.pickle").exists() and not pid_file.exists()


WORKER_SETTINGS = {"TASK": "VisualFeatures", "DATASET": "/data/my set.yaml", "SET": "visual.fps=2 train.lr=1e-4",
                   "SCHEDULER_HOST": "login1", "SCHEDULER_PORT": "8099"}


def test_the_slurm_script_runs_the_command_make_worker_runs():
    make_vars = [f"{key}={value}" for key, value in WORKER_SETTINGS.items()]
    by_make = _make("worker", "GPU=1", *make_vars, env={"PRVR_DRY_RUN": "1"})
    by_slurm = subprocess.run(["bash", "scripts/slurm_extract.sbatch"], cwd=REPO, capture_output=True, text=True,
                              env={**os.environ, **WORKER_SETTINGS, "CUDA_VISIBLE_DEVICES": "1",
                                   "PRVR_DRY_RUN": "1", "SLURM_SUBMIT_DIR": str(REPO)}, timeout=60)
    assert by_make.returncode == by_slurm.returncode == 0, by_make.stderr + by_slurm.stderr
    assert by_make.stdout == by_slurm.stdout
    assert shlex.split(by_make.stdout) == [
        "CUDA_VISIBLE_DEVICES=1", ".venv/bin/luigi", "--module", "tasks", "VisualFeatures",
        "--dataset", "/data/my set.yaml", "--set", "visual.fps=2 train.lr=1e-4",
        "--scheduler-url", "http://login1:8099/", "--workers", "1", "--worker-keep-alive", "--no-lock",
        "--retcode-already-running", "0", "--retcode-not-run", "0"]


def test_make_workers_starts_one_worker_per_gpu(tmp_path):
    make_vars = [f"{key}={value}" for key, value in WORKER_SETTINGS.items()]
    started = _make("workers", "GPUS=0 3", f"LUIGID_DIR={tmp_path}", *make_vars, env={"PRVR_DRY_RUN": "1"})
    assert started.returncode == 0, started.stderr
    single = _make("worker", "GPU=0", *make_vars, env={"PRVR_DRY_RUN": "1"}).stdout
    assert (tmp_path / "worker-0.log").read_text() == single
    assert (tmp_path / "worker-3.log").read_text() == single.replace("CUDA_VISIBLE_DEVICES=0", "CUDA_VISIBLE_DEVICES=3")
