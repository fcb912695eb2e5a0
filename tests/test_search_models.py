"""The index and the search with every registered model (models/registry.py), on one tiny demo's
real features: search equals the model's own ranking of the split (what Evaluate computes), rows of
unchanged videos are reused for a model other than AMDNet, and the training-free clip-zero-shot
answers on a work folder that only has features: `python -m search` as a user runs it, a folder of
new videos in one command, the HTTP API, and no train/ folder is ever created.
"""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import h5py
import luigi
import numpy as np
import pytest
import torch

import tasks
from amdnet.config import TrainConfig
from amdnet.data import VideoInputs, collate_video_inputs, read_queries, video_inputs
from amdnet.moments import clip_spans
from conftest import make_tiny_config
from models.checkpoints import ModelSource, save_checkpoint
from models.registry import create_model, list_models, model_class, take_rows
from pipeline.video_cache import VideoCache
from search.cli import main as search_cli
from search.errors import SearchError
from search.index import build_index
from search.searcher import Searcher
from storage import FeatureFile
from videos import make_testsrc_video

CLIP = "model.name=clip-zero-shot"
# Tiny options of each trainable model (random weights: only the arithmetic is compared).
TINY_OPTIONS = {"amdnet": {"hidden_size": 32}, "ms-sl": {"hidden_size": 32, "max_frames": 64},
                "gmmformer": {"hidden_size": 32, "max_frames": 64}}
QUERY_INPUT = {"amdnet": "pooled", "ms-sl": "tokens", "gmmformer": "tokens", "clip-zero-shot": "pooled"}


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """A tiny demo config whose features (MiniLM text, and CLIP text for clip-zero-shot) exist: (path, root)."""
    root = tmp_path_factory.mktemp("search_models")
    path = make_tiny_config(root, {"search": {"split": "test"}})
    stages = [stage(dataset=str(path), set=overrides) for overrides in ("", CLIP)
              for stage in (tasks.PrepareDataset, tasks.VisualFeatures, tasks.QueryFeatures)]
    assert luigi.build(stages, local_scheduler=True, log_level="WARNING")
    return path, root


def _stages(path: Path, overrides: str = "") -> dict:
    return {name: stage(dataset=str(path), set=overrides) for name, stage in
            (("dataset", tasks.PrepareDataset), ("visual", tasks.VisualFeatures), ("queries", tasks.QueryFeatures))}


def _source(name: str, stages: dict, folder: Path) -> ModelSource:
    """A random-weight checkpoint of a trainable model (as Train writes one), or clip-zero-shot's source."""
    if name == "clip-zero-shot":
        return ModelSource.training_free(stages["dataset"].config)
    with FeatureFile(stages["visual"].features) as videos, FeatureFile(stages["queries"].features) as queries:
        dims = videos.group().dim, queries.group(QUERY_INPUT[name]).dim
    model = create_model(name, *dims, seed=0, **TINY_OPTIONS[name])
    path = folder / f"{name}.pt"
    save_checkpoint(path, model, TrainConfig(query_input=QUERY_INPUT[name]), dims)
    return ModelSource.from_checkpoint(path)


def _index(source: ModelSource, stages: dict, out_dir: Path, videos: list[dict], previous: Path | None = None,
           method: str = "exact") -> dict:
    out_dir.mkdir(parents=True, exist_ok=True)
    search = {"method": method, "exact_max_videos": 10_000,
              "approximate": {"segment_clips": 8, "nprobe": 8, "candidates": 64, "memory_gb": 1.0}}
    config = stages["dataset"].config
    return build_index(source, videos, stages["visual"].features, None, config["text"], out_dir, {}, search,
                       VideoCache(out_dir / "proxies", ".mp4"), previous)


def _split_videos(stages: dict, split: str = "test") -> list[dict]:
    folder = stages["dataset"].out_dir
    wanted = {q["video_id"] for q in read_queries(folder / "queries.jsonl", split)}
    return [{**video, "index_key": f"{video['video_id']}-v1"}
            for video in map(json.loads, (folder / "videos.jsonl").read_text().splitlines())
            if video["video_id"] in wanted]


