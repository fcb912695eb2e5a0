"""A bad config reaches the user of the real command lines as a few clear lines, with a non-zero exit:
`luigi --module tasks ...` (which builds the graph in its worker) and `python -m tasks`."""

import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO

LUIGI = Path(sys.executable).parent / "luigi"


def _run(command: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)


def _check_short_clear_failure(result: subprocess.CompletedProcess, message: str) -> None:
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert message in output, output
    assert "Traceback" not in output, output
    mentions = [line for line in output.splitlines() if message in line]
    assert len(mentions) == 1, output
    assert len(output.splitlines()) < 25, output  # Luigi's own summary included


@pytest.mark.parametrize("extra, override, message", [
    ({"train": {"batch_size": 0}}, "", "'train.batch_size' must be >= 1 (got 0)"),
    ({"text": {"model": "pkg:os"}}, "visual.fps=2", "'text': model 'pkg:os': 'os' is not a model package"),
])  # every other variant of each class is tested in-process in test_config.py (a subprocess costs seconds)
def test_luigi_command_line_reports_a_bad_config_in_one_line(make_config, extra, override, message):
    path = make_config(extra)
    result = _run([str(LUIGI), "--module", "tasks", "FullPipeline", "--dataset", str(path), "--set", override])
    _check_short_clear_failure(result, f"{path}: {message}")
    assert not (path.parent / "work").exists()  # no stage ran


def test_a_config_error_found_while_luigi_builds_the_graph_is_one_line_too(make_config):
    """Checks of combinations that need the graph (here: a feature bundle has no subtitles) fail in
    Luigi's worker, which logs a formatted traceback; the user still sees only the message."""
    path = make_config()
    result = _run([str(LUIGI), "--module", "tasks", "FullPipeline", "--dataset", str(path),
                   "--set", "features.source=bundle train.use_subtitles=true"])
    _check_short_clear_failure(result, "features.source=bundle has no subtitle features")


def test_report_command_reports_a_bad_config(make_config):
    path = make_config({"model": {"hidden_size": 0}})
    result = _run([sys.executable, "-m", "tasks", "--dataset", str(path)])
    _check_short_clear_failure(result, f"{path}: 'model.hidden_size' must be >= 1 (got 0)")
