"""Scoring a split with any registered model: every query against every video, in bounded chunks;
metrics and predictions.

The model's `represent_videos` and `represent_queries` run once per video and query; `score` gives the
ranks and top-10 lists, `spans` the moments, so Evaluate measures exactly what the search shows.
"""
from __future__ import annotations

import json
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset

from amdnet.atomic import write_json_atomic, write_text_atomic
from amdnet.config import FeatureFiles, resolve_device
from amdnet.data import (
    VideoCaptionDataset,
    VideoInputs,
    collate_videos_with_captions,
    input_dims,
    to_device,
)
from amdnet.metrics import moment_metrics, ranks_from_scores, retrieval_metrics, temporal_iou, top_k_videos
from amdnet.moments import clip_spans
from models.checkpoints import ModelSource
from models.configs import model_facts
from models.registry import RetrievalModel, Rows, concat_rows, take_rows

TOP_K_PREDICTIONS = 10


@contextmanager
def intra_op_threads(count: int):
    """torch's intra-op threads set to `count` inside the block, restored after it."""
    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


@dataclass
class EncodedSplit:
    """A model's representations of a whole split."""
    queries: torch.Tensor  # (Nq, d) represent_queries
    relevant_video: torch.Tensor  # (Nq,) index of each query's video
    cap_ids: list[str]
    videos: Rows  # represent_videos, Nv rows
    clip_spans: torch.Tensor | None  # (Nv, N, 2) fractions of each video covered by each clip; None: no clips

    @property
    def n_videos(self) -> int:
        return next(iter(self.videos.values())).shape[0]

    def spans(self, model: RetrievalModel, rule: str, query_index: torch.Tensor,
              video_index: torch.Tensor) -> torch.Tensor:
        """(P,) query and (P,) video indices -> (P, 2) [start, end] fractions of the video under `rule`.

        The model gets the split's video rows once and each pair's video index, pairs sorted by video: the
        pairs of a video meet its rows in one product (amdnet.moments.per_video_pairs), where gathering
        every pair's own copy of them would move (P, N, d) floats through memory twice; the rest of a rule
        runs on all pairs at once.
        """
        order = torch.sort(video_index, stable=True).indices  # (P,) pairs grouped by video
        # One thread: a video's products are small, and with more threads each of them waits for the
        # others (milliseconds each on a busy machine, against tens of microseconds on one thread).
        with intra_op_threads(1):
            grouped = model.spans(self.queries.index_select(0, query_index[order]), self.videos, self.clip_spans,
                                  rule, pair_videos=video_index[order])  # (P, 2) in `order`
        spans = torch.empty_like(grouped)
        spans[order] = grouped
        return spans

    def check_finite(self, source: str, dataset: VideoCaptionDataset):
        """Raises naming a video or caption whose representation holds NaN or inf (a broken model), so
        that no NaN score or span is ever ranked or written."""
        tensors = {"queries": self.queries, **self.videos}
        for name, values in tensors.items():
            if not values.is_floating_point():
                continue  # masks
            bad = ~torch.isfinite(values.flatten(1)).all(dim=1)  # (rows,)
            if bad.any():
                first = int(bad.nonzero()[0])
                item = (f"caption {self.cap_ids[first]!r}" if name == "queries"
                        else f"video {dataset.video_ids[first]!r}")
                raise ValueError(f"{source}: the model gives non-finite {name} for {int(bad.sum())} of {len(bad)}"
                                 f" rows (first: {item}); the checkpoint is broken (e.g. diverged training or a"
                                 f" degenerate model config), so no scores or spans can be computed")


@torch.no_grad()
def encode_split(model: RetrievalModel, dataset: VideoCaptionDataset, device: torch.device,
                 batch_size: int, num_workers: int = 0) -> EncodedSplit:
    model.eval()
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                        collate_fn=collate_videos_with_captions)
    queries, relevant, cap_ids, videos = [], [], [], []
    for batch in loader:
        batch = to_device(batch, device)
        queries.append(model.represent_queries(batch))
        relevant.append(batch["video_indices"][batch["caption_to_video"]])
        cap_ids += batch["cap_ids"]
        videos.append(model.represent_videos(batch))
    spans = None
    if "clips" in dataset.inputs.kinds:
        map_size = dataset.inputs.map_size
        spans_by_frames = {frames: clip_spans(frames, map_size) for frames in set(dataset.num_frames)}
        spans = torch.stack([spans_by_frames[frames] for frames in dataset.num_frames]).to(device)  # (Nv, N, 2)
    return EncodedSplit(torch.cat(queries), torch.cat(relevant), cap_ids, concat_rows(videos), spans)


