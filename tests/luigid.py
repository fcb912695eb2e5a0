"""A real central scheduler (luigid) for tests, and Luigi workers started against it.

    with luigid_server(tmp_path) as server:              # or the pytest fixture central_scheduler
        worker = start_worker(server, ["Features", "--dataset", str(config)])
        assert worker.wait(timeout=120) == 0
        assert server.count_tasks("DONE")["Features"] == 1

luigid runs with the repository's luigid.cfg, except for delays shortened so that a test sees a killed
worker's task handed out again within seconds: the worker counts as dead after
``worker_disconnect_delay`` seconds without a ping (workers ping every second), and its task is offered
again ``retry_delay`` seconds later.
"""

from __future__ import annotations

import configparser
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Mapping

import pytest

REPO = Path(__file__).resolve().parent.parent
TEST_SCHEDULER_SETTINGS = {"retry_delay": "1", "worker_disconnect_delay": "5"}
_START_TIMEOUT_S = 30.0
_STOP_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class LuigidServer:
    host: str
    port: int
    pid: int
    log_dir: Path  # luigi-server.log (luigid's log), luigid.out, workers' logs by default
    state_path: Path

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/"

    def api(self, method: str, **data) -> dict:
        """The ``response`` of luigid's ``/api/<method>?data=<json>``."""
        query = urllib.parse.urlencode({"data": json.dumps(data)})
        with urllib.request.urlopen(f"{self.url}api/{method}?{query}", timeout=10) as reply:
            return json.load(reply)["response"]

    def tasks(self, status: str = "") -> dict[str, dict]:
        """luigid's tasks by id (all, or those with ``status``: PENDING, RUNNING, DONE, FAILED, DISABLED)."""
        return self.api("task_list", status=status, limit=False)

    def count_tasks(self, status: str = "") -> Counter:
        """How many tasks of each family (``name``) luigid holds, of one ``status`` or of any."""
        return Counter(task["name"] for task in self.tasks(status).values())


def free_port() -> int:
    # The port is free when asked; luigid binds it a moment later (a race other processes rarely win).
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _write_test_config(path: Path, overrides: Mapping[str, str]) -> None:
    config = configparser.ConfigParser(interpolation=None)
    config.read(REPO / "luigid.cfg")
    config["scheduler"].update(overrides)
    with path.open("w") as out:
        config.write(out)


def _wait_until_answering(server: LuigidServer, process: subprocess.Popen) -> None:
    deadline = time.monotonic() + _START_TIMEOUT_S
    while True:
        try:
            server.api("task_list")
            return
        except (urllib.error.URLError, ConnectionError):
            if process.poll() is not None or time.monotonic() > deadline:
                output = (server.log_dir / "luigid.out").read_text()
                raise RuntimeError(f"luigid on port {server.port} did not answer "
                                   f"(exit code {process.poll()}):\n{output}") from None
            time.sleep(0.2)


def _stop(process: subprocess.Popen) -> None:
    process.send_signal(signal.SIGTERM)  # luigid saves its state file and exits
    try:
        process.wait(timeout=_STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@contextmanager
def luigid_server(tmp_path: Path, **scheduler_settings: str) -> Iterator[LuigidServer]:
    """A luigid on 127.0.0.1 and a free port, its state file and logs in ``tmp_path/luigid``, stopped
    by its PID when the block ends, however it ends. ``scheduler_settings`` override the ``[scheduler]``
    settings (strings, as in the file) on top of TEST_SCHEDULER_SETTINGS."""
    log_dir = tmp_path / "luigid"
    log_dir.mkdir(parents=True)
    config = log_dir / "luigid.cfg"
    _write_test_config(config, {**TEST_SCHEDULER_SETTINGS, **scheduler_settings})
    port = free_port()
    state_path = log_dir / "state.pickle"
    command = [str(Path(sys.executable).parent / "luigid"), "--address", "127.0.0.1", "--port", str(port),
               "--state-path", str(state_path), "--logdir", str(log_dir)]
    with (log_dir / "luigid.out").open("wb") as output:
        # cwd: the log dir, so that the repository's luigi.cfg (a client's settings) is not read.
        process = subprocess.Popen(command, cwd=log_dir, env={**os.environ, "LUIGI_CONFIG_PATH": str(config)},
                                   stdout=output, stderr=subprocess.STDOUT)
    try:
        server = LuigidServer("127.0.0.1", port, process.pid, log_dir, state_path)
        _wait_until_answering(server, process)
        yield server
    finally:
        _stop(process)


@pytest.fixture
def central_scheduler(tmp_path) -> Iterator[LuigidServer]:
    """luigid_server(tmp_path) as a fixture; a test module imports it by name."""
    with luigid_server(tmp_path) as server:
        yield server


def start_worker(server: LuigidServer, task_args: list[str], env: Mapping[str, str] | None = None,
                 log_path: Path | None = None) -> subprocess.Popen:
    """One Luigi worker for ``server``, started as every worker is (scripts/luigi_worker.sh: ``--workers 1``,
    keep-alive) from the repository root: ``task_args`` are the task and its flags, ``env`` is added to
    this process's environment. Its output goes to ``log_path`` (default: a new file in server.log_dir).
    The script execs Luigi, so the returned process is the worker itself (its pid is the one to kill)."""
    if log_path is None:
        descriptor, name = tempfile.mkstemp(prefix="worker-", suffix=".log", dir=server.log_dir)
        os.close(descriptor)
        log_path = Path(name)
    worker_env = {**os.environ, **(env or {}), "PRVR_SCHEDULER_URL": server.url}
    with Path(log_path).open("wb") as output:
        return subprocess.Popen([str(REPO / "scripts" / "luigi_worker.sh"), *task_args], cwd=REPO, env=worker_env,
                                stdout=output, stderr=subprocess.STDOUT)
