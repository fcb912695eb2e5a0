"""Dataset configs: one YAML file per dataset, validated against a schema before any work starts.

A config is a nested dict of plain values. The schema below is the single description of every key:
its type, its default (or that it is required) and whether it can change a stage's results. Keys that
cannot (devices, inference batch sizes, worker counts) are left out of stage fingerprints, so changing
them reruns nothing.

Overrides use one scheme everywhere: ``section.key=value`` pairs, separated by spaces (for example
``--set "visual.fps=2 train.max_epochs=5"`` on the Luigi command line, or ``SET=...`` for make). Values
are parsed as YAML scalars, then validated exactly like the file.
"""

from __future__ import annotations

import dataclasses
import os
import shlex
import typing
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml

from amdnet.config import RESULT_NEUTRAL_TRAIN_FIELDS, Range, TrainConfig, field_range
from extractors.names import check_extractor
from models.configs import DEFAULT_MODEL, MODEL_FACTS, check_same_clip, model_facts
from pipeline.backbones import part_settings, text_encoder_options, visual_extractor_options
from pipeline.datasets import DEFAULT_DURATION_TOLERANCE_S, DEFAULT_PROBLEM_POLICY, FORMATS, PROBLEM_ACTIONS

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"

_REQUIRED = object()
# Decoding worker processes by default: one per CPU core this process may use (a GPU model
# outruns a single decoding worker many times over).
_CPU_CORES = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
# Frame rates above this are mistakes (1e9 once got a run killed for memory); clip backbones want <= 30.
MAX_FPS = 120.0
# Frame sides in pixels: below MIN_SIDE no backbone has anything to see, above MAX_SIDE frames are 8K.
MIN_SIDE, MAX_SIDE = 16, 8192


class ConfigError(ValueError):
    """A config file or override is invalid; the message names the file and the key path."""


@dataclass(frozen=True)
class Key:
    types: tuple[type, ...]
    default: Any = _REQUIRED
    affects_results: bool = True
    choices: tuple | None = None
    range: Range | None = None  # numeric bounds; null values (where allowed) are not checked

    @property
    def required(self) -> bool:
        return self.default is _REQUIRED


@dataclass(frozen=True)
class NamedSections:
    """A mapping from names the user chooses to sections that all follow ``schema``."""

    schema: dict


@dataclass(frozen=True)
class ModelSection:
    """The model section: ``name``, a registered model (models/configs.py), and one subsection of options
    per model, named after it, whose keys, defaults and ranges are that model's options dataclass. Every
    subsection is checked; only the named model's counts for results (a config may carry settings for
    several models, and ``--set model.name=...`` switches between them)."""

    @property
    def schema(self) -> dict:
        return {"name": _key(str, DEFAULT_MODEL, choices=tuple(MODEL_FACTS)),
                **{name: _section_from_dataclass(facts.config, non_result=set()) for name, facts in MODEL_FACTS.items()}}

    def result_schema(self, name: str) -> dict:
        schema = self.schema
        return {"name": schema["name"], name: schema[name]}


def _key(types, default=_REQUIRED, affects_results=True, choices=None, **bounds) -> Key:
    """``bounds``: the numeric range, as ``minimum``/``maximum`` (inclusive), ``above``/``below`` (exclusive)."""
    types = types if isinstance(types, tuple) else (types,)
    return Key(types, default, affects_results, choices, Range(**bounds) if bounds else None)


def _section_from_dataclass(cls, non_result: set[str]) -> dict[str, Key]:
    """The model and train sections are the models' option dataclasses and TrainConfig themselves: one
    source of truth."""
    hints = typing.get_type_hints(cls)
    section = {}
    for field in dataclasses.fields(cls):
        hint = hints[field.name]
        origin, args = typing.get_origin(hint), typing.get_args(hint)
        if origin is typing.Literal:
            types, choices = (type(args[0]),), args
        else:
            types, choices = (args if origin else (hint,)), None
        section[field.name] = Key(types, field.default, field.name not in non_result, choices, field_range(field))
    return section


OptStr = (str, type(None))
OptFloat = (float, type(None))