def score_videos(model: RetrievalModel, queries: torch.Tensor, videos: Rows, chunk_size: int) -> torch.Tensor:
    """(q, d) queries x Nv represented videos -> (q, Nv) model scores, chunk_size videos at a time."""
    n_videos = next(iter(videos.values())).shape[0]
    # Chunks of videos bound the (q, v, ...) intermediates; a video's score does not depend on the others.
    return torch.cat([model.score(queries, take_rows(videos, slice(start, start + chunk_size)))
                      for start in range(0, n_videos, chunk_size)], dim=1)


@torch.no_grad()
def rank_split(model: RetrievalModel, encoded: EncodedSplit, chunk_size: int, top_k: int = 0):
    """Ranks (Nq,) of every query's relevant video, plus the top_k (video indices, scores) per query."""
    ranks, top_videos, top_scores = [], [], []
    top_k = min(top_k, encoded.n_videos)
    for start in range(0, encoded.queries.shape[0], chunk_size):
        scores = score_videos(model, encoded.queries[start:start + chunk_size], encoded.videos, chunk_size)
        ranks.append(ranks_from_scores(scores, encoded.relevant_video[start:start + chunk_size]))
        if top_k:
            videos, video_scores = top_k_videos(scores, top_k)
            top_videos.append(videos)
            top_scores.append(video_scores)
    if not top_k:
        return torch.cat(ranks), None, None
    return torch.cat(ranks), torch.cat(top_videos), torch.cat(top_scores)


class PreloadedSplit(Dataset):
    """Every item of a split, read once and kept in memory, for a split that is encoded again and again
    (the trainer's validation, every epoch): each pass then costs the model's compute, not the feature
    reads. Holds the split's video inputs and query features (AMDNet on TVR's validation: about 170 MB)."""

    def __init__(self, dataset: VideoCaptionDataset):
        self.items = [dataset[index] for index in range(len(dataset))]
        self.split, self.inputs = dataset.split, dataset.inputs
        self.video_ids, self.num_frames, self.durations = dataset.video_ids, dataset.num_frames, dataset.durations

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict:
        return self.items[index]


def split_metrics(model: RetrievalModel, dataset: VideoCaptionDataset | PreloadedSplit, device: torch.device,
                  chunk_size: int, num_workers: int = 0) -> dict[str, float]:
    """Retrieval metrics of a split: its ranks only, no top-k lists, spans or predictions (what model
    selection needs). The trainer's validation and `evaluate` share the encoding and ranking path."""
    encoded = encode_split(model, dataset, device, chunk_size, num_workers)
    ranks, _, _ = rank_split(model, encoded, chunk_size)
    return retrieval_metrics(ranks.cpu().numpy())


@torch.no_grad()
def moment_quality(model: RetrievalModel, encoded: EncodedSplit, dataset: VideoCaptionDataset,
                   ranks: torch.Tensor) -> dict:
    """VCMR metrics of every span rule of the model, over the queries with a ground-truth [start, end].

    A query's top-k holds one span per video, so it has a correct moment in its top k exactly when its
    own video is ranked <= k and that video's span has the IoU: only (query, own video) spans are needed.
    """
    truth_by_cap = dataset.truth_spans
    with_truth = [q for q, cap_id in enumerate(encoded.cap_ids) if truth_by_cap.get(cap_id) is not None]
    if not with_truth:
        return {"n_queries": 0}
    query_index = torch.tensor(with_truth, device=ranks.device)  # (Nt,)
    video_index = encoded.relevant_video[query_index]  # (Nt,)
    durations = torch.tensor(dataset.durations, dtype=torch.float64, device=ranks.device)[video_index]  # (Nt,)
    truths = torch.tensor([truth_by_cap[encoded.cap_ids[q]] for q in with_truth], dtype=torch.float64,
                          device=ranks.device)  # (Nt, 2) seconds
    by_rule = {}
    for rule in model.span_rules:
        spans = encoded.spans(model, rule, query_index, video_index).double()  # (Nt, 2)
        ious = temporal_iou(spans * durations.unsqueeze(1), truths)  # (Nt,), in seconds as predictions show
        by_rule[rule] = moment_metrics(ranks[query_index].cpu().numpy(), ious.cpu().numpy())
    return {"n_queries": len(with_truth), "rules": by_rule}


