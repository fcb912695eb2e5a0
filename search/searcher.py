"""The one search function: query text -> the top-k videos of an index, each with its moment.

    searcher = Searcher(index_dir, span_rule="grown")
    hits = searcher.search("a red square moving left", k=5)

The query goes through exactly what training saw: the same text encoder and settings as the
QueryFeatures stage (recorded in the index), the same pooled or token input, the model's query
projection; a video's score is AMDNet's own (max over clips of cosine, as amdnet.evaluate); the
moment comes from amdnet.moments with the same rule Evaluate uses. So scores, ranks and spans equal
Evaluate's for the same query and videos.

Scoring is one part, chosen by the index (its ``search_method``): `ExactScorer`, a single matrix
product over all clips of all videos, a max over each video's clips and a top-k; or, for large
indexes, `search.approximate.ApproximateScorer`, a FAISS first stage whose candidate videos are
re-scored exactly. Every hit says which one answered. Only the scorer of an exact index holds the
clip embeddings in RAM; everything else is memory-mapped and read for the top hits only.
"""
from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import h5py
import numpy as np
import torch
import torch.nn.functional as F

from amdnet.config import resolve_device
from extractors.text_policy import is_blank, over_limit
from amdnet.evaluate import load_model
from amdnet.moments import moment_spans
from amdnet.train import intra_op_threads
from search.approximate import APPROXIMATE_FILE, ApproximateScorer, ApproximateSettings
from search.index import INDEX_FILE, memory_map, reading

log = logging.getLogger("search")

# Longer texts are not queries (a pasted document, an attack on the encoder): refused before encoding.
MAX_QUERY_CHARS = 1000
MAX_K = 1000


class SearchError(ValueError):
    """A query or setting the search cannot take; the message is one line meant for the user."""


@dataclass(frozen=True)
class Hit:
    rank: int  # 1 = best
    video_id: str
    score: float  # max over the video's clips of the cosine with the query
    start: float  # the moment, seconds
    end: float
    duration: float
    path: str  # the source: a video file or a folder of frames
    row: int  # the video's row in the index (how the server addresses it)
    method: str  # "exact" or "approximate": which scorer found it

    def to_dict(self) -> dict:
        return asdict(self)