SCHEMA: dict[str, Any] = {
    "name": _key(str),
    "workdir": _key(str, "work", affects_results=False),
    "data": {
        # "files": read the annotation files below; "demo": generate the embedded demo dataset first;
        # "folder": every video under data.root (nested folders too), no annotations: a collection to search.
        "source": _key(str, "files", choices=("files", "demo", "folder")),
        "format": _key(str, "tvr", choices=FORMATS),
        "root": _key(OptStr, None),  # relative to the repository root; the paths below are relative to it
        # One file per split (null: none). train and test must be given, even if as null: a custom
        # queries file may carry its own split column, listed under the split its rows default to.
        "annotations": {
            "train": _key(OptStr),
            "val": _key(OptStr, None),
            "test": _key(OptStr),
        },
        "subtitles": _key(OptStr, None),  # TVR's subtitle file; custom data: .srt/.vtt next to the videos
        "videos": _key(str, "videos"),
        "video_ext": _key((str, list), ".mp4"),  # or a list of extensions tried in order
        # The frame rate of videos given as folders of JPEG/PNG frames.
        "frame_fps": _key(float, 3.0, above=0, maximum=MAX_FPS),
        # Seconds an annotated duration (TVR, ActivityNet) may differ from the video's own: on_problem.duration_mismatch.
        "duration_tolerance": _key(float, DEFAULT_DURATION_TOLERANCE_S, minimum=0),
        "on_problem": {problem: _key(str, DEFAULT_PROBLEM_POLICY[problem], choices=actions)
                       for problem, actions in PROBLEM_ACTIONS.items()},
        "demo_videos": _key(int, 48, minimum=4),  # fewer leave the val split (a sixth of them) empty
        "demo_seed": _key(int, 0, minimum=0),
        # What a video's cached features are keyed by (pipeline/video_cache.py): "file" (path relative to
        # data.root, size, modification time) or "content" (a hash of its bytes; slower, survives copies).
        "video_identity": _key(str, "file", choices=("file", "content")),
    },
    # Where the features come from: "extract" runs the feature stages on the videos; "bundle" imports
    # the PRVR feature bundle (MS-SL's release: TextData/ and FeatureData/) instead, no videos needed.
    "features": {
        "source": _key(str, "extract", choices=("extract", "bundle")),
        "bundle_dir": _key(str, "."),  # relative to data.root: holds TextData/ and FeatureData/
        "collection": _key(OptStr, None),  # the name in the bundle's file names; null: the config's name
        # "clip": FeatureData/new_clip_vit_32_<collection>_vid_features.hdf5; anything else names a
        # BigFile folder under FeatureData/ (e.g. i3d_resnet).
        "video": _key(str, "clip"),
        "query": _key(str, "clip", choices=("clip", "roberta")),
        # Feature rows per second of video in the bundle (it records no times): timestamps and durations.
        "rows_per_second": _key(float, 1 / 1.5, above=0),
    },
    "visual": {
        # The sampling recipe shared by every part: frames per second, short side (centre crop).
        "fps": _key(float, 3.0, above=0, maximum=MAX_FPS),
        "size": _key(int, 224, minimum=MIN_SIDE, maximum=MAX_SIDE),
        # null: one feature per sampled frame; a number: every part pooled onto clips of that length.
        "clip_seconds": _key(OptFloat, None, above=0),
        # One or more backbones; several are concatenated on the clip grid, L2-normalised per part.
        "parts": NamedSections({
            "backbone": _key(str),
            "model": _key(OptStr, None),
            "pretrained": _key(OptStr, None),
            "seed": _key(int, 0, minimum=0),
            # null: visual.fps; clip backbones often want more frames.
            "fps": _key(OptFloat, None, above=0, maximum=MAX_FPS),
            "pool": _key(str, "mean", choices=("mean", "max")),
            "clip_len": _key(int, 16, minimum=1, maximum=1024),  # clip backbones: frames per window
            "clip_stride": _key((int, type(None)), None, minimum=1),  # frames between windows; null: clip_len
        }),
        # Re-encode every video once to a small proxy that all parts decode (ffmpeg).
        "transcode": {
            "enabled": _key(bool, False),
            "fps": _key(float, 25.0, above=0, maximum=MAX_FPS),
            "short_side": _key(int, 256, minimum=MIN_SIDE, maximum=MAX_SIDE),
        },
        "batch_size": _key(int, 64, affects_results=False, minimum=1),
        "num_workers": _key(int, _CPU_CORES, affects_results=False, minimum=0),
        "device": _key(str, "auto", affects_results=False),
        "max_failed_fraction": _key(float, 0.1, affects_results=False, minimum=0, maximum=1),
        # Shard tasks per per-video stage (pipeline/sharding.py); null: one per 100 videos, at most 1000.
        "shards": _key((int, type(None)), None, affects_results=False, minimum=1, maximum=100000),
    },
    "text": {
        # hf-text: transformers encoders (token features); clip-text: one CLIP vector per text.
        "encoder": _key(str, "hf-text", choices=("hf-text", "clip-text")),
        "model": _key(str, "roberta-base"),
        "pretrained": _key(OptStr, None),  # clip-text only: open_clip tag or checkpoint path
        "seed": _key(int, 0, minimum=0),  # clip-text only: random init when pretrained is null
        "layer": _key(int, -1, choices=(-1, -2)),
        "max_length": _key(int, 64, minimum=1),
        "strip_special_tokens": _key(bool, False),
        "batch_size": _key(int, 64, affects_results=False, minimum=1),
        "device": _key(str, "auto", affects_results=False),
    },
    "model": ModelSection(),
    "train": _section_from_dataclass(TrainConfig, non_result=set(RESULT_NEUTRAL_TRAIN_FIELDS)),
    "evaluate": {
        "split": _key(str, "test", choices=("val", "test")),
        # How a [start, end] moment is chosen in a retrieved video; search uses it too. null: the model's
        # default (the first of its span rules, models/configs.py), filled in when the config is loaded.
        "span_rule": _key(OptStr, None),
        "chunk_size": _key(int, 1024, affects_results=False, minimum=1),
        "device": _key(str, "auto", affects_results=False),
    },
    # Searching a collection with the trained model (search/): the Index stage and the server.
    "search": {
        # Which videos the Index stage encodes: null, every video of the collection; a split name, the
        # videos with queries in that split (the videos Evaluate ranks).
        "split": _key(OptStr, None, choices=(None, "train", "val", "test")),
        "k": _key(int, 10, affects_results=False, minimum=1),  # results per query by default
        "host": _key(str, "127.0.0.1", affects_results=False),
        "port": _key(int, 8000, affects_results=False, minimum=0, maximum=65535),
        "device": _key(str, "cpu", affects_results=False),
        # Exact scoring of every clip, or a FAISS first stage + exact re-scoring (search/approximate.py);
        # auto: exact up to exact_max_videos (exact p50 is 58 ms at 10k videos on 2 cores), approximate above.
        "method": _key(str, "auto", choices=("auto", "exact", "approximate")),
        "exact_max_videos": _key(int, 10_000, minimum=1),
        "approximate": {
            "segment_clips": _key(int, 8, minimum=1, maximum=1024),
            "nprobe": _key(int, 768, minimum=1, maximum=65_536),
            "candidates": _key(int, 512, minimum=1, maximum=100_000),
            "memory_gb": _key(float, 4.0, above=0),
        },
    },
}


