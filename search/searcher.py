"""The one search function: query text -> the top-k videos of an index, each with its moment.

    searcher = Searcher(index_dir)                      # span rule: the model's default
    hits = searcher.search("a red square moving left", k=5)

The model is the index's (its ``model_source``: a Train checkpoint, or a training-free model's name
and options), built as Evaluate builds it. The query goes through exactly what Evaluate saw: the
same text encoder and settings as the QueryFeatures stage (recorded in the index), the same pooled
vector or tokens (the source's query input), the model's `represent_queries`; a video's score is the
model's `score` of the query and the video's rows, and the moment its `spans` with the same rule
Evaluate uses. So scores, ranks and spans equal Evaluate's for the same query and videos.

Scoring is one part, chosen by the index (its ``search_method``): for AMDNet, `ExactScorer`, a single
matrix product over all clips of all videos, a max over each video's clips (AMDNet's score exactly)
and a top-k, or, for large indexes, `search.approximate.ApproximateScorer`, a FAISS first stage whose
candidate videos are re-scored exactly; for every other model `ModelScorer`, the model's own `score`
over every row, in chunks of videos. Every hit says which one answered. Only an exact scorer holds
the rows in RAM; everything else is memory-mapped and read for the top hits only.
"""
from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import h5py
import numpy as np
import torch
from torch import nn

from amdnet.config import resolve_device
from amdnet.train import intra_op_threads
from extractors.text_policy import is_blank
from models.checkpoints import ModelSource
from search.approximate import APPROXIMATE_FILE, ApproximateScorer, ApproximateSettings
from search.errors import SearchError
from search.index import CLIP_ROWS, INDEX_FILE, ROWS, memory_map, reading

log = logging.getLogger("search")

# Longer texts are not queries (a pasted document, an attack on the encoder): refused before encoding.
MAX_QUERY_CHARS = 1000
MAX_K = 1000
# Texts per text-encoder call, always (see Searcher.encode_queries): what makes batched answers exact.
ENCODE_ROWS = 4
# Elements of the rows one ModelScorer call reads at most (2^25 float32 values: 128 MiB): bounds what
# the model's scoring of one chunk of videos holds, however large the index.
SCORE_ELEMENTS = 2 ** 25


@dataclass(frozen=True)
class Hit:
    rank: int  # 1 = best
    video_id: str
    score: float  # the model's score of the query and the video (AMDNet: the best clip's cosine)
    start: float  # the moment, seconds
    end: float
    duration: float
    path: str  # the source: a video file or a folder of frames
    row: int  # the video's row in the index (how the server addresses it)
    method: str  # "exact" or "approximate": which scorer found it

    def to_dict(self) -> dict:
        return asdict(self)


class ExactScorer:
    """Every video's AMDNet score for a batch of queries: (q, d) x (V*N, d) -> (q, V) max over clips
    -> top-k (amdnet.losses.max_dot_scores, over the whole index in one product)."""

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


