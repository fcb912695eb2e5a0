"""Stage plumbing shared by every Luigi task: config, fingerprint, output folder, manifest.

Each stage writes to ``<workdir>/<dataset>/<stage>/<fingerprint>/``. The fingerprint hashes the config
values the stage reads (minus those that cannot change results), the stage's code version and the
fingerprints of the stages it requires; so editing a config reruns exactly the stale stages, and
switching back finds the earlier outputs. ``manifest.json`` is written last: its presence is what marks a
stage complete.
"""

from __future__ import annotations

import hashlib
import json
import platform
import time
from datetime import datetime, timezone
from functools import cached_property
from importlib import metadata
from pathlib import Path
from typing import Any, ClassVar

import luigi

from amdnet.atomic import write_json_atomic
from pipeline.config import load_config, result_subset

_RECORDED_LIBRARIES = ("torch", "torchvision", "decord", "open_clip_torch", "transformers", "h5py",
                       "numpy", "luigi")


class StageFailed(RuntimeError):
    """A stage could not produce a trustworthy output (e.g. too many inputs failed)."""


def hash_payload(payload: dict) -> str:
    canonical = json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def library_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in _RECORDED_LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


class DatasetTask(luigi.Task):
    """Any task of the graph: it works on one dataset config, with optional overrides."""

    dataset = luigi.Parameter(description="a config name from configs/ or a path to a YAML file")
    set = luigi.Parameter(default="", description='config overrides, e.g. "visual.fps=2 train.lr=1e-4"')

    @cached_property
    def config(self) -> dict:
        return load_config(self.dataset, self.set)


class Stage(DatasetTask):
    """A pipeline stage. Subclasses set ``stage``, ``version``, ``reads`` and implement ``build``."""

    stage: ClassVar[str]
    version: ClassVar[str]  # bump when a code change alters this stage's results
    reads: ClassVar[tuple[str, ...]] = ()  # config sections ("visual") or keys ("visual.fps")

    def upstream(self) -> dict[str, "Stage"]:
        """The stages this one requires, by name; ``requires`` returns exactly these."""
        return {}

    def requires(self) -> dict[str, "Stage"]:
        return self.upstream()

    @cached_property
    def fingerprint(self) -> str:
        return hash_payload(self._fingerprint_payload())

    def _fingerprint_payload(self) -> dict:
        return {"stage": self.stage, "version": self.version,
                "config": result_subset(self.config, self.reads),
                "upstream": {name: task.fingerprint for name, task in self.upstream().items()}}

    @property
    def out_dir(self) -> Path:
        return Path(self.config["workdir"]) / self.config["name"] / self.stage / self.fingerprint

    def output(self) -> luigi.LocalTarget:
        return luigi.LocalTarget(str(self.out_dir / "manifest.json"))

    def upstream_dir(self, name: str) -> Path:
        return self.upstream()[name].out_dir

    def run(self) -> None:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        started = datetime.now(timezone.utc)
        clock = time.perf_counter()
        report = self.build(self.out_dir)
        write_json_atomic(self.out_dir / "manifest.json", {
            "stage": self.stage,
            "fingerprint": self.fingerprint,
            "dataset": self.config["name"],
            "config": self.config,
            "fingerprint_inputs": self._fingerprint_payload(),
            "upstream": {name: str(task.out_dir) for name, task in self.upstream().items()},
            "started_at": started.isoformat(),
            "finished_at": datetime.now(timezone.utc).isoformat(),
            "seconds": round(time.perf_counter() - clock, 3),
            "libraries": library_versions(),
            **report,
        })

    def build(self, out_dir: Path) -> dict[str, Any]:
        """Write the stage's outputs into ``out_dir``; return counts and failures for the manifest."""
        raise NotImplementedError
