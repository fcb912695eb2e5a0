"""Recall@k of approximate search against exact search on an index's own videos.

    python -m search recall --dataset demo            # the split's query texts, or clip queries
    python -m search recall --dataset demo --folder ~/footage --queries 500

The queries are the collection's own query texts (those of ``search.split`` when it names one),
encoded as a search encodes them; a collection without any (a folder) is queried with clips: a
random clip of a random video each, so every query has a true best video. Exact top-k streams the
clip embeddings (it works on indexes larger than RAM); the approximate side is the index's own
first stage, or, on an exact index, one built in a temporary folder with the config's
``search.approximate`` settings: what switching to ``search.method=approximate`` would give.
"""
from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from search.approximate import (APPROXIMATE_FILE, ApproximateScorer, ApproximateSettings, build_approximate,
                                streamed_top_k)


def query_vectors(searcher, texts: list[str], n_clip_queries: int, seed: int = 0) -> tuple[torch.Tensor, str]:
    """(q, d) unit queries: the texts encoded, or clip embeddings of the index when there are no texts."""
    if texts:
        return torch.cat([searcher.encode_query(text) for text in texts]), f"{len(texts)} query texts"
    rng = np.random.default_rng(seed)
    n_videos, n_clips, _ = searcher.clip_embeddings.shape
    rows = np.sort(rng.choice(n_videos, size=min(n_clip_queries, n_videos), replace=False))
    clips = np.asarray(searcher.clip_embeddings[rows], dtype=np.float32)[np.arange(len(rows)),
                                                                        rng.integers(n_clips, size=len(rows))]
    return torch.from_numpy(clips), f"{len(rows)} clips of the index as queries (no query texts)"


def measure_recall(searcher, queries: torch.Tensor, k: int, settings: ApproximateSettings) -> dict:
    """Recall@k (mean over queries of the share of exact top-k videos the approximate search returns)
    and the approximate search's p50 latency, one query at a time."""
    _, exact_rows = streamed_top_k(searcher.clip_embeddings, queries, k)  # (q, k)
    with tempfile.TemporaryDirectory() as temporary:
        if searcher.method == "approximate":
            scorer, built = searcher.scorer, None
        else:
            path = Path(temporary) / APPROXIMATE_FILE
            built = build_approximate(searcher.clip_embeddings, path, settings)
            scorer = ApproximateScorer(path, searcher.clip_embeddings, settings)
        found, seconds = [], []
        for query in queries:
            started = time.perf_counter()
            found.append(scorer.top_k(query[None], k)[1][0].tolist())  # (k,)
            seconds.append(time.perf_counter() - started)
    recalls = [len(set(approximate) & set(exact)) / len(exact) for approximate, exact in zip(found, exact_rows.tolist())]
    return {"recall": float(np.mean(recalls)), "queries": len(queries), "k": int(exact_rows.shape[1]),
            "videos": int(searcher.clip_embeddings.shape[0]), "index_method": searcher.method,
            "first_stage": built["factory"] if built else "the index's own", "settings": settings.__dict__,
            "approximate_p50_ms": 1000 * float(np.median(seconds))}


def query_texts(dataset_dir: Path, split: str | None) -> list[str]:
    """The collection's query texts (of `split` when given); none for a folder collection."""
    path = dataset_dir / "queries.jsonl"
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []
    return list(dict.fromkeys(record["text"] for record in records if split is None or record["split"] == split))
