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
from torch import nn

from amdnet.config import ModelConfig, TrainConfig, config_from_dict, resolve_device
from amdnet.model import AMDNet, FeatureProjection
from amdnet.moments import moment_spans
from amdnet.train import intra_op_threads
from extractors.text_policy import is_blank
from search.approximate import APPROXIMATE_FILE, ApproximateScorer, ApproximateSettings
from search.errors import SearchError
from search.index import INDEX_FILE, memory_map, reading

log = logging.getLogger("search")

# Longer texts are not queries (a pasted document, an attack on the encoder): refused before encoding.
MAX_QUERY_CHARS = 1000
MAX_K = 1000
# Texts per text-encoder call, always (see Searcher.encode_queries): what makes batched answers exact.
ENCODE_ROWS = 4


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


@dataclass(frozen=True)
class IndexFile:
    """What a search reads from index.h5: the per-video arrays memory-mapped, the small lists in RAM."""

    attrs: dict
    clip_embeddings: np.ndarray  # (V, N, d) float32, float16 in an approximate index
    proposals: np.ndarray  # (V, K, d)
    centers: np.ndarray  # (V, K)
    widths: np.ndarray  # (V, K)
    clip_fractions: np.ndarray  # (V, N, 2)
    durations: list[float]  # (V,) seconds
    video_ids: list[str]
    paths: list[str]
    playable: list[str]
    is_frames: list[bool]


def load_index(index_dir: Path) -> IndexFile:
    """The index of `index_dir` (the one place that knows index.h5's layout on the reading side)."""
    path = Path(index_dir) / INDEX_FILE
    try:
        return _read_index(path)
    except SearchError:
        raise
    except (OSError, KeyError, ValueError) as error:  # truncated, overwritten or deleted since it was published
        raise SearchError(f"{path}: damaged or unreadable ({type(error).__name__}: {' '.join(str(error).split())}); rebuild it with "
                          f"`python -m search index` (the same --dataset/--folder/--set), which redoes a "
                          f"damaged index") from None


def _read_index(path: Path) -> IndexFile:
    with h5py.File(path, "r") as index:
        attrs = dict(index.attrs)
        if "search_method" not in attrs:
            raise SearchError(f"{path}: made by an older Index stage (before approximate search); rebuild it")
        mapped = {name: memory_map(path, index, name)
                  for name in ("clip_embeddings", "proposals", "centers", "widths", "clip_fractions")}
        return IndexFile(attrs=attrs, **mapped, durations=index["durations"][()].tolist(),
                         video_ids=[value.decode() for value in index["video_ids"][()]],
                         paths=[value.decode() for value in index["paths"][()]],
                         playable=[value.decode() for value in index["playable"][()]],
                         is_frames=index["is_frames"][()].tolist())


class QueryHead(nn.Module):
    """The query side of a trained AMDNet alone: its query projection, loaded from the checkpoint,
    and AMDNet's own `encode_queries` (so a query embeds exactly as in Evaluate). The video side,
    most of the weights, is never built: the index holds what it computed."""

    encode_queries = AMDNet.encode_queries  # reads self.config.query_pooling and self.query_projection

    def __init__(self, checkpoint: dict):
        super().__init__()
        self.config = config_from_dict(ModelConfig, checkpoint["model_config"])
        self.query_projection = FeatureProjection(checkpoint["query_dim"], self.config.hidden_size,
                                                  self.config.input_dropout)
        prefix = "query_projection."
        self.query_projection.load_state_dict({key[len(prefix):]: value for key, value in checkpoint["model"].items()
                                               if key.startswith(prefix)})
        self.eval()