def load_config(dataset: str, overrides: str = "") -> dict:
    """Load ``configs/<dataset>.yaml`` (or a YAML path), apply overrides, validate, fill defaults."""
    return _load_config_cached(dataset, overrides)


@lru_cache(maxsize=64)
def _load_config_cached(dataset: str, overrides: str) -> dict:
    path = resolve_config_path(dataset)
    raw = read_config_file(path)
    origins = _Origins(path)
    for item, (key_path, value) in zip(_override_items(overrides), parse_overrides(overrides)):
        _set_path(raw, key_path, value, f"--set {item}")
        origins.overrides.pop(key_path, None)  # the last override of a key is the one that counts
        origins.overrides[key_path] = item
    config = _validate(raw, SCHEMA, origins, prefix="")
    if len(config["visual"]["parts"]) > 1 and config["visual"]["clip_seconds"] is None:
        raise ConfigError(f"{origins.of_section('visual')}: several visual.parts need a common grid: "
                          f"set visual.clip_seconds")
    checks = {f"model.{name}": (lambda config, name=name: model_facts(name).config(**config["model"][name]))
              for name in MODEL_FACTS}
    for section, build in {**checks, "train": train_config}.items():
        try:  # the dataclasses check value ranges and combinations themselves
            build(config)
        except ValueError as err:
            raise ConfigError(f"{origins.of_section(section)}: {section}: {err}") from None
    _check_model_inputs(config, origins)
    if config["features"]["source"] == "extract":
        _check_backbones(config, path)
    return config


