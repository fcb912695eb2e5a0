"""`extends:` (a config over another, key by key) and the reference presets under configs/models/."""

from __future__ import annotations

import dataclasses

import pytest
import yaml

import tasks
from models.configs import model_facts
from models.registry import model_class
from pipeline.config import CONFIG_DIR, ConfigError, load_config, resolve_config_path

REFERENCE_PRESETS = [(model, dataset) for model in ("ms-sl", "gmmformer") for dataset in ("tvr", "activitynet", "charades")]


@pytest.fixture
def i3d_weights(tmp_path, monkeypatch):
    """The TVR/ActivityNet/Charades recipes name I3D weights at weights/rgb_imagenet.pt (relative to the
    working folder), which the config check wants to exist; nothing reads them here."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "weights").mkdir()
    (tmp_path / "weights" / "rgb_imagenet.pt").touch()


def write(path, sections: dict):
    path.write_text(yaml.safe_dump(sections))
    return str(path)


def test_a_config_extends_another_key_by_key_and_inherits_its_name(make_config, tmp_path):
    base = make_config()
    preset = write(tmp_path / "preset.yaml", {"extends": base.name, "train": {"lr": 0.001},
                                               "visual": {"parts": {"resnet": {"backbone": "resnet152"}}}})
    config, original = load_config(preset), load_config(str(base))
    assert config["name"] == original["name"] == "demo"  # the same work folder
    assert config["train"]["lr"] == 0.001
    assert {**config["train"], "lr": original["train"]["lr"]} == original["train"]  # the rest is the base's
    assert config["visual"]["fps"] == original["visual"]["fps"]
    assert list(config["visual"]["parts"]) == ["resnet"]  # named sections are replaced, not merged
    # An override applies over both; the preset's own name wins when it has one.
    assert load_config(preset, "train.lr=0.002")["train"]["lr"] == 0.002
    named = write(tmp_path / "named.yaml", {"extends": base.name, "name": "other"})
    assert load_config(named)["name"] == "other"


def test_extends_names_a_config_as_dataset_does(tmp_path):
    preset = write(tmp_path / "on_demo.yaml", {"extends": "demo", "model": {"name": "ms-sl"},
                                                "train": {"query_input": "tokens"}})
    config = load_config(preset)
    assert config["name"] == "demo" and config["model"]["name"] == "ms-sl"
    assert config["data"]["source"] == "demo"
    assert config["evaluate"]["span_rule"] == model_facts("ms-sl").default_span_rule


@pytest.mark.parametrize("base, message", [
    ("nowhere", "unknown dataset 'nowhere'"),
    ("missing.yaml", "no config file"),
    (3, "'extends' must name a config"),
])
def test_a_missing_base_is_a_one_line_error_naming_the_file(tmp_path, base, message):
    preset = write(tmp_path / "preset.yaml", {"extends": base})
    with pytest.raises(ConfigError, match=message) as error:
        load_config(preset)
    assert str(error.value).startswith(f"{preset}: 'extends'") and "\n" not in str(error.value)


def test_a_cycle_of_extends_is_a_one_line_error_naming_the_files(tmp_path):
    first = write(tmp_path / "first.yaml", {"extends": "second.yaml"})
    write(tmp_path / "second.yaml", {"extends": "first.yaml"})
    with pytest.raises(ConfigError, match="makes a cycle") as error:
        load_config(first)
    assert "first.yaml" in str(error.value) and "second.yaml" in str(error.value)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("model, dataset", REFERENCE_PRESETS)
def test_every_reference_preset_equals_the_models_reference_hparams(i3d_weights, model, dataset):
    reference = model_class(model).reference_hparams(dataset)
    config = load_config(f"models/{model}/{dataset}")
    assert config["name"] == dataset and config["model"]["name"] == model
    defaults = dataclasses.asdict(model_facts(model).config(**reference["model"]))
    assert config["model"][model] == defaults  # no option drifts from the reference or the defaults
    assert {key: config["train"][key] for key in reference["train"]} == reference["train"]
    # The recipe gives the reference's input sizes: 3072-d clips (ResNet-152 + I3D) or 1024-d (I3D),
    # RoBERTa-base (768) or -large (1024) tokens, at most 30 of them after <s> and </s> are stripped.
    parts = {part["backbone"] for part in config["visual"]["parts"].values()}
    assert parts == ({"resnet152", "i3d"} if reference["inputs"]["video_dim"] == 3072 else {"i3d"})
    assert config["visual"]["clip_seconds"] == 1.5
    text = config["text"]
    assert text["model"] == {768: "roberta-base", 1024: "roberta-large"}[reference["inputs"]["query_dim"]]
    assert (text["encoder"], text["layer"], text["max_length"], text["strip_special_tokens"]) == ("hf-text", -2, 32, True)


def test_a_preset_resolves_as_a_dataset_and_shares_its_work_folder(i3d_weights):
    assert resolve_config_path("models/ms-sl/tvr") == CONFIG_DIR / "models" / "ms-sl" / "tvr.yaml"
    preset, dataset = tasks.Train(dataset="models/ms-sl/tvr"), tasks.Train(dataset="tvr")
    assert preset.dataset_dir == dataset.dataset_dir
    assert preset.config["model"]["name"] == "ms-sl" and dataset.config["model"]["name"] == "amdnet"


def test_the_demo_presets_share_the_demos_features():
    for model in ("ms-sl", "gmmformer"):
        preset = tasks.Evaluate(dataset=f"models/{model}/demo")
        assert preset.config["model"]["name"] == model
        assert preset.upstream()["visual"].fingerprint == tasks.VisualFeatures(dataset="demo").fingerprint
        assert preset.upstream()["queries"].fingerprint == tasks.QueryFeatures(dataset="demo").fingerprint