class Searcher:
    """Loads an index, the query head of its model and its text encoder once; `search` answers queries.

    Thread-safe: `answer` (scoring and spans) may run in many threads at once (torch releases the
    GIL); `encode_queries` must run in one thread at a time (the tokenizer is not thread-safe), which
    search/api.py's `QueryBatcher` ensures while batching the queries that wait.
    """

    def __init__(self, index_dir: Path, span_rule: str, device: str = "cpu"):
        from pipeline.backbones import text_encoder

        self.index_dir = Path(index_dir)
        self.span_rule = span_rule
        self.device = resolve_device(device)
        self.hold = reading(self.index_dir)  # for the searcher's life: a newer index never deletes this one
        self.index = load_index(self.index_dir)
        self.attrs, self.durations, self.video_ids = self.index.attrs, self.index.durations, self.index.video_ids
        self.paths, self.playable, self.is_frames = self.index.paths, self.index.playable, self.index.is_frames
        self.clip_embeddings = self.index.clip_embeddings  # (V, N, d)
        self.rows = {video_id: row for row, video_id in enumerate(self.video_ids)}
        self.method = str(self.attrs["search_method"])
        if self.method == "approximate":
            settings = ApproximateSettings(**json.loads(self.attrs["approximate"]))
            self.scorer = ApproximateScorer(self.index_dir / APPROXIMATE_FILE, self.index.clip_embeddings, settings)
        else:
            self.scorer = ExactScorer(np.array(self.index.clip_embeddings, dtype=np.float32))  # read into RAM once
        state = torch.load(self.attrs["checkpoint"], map_location="cpu", weights_only=True, mmap=True)
        self.head = QueryHead(state).to(self.device)
        self.query_input = config_from_dict(TrainConfig, state["train_config"]).query_input
        self.text = json.loads(self.attrs["text"])
        self.encoder = text_encoder({**self.text, "device": str(self.device)})

    @property
    def inputs(self) -> dict:
        """What the model reads, for the page: visual backbone, subtitles, text encoder."""
        return {"visual": str(self.attrs["visual_backbone"]), "subtitles": bool(self.attrs["use_subtitles"]),
                "text": f"{self.text['encoder']}:{self.text['model']}", "query_input": self.query_input}

    def check_query(self, text: str) -> str:
        """The query as it is encoded (stripped); SearchError when it is empty or too long."""
        self.query_shape(text)
        return text.strip()

    def query_shape(self, text: str) -> int:
        """How many tokens the encoder reads of `text` (0 for encoders that pad every text to one
        length): queries of one shape are encoded together exactly as each alone. SearchError when
        the query is empty or over MAX_QUERY_CHARS; a query over `text.max_length` tokens is cut as
        QueryFeatures cuts (extractors/text_policy.py), and the cut is logged."""
        if not isinstance(text, str) or is_blank(text):
            raise SearchError("empty query: type what happens in the moment you are looking for")
        if len(text) > MAX_QUERY_CHARS:
            raise SearchError(f"query too long: {len(text)} characters (at most {MAX_QUERY_CHARS})")
        (n_tokens,) = self.encoder.token_counts([text.strip()])
        limit = self.encoder.max_length
        if n_tokens > limit:
            log.warning("query of %d tokens cut to %d (text.max_length), as in training", n_tokens, limit)
        return min(n_tokens, limit) if self.text["encoder"] == "hf-text" else 0

    @torch.no_grad()
    def encode_queries(self, texts: list[str]) -> torch.Tensor:
        """(B, d) unit vectors: the text encoder's features -> the model's query embeddings.

        Texts of one `query_shape` give bit for bit what each gives alone: every model call takes
        exactly ENCODE_ROWS texts (a short batch is filled with copies of its first text), so the
        matrix products have one shape whatever the batch, and one intra-op thread. (Products of
        other shapes differ in the last bits.) A lone query costs about 15 % more than unpadded;
        four waiting queries cost about a quarter each."""
        # A few short texts are too little work to split: on CPU, more intra-op threads only wait for
        # each other, which costs 10x on a busy machine (benchmarks/search_speed.py). Scoring keeps them all.
        chunks = [texts[start:start + ENCODE_ROWS] for start in range(0, len(texts), ENCODE_ROWS)]
        with intra_op_threads(1):
            return torch.cat([self._encode_rows(chunk + chunk[:1] * (ENCODE_ROWS - len(chunk)))[:len(chunk)]
                              for chunk in chunks])

    def _encode_rows(self, texts: list[str]) -> torch.Tensor:
        features = self.encoder.encode(texts)
        if self.query_input == "tokens":
            tokens = [torch.from_numpy(feature.tokens) for feature in features]  # (L_i, Dq) each
            queries = nn.utils.rnn.pad_sequence(tokens, batch_first=True)  # (B, L, Dq)
            mask = nn.utils.rnn.pad_sequence([torch.ones(len(t), dtype=torch.bool) for t in tokens],
                                             batch_first=True)  # (B, L)
            embedded = self.head.encode_queries(queries.to(self.device), mask.to(self.device))
        else:
            queries = torch.from_numpy(np.stack([feature.pooled for feature in features]))  # (B, Dq)
            embedded = self.head.encode_queries(queries.to(self.device))
        return F.normalize(embedded, dim=-1).cpu()  # (B, d)

    def encode_query(self, text: str) -> torch.Tensor:
        """(1, d) unit vector of one query."""
        return self.encode_queries([text])

    @staticmethod
    def check_k(k: int) -> None:
        if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= MAX_K:
            raise SearchError(f"k must be an integer from 1 to {MAX_K}, got {k!r}")

    def search(self, text: str, k: int = 10) -> list[Hit]:
        """The top-k videos for `text`, best first, each with its moment [start, end] in seconds."""
        self.check_k(k)
        return self.answer(self.encode_query(self.check_query(text)), k)

    @torch.no_grad()
    def answer(self, query: torch.Tensor, k: int) -> list[Hit]:
        """The top-k hits of one (1, d) encoded query; safe to call from many threads at once."""
        scores, rows = self.scorer.top_k(query, k)  # (1, k')
        found = scores[0] > -torch.inf  # an approximate first stage may propose fewer than k videos
        return self.hits(query[0], scores[0][found], rows[0][found])

    def hits(self, query: torch.Tensor, scores: torch.Tensor, rows: torch.Tensor) -> list[Hit]:
        """Spans for the top rows of one (d,) query, by the span rule Evaluate uses."""
        def read(array: np.ndarray) -> torch.Tensor:  # the rows of the hits only, as float32
            return torch.from_numpy(np.asarray(array[rows.numpy()], dtype=np.float32))

        index = self.index
        spans = moment_spans(self.span_rule, query.expand(len(rows), -1), read(index.clip_embeddings),
                             read(index.proposals), read(index.centers), read(index.widths),
                             clip_spans=read(index.clip_fractions))  # (k, 2) fractions
        return [Hit(rank, self.video_ids[row], score, span[0] * self.durations[row], span[1] * self.durations[row],
                    self.durations[row], self.paths[row], row, self.scorer.method)
                for rank, (row, score, span) in enumerate(zip(rows.tolist(), scores.tolist(), spans.tolist()), 1)]
