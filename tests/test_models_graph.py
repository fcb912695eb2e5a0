"""Every registered model runs through the Luigi graph on the tiny demo: its feature stages, Train
(trainable models only) and Evaluate, each writing metrics.json for the model's own span rule. The
models share one work folder, so the features are extracted once (cached by fingerprint)."""

from __future__ import annotations

import json

import luigi
import pytest

import tasks
from conftest import make_tiny_config
from models.configs import MODEL_FACTS
from pipeline.config import ConfigError
from tiny_models import TINY_MODELS_SET


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return str(make_tiny_config(tmp_path_factory.mktemp("models_graph")))


def model_set(model: str) -> str:
    return f"model.name={model} {TINY_MODELS_SET}"


@pytest.mark.parametrize("model", list(MODEL_FACTS))
def test_every_model_is_evaluated_through_luigi(tiny, model, run_stages, single_thread):
    evaluate = tasks.Evaluate(dataset=tiny, set=model_set(model))
    train_folders = evaluate.dataset_dir / "train"
    before = set(train_folders.iterdir()) if train_folders.is_dir() else set()
    ran = run_stages.build([evaluate])
    metrics = json.loads((evaluate.out_dir / "metrics.json").read_text())
    facts = MODEL_FACTS[model]
    assert metrics["span_rule"] == facts.default_span_rule
    assert set(metrics["moments"]["rules"]) == set(facts.span_rules)
    assert metrics["n_queries"] > 0 and 0 <= metrics["R@1"] <= metrics["R@5"] <= metrics["R@100"] <= 100
    assert ("train" in evaluate.upstream()) == facts.trainable
    assert ("train" in ran) == facts.trainable  # nothing of this model existed before
    after = set(train_folders.iterdir()) if train_folders.is_dir() else set()
    assert after - before == ({evaluate.upstream()["train"].out_dir} if facts.trainable else set())
    manifest = json.loads((evaluate.out_dir / "manifest.json").read_text())
    if not facts.trainable:  # no Train fingerprint stands for its options: Evaluate's own does
        assert manifest["fingerprint_inputs"]["config"]["model"]["name"] == model


def test_a_training_free_model_has_no_train_stage(tiny):
    with pytest.raises(ConfigError, match="model clip-zero-shot is not trained: run Evaluate, or `make search`"):
        tasks.Train(dataset=tiny, set=model_set("clip-zero-shot"))
    evaluate = tasks.Evaluate(dataset=tiny, set=model_set("clip-zero-shot"))
    other = tasks.Evaluate(dataset=tiny, set=f"{model_set('clip-zero-shot')} model.clip-zero-shot.max_scale=2")
    assert "train" not in evaluate.upstream() and "subtitles" not in evaluate.upstream()
    assert evaluate.fingerprint != other.fingerprint  # its options count, through Evaluate itself
