"""Approximate search (search/approximate.py): forced on collections far below the automatic threshold.

A synthetic structured collection checks the first stage + exact re-scoring against exact search on
queries with a clear winner; the tiny demo (conftest's session `demo`, shared with test_search.py)
indexed with search.method=approximate checks the CLI, the API and the recall command on it.
"""
from __future__ import annotations

import json
import re

import h5py
import luigi
import numpy as np
import pytest
import torch

import tasks
from search.approximate import (APPROXIMATE_FILE, RETRAIN_GROWTH, ApproximateIndexError, ApproximateScorer,
                                ApproximateSettings, build_approximate, choose_method, factory_string,
                                needs_retraining, segment_vectors, streamed_top_k, update_approximate)
from search.cli import main as search_cli
from search.searcher import ExactScorer, Searcher
from test_search import _get, running_server

SETTINGS = ApproximateSettings(segment_clips=4, nprobe=8, candidates=128, memory_gb=1.0)


def structured_collection(n_videos: int, n_clips: int, dim: int, seed: int = 0) -> np.ndarray:
    """(V, N, d) float16 unit clips: videos grouped in topics, neighbouring clips correlated."""
    generator = torch.Generator().manual_seed(seed)
    topics = torch.randn(n_videos // 50, dim, generator=generator)  # (T, d)
    means = topics[torch.randint(len(topics), (n_videos,), generator=generator)] \
        + 0.7 * torch.randn(n_videos, dim, generator=generator)  # (V, d)
    walk = torch.randn(n_videos, n_clips, dim, generator=generator).cumsum(dim=1) / n_clips ** 0.5  # (V, N, d)
    clips = means[:, None] + 0.5 * walk
    return (clips / clips.norm(dim=-1, keepdim=True)).numpy().astype(np.float16)


@pytest.fixture(scope="module")
def collection(tmp_path_factory):
    """2000 videos x 16 clips, d = 32, its first stage built: (clips, path of approximate.faiss)."""
    clips = structured_collection(2000, 16, 32)
    path = tmp_path_factory.mktemp("approximate") / APPROXIMATE_FILE
    report = build_approximate(clips, path, SETTINGS)
    assert report["vectors"] == 2000 * 4 and report["factory"] == "IVF64_HNSW32,PQ8x4fs"
    assert not path.with_name(path.name + ".partial").exists()
    return clips, path


def test_top_results_equal_exact_on_clear_winners(collection):
    clips, path = collection
    rng = np.random.default_rng(1)
    rows = rng.choice(len(clips), size=40, replace=False)
    noise = rng.standard_normal((40, clips.shape[2])).astype(np.float32)
    queries = clips[rows, rng.integers(clips.shape[1], size=40)].astype(np.float32) + 0.3 * noise / np.sqrt(32)
    queries = torch.from_numpy((queries / np.linalg.norm(queries, axis=1, keepdims=True)).astype(np.float32))  # (40, d)
    exact_scores, exact_rows = ExactScorer(clips.astype(np.float32)).top_k(queries, 5)
    clear = (exact_scores[:, 0] - exact_scores[:, 1] > 0.05).numpy()  # a winner no rounding can flip
    assert clear.sum() >= 20
    scores, found = ApproximateScorer(path, clips, SETTINGS).top_k(queries, 5)
    assert torch.equal(found[clear, 0], exact_rows[clear, 0])
    assert set(found[clear, 0].tolist()) == set(rows[clear].tolist())  # each query's own video
    # Re-scoring is exact: a video's score is its exact score, whichever stage proposed it.
    torch.testing.assert_close(scores[clear, 0], exact_scores[clear, 0], atol=1e-5, rtol=0)
    assert torch.equal(streamed_top_k(clips, queries, 5)[1], exact_rows)


def _clip_queries(clips: np.ndarray, n_queries: int, seed: int) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    rows = rng.choice(len(clips), size=n_queries, replace=False)
    noise = rng.standard_normal((n_queries, clips.shape[2])).astype(np.float32)
    queries = clips[rows, rng.integers(clips.shape[1], size=n_queries)].astype(np.float32) + 0.3 * noise / np.sqrt(32)
    return torch.from_numpy((queries / np.linalg.norm(queries, axis=1, keepdims=True)).astype(np.float32))


def test_an_updated_first_stage_answers_as_a_rebuilt_one(tmp_path):
    """Videos removed (the first 100) and added (the last 100): the updated first stage maps its ids to
    the new rows and finds what a first stage built on the new collection finds."""
    clips = structured_collection(2000, 16, 32, seed=2)
    base = build_approximate(clips[:1900], tmp_path / "base.faiss", SETTINGS)
    grown = clips[100:]  # row r is the base's row r + 100, or (r >= 1800) a video added
    reused = np.where(np.arange(1900) < 1800, np.arange(1900) + 100, -1)
    updated = update_approximate(tmp_path / "base.faiss", base, reused, grown, tmp_path / "updated.faiss", SETTINGS)
    assert (updated["quantiser"], updated["added"], updated["removed"], updated["vectors"]) == ("kept", 100, 100, 1900 * 4)
    assert updated["trained_videos"] == 1900 and updated["next_id"] == 2000
    rebuilt = build_approximate(grown, tmp_path / "rebuilt.faiss", SETTINGS)
    queries = _clip_queries(grown, 60, seed=3)
    _, exact = streamed_top_k(grown, queries, 5)  # (60, 5)
    recalls = {}
    for name in ("updated", "rebuilt"):
        scores, found = ApproximateScorer(tmp_path / f"{name}.faiss", grown, SETTINGS).top_k(queries, 5)
        assert found.max() < len(grown)  # rows of the grown collection, not FAISS ids
        recalls[name] = np.mean([len(set(a) & set(b)) / 5 for a, b in zip(found.tolist(), exact.tolist())])
    assert recalls["rebuilt"] >= 0.95 and abs(recalls["updated"] - recalls["rebuilt"]) <= 0.02, recalls
    assert not needs_retraining(updated, 0)
    assert needs_retraining(updated, int(RETRAIN_GROWTH * 1900))  # 100 added already: past the share


def test_segments_methods_and_budgets():
    clips = np.ones((2, 10, 4), dtype=np.float32)
    assert segment_vectors(clips, 4).shape == (2 * 3, 4)  # 4 + 4 + 2 clips
    np.testing.assert_allclose(np.linalg.norm(segment_vectors(clips, 4), axis=1), 1.0, rtol=1e-6)
    assert [choose_method("auto", n, 100, "amdnet") for n in (100, 101)] == ["exact", "approximate"]
    assert choose_method("approximate", 3, 100, "amdnet") == "approximate"
    assert choose_method("auto", 101, 100, "ms-sl") == "exact"  # only AMDNet has a first stage
    with pytest.raises(ValueError, match="only amdnet can be searched approximately, not model 'ms-sl'"):
        choose_method("approximate", 3, 100, "ms-sl")
    assert factory_string(4_000_000, 384, 4.0) == "IVF2048_HNSW32,PQ96x4fs"  # 1M videos x 4 segments: 183 MiB
    assert factory_string(8_000_000, 384, 0.2) == "IVF2048_HNSW32,PQ48x4fs"  # 48-byte codes would need 0.36 GiB
    assert factory_string(500, 384, 4.0) == "IVF12_HNSW32,Flat"  # too few vectors to train PQ codebooks
    with pytest.raises(ApproximateIndexError, match="memory_gb=0.01"):
        factory_string(8_000_000, 384, 0.01)


def test_a_broken_or_missing_first_stage_names_its_file(collection, tmp_path):
    clips, _ = collection
    with pytest.raises(ApproximateIndexError, match=f"{tmp_path / APPROXIMATE_FILE}: missing"):
        ApproximateScorer(tmp_path / APPROXIMATE_FILE, clips, SETTINGS)
    (tmp_path / APPROXIMATE_FILE).write_bytes(b"not an index")
    np.save(tmp_path / "approximate.ids.npy", np.arange(len(clips)))
    with pytest.raises(ApproximateIndexError, match=f"{tmp_path / APPROXIMATE_FILE}: not a readable FAISS index"):
        ApproximateScorer(tmp_path / APPROXIMATE_FILE, clips, SETTINGS)


@pytest.fixture(scope="module")
def approximate_searcher(demo):
    """The tiny demo's test videos indexed with approximate search forced (a handful of videos)."""
    path, _, _ = demo
    index = tasks.Index(dataset=str(path), set="search.method=approximate")
    assert luigi.build([index], local_scheduler=True, log_level="WARNING")
    with h5py.File(index.out_dir / "index.h5") as f:
        assert f.attrs["search_method"] == "approximate" and f["rows/clip_features"].dtype == np.float16
    return Searcher(index.out_dir, span_rule=index.config["evaluate"]["span_rule"])


def test_cli_and_api_serve_an_approximate_index(demo, searcher, approximate_searcher, capsys):
    path, _, _ = demo
    query = "a cartoon rabbit in a meadow"
    exact = searcher.search(query, k=3)
    found = approximate_searcher.search(query, k=3)
    # Every video is a candidate in so small an index: the same videos, scores up to float16 storage.
    assert {hit.video_id for hit in found} == {hit.video_id for hit in exact}
    np.testing.assert_allclose(sorted(hit.score for hit in found), sorted(hit.score for hit in exact), atol=2e-3)
    overrides = ["--set", "search.method=approximate"]
    assert search_cli(["--dataset", str(path), *overrides, query, "-k", "3", "--json"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [line["video_id"] for line in lines] == [hit.video_id for hit in found]
    assert {line["method"] for line in lines} == {"approximate"}
    assert search_cli(["--dataset", str(path), *overrides, query, "-k", "2"]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == f"approximate search over {len(searcher.video_ids)} videos"
    with running_server(approximate_searcher, default_k=3) as server:
        status, _, body = _get(server, "/api/search?q=a%20cartoon%20rabbit%20in%20a%20meadow")
        assert status == 200
        answer = json.loads(body)
        assert answer["exact"] is False and answer["method"] == "approximate"
        assert [result["video_id"] for result in answer["results"]] == [hit.video_id for hit in found]
        assert {result["method"] for result in answer["results"]} == {"approximate"}
        assert json.loads(_get(server, "/api/info")[2])["method"] == "approximate"


@pytest.mark.parametrize("overrides", [[], ["--set", "search.method=approximate"]])
def test_recall_command(demo, searcher, overrides, capsys):
    """On the exact index a first stage is built aside; on the approximate one its own is used. Every
    video is a candidate here, so recall is 1."""
    path, _, _ = demo
    assert search_cli(["recall", "--dataset", str(path), *overrides]) == 0
    out = capsys.readouterr().out
    match = re.match(r"recall@(\d+) of approximate search against exact: (\S+) \((\d+) query texts, (\d+) videos", out)
    assert match, out
    k, recall, n_queries, n_videos = match.groups()
    assert int(k) == min(10, len(searcher.video_ids)) and int(n_videos) == len(searcher.video_ids)
    assert float(recall) == 1.0 and int(n_queries) >= 8
    assert ("the index's own" in out) == bool(overrides)
