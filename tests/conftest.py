"""Fixtures shared by the pipeline tests: tiny dataset configs and a record of which stages ran."""

from __future__ import annotations

import copy
from pathlib import Path

import luigi
import pytest
import torch
import yaml

REPO = Path(__file__).resolve().parent.parent

# The demo config, shrunk: few short videos, a tiny CLIP, a tiny AMDNet, few epochs.
TINY = {
    "data": {"demo_videos": 8},
    "visual": {"parts": {"clip": {"model": "TinyViT-32-test"}}, "fps": 1.0, "size": 64, "num_workers": 0,
               "batch_size": 16},
    "model": {"amdnet": {"hidden_size": 32}},
    "train": {"max_epochs": 2, "batch_size": 4, "patience": 2},
}


def _merge(base: dict, extra: dict) -> dict:
    merged = copy.deepcopy(base)
    for key, value in extra.items():
        merged[key] = _merge(merged.get(key, {}), value) if isinstance(value, dict) else value
    return merged


def make_tiny_config(folder: Path, extra: dict | None = None, name: str = "tiny.yaml", base: dict | None = None) -> Path:
    """Write a config derived from configs/demo.yaml (shrunk by ``base``, TINY by default, then ``extra``)
    into ``folder``, with its workdir there unless ``extra`` names one; returns its path."""
    demo = yaml.safe_load((REPO / "configs" / "demo.yaml").read_text())
    config = _merge(_merge(demo, base if base is not None else TINY), extra or {})
    config.setdefault("workdir", str(folder / "work"))
    path = folder / name
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture
def make_config(tmp_path):
    """make_tiny_config in the test's tmp_path."""

    def make(extra: dict | None = None, name: str = "tiny.yaml", base: dict | None = None) -> Path:
        return make_tiny_config(tmp_path, extra, name, base)

    return make


class StageRecorder:
    """Collects the stage names whose ``run`` succeeded, via Luigi's own event hooks."""

    def __init__(self):
        self.ran: list[str] = []

    def __call__(self, task):
        if hasattr(task, "stage"):  # wrapper tasks have no outputs of their own
            self.ran.append(task.stage)

    def build(self, tasks) -> list[str]:
        self.ran.clear()
        assert luigi.build(tasks, local_scheduler=True, log_level="WARNING"), "luigi.build reported a failure"
        return sorted(self.ran)


@pytest.fixture
def run_stages():
    recorder = StageRecorder()
    luigi.Task.event_handler(luigi.Event.SUCCESS)(recorder)
    yield recorder
    luigi.Task.remove_event_handler(luigi.Event.SUCCESS, recorder)


@pytest.fixture
def single_thread():
    """One intra-op thread: on two shared cores it avoids spin-wait contention in small models."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def demo(tmp_path_factory):
    """The tiny demo trained and evaluated, and its test videos indexed: (config path, Index, Evaluate).
    Built once for the search tests (test_search.py, test_search_approximate.py)."""
    import tasks

    root = tmp_path_factory.mktemp("search")
    config = _merge(_merge(yaml.safe_load((REPO / "configs" / "demo.yaml").read_text()), TINY),
                    {"workdir": str(root / "work"), "search": {"split": "test"}})
    path = root / "tiny.yaml"
    path.write_text(yaml.safe_dump(config))
    index, evaluate = tasks.Index(dataset=str(path)), tasks.Evaluate(dataset=str(path))
    assert luigi.build([evaluate, index], local_scheduler=True, log_level="WARNING")
    return path, index, evaluate


@pytest.fixture(scope="session")
def searcher(demo):
    from search.searcher import Searcher

    path, index, _ = demo
    return Searcher(index.out_dir, span_rule=index.config["evaluate"]["span_rule"])