class ModelScorer:
    """Every video's score by the model's own `score`, for a model without a faster path: the rows,
    read into RAM once, scored SCORE_ELEMENTS of row values at a time; same interface as ExactScorer."""

    method = "exact"

    def __init__(self, model, rows: dict[str, np.ndarray], device: torch.device):
        self.model = model
        self.rows = {key: torch.from_numpy(np.array(value)).to(device) for key, value in rows.items()}  # (V, ...)
        self.n_videos = len(next(iter(self.rows.values())))
        per_video = sum(value[0].numel() for value in self.rows.values())
        self.step = max(1, SCORE_ELEMENTS // per_video)  # videos per score call

    def top_k(self, queries: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(q, d) unit queries -> scores (q, k') and video rows (q, k'), best first; k' = min(k, V)."""
        queries = queries.to(next(iter(self.rows.values())).device)
        scores = torch.cat([self.model.score(queries, {key: value[start:start + self.step]
                                                       for key, value in self.rows.items()})
                            for start in range(0, self.n_videos, self.step)], dim=1)  # (q, V)
        best = scores.topk(min(k, self.n_videos), dim=1)
        return best.values.cpu(), best.indices.cpu()


@dataclass(frozen=True)
class IndexFile:
    """What a search reads from index.h5: the per-video arrays memory-mapped, the small lists in RAM."""

    attrs: dict
    rows: dict[str, np.ndarray]  # the model's represent_videos rows, (V, ...) each
    clip_fractions: np.ndarray | None  # (V, N, 2) for a model that reads clips
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
        if "model_source" not in attrs:
            raise SearchError(f"{path}: made by an older Index stage (before the model registry); rebuild it")
        rows = {key: memory_map(path, index, f"{ROWS}/{key}") for key in index[ROWS]}
        fractions = memory_map(path, index, "clip_fractions") if "clip_fractions" in index else None
        return IndexFile(attrs=attrs, rows=rows, clip_fractions=fractions, durations=index["durations"][()].tolist(),
                         video_ids=[value.decode() for value in index["video_ids"][()]],
                         paths=[value.decode() for value in index["paths"][()]],
                         playable=[value.decode() for value in index["playable"][()]],
                         is_frames=index["is_frames"][()].tolist())


class Searcher:
    """Loads an index, its model and its text encoder once; `search` answers queries.

    Thread-safe: `answer` (scoring and spans) may run in many threads at once (torch releases the
    GIL); `encode_queries` must run in one thread at a time (the tokenizer is not thread-safe), which
    search/api.py's `QueryBatcher` ensures while batching the queries that wait.
    """

    def __init__(self, index_dir: Path, span_rule: str | None = None, device: str = "cpu"):
        from pipeline.backbones import text_encoder

        self.index_dir = Path(index_dir)
        self.device = resolve_device(device)
        self.hold = reading(self.index_dir)  # for the searcher's life: a newer index never deletes this one
        self.index = load_index(self.index_dir)
        self.attrs, self.durations, self.video_ids = self.index.attrs, self.index.durations, self.index.video_ids
        self.paths, self.playable, self.is_frames = self.index.paths, self.index.playable, self.index.is_frames
        self.rows = {video_id: row for row, video_id in enumerate(self.video_ids)}
        self.source = ModelSource.from_json(self.attrs["model_source"])
        self.query_input = self.source.query_input
        self.text = json.loads(self.attrs["text"])
        self.encoder = text_encoder({**self.text, "device": str(self.device)})
        self.model = self._load_model()
        self.span_rule = self.model.default_span_rule if span_rule is None else span_rule
        if self.span_rule not in self.model.span_rules:
            raise SearchError(f"span rule {self.span_rule!r}: model {self.source.name!r} has none such; choose one "
                              f"of {', '.join(self.model.span_rules)} (evaluate.span_rule)")
        self.method = str(self.attrs["search_method"])
        self.scorer = self._scorer()

    def _load_model(self):
        """The index's model, in eval mode, for its video inputs and this encoder's query vectors."""
        try:
            return self.source.load(int(self.attrs["video_dim"]), int(self.encoder.dim), device=str(self.device))
        except (OSError, ValueError, KeyError, RuntimeError) as error:  # a checkpoint gone, changed or broken
            raise SearchError(f"{self.index_dir / INDEX_FILE}: cannot load its model ({' '.join(str(error).split())}); "
                              f"rebuild the index with `python -m search index`") from None

    def _scorer(self):
        if self.method == "approximate":
            settings = ApproximateSettings(**json.loads(self.attrs["approximate"]))
            return ApproximateScorer(self.index_dir / APPROXIMATE_FILE, self.clip_embeddings, settings)
        if self.source.name == "amdnet":
            return ExactScorer(np.array(self.clip_embeddings, dtype=np.float32))  # read into RAM once
        return ModelScorer(self.model, self.index.rows, self.device)

    @property
    def clip_embeddings(self) -> np.ndarray:
        """AMDNet's (V, N, d) unit clip embeddings, memory-mapped: what its exact and approximate scorers
        and recall (search/recall.py) read; SearchError for another model."""
        key = CLIP_ROWS.split("/", 1)[1]
        if self.source.name != "amdnet" or key not in self.index.rows:
            raise SearchError(f"model {self.source.name!r} is searched by its own score only: approximate search "
                              f"and its recall are AMDNet's")
        return self.index.rows[key]

    @property
    def inputs(self) -> dict:
        """What the model reads, for the page: model, visual backbone, subtitles, text encoder."""
        return {"model": self.source.name, "visual": str(self.attrs["visual_backbone"]),
                "subtitles": bool(self.attrs["use_subtitles"]),
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
        """(B, d): the text encoder's features -> the model's `represent_queries`.

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
        """The query batch of these texts as the data layer builds it (amdnet.data, models/inputs.py)."""
        features = self.encoder.encode(texts)
        if self.query_input == "tokens":
            tokens = [torch.from_numpy(feature.tokens) for feature in features]  # (L_i, Dq) each
            queries = nn.utils.rnn.pad_sequence(tokens, batch_first=True)  # (B, L, Dq)
            mask = nn.utils.rnn.pad_sequence([torch.ones(len(t), dtype=torch.bool) for t in tokens],
                                             batch_first=True)  # (B, L)
            batch = {"queries": queries.to(self.device), "token_mask": mask.to(self.device)}
        else:
            batch = {"queries": torch.from_numpy(np.stack([feature.pooled for feature in features])).to(self.device)}  # (B, Dq)
        return self.model.represent_queries(batch).cpu()  # (B, d)

    def encode_query(self, text: str) -> torch.Tensor:
        """(1, d): one query."""
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
        """Spans for the top rows of one (d,) query: the model's `spans` with the rule Evaluate uses."""
        def read(array: np.ndarray) -> torch.Tensor:  # the rows of the hits only; floats as float32
            values = np.asarray(array[rows.numpy()])
            return torch.from_numpy(values.astype(np.float32) if values.dtype.kind == "f" else values).to(self.device)

        fractions = None if self.index.clip_fractions is None else read(self.index.clip_fractions)
        spans = self.model.spans(query.to(self.device).expand(len(rows), -1),
                                 {key: read(array) for key, array in self.index.rows.items()},
                                 fractions, self.span_rule).cpu()  # (k, 2) fractions
        return [Hit(rank, self.video_ids[row], score, span[0] * self.durations[row], span[1] * self.durations[row],
                    self.durations[row], self.paths[row], row, self.scorer.method)
                for rank, (row, score, span) in enumerate(zip(rows.tolist(), scores.tolist(), spans.tolist()), 1)]
