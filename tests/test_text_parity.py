"""The search encodes a query exactly as QueryFeatures encoded the training and test queries: the same
text settings (every key under text.*), hence the same features, for queries of every length up to
the limit and past it (cut the same way). On the tiny demo with the real MiniLM (tests/conftest.py)."""

from __future__ import annotations

import logging

import numpy as np
import pytest

import tasks
from pipeline.config import SCHEMA
from pipeline.datasets import read_jsonl
from pipeline.features import encode_queries, text_encoder
from storage import FeatureFile


@pytest.fixture(scope="module")
def query_features(demo):
    path, _, _ = demo
    return tasks.QueryFeatures(dataset=str(path))


def _query_of(n_text_tokens: int) -> str:
    return " ".join(["word"] * n_text_tokens)  # one MiniLM token a word, plus [CLS] and [SEP]


def _lengths(max_length: int) -> list[int]:
    """Text tokens: 1, around 32 (where the demo's queries end), around the limit and past it."""
    return [1, 31, 32, 33, max_length - 3, max_length - 2, max_length - 1, max_length + 30]


def test_the_index_records_every_text_setting_of_query_features(searcher, query_features):
    settings = query_features.config["text"]
    assert set(SCHEMA["text"]) == set(settings)
    for key in SCHEMA["text"]:
        assert searcher.text[key] == settings[key], key
    assert searcher.encoder.max_length == settings["max_length"]


def test_search_encoder_gives_query_features_features_at_every_length(searcher, query_features, tmp_path):
    settings = {**query_features.config["text"], "device": "cpu"}
    texts = [_query_of(n) for n in _lengths(settings["max_length"])]
    assert [count - 2 for count in searcher.encoder.token_counts(texts)] == _lengths(settings["max_length"])
    # What QueryFeatures writes for these texts, through its own function and settings.
    queries = [{"cap_id": str(index), "text": text} for index, text in enumerate(texts)]
    report = encode_queries(queries, settings, tmp_path / "queries.h5", {"stage": "queries"})
    assert report["truncated_queries"] == 2  # max_length - 1 and max_length + 30 text tokens
    by_search = searcher.encoder.encode(texts)
    with FeatureFile(tmp_path / "queries.h5") as written:
        for index, features in enumerate(by_search):
            np.testing.assert_allclose(written.group("tokens").read(str(index)), features.tokens, atol=1e-5)
            np.testing.assert_allclose(written.group("pooled").read(str(index)), features.pooled, atol=1e-5)
    assert len(by_search[-1].tokens) == settings["max_length"]
    # And the encoder built from the config, as QueryFeatures builds it, agrees too.
    for mine, theirs in zip(text_encoder(settings).encode(texts), by_search):
        np.testing.assert_allclose(mine.tokens, theirs.tokens, atol=1e-5)


def test_search_encoder_gives_the_stored_features_of_the_demo_queries(searcher, query_features):
    queries = read_jsonl(query_features.upstream_dir("dataset") / "queries.jsonl")[:8]
    encoded = searcher.encoder.encode([query["text"] for query in queries])
    with FeatureFile(query_features.features) as stored:
        for query, features in zip(queries, encoded):
            np.testing.assert_allclose(stored.group("pooled").read(query["cap_id"]), features.pooled, atol=1e-5)


def test_a_query_over_the_limit_is_cut_as_in_training_and_said(searcher, caplog):
    limit = searcher.encoder.max_length
    with caplog.at_level(logging.WARNING, logger="search"):
        long_hits = searcher.search(_query_of(limit + 30), k=3)
    assert any(f"cut to {limit}" in record.getMessage() for record in caplog.records)
    cut_hits = searcher.search(_query_of(limit - 2), k=3)  # the same tokens
    assert [hit.video_id for hit in long_hits] == [hit.video_id for hit in cut_hits]
    assert [hit.score for hit in long_hits] == pytest.approx([hit.score for hit in cut_hits], abs=1e-5)