@torch.no_grad()
def prediction_lines(model: RetrievalModel, encoded: EncodedSplit, video_ids: list[str], durations: list[float],
                     ranks: list[int], top_videos: torch.Tensor, top_scores: torch.Tensor, span_rule: str):
    """Yields one predictions.jsonl line per query, spans in seconds of the video (`durations` and
    `video_ids` per video of the split):
    {"cap_id", "video_id", "rank", "top10": [{"video_id", "score", "span": [start, end]}, ...]}.

    Each line is the text json.dumps writes for that record (ids as JSON strings, floats as repr,
    scores finite after check_finite), formatted directly: a split has Nq x 10 entries.
    """
    num_queries, top_k = top_videos.shape
    query_index = torch.arange(num_queries, device=top_videos.device).repeat_interleave(top_k)  # (Nq*k,)
    fractions = encoded.spans(model, span_rule, query_index, top_videos.flatten()).double()  # (Nq*k, 2)
    durations = torch.tensor(durations, dtype=torch.float64, device=fractions.device)  # (Nv,)
    seconds = (fractions * durations[top_videos.flatten()].unsqueeze(1)).view(num_queries, top_k, 2).tolist()
    relevant = encoded.relevant_video.tolist()
    video_ids = [json.dumps(video_id) for video_id in video_ids]
    for query, (video_row, score_row, span_row) in enumerate(zip(top_videos.tolist(), top_scores.tolist(), seconds)):
        top = ", ".join(f'{{"video_id": {video_ids[video]}, "score": {score!r}, "span": [{start!r}, {end!r}]}}'
                        for video, score, (start, end) in zip(video_row, score_row, span_row))
        yield (f'{{"cap_id": {json.dumps(encoded.cap_ids[query])}, "video_id": {video_ids[relevant[query]]}, '
               f'"rank": {ranks[query]}, "top10": [{top}]}}\n')


def chosen_span_rule(source: ModelSource, span_rule: str | None) -> str:
    """`span_rule`, or the model's default when None; a rule the model does not know raises ValueError."""
    facts = model_facts(source.name)
    if span_rule is None:
        return facts.default_span_rule
    if span_rule not in facts.span_rules:
        raise ValueError(f"model {source.name!r} has no span rule {span_rule!r}; choose one of "
                         f"{', '.join(facts.span_rules)}")
    return span_rule


def evaluate(source: ModelSource, files: FeatureFiles, queries_path: Path, split: str, out_dir: Path,
             chunk_size: int = 1024, device: str = "auto", span_rule: str | None = None) -> dict:
    """Scores all queries of `split` against all its videos with the model of `source` (a Train
    checkpoint, or a training-free model's options); writes metrics.json and predictions.jsonl.

    Predicted spans follow `span_rule` (one of the model's `span_rules`; None: its default);
    metrics["moments"] holds the VCMR metrics of every rule of the model, measured in the same run, and
    metrics["span_rule"] the one predictions use.
    """
    span_rule = chosen_span_rule(source, span_rule)  # before any work
    out_dir = Path(out_dir)
    torch_device = resolve_device(device)
    model = source.load(*input_dims(files, source.query_input, source.use_subtitles), device=torch_device)
    dataset = VideoCaptionDataset(files, queries_path, split, VideoInputs.of(model), source.query_input,
                                  source.use_subtitles)
    encoded = encode_split(model, dataset, torch_device, chunk_size)
    encoded.check_finite(source.checkpoint or f"model {source.name}", dataset)
    ranks, top_videos, top_scores = rank_split(model, encoded, chunk_size, TOP_K_PREDICTIONS)
    metrics = retrieval_metrics(ranks.cpu().numpy())
    metrics.update(n_queries=len(encoded.cap_ids), n_videos=len(dataset), split=split, span_rule=span_rule,
                   moments=moment_quality(model, encoded, dataset, ranks))
    out_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out_dir / "predictions.jsonl", "".join(prediction_lines(
        model, encoded, dataset.video_ids, dataset.durations, ranks.cpu().tolist(), top_videos, top_scores,
        span_rule)))
    write_json_atomic(out_dir / "metrics.json", metrics)
    return metrics
