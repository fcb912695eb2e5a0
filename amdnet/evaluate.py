"""Scoring a split: every query against every video, in bounded chunks; metrics and predictions."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from amdnet.atomic import write_json_atomic, write_jsonl_atomic
from amdnet.config import (
    FeatureFiles,
    ModelConfig,
    TrainConfig,
    config_from_dict,
    resolve_device,
)
from amdnet.data import VideoCaptionDataset, collate_videos_with_captions, read_queries
from amdnet.metrics import moment_metrics, ranks_from_scores, retrieval_metrics, temporal_iou, top_k_videos
from amdnet.model import AMDNet
from amdnet.moments import DEFAULT_SPAN_RULE, SPAN_RULES, clip_spans, moment_spans

TOP_K_PREDICTIONS = 10
# (pairs, N, d) clip features gathered at a time for spans: about 25 MB at d = 384, small enough to be
# reused by the allocator (a fresh block of hundreds of MB per chunk costs more in page faults than the spans).
SPAN_PAIRS_PER_CHUNK = 512


@dataclass
class EncodedSplit:
    """Model outputs for a whole split, L2-normalised where cosines are taken."""
    queries: torch.Tensor  # (Nq, d) unit vectors
    relevant_video: torch.Tensor  # (Nq,) index of each query's video
    cap_ids: list[str]
    clip_features: torch.Tensor  # (Nv, N, d) unit vectors
    proposals: torch.Tensor  # (Nv, K, d) unit vectors
    centers: torch.Tensor  # (Nv, K)
    widths: torch.Tensor  # (Nv, K)
    clip_spans: torch.Tensor  # (Nv, N, 2) fractions of each video covered by each clip

    def spans(self, rule: str, query_index: torch.Tensor, video_index: torch.Tensor) -> torch.Tensor:
        """(P,) query and (P,) video indices -> (P, 2) [start, end] fractions of the video under `rule`.

        Pairs are taken SPAN_PAIRS_PER_CHUNK at a time: each chunk gathers (pairs, N, d) clip features.
        """
        chunks = [moment_spans(rule, self.queries[queries], self.clip_features[videos], self.proposals[videos],
                               self.centers[videos], self.widths[videos], clip_spans=self.clip_spans[videos])
                  for queries, videos in zip(query_index.split(SPAN_PAIRS_PER_CHUNK),
                                             video_index.split(SPAN_PAIRS_PER_CHUNK))]
        return torch.cat(chunks) if chunks else torch.empty(0, 2, device=self.queries.device)

    def check_finite(self, source: Path, dataset: VideoCaptionDataset):
        """Raises naming a video or caption whose outputs hold NaN or inf (a broken model), so that
        no NaN score or span is ever ranked or written."""
        for name in ("queries", "clip_features", "proposals", "centers", "widths"):
            values = getattr(self, name)
            bad = ~torch.isfinite(values.flatten(1)).all(dim=1)  # (rows,)
            if bad.any():
                first = int(bad.nonzero()[0])
                item = (f"caption {self.cap_ids[first]!r}" if name == "queries"
                        else f"video {dataset.video_ids[first]!r}")
                raise ValueError(f"{source}: the model gives non-finite {name} for {int(bad.sum())} of {len(bad)}"
                                 f" rows (first: {item}); the checkpoint is broken (e.g. diverged training or a"
                                 f" degenerate model config), so no scores or spans can be computed")


@torch.no_grad()
def encode_split(model: AMDNet, dataset: VideoCaptionDataset, device: torch.device,
                 batch_size: int, num_workers: int = 0) -> EncodedSplit:
    model.eval()
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                        collate_fn=collate_videos_with_captions)
    queries, relevant, cap_ids, clips, proposals, centers, widths = [], [], [], [], [], [], []
    for batch in loader:
        token_mask = None if batch["token_mask"] is None else batch["token_mask"].to(device)
        queries.append(F.normalize(model.encode_queries(batch["queries"].to(device), token_mask), dim=-1))
        relevant.append(batch["video_indices"][batch["caption_to_video"]])
        cap_ids += batch["cap_ids"]
        videos = model.encode_videos(batch["clips"].to(device))
        clips.append(F.normalize(videos.clip_features, dim=-1))
        proposals.append(F.normalize(videos.proposals, dim=-1))
        centers.append(videos.centers)
        widths.append(videos.widths)
    spans_by_frames = {frames: clip_spans(frames, dataset.map_size) for frames in set(dataset.num_frames)}
    spans = torch.stack([spans_by_frames[frames] for frames in dataset.num_frames]).to(device)  # (Nv, N, 2)
    return EncodedSplit(torch.cat(queries), torch.cat(relevant).to(device), cap_ids, torch.cat(clips),
                        torch.cat(proposals), torch.cat(centers), torch.cat(widths), spans)


def cosine_scores(queries: torch.Tensor, clip_features: torch.Tensor, chunk_size: int) -> torch.Tensor:
    """(q, d) x (Nv, N, d) unit vectors -> (q, Nv): best clip cosine, over chunks of videos."""
    scores = []
    for start in range(0, clip_features.shape[0], chunk_size):
        chunk = clip_features[start:start + chunk_size]  # (v, N, d)
        per_clip = queries @ chunk.flatten(0, 1).T  # (q, v*N)
        scores.append(per_clip.view(queries.shape[0], chunk.shape[0], -1).amax(dim=-1))  # (q, v)
    return torch.cat(scores, dim=1)


def rank_split(encoded: EncodedSplit, chunk_size: int, top_k: int = 0):
    """Ranks (Nq,) of every query's relevant video, plus the top_k (video indices, scores) per query."""
    ranks, top_videos, top_scores = [], [], []
    top_k = min(top_k, encoded.clip_features.shape[0])
    for start in range(0, encoded.queries.shape[0], chunk_size):
        scores = cosine_scores(encoded.queries[start:start + chunk_size], encoded.clip_features, chunk_size)
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
    reads. Holds the split's binned clips and query features (TVR's validation: about 170 MB)."""

    def __init__(self, dataset: VideoCaptionDataset):
        self.items = [dataset[index] for index in range(len(dataset))]
        self.split, self.map_size = dataset.split, dataset.map_size
        self.video_ids, self.num_frames, self.durations = dataset.video_ids, dataset.num_frames, dataset.durations

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict:
        return self.items[index]


def split_metrics(model: AMDNet, dataset: VideoCaptionDataset | PreloadedSplit, device: torch.device,
                  chunk_size: int, num_workers: int = 0) -> dict[str, float]:
    """Retrieval metrics of a split: its ranks only, no top-k lists, spans or predictions (what model
    selection needs). The trainer's validation and `evaluate` share the encoding and ranking path."""
    ranks, _, _ = rank_split(encode_split(model, dataset, device, chunk_size, num_workers), chunk_size)
    return retrieval_metrics(ranks.cpu().numpy())