def read_config_file(path: Path, extended_by: tuple[Path, ...] = ()) -> dict:
    """The raw sections of a config file, over those of the config it ``extends`` (if it says so).

    ``extends: tvr`` names a config as --dataset does (configs/tvr.yaml); ``extends: ../base.yaml`` is
    a file relative to this one. The base is read first (it may extend another) and this file's
    sections are merged over it key by key, except named sections (visual.parts), which replace the
    base's as a whole: a visual recipe is one choice of backbones. ``name`` is inherited with the rest,
    so a preset of a dataset (configs/models/ms-sl/tvr.yaml) shares its work folder and features."""
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections")
    base = raw.pop("extends", None)
    if base is not None:
        base_path = _base_path(path, base)
        chain = (*extended_by, path)
        if any(base_path.resolve() == seen.resolve() for seen in chain):
            cycle = " -> ".join(str(seen) for seen in (*chain, base_path))
            raise ConfigError(f"{path}: 'extends' makes a cycle: {cycle}")
        raw = _merge_sections(read_config_file(base_path, chain), raw, SCHEMA)
    raw.setdefault("name", path.stem)
    return raw


def _base_path(path: Path, base: Any) -> Path:
    """The file that ``extends: <base>`` in ``path`` names: a path relative to it, or a config name."""
    if not isinstance(base, str) or not base:
        raise ConfigError(f"{path}: 'extends' must name a config (tvr) or a YAML file relative to it, got {base!r}")
    if Path(base).suffix in (".yaml", ".yml"):
        candidate = path.parent / base
        if not candidate.is_file():
            raise ConfigError(f"{path}: 'extends': no config file {candidate}")
        return candidate
    try:
        return resolve_config_path(base)
    except ConfigError as err:
        raise ConfigError(f"{path}: 'extends': {err}") from None


def _merge_sections(base: dict, over: dict, schema: Any) -> dict:
    """``over`` merged into ``base`` key by key, recursing into the sections of ``schema``."""
    merged = dict(base)
    for key, value in over.items():
        spec = schema.get(key) if isinstance(schema, dict) else None
        spec = spec.schema if isinstance(spec, ModelSection) else spec
        if isinstance(spec, dict) and isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge_sections(merged[key], value, spec)
        else:  # a value, named sections, or something _validate will refuse with the file's name
            merged[key] = value
    return merged


def _check_model_inputs(config: dict, origins: "_Origins") -> None:
    """The features the model reads are the ones the config makes, and its span rule is one it has.

    A model that compares CLIP vectors directly (clip-zero-shot) reads the text tower of the visual
    features' own CLIP: when the text section names another encoder (the recipe of a trained model),
    it is replaced by that CLIP's text settings; a text section naming a different CLIP is refused."""
    name = config["model"]["name"]
    facts = model_facts(name)
    if facts.same_clip:
        if config["text"]["encoder"] != "clip-text":
            config["text"] = _visual_clip_text(config)
        try:
            check_same_clip(config)
        except ValueError as err:
            raise ConfigError(f"{origins.of_section('text')}: {err}") from None
    elif config["train"]["query_input"] not in facts.query_inputs:
        raise ConfigError(f"{origins.of('train.query_input')}: model {name!r} reads query input "
                          f"{' or '.join(facts.query_inputs)}, but train.query_input is "
                          f"{config['train']['query_input']!r}: set train.query_input: {facts.query_inputs[0]}")
    rule = config["evaluate"]["span_rule"]
    if rule is None:
        config["evaluate"]["span_rule"] = facts.default_span_rule
    elif rule not in facts.span_rules:
        raise ConfigError(f"{origins.of('evaluate.span_rule')}: model {name!r} has no span rule {rule!r}; "
                          f"choose one of {', '.join(facts.span_rules)}")


def _visual_clip_text(config: dict) -> dict:
    """The text section of the visual part's CLIP (its text tower), when there is exactly one CLIP part."""
    parts = list(config["visual"]["parts"].values())
    if len(parts) != 1 or parts[0]["backbone"] != "clip":
        return config["text"]  # check_same_clip says what is wrong
    part = parts[0]
    settings = {"encoder": "clip-text", "model": part["model"], "pretrained": part["pretrained"],
                "seed": part.get("seed", 0)}
    return _validate(settings, SCHEMA["text"], _Origins(Path("<derived from visual.parts>")), "text.")


