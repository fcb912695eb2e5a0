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
from tiny_models import TINY_MODELS_SET
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


# ---- through the graph: Evaluate and Index of each model, as `make search` builds them ---------------

@pytest.mark.parametrize("name", list_models())
def test_search_equals_evaluate_for_every_model(work, name):
    """Evaluate's predictions.jsonl (top-10 ids, order, scores to 1e-5, spans) are what the search of
    the same model's Index answers for each test query."""
    path, _ = work
    overrides = f"model.name={name} {TINY_MODELS_SET}"
    index, evaluate = tasks.Index(dataset=str(path), set=overrides), tasks.Evaluate(dataset=str(path), set=overrides)
    assert luigi.build([evaluate, index], local_scheduler=True, log_level="WARNING")
    searcher = Searcher(index.out_dir)  # the model's default span rule, which Evaluate's config resolves to
    assert searcher.span_rule == evaluate.config["evaluate"]["span_rule"] and searcher.inputs["model"] == name
    texts = {q["cap_id"]: q["text"] for q in read_queries(evaluate.upstream_dir("dataset") / "queries.jsonl", "test")}
    predictions = [json.loads(line) for line in (evaluate.out_dir / "predictions.jsonl").read_text().splitlines()]
    assert len(predictions) >= 4
    for record in predictions:
        top = record["top10"]
        hits = searcher.search(texts[record["cap_id"]], k=len(top))
        assert [hit.video_id for hit in hits] == [entry["video_id"] for entry in top], (name, record["cap_id"])
        np.testing.assert_allclose([hit.score for hit in hits], [entry["score"] for entry in top], atol=1e-5)
        np.testing.assert_allclose([[hit.start, hit.end] for hit in hits], [entry["span"] for entry in top],
                                   atol=1e-4)
    searcher.hold.close()


@pytest.mark.parametrize("name", ["ms-sl", "clip-zero-shot"])
def test_waiting_queries_are_encoded_together_and_exactly(work, tmp_path, name):
    """The server's batching (search/api.py) gives each query bit for bit its lone encoding with a
    token model and with the CLIP text encoder too (test_search.py's check, on their searchers)."""
    import test_search

    path, _ = work
    stages = _stages(path, CLIP if name == "clip-zero-shot" else "train.query_input=tokens")
    _index(_source(name, stages, tmp_path), stages, tmp_path / "index", _split_videos(stages))
    searcher = Searcher(tmp_path / "index")
    test_search.test_waiting_queries_are_encoded_together_and_exactly(searcher)
    searcher.hold.close()


def test_an_index_of_another_model_grows_by_what_changed(work, tmp_path):
    """MS-SL's rows (frame keys and values, bool frame masks) copied from the index a grown collection
    supersedes: only the new videos are encoded, and the answers equal a full rebuild's."""
    path, _ = work
    stages = _stages(path, "train.query_input=tokens")
    source = _source("ms-sl", stages, tmp_path)
    videos = _split_videos(stages, "train")
    first = _index(source, stages, tmp_path / "first", videos[:-3])
    grown = _index(source, stages, tmp_path / "grown", videos, previous=tmp_path / "first")
    rebuilt = _index(source, stages, tmp_path / "rebuilt", videos)
    assert (first["encoded"], grown["encoded"], grown["reused"]) == (len(videos) - 3, 3, len(videos) - 3)
    assert rebuilt["encoded"] == len(videos)
    with h5py.File(tmp_path / "grown" / "index.h5") as f:
        assert f["rows/frame_mask"].dtype == bool and f["rows/frame_keys"].shape[1] == TINY_OPTIONS["ms-sl"]["max_frames"]
    grown_searcher, rebuilt_searcher = Searcher(tmp_path / "grown"), Searcher(tmp_path / "rebuilt")
    for text in ("a red square", "people talking in a kitchen"):
        grown_hits, rebuilt_hits = grown_searcher.search(text, k=len(videos)), rebuilt_searcher.search(text, k=len(videos))
        assert [hit.video_id for hit in grown_hits] == [hit.video_id for hit in rebuilt_hits]
        np.testing.assert_allclose([hit.score for hit in grown_hits], [hit.score for hit in rebuilt_hits], atol=1e-6)
        np.testing.assert_allclose([[h.start, h.end] for h in grown_hits], [[h.start, h.end] for h in rebuilt_hits])


def test_span_rules_and_approximate_search_a_model_lacks_are_one_line(work, tmp_path, capsys):
    path, _ = work
    stages = _stages(path, CLIP)
    _index(ModelSource.training_free(stages["dataset"].config), stages, tmp_path / "index", _split_videos(stages))
    with pytest.raises(SearchError, match=r"span rule 'anchor': model 'clip-zero-shot' has none such; choose one "
                                          r"of best_window, whole"):
        Searcher(tmp_path / "index", span_rule="anchor")
    with pytest.raises(ValueError, match="only amdnet can be searched approximately"):
        _index(ModelSource.training_free(stages["dataset"].config), stages, tmp_path / "other",
               _split_videos(stages), method="approximate")
    assert not (tmp_path / "other" / "index.h5.partial").exists()
    assert search_cli(["--dataset", str(path), "--set", f"{CLIP} search.method=approximate", "a red square"]) == 2
    error = capsys.readouterr().err
    assert error.startswith("error: search.method=approximate: only amdnet can be searched approximately, "
                            "not model 'clip-zero-shot'") and len(error.strip().splitlines()) == 1