def moment_quality(encoded: EncodedSplit, dataset: VideoCaptionDataset, ranks: torch.Tensor,
                   queries_path: Path) -> dict:
    """VCMR metrics of every span rule, over the queries with a ground-truth [start, end].

    A query's top-k holds one span per video, so it has a correct moment in its top k exactly when its
    own video is ranked <= k and that video's span has the IoU: only (query, own video) spans are needed.
    """
    truth_by_cap = {record["cap_id"]: record["ts"] for record in read_queries(queries_path, dataset.split)}
    with_truth = [q for q, cap_id in enumerate(encoded.cap_ids) if truth_by_cap.get(cap_id) is not None]
    if not with_truth:
        return {"n_queries": 0}
    query_index = torch.tensor(with_truth, device=ranks.device)  # (Nt,)
    video_index = encoded.relevant_video[query_index]  # (Nt,)
    durations = torch.tensor(dataset.durations, dtype=torch.float64, device=ranks.device)[video_index]  # (Nt,)
    truths = torch.tensor([truth_by_cap[encoded.cap_ids[q]] for q in with_truth], dtype=torch.float64,
                          device=ranks.device)  # (Nt, 2) seconds
    by_rule = {}
    for rule in SPAN_RULES:
        spans = encoded.spans(rule, query_index, video_index).double()  # (Nt, 2)
        ious = temporal_iou(spans * durations.unsqueeze(1), truths)  # (Nt,), in seconds as predictions show
        by_rule[rule] = moment_metrics(ranks[query_index].cpu().numpy(), ious.cpu().numpy())
    return {"n_queries": len(with_truth), "rules": by_rule}