class ExactScorer:
    """Every video's score for a batch of queries: (q, d) x (V*N, d) -> (q, V) max over clips -> top-k."""

    method = "exact"

    def __init__(self, clip_embeddings: np.ndarray):
        videos, clips, dim = clip_embeddings.shape  # (V, N, d) unit vectors
        self.n_videos, self.n_clips = videos, clips
        self.flat = torch.from_numpy(np.ascontiguousarray(clip_embeddings, dtype=np.float32).reshape(videos * clips, dim))

    def top_k(self, queries: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(q, d) unit queries -> scores (q, k') and video rows (q, k'), best first; k' = min(k, V)."""
        per_clip = queries @ self.flat.T  # (q, V*N)
        per_video = per_clip.view(queries.shape[0], self.n_videos, self.n_clips).amax(dim=-1)  # (q, V)
        best = per_video.topk(min(k, self.n_videos), dim=1)
        return best.values, best.indices


class Searcher:
    """Loads an index, its model and its text encoder once; `search` answers queries."""

    def __init__(self, index_dir: Path, span_rule: str, device: str = "cpu"):
        from pipeline.features import text_encoder

        self.index_dir = Path(index_dir)
        self.span_rule = span_rule
        self.device = resolve_device(device)
        self.hold = reading(self.index_dir)  # for the searcher's life: a newer index never deletes this one
        path = self.index_dir / INDEX_FILE
        with h5py.File(path, "r") as index:
            self.attrs = dict(index.attrs)
            mapped = {name: memory_map(path, index, name)
                      for name in ("clip_embeddings", "proposals", "centers", "widths", "clip_fractions")}
            self.durations = index["durations"][()].tolist()  # (V,)
            self.video_ids = [value.decode() for value in index["video_ids"][()]]
            self.paths = [value.decode() for value in index["paths"][()]]
            self.playable = [value.decode() for value in index["playable"][()]]
            self.is_frames = index["is_frames"][()].tolist()
        self.rows = {video_id: row for row, video_id in enumerate(self.video_ids)}
        self.clip_embeddings = mapped["clip_embeddings"]  # (V, N, d) float32, float16 in an approximate index
        self.proposals = mapped["proposals"]  # (V, K, d)
        self.centers, self.widths = mapped["centers"], mapped["widths"]  # (V, K)
        self.clip_fractions = mapped["clip_fractions"]  # (V, N, 2)
        if "search_method" not in self.attrs:
            raise SearchError(f"{path}: made by an older Index stage (before approximate search); rebuild it")
        self.method = str(self.attrs["search_method"])
        if self.method == "approximate":
            settings = ApproximateSettings(**json.loads(self.attrs["approximate"]))
            self.scorer = ApproximateScorer(self.index_dir / APPROXIMATE_FILE, self.clip_embeddings, settings)
        else:
            self.scorer = ExactScorer(np.array(self.clip_embeddings, dtype=np.float32))  # read into RAM once
        state = torch.load(self.attrs["checkpoint"], map_location=self.device, weights_only=True)
        self.model, train_config = load_model(state, self.device)
        self.model.eval()
        self.query_input = train_config.query_input
        self.text = json.loads(self.attrs["text"])
        self.encoder = text_encoder({**self.text, "device": str(self.device)})

    @property
    def inputs(self) -> dict:
        """What the model reads, for the page: visual backbone, subtitles, text encoder."""
        return {"visual": str(self.attrs["visual_backbone"]), "subtitles": bool(self.attrs["use_subtitles"]),
                "text": f"{self.text['encoder']}:{self.text['model']}", "query_input": self.query_input}

    def check_query(self, text: str) -> str:
        if not isinstance(text, str) or is_blank(text):
            raise SearchError("empty query: type what happens in the moment you are looking for")
        if len(text) > MAX_QUERY_CHARS:
            raise SearchError(f"query too long: {len(text)} characters (at most {MAX_QUERY_CHARS})")
        text = text.strip()
        for _, n_tokens in over_limit(self.encoder, [text]):  # cut as QueryFeatures cuts (extractors/text_policy.py)
            log.warning("query of %d tokens cut to %d (text.max_length), as in training", n_tokens,
                        self.encoder.max_length)
        return text

    @torch.no_grad()
    def encode_query(self, text: str) -> torch.Tensor:
        """(1, d) unit vector: the text encoder's features -> the model's query embedding."""
        # One short text is too little work to split: on CPU, more intra-op threads only wait for each
        # other, which costs 10x on a busy machine (benchmarks/search_speed.py). Scoring keeps them all.
        with intra_op_threads(1):
            (features,) = self.encoder.encode([text])
            if self.query_input == "tokens":
                query = torch.from_numpy(features.tokens)[None]  # (1, L, Dq)
            else:
                query = torch.from_numpy(features.pooled)[None]  # (1, Dq)
            return F.normalize(self.model.encode_queries(query.to(self.device)), dim=-1).cpu()  # (1, d)

    @torch.no_grad()
    def search(self, text: str, k: int = 10) -> list[Hit]:
        """The top-k videos for `text`, best first, each with its moment [start, end] in seconds."""
        if not isinstance(k, int) or not 1 <= k <= MAX_K:
            raise SearchError(f"k must be an integer from 1 to {MAX_K}, got {k!r}")
        query = self.encode_query(self.check_query(text))  # (1, d)
        scores, rows = self.scorer.top_k(query, k)  # (1, k')
        found = scores[0] > -torch.inf  # an approximate first stage may propose fewer than k videos
        return self.hits(query[0], scores[0][found], rows[0][found])

    def hits(self, query: torch.Tensor, scores: torch.Tensor, rows: torch.Tensor) -> list[Hit]:
        """Spans for the top rows of one (d,) query, by the span rule Evaluate uses."""
        def read(array: np.ndarray) -> torch.Tensor:  # the rows of the hits only, as float32
            return torch.from_numpy(np.asarray(array[rows.numpy()], dtype=np.float32))

        spans = moment_spans(self.span_rule, query.expand(len(rows), -1), read(self.clip_embeddings),
                             read(self.proposals), read(self.centers), read(self.widths),
                             clip_spans=read(self.clip_fractions))  # (k, 2) fractions
        return [Hit(rank, self.video_ids[row], score, span[0] * self.durations[row], span[1] * self.durations[row],
                    self.durations[row], self.paths[row], row, self.scorer.method)
                for rank, (row, score, span) in enumerate(zip(rows.tolist(), scores.tolist(), spans.tolist()), 1)]