@torch.no_grad()
def _ranking(source: ModelSource, stages: dict, videos: list[dict], split: str, k: int, rule: str):
    """The split ranked as Evaluate ranks it, straight from the feature files: every video's inputs
    from the data layer in one batch, the query features QueryFeatures wrote, the model's score and
    spans. {cap_id: (video ids, scores, spans in seconds)} of the top k."""
    with FeatureFile(stages["visual"].features) as video_file, FeatureFile(stages["queries"].features) as query_file:
        query_group = query_file.group(source.query_input)
        model = source.load(video_file.group().dim, query_group.dim)
        inputs = VideoInputs.of(model)
        ids = [video["video_id"] for video in videos]
        rows = model.represent_videos(collate_video_inputs(
            [{kind: torch.from_numpy(array) for kind, array in video_inputs(video_file, None, video_id, inputs).items()}
             for video_id in ids]))
        frames = video_file.group().lengths[[video_file.group().position(video_id) for video_id in ids]]
        spans = (torch.stack([clip_spans(int(count), inputs.map_size) for count in frames])
                 if "clips" in inputs.kinds else None)  # (V, N, 2)
        records = read_queries(stages["dataset"].out_dir / "queries.jsonl", split)
        features = [torch.from_numpy(vector) for vector in query_group.gather([r["cap_id"] for r in records])]
    if source.query_input == "tokens":
        lengths = torch.tensor([len(tokens) for tokens in features])
        queries = torch.nn.utils.rnn.pad_sequence(features, batch_first=True)
        batch = {"queries": queries, "token_mask": torch.arange(queries.shape[1]) < lengths[:, None]}
    else:
        batch = {"queries": torch.stack(features)}
    queries = model.represent_queries(batch)  # (Nq, d)
    scores = model.score(queries, rows)  # (Nq, V)
    top = scores.topk(min(k, len(ids)), dim=1)
    durations = torch.tensor([video["duration"] for video in videos], dtype=torch.float64)
    ranking = {}
    for q, record in enumerate(records):
        chosen = top.indices[q]
        fractions = model.spans(queries[q].expand(len(chosen), -1), take_rows(rows, chosen),
                                None if spans is None else spans[chosen], rule)
        ranking[record["cap_id"]] = ([ids[v] for v in chosen.tolist()], top.values[q].tolist(),
                                     (fractions.double() * durations[chosen, None]).tolist(), record["text"])
    return ranking


@pytest.mark.parametrize("name", list_models())
def test_search_equals_the_models_ranking(work, tmp_path, name):
    """Top-k ids, order, scores (1e-5) and spans of the search function are the model's ranking of the
    split from the feature files, with every span rule the model has."""
    path, _ = work
    stages = _stages(path, CLIP if name == "clip-zero-shot" else f"train.query_input={QUERY_INPUT[name]}")
    source = _source(name, stages, tmp_path)
    videos = _split_videos(stages)
    report = _index(source, stages, tmp_path / "index", videos)
    assert report["method"] == "exact" and report["encoded"] == len(videos)
    with h5py.File(tmp_path / "index" / "index.h5") as f:
        assert json.loads(f.attrs["model_source"])["name"] == name
        assert ("clip_fractions" in f) == ("clips" in model_class(name).video_inputs)
    for rule in model_class(name).span_rules:
        searcher = Searcher(tmp_path / "index", span_rule=rule)
        expected = _ranking(source, stages, videos, "test", 5, rule)
        assert len(expected) >= 4
        for cap_id, (ids, scores, spans, text) in expected.items():
            hits = searcher.search(text, k=5)
            assert [hit.video_id for hit in hits] == ids, (name, rule, cap_id)
            np.testing.assert_allclose([hit.score for hit in hits], scores, atol=1e-5)
            np.testing.assert_allclose([[hit.start, hit.end] for hit in hits], spans, atol=1e-4)
        searcher.hold.close()
