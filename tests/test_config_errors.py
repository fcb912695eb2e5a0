"""A bad config reaches the user of the real command lines as a few clear lines, with a non-zero exit:
`luigi --module tasks ...` (which builds the graph in its worker) and `python -m tasks`."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO
from pipeline.config import ConfigError, load_config

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
    path = make_config({"model": {"amdnet": {"hidden_size": 0}}})
    result = _run([sys.executable, "-m", "tasks", "--dataset", str(path)])
    _check_short_clear_failure(result, f"{path}: 'model.amdnet.hidden_size' must be >= 1 (got 0)")


@pytest.mark.parametrize("override, message", [
    ("visual.fps=2 train.lr=-1", "--set train.lr=-1: 'train.lr' must be > 0 (got -1)"),  # out of range
    ("train.max_epochs=many", "--set train.max_epochs=many: 'train.max_epochs' must be int, got str 'many'"),
    ("train.lrr=0.1", "--set train.lrr=0.1: unknown key 'train.lrr'; allowed here:"),
    ("text.encoder=bert", "--set text.encoder=bert: 'text.encoder' must be one of ['hf-text', 'clip-text']"),
])  # each run costs ~15 s on the shared machine: the other variants are tested in-process below
def test_a_bad_override_is_reported_as_the_override(make_config, override, message):
    """The value came from --set, not from the file: the message says so, in one line."""
    path = make_config()
    result = _run([str(LUIGI), "--module", "tasks", "FullPipeline", "--dataset", str(path), "--set", override])
    _check_short_clear_failure(result, message)
    assert f"{path}:" not in result.stdout + result.stderr  # not blamed on the file
    assert not (path.parent / "work").exists()


@pytest.mark.parametrize("override, message", [
    ('visual.transcode="{fps: 0}"', "--set visual.transcode={fps: 0}: 'visual.transcode.fps' must be > 0"),
    ('train="{lrr: 1}"', "--set train={lrr: 1}: unknown key 'train.lrr'"),
    ("visual.parts.clip.modle=x", "--set visual.parts.clip.modle=x: unknown key 'visual.parts.clip.modle'"),
    ("data.on_problem.empty_text=keep", "--set data.on_problem.empty_text=keep: 'data.on_problem.empty_text' must "
                                        "be one of ['fail', 'skip']"),
    ("visual.parts.clip={fps:", "--set visual.parts.clip={fps:: the value is not valid YAML"),
    ('train.lr="1e-4', "No closing quotation"),
    ("train.lr=1 train.lr=-2", "--set train.lr=-2: 'train.lr' must be > 0"),  # the last one counts
    ('train.lr=5 train="{lr: -1}" train.lr=-3', "--set train.lr=-3: 'train.lr' must be > 0"),  # even after a section
    ("model.amdnet.hidden_size=30", "tiny.yaml with --set model.amdnet.hidden_size=30: model.amdnet: hidden_size (30) must be divisible"),
])
def test_more_bad_overrides_name_the_override(make_config, override, message):
    with pytest.raises(ConfigError) as error:
        load_config(str(make_config()), override)
    assert message in str(error.value) and len(str(error.value).splitlines()) == 1
    if "with --set" not in message:
        assert "tiny.yaml" not in str(error.value)


def test_a_bad_value_in_the_file_still_names_the_file(make_config):
    path = make_config({"train": {"lr": -1}})
    with pytest.raises(ConfigError, match=rf"^{re.escape(str(path))}: 'train\.lr' must be > 0"):
        load_config(str(path), "visual.fps=2")