def _check_backbones(config: dict, path: Path) -> None:
    """The backbones and model names the feature stages will build exist, and so do the local weights
    files and model folders they name: a typo fails here, not when extraction starts after other
    stages ran. Nothing is loaded and no backbone imported (extractors/names.py reads the names from
    files): each process that loads a config pays milliseconds for this, not seconds."""
    checks = {f"visual.parts.{name}": (visual_extractor_options(part_settings(config["visual"], name)),
                                       ("frames", "clips")) for name in config["visual"]["parts"]}
    checks["text"] = (text_encoder_options(config["text"]), ("text",))
    for key_path, ((backbone, options), kinds) in checks.items():
        try:
            check_extractor(backbone, kinds, **options)
        except (KeyError, TypeError, ValueError) as err:
            raise ConfigError(f"{path}: {key_path!r}: {err.args[0]}") from None


def resolve_config_path(dataset: str) -> Path:
    """A YAML path as given, or a config name: ``demo`` is configs/demo.yaml, ``models/ms-sl/tvr`` a
    preset under configs/models/."""
    candidate = Path(dataset)
    if candidate.suffix in (".yaml", ".yml"):
        if not candidate.is_file():
            raise ConfigError(f"config file not found: {candidate}")
        return candidate
    path = CONFIG_DIR / f"{dataset}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))
        raise ConfigError(f"unknown dataset {dataset!r}: no {path}; known: {', '.join(known)}")
    # Messages name it as the user would: configs/demo.yaml from the repository root.
    return Path(os.path.relpath(path)) if path.is_relative_to(Path.cwd()) else path


def parse_overrides(overrides: str) -> list[tuple[str, Any]]:
    pairs = []
    for item in _override_items(overrides):
        key_path, sep, text = item.partition("=")
        if not sep or not key_path:
            raise ConfigError(f"override {item!r}: expected section.key=value")
        try:
            pairs.append((key_path, yaml.safe_load(text) if text else None))
        except yaml.YAMLError as err:
            problem = getattr(err, "problem", None) or type(err).__name__
            raise ConfigError(f"--set {item}: the value is not valid YAML ({problem}); quote a value "
                              f"holding spaces, e.g. --set \"{key_path}={{a: 1, b: 2}}\"") from None
    return pairs


def _override_items(overrides: str) -> list[str]:
    """The ``key=value`` items of an overrides string, split as a shell would."""
    try:
        return shlex.split(overrides or "")
    except ValueError as err:  # an unclosed quote
        raise ConfigError(f"--set {overrides}: {err}") from None


@dataclass
class _Origins:
    """Where each value of a config came from, for messages: an override (``--set train.lr=-1``) or
    the config file."""

    path: Path
    overrides: dict[str, str] = dataclasses.field(default_factory=dict)  # key path -> "key=value" as given

    def of(self, key_path: str) -> str:
        """``--set <item>`` when an override set ``key_path`` or a section holding it, else the file."""
        for key, item in reversed(self.overrides.items()):
            if key_path == key or key_path.startswith(key + "."):
                return f"--set {item}"
        return str(self.path)

    def of_section(self, section: str) -> str:
        """The file, and the overrides of ``section`` if any (a check of several of its keys failed)."""
        items = [item for key, item in self.overrides.items() if key == section or key.startswith(section + ".")]
        return f"{self.path} with --set {' '.join(items)}" if items else str(self.path)


def _set_path(raw: dict, key_path: str, value: Any, where: str) -> None:
    node, schema = raw, SCHEMA
    *parents, leaf = key_path.split(".")
    for i, part in enumerate(parents):
        schema = schema.schema if isinstance(schema, NamedSections) else schema.get(part)
        schema = schema.schema if isinstance(schema, ModelSection) else schema
        if not isinstance(schema, (dict, NamedSections)):
            raise ConfigError(f"{where}: unknown section {'.'.join(parents[: i + 1])!r}")
        node = node.setdefault(part, {})
    if isinstance(schema, NamedSections) or leaf not in schema:
        allowed = "" if isinstance(schema, NamedSections) else f"; allowed here: {', '.join(sorted(schema))}"
        raise ConfigError(f"{where}: unknown key {key_path!r}{allowed}")
    node[leaf] = value