# ---- clip-zero-shot: search right after the features, no Train stage ---------------------------------


@pytest.fixture(scope="module")
def clip_work(tmp_path_factory):
    """A work folder of its own where only clip-zero-shot's features were made (as `make features`
    with it would): (config path, root)."""
    root = tmp_path_factory.mktemp("clip_zero_shot")
    path = make_tiny_config(root, {"search": {"split": "test"}})
    stages = [stage(dataset=str(path), set=CLIP) for stage in (tasks.VisualFeatures, tasks.QueryFeatures)]
    assert luigi.build(stages, local_scheduler=True, log_level="WARNING")
    return path, root


def _no_train_folder(root: Path) -> None:
    assert not [folder for folder in root.rglob("train") if folder.is_dir()], "a train/ folder was created"


def test_clip_zero_shot_searches_the_demo_without_training(clip_work):
    """`make search` with clip-zero-shot, as a user runs it (its own process), on a work folder whose
    features exist: it answers, as the search function does, and nothing is trained."""
    path, root = clip_work
    _no_train_folder(root)
    query = "a cartoon rabbit in a meadow"
    result = subprocess.run([sys.executable, "-m", "search", "--dataset", str(path), "--set", CLIP, query, "-k", "3",
                             "--json"], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    hits = [json.loads(line) for line in result.stdout.splitlines()]
    index = tasks.Index(dataset=str(path), set=CLIP)
    expected = Searcher(index.out_dir).search(query, k=3)
    assert [hit["video_id"] for hit in hits] == [hit.video_id for hit in expected] and len(hits) == 3
    np.testing.assert_allclose([hit["score"] for hit in hits], [hit.score for hit in expected], atol=1e-6)
    assert "train" not in index.upstream() and not (index.dataset_dir / "train").exists()
    _no_train_folder(root)
    # A changed option of the model is another index, and every video's key changes with it.
    other = tasks.Index(dataset=str(path), set=f"{CLIP} model.clip-zero-shot.max_scale=2")
    assert other.fingerprint != index.fingerprint and other.lineage != index.lineage
    videos = index.dataset_videos("test")
    assert not {v["index_key"] for v in index.keyed_videos(videos)} & {v["index_key"] for v in other.keyed_videos(videos)}


def test_clip_zero_shot_indexes_a_folder_of_new_videos_in_one_command(clip_work, tmp_path):
    path, root = clip_work
    folder = tmp_path / "footage"
    (folder / "street").mkdir(parents=True)
    make_testsrc_video(folder / "street" / "cars.mp4", seconds=4, fps=10)
    make_testsrc_video(folder / "beach.mp4", seconds=3, fps=10)
    result = subprocess.run([sys.executable, "-m", "search", "index", "--dataset", str(path), "--set", CLIP,
                             "--folder", str(folder)], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("indexed 2 videos in "), result.stdout
    index_dir = Path(re.search(r" videos in (\S+) ", result.stdout)[1])
    searcher = Searcher(index_dir)
    assert sorted(searcher.video_ids) == ["beach.mp4", "street/cars.mp4"] and searcher.inputs["model"] == "clip-zero-shot"
    hits = searcher.search("a test card", k=2)
    assert all(0 <= hit.start < hit.end <= hit.duration + 1e-6 for hit in hits)
    _no_train_folder(root)


def test_the_api_answers_with_clip_zero_shot(clip_work):
    from test_search import _get, running_server

    path, _ = clip_work
    index = tasks.Index(dataset=str(path), set=CLIP)
    assert luigi.build([index], local_scheduler=True, log_level="WARNING")
    searcher = Searcher(index.out_dir)
    with running_server(searcher, default_k=3) as server:
        status, _, body = _get(server, "/api/search?q=colour%20bars&k=4")
        assert status == 200
        answer = json.loads(body)
        expected = searcher.search("colour bars", k=4)
        assert [r["video_id"] for r in answer["results"]] == [hit.video_id for hit in expected]
        np.testing.assert_allclose([r["score"] for r in answer["results"]], [hit.score for hit in expected])
        assert answer["inputs"]["model"] == "clip-zero-shot" and answer["span_rule"] == "best_window"
        assert answer["method"] == "exact" and answer["inputs"]["subtitles"] is False
        info = json.loads(_get(server, "/api/info")[2])
        assert info["inputs"]["model"] == "clip-zero-shot" and info["videos"] == len(searcher.video_ids)
    searcher.hold.close()
