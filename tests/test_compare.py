"""`python -m tasks compare`: every registered model evaluated and indexed through Luigi on the same
features, one markdown table whose figures are those of each model's metrics.json and manifests."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

import tasks
from conftest import REPO, make_tiny_config
from models.configs import MODEL_FACTS
from tiny_models import TINY_MODELS_SET


@pytest.fixture(scope="module")
def table(tmp_path_factory):
    path = str(make_tiny_config(tmp_path_factory.mktemp("compare")))
    lines = tasks.compare(path, TINY_MODELS_SET).splitlines()
    header = [cell.strip() for cell in lines[0].strip("|").split("|")]
    rows = {cells[0]: dict(zip(header, cells)) for line in lines[2:]
            if (cells := [cell.strip() for cell in line.strip("|").split("|")])}
    return path, rows


def test_the_table_has_one_row_per_model_with_its_metrics(table):
    path, rows = table
    assert set(rows) == set(MODEL_FACTS)
    for model, row in rows.items():
        compared = tasks.ComparedModel.of(model, path, TINY_MODELS_SET)
        metrics = json.loads((compared.evaluate.out_dir / "metrics.json").read_text())
        for column in ("R@1", "R@5", "R@10", "R@100", "SumR"):
            assert row[column] == f"{metrics[column]:.1f}", (model, column)
        rule = MODEL_FACTS[model].default_span_rule
        assert row["span rule"] == rule == metrics["span_rule"]
        if metrics["moments"].get("n_queries"):
            assert row["IoU>=0.5 R@1"] == f"{metrics['moments']['rules'][rule]['IoU>=0.5 R@1']:.1f}"
        manifest = json.loads((compared.evaluate.out_dir / "manifest.json").read_text())
        assert row["evaluate s"] == f"{manifest['seconds']:.1f}"
        assert float(row["search p50 ms"]) > 0
        if MODEL_FACTS[model].trainable:
            assert int(row["parameters"].replace(",", "")) > 0 and float(row["train s"]) >= 0
        else:
            assert row["train s"] == "-"


def test_the_command_line_compares_the_named_models(table):
    path, rows = table  # everything is built: the command only reads it back
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = subprocess.run([sys.executable, "-m", "tasks", "compare", "--dataset", path, "--set", TINY_MODELS_SET,
                          "--models", "clip-zero-shot,ms-sl"], cwd=REPO, env=env, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr
    body = [line for line in out.stdout.splitlines() if line.startswith("| ") and not line.startswith("| model")]
    assert [line.split("|")[1].strip() for line in body] == ["clip-zero-shot", "ms-sl"]
    assert body[1].split("|")[6].strip() == rows["ms-sl"]["SumR"]


def test_an_unknown_model_is_a_one_line_config_error(table):
    path, _ = table
    out = subprocess.run([sys.executable, "-m", "tasks", "compare", "--dataset", path, "--models", "nope"],
                         cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode != 0 and out.stderr.strip().startswith("config error:") and "nope" in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1