def _validate(raw: dict, schema: dict, origins: _Origins, prefix: str) -> dict:
    unknown = sorted(set(raw) - set(schema))
    if unknown:
        key_path = prefix + unknown[0]
        raise ConfigError(f"{origins.of(key_path)}: unknown key {key_path!r}; allowed here: {', '.join(sorted(schema))}")
    result = {}
    for name, spec in schema.items():
        key_path = prefix + name
        if isinstance(spec, NamedSections):
            value = raw.get(name)
            if not isinstance(value, dict) or not value:
                raise ConfigError(f"{origins.of(key_path)}: {key_path!r} must be a mapping of one or more named "
                                  f"sections")
            result[name] = {item: _validate(_mapping(section, origins, f"{key_path}.{item}"), spec.schema, origins,
                                            f"{key_path}.{item}.") for item, section in value.items()}
        elif isinstance(spec, (dict, ModelSection)):
            section = spec.schema if isinstance(spec, ModelSection) else spec
            result[name] = _validate(_mapping(raw.get(name, {}), origins, key_path), section, origins, key_path + ".")
        elif name in raw:
            result[name] = _check_value(raw[name], spec, origins.of(key_path), key_path)
        elif spec.required:
            raise ConfigError(f"{origins.of(key_path)}: missing required key {key_path!r}")
        else:
            result[name] = spec.default
    return result


def _mapping(value: Any, origins: _Origins, key_path: str) -> dict:
    if not isinstance(value, dict):
        raise ConfigError(f"{origins.of(key_path)}: {key_path!r} must be a mapping, got {value!r}")
    return value


def _check_value(value: Any, spec: Key, where: str, key_path: str) -> Any:
    if float in spec.types and not isinstance(value, bool):
        value = _as_float(value)
    # bool is an int in Python; an int key must not silently accept true/false.
    type_ok = isinstance(value, spec.types) and not (isinstance(value, bool) and bool not in spec.types)
    if not type_ok:
        expected = " or ".join("null" if t is type(None) else t.__name__ for t in spec.types)
        raise ConfigError(f"{where}: {key_path!r} must be {expected}, got {type(value).__name__} {value!r}")
    if spec.choices is not None and value not in spec.choices:
        raise ConfigError(f"{where}: {key_path!r} must be one of {list(spec.choices)}, got {value!r}")
    problem = spec.range and value is not None and spec.range.violation(value)
    if problem:
        raise ConfigError(f"{where}: {key_path!r} {problem}")
    return value


def _as_float(value: Any) -> Any:
    """Ints are valid floats, and so is '1e-4', which YAML 1.1 reads as a string."""
    if isinstance(value, int):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def result_subset(config: dict, reads: tuple[str, ...]) -> dict:
    """The values at the dotted paths a stage reads ("visual", "visual.fps", "visual.parts.clip"),
    without those that cannot change results."""
    subset = {}
    for entry in reads:
        values, schema = config, SCHEMA
        for part in entry.split("."):
            schema = _schema_of(schema, values)[part]
            values = values[part]
        subset[entry] = _result_values(values, schema)
    return subset


def _schema_of(schema: Any, values: dict) -> dict:
    """The schema of each key of ``values``, a section (or named sections) following ``schema``."""
    if isinstance(schema, NamedSections):
        return dict.fromkeys(values, schema.schema)
    if isinstance(schema, ModelSection):
        return schema.result_schema(values["name"])
    return schema


def _result_values(values: Any, schema: Any) -> Any:
    if isinstance(schema, Key):
        return values
    if isinstance(schema, NamedSections):
        return {name: _result_values(section, schema.schema) for name, section in values.items()}
    schema = _schema_of(schema, values)
    return {name: _result_values(values[name], spec) for name, spec in schema.items()
            if not isinstance(spec, Key) or spec.affects_results}


def model_settings(config: dict):
    """The options dataclass of the config's model (ModelConfig for AMDNet), checked."""
    name = config["model"]["name"]
    return model_facts(name).config(**config["model"][name])


def train_config(config: dict) -> TrainConfig:
    return TrainConfig(**config["train"])
