"""The per-video cache keys, tested from their fields, as test_fingerprints.py tests fingerprints from
the config schema: each field changed alone gives another entry (so the old one is not reused), and
what is not a field changes nothing.

- the settings key (``VideoCache.for_stage``): the stage, its code version and every result setting it
  reads, generated from the config schema (a key added there is covered the day it is added);
- the video key (``VideoCache.path``): the video's identity and duration, generated from the fields of
  a real videos.jsonl record.

Some fields are also checked through real extraction runs, counting the videos decoded.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import luigi
import pytest
from luigi.task_register import Register

import tasks
from conftest import make_tiny_config
from pipeline.config import ConfigError, load_config
from test_damaged_outputs import _decoded
from test_fingerprints import PART, candidate_values, current_value, override, schema_keys

# The config keys each per-video stage's results depend on (a prefix decides); every other key must
# leave its cache key as it is.
CACHE_READERS = {
    f"visual-{PART}": ("visual.fps", "visual.size", "visual.parts.", "data.frame_fps"),
    "transcode": ("visual.transcode.",),
}
VIDEO_KEY_FIELDS = {"identity", "duration"}
# Changes test_fingerprints.py's candidates cannot make in the tiny config: another backbone needs its
# model name dropped too; offline, weights can only be a local file (WEIGHTS, beside the config).
WEIGHTS = "weights.pt"
OVERRIDES = {"visual.parts.*.backbone": [f"visual.parts.{PART}.backbone=resnet152 visual.parts.{PART}.model=null"],
             "visual.parts.*.pretrained": [f"visual.parts.{PART}.pretrained={{folder}}/{WEIGHTS}"]}
STAGES = {f"visual-{PART}": lambda config, overrides: tasks.VisualPart(dataset=config, set=overrides, part=PART),
          "transcode": lambda config, overrides: tasks.Transcode(dataset=config, set=overrides)}


@pytest.fixture(scope="module")
def config(tmp_path_factory) -> str:
    folder = tmp_path_factory.mktemp("cache_keys")
    (folder / WEIGHTS).write_bytes(b"never loaded: only the cache keys are computed")
    return str(make_tiny_config(folder))


def cache_folders(config: str, overrides: str = "") -> dict[str, str]:
    """Stage -> the folder of its cache entries (the settings key) with ``overrides``."""
    Register.clear_instance_cache()
    return {name: str(make(config, overrides).cache.folder) for name, make in STAGES.items()}


SETTINGS = [(path, spec) for path, spec in schema_keys() if path.startswith(("visual.", "data.frame_fps"))]


@pytest.mark.parametrize("path, spec", SETTINGS, ids=[path for path, _ in SETTINGS])
def test_each_setting_changes_exactly_the_settings_keys_that_depend_on_it(config, path, spec):
    before = cache_folders(config)
    current = current_value(load_config(config), path)
    folder = Path(config).parent
    for value in [text.format(folder=folder) for text in OVERRIDES.get(path, [])] or \
            [override(path, value) for value in candidate_values(path, spec, current)]:
        try:
            after = cache_folders(config, value)
        except ConfigError:
            continue  # not a valid value here: the next one
        expected = {stage for stage, prefixes in CACHE_READERS.items()
                    if spec.affects_results and path.startswith(prefixes)}
        assert {stage for stage in before if before[stage] != after[stage]} == expected, f"{path} -> {value!r}"
        return
    pytest.fail(f"{path}: no other valid value to test it with; add one to ALTERNATIVES in test_fingerprints.py")


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_the_code_version_is_part_of_the_settings_key(config, stage, monkeypatch):
    before = cache_folders(config)[stage]
    cls = type(STAGES[stage](config, ""))
    monkeypatch.setattr(cls, "version", f"{cls.version}-changed")
    assert cache_folders(config)[stage] != before


def test_each_part_has_its_own_settings_key(config):
    other = override("visual.parts", {PART: load_config(config)["visual"]["parts"][PART], "other": load_config(config)["visual"]["parts"][PART]})
    overrides = f"{other} visual.clip_seconds=1.0"
    Register.clear_instance_cache()
    folders = {tasks.VisualPart(dataset=config, set=overrides, part=name).cache.folder for name in (PART, "other")}
    assert len(folders) == 2


# ---- the video key, and real runs --------------------------------------------------------------------


@pytest.fixture
def files_dataset(tmp_path, make_config, tmp_path_factory):
    demo = tasks.DemoDataset(dataset=str(make_tiny_config(tmp_path_factory.mktemp("cache_keys_demo"))))
    assert luigi.build([demo], local_scheduler=True, log_level="WARNING")
    root = tmp_path / "raw"
    shutil.copytree(demo.out_dir, root, ignore=shutil.ignore_patterns("manifest.json", ".lock"))
    return make_config({"data": {"source": "files", "root": str(root)}}, name="files.yaml"), root


def _part(config, overrides=""):
    Register.clear_instance_cache()
    return tasks.VisualPart(dataset=str(config), set=overrides, part=PART)


def _other_value(value):
    return value + 0.5 if isinstance(value, float) else f"{value}-other"


def test_video_key_fields_and_real_reruns(files_dataset, run_stages, monkeypatch):
    config, root = files_dataset
    run_stages.build([_part(config)])
    assert len(_decoded(_part(config))) == 8
    part = _part(config)
    record = part.videos()[0]
    assert VIDEO_KEY_FIELDS <= set(record)
    for field, value in record.items():  # generated from the record's own fields
        changed = part.cache.path({**record, field: _other_value(value)}) != part.cache.path(record)
        assert changed == (field in VIDEO_KEY_FIELDS), field

    # duration alone: an annotated duration (within data.duration_tolerance of the file's) is the one used
    video_id = record["video_id"]
    for path in root.glob("*_release.jsonl"):
        rows = [json.loads(line) for line in path.read_text().splitlines()]
        rows = [{**row, "duration": row["duration"] + 0.25} if row["vid_name"] == video_id else row for row in rows]
        path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    run_stages.build([_part(config)])
    assert _decoded(_part(config)) == [video_id]

    # a result setting: every video again; the code version: every video again
    run_stages.build([_part(config, "visual.size=96")])
    assert len(_decoded(_part(config, "visual.size=96"))) == 8
    monkeypatch.setattr(tasks.VisualPart, "version", f"{tasks.VisualPart.version}-changed")
    run_stages.build([_part(config)])
    assert len(_decoded(_part(config))) == 8