def prediction_records(encoded: EncodedSplit, dataset: VideoCaptionDataset, ranks: list[int],
                       top_videos: torch.Tensor, top_scores: torch.Tensor, span_rule: str):
    """Yields one predictions.jsonl record per query; spans in seconds of the video."""
    num_queries, top_k = top_videos.shape
    query_index = torch.arange(num_queries, device=top_videos.device).repeat_interleave(top_k)  # (Nq*k,)
    fractions = encoded.spans(span_rule, query_index, top_videos.flatten()).double()  # (Nq*k, 2)
    durations = torch.tensor(dataset.durations, dtype=torch.float64, device=fractions.device)  # (Nv,)
    seconds = (fractions * durations[top_videos.flatten()].unsqueeze(1)).view(num_queries, top_k, 2).tolist()
    relevant = encoded.relevant_video.tolist()
    video_ids = dataset.video_ids
    for query, (video_row, score_row, span_row) in enumerate(zip(top_videos.tolist(), top_scores.tolist(), seconds)):
        top = [{"video_id": video_ids[video], "score": score, "span": span}
               for video, score, span in zip(video_row, score_row, span_row)]
        yield {"cap_id": encoded.cap_ids[query], "video_id": video_ids[relevant[query]], "rank": ranks[query],
               "top10": top}


def load_model(checkpoint: dict, device: torch.device) -> tuple[AMDNet, TrainConfig]:
    model_config = config_from_dict(ModelConfig, checkpoint["model_config"])
    train_config = config_from_dict(TrainConfig, checkpoint["train_config"])
    model = AMDNet(model_config, checkpoint["video_dim"], checkpoint["query_dim"])
    model.load_state_dict(checkpoint["model"])
    return model.to(device), train_config


def evaluate(checkpoint: Path, files: FeatureFiles, queries_path: Path, split: str, out_dir: Path,
             chunk_size: int = 1024, device: str = "auto", span_rule: str = DEFAULT_SPAN_RULE) -> dict:
    """Scores all queries of `split` against all its videos; writes metrics.json and predictions.jsonl.

    Predicted spans follow `span_rule` (amdnet/moments.py); metrics["moments"] holds the VCMR
    metrics of every rule, measured in the same run, and metrics["span_rule"] the one predictions use.
    """
    if span_rule not in SPAN_RULES:
        raise ValueError(f"unknown span rule {span_rule!r}; choose one of {', '.join(SPAN_RULES)}")
    checkpoint, out_dir = Path(checkpoint), Path(out_dir)
    torch_device = resolve_device(device)
    state = torch.load(checkpoint, map_location=torch_device, weights_only=True)
    model, train_config = load_model(state, torch_device)
    dataset = VideoCaptionDataset(files, queries_path, split, train_config.query_input,
                                  train_config.use_subtitles, model.config.map_size)
    if (dataset.video_dim, dataset.query_dim) != (state["video_dim"], state["query_dim"]):
        raise ValueError(f"{checkpoint} expects video/query dims {state['video_dim']}/{state['query_dim']},"
                         f" but {files.video} / {files.query} give {dataset.video_dim}/{dataset.query_dim}")
    encoded = encode_split(model, dataset, torch_device, chunk_size)
    encoded.check_finite(checkpoint, dataset)
    ranks, top_videos, top_scores = rank_split(encoded, chunk_size, TOP_K_PREDICTIONS)
    metrics = retrieval_metrics(ranks.cpu().numpy())
    metrics.update(n_queries=len(encoded.cap_ids), n_videos=len(dataset), split=split, span_rule=span_rule,
                   moments=moment_quality(encoded, dataset, ranks, queries_path))
    out_dir.mkdir(parents=True, exist_ok=True)
    write_jsonl_atomic(out_dir / "predictions.jsonl",
                       prediction_records(encoded, dataset, ranks.cpu().tolist(), top_videos, top_scores, span_rule))
    write_json_atomic(out_dir / "metrics.json", metrics)
    return metrics
