"""Retrieval and moment metrics from ranks and spans.

Order rule, the one place it is defined: videos are ordered by score, highest first, and equal
scores by video index, lowest first (NaN counts as -inf, -0.0 as 0.0). `ranks_from_scores` and
`top_k_videos` both follow it (`ordering_keys` spells it out as one integer key per score), so a
query's rank is its relevant video's position in its top-k list whenever that video is in the list.
"""
from __future__ import annotations

import numpy as np
import torch

RECALL_LEVELS = (1, 5, 10, 100)
IOU_THRESHOLDS = (0.5, 0.7)


def comparable_scores(scores: torch.Tensor) -> torch.Tensor:
    """float32 scores with NaN as -inf; comparisons already take -0.0 as equal to 0.0."""
    return scores.float().nan_to_num(nan=float("-inf"), posinf=float("inf"), neginf=float("-inf"))


def ordering_keys(scores: torch.Tensor) -> torch.Tensor:
    """(Nq, Nv) scores -> (Nq, Nv) int64 keys, distinct within a row, larger = earlier in the order.

    The high 32 bits are the float32 score's bits made monotonic as a signed integer (negative
    floats have their magnitude bits flipped); the low 32 bits rank equal scores by video index.
    """
    scores = comparable_scores(scores) + 0.0  # + 0.0 turns -0.0 into 0.0, so both have the same bits
    bits = scores.view(torch.int32)
    monotonic = torch.where(bits >= 0, bits, bits ^ 0x7FFFFFFF).to(torch.int64)  # (Nq, Nv)
    index = torch.arange(scores.shape[1], device=scores.device, dtype=torch.int64)  # (Nv,)
    return monotonic * 2 ** 32 + (2 ** 32 - 1 - index)


def ranks_from_scores(scores: torch.Tensor, relevant_video: torch.Tensor) -> torch.Tensor:
    """(Nq, Nv) scores and (Nq,) relevant video indices -> (Nq,) int64 ranks (1 = best).

    A video comes before the relevant one when it scores higher, or scores the same with a lower
    index: one comparison of each score against the relevant video's own score.
    """
    scores = comparable_scores(scores)  # (Nq, Nv)
    relevant = relevant_video.view(-1, 1)  # (Nq, 1)
    own = scores.gather(1, relevant)  # (Nq, 1)
    index = torch.arange(scores.shape[1], device=scores.device)  # (Nv,)
    ahead = torch.where(index < relevant, scores >= own, scores > own)  # (Nq, Nv)
    return ahead.sum(dim=1) + 1  # (Nq,)


def top_k_videos(scores: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(Nq, Nv) scores -> the first k videos (Nq, k) in the order rule, and their scores (Nq, k).

    torch.topk picks the k highest scores but orders ties arbitrarily. That choice is already the
    rule's unless a row has more videos tied at its k-th score than the list holds: those rows (rare
    with real-valued scores) are chosen again by their ordering keys. Each list is then sorted by
    score, ties by index.
    """
    comparable = comparable_scores(scores)  # (Nq, Nv)
    values, videos = comparable.topk(k, dim=1)  # (Nq, k) each
    kth = values[:, -1:]  # (Nq, 1)
    crowded = ((comparable == kth).sum(dim=1) > (values == kth).sum(dim=1)).nonzero().flatten()  # (rows,)
    if crowded.numel():
        videos[crowded] = ordering_keys(comparable[crowded]).topk(k, dim=1).indices
    videos = videos.sort(dim=1).values  # index order, so that the stable sort below keeps ties by index
    by_score = comparable.gather(1, videos).sort(dim=1, descending=True, stable=True).indices  # (Nq, k)
    videos = videos.gather(1, by_score)  # (Nq, k)
    return videos, scores.gather(1, videos)


def temporal_iou(spans: torch.Tensor, truths: torch.Tensor) -> torch.Tensor:
    """(P, 2) and (P, 2) [start, end] -> (P,) intersection over union; 0 where the union is empty."""
    intersection = (torch.minimum(spans[:, 1], truths[:, 1]) - torch.maximum(spans[:, 0], truths[:, 0])).clamp(min=0)
    union = (spans[:, 1] - spans[:, 0]) + (truths[:, 1] - truths[:, 0]) - intersection
    return torch.where(union > 0, intersection / union.clamp(min=1e-12), torch.zeros_like(union))


def moment_metrics(ranks, ious) -> dict[str, float | None]:
    """Video-corpus moment retrieval (TVR's VCMR protocol, one span per video) in percent.

    ranks: 1-based rank of each query's relevant video; ious: IoU of the span predicted in that
    video with the ground truth. "IoU>=t R@k": the relevant video is in the top k AND its span has
    IoU >= t. "mean IoU top-1": mean IoU over queries whose video is ranked first (None if none is).
    """
    ranks, ious = np.asarray(ranks, dtype=np.float64), np.asarray(ious, dtype=np.float64)
    if ranks.size == 0 or ranks.shape != ious.shape:
        raise ValueError(f"moment metrics need one IoU per ranked query, got {ious.shape} IoUs for {ranks.shape} ranks")
    metrics: dict[str, float | None] = {
        f"IoU>={threshold} R@{k}": float(100.0 * np.mean((ranks <= k) & (ious >= threshold)))
        for threshold in IOU_THRESHOLDS for k in RECALL_LEVELS}
    top1 = ranks == 1
    metrics["mean IoU top-1"] = float(ious[top1].mean()) if top1.any() else None
    return metrics


def retrieval_metrics(ranks) -> dict[str, float]:
    """R@1/5/10/100 in percent, SumR, median and mean rank of a vector of 1-based ranks."""
    ranks = np.asarray(ranks, dtype=np.float64)
    if ranks.size == 0:
        raise ValueError("cannot compute retrieval metrics without any query")
    metrics = {f"R@{k}": float(100.0 * np.mean(ranks <= k)) for k in RECALL_LEVELS}
    metrics["SumR"] = float(sum(metrics[f"R@{k}"] for k in RECALL_LEVELS))
    metrics["median_rank"] = float(np.median(ranks))
    metrics["mean_rank"] = float(np.mean(ranks))
    return metrics


def format_metrics(metrics: dict[str, float]) -> str:
    """One line, values to one decimal: 'R@1 13.5 | R@5 32.1 | ... | SumR 172.3 | MedR 12.0 | MnR 60.1'."""
    parts = [f"R@{k} {metrics[f'R@{k}']:.1f}" for k in RECALL_LEVELS]
    parts += [f"SumR {metrics['SumR']:.1f}", f"MedR {metrics['median_rank']:.1f}",
              f"MnR {metrics['mean_rank']:.1f}"]
    return " | ".join(parts)


def moment_table(moments: dict, span_rule: str) -> list[str]:
    """Markdown lines: the VCMR metrics of every span rule of `evaluate`'s metrics["moments"]."""
    if not moments.get("n_queries"):
        return ["No query of this split has a ground-truth [start, end]: no moment metrics."]
    columns = [f"IoU>={threshold} R@{k}" for threshold in IOU_THRESHOLDS for k in RECALL_LEVELS]
    lines = [f"Moments (VCMR, {moments['n_queries']} queries with a ground-truth span; predictions use"
             f" span rule {span_rule!r})", "",
             "| span rule | " + " | ".join(columns) + " | mean IoU top-1 |",
             "|---" * (len(columns) + 2) + "|"]
    for rule, values in moments["rules"].items():
        mean_iou = "-" if values["mean IoU top-1"] is None else f"{values['mean IoU top-1']:.3f}"
        cells = [f"{values[column]:.1f}" for column in columns] + [mean_iou]
        lines.append(f"| {rule}{' (used)' if rule == span_rule else ''} | " + " | ".join(cells) + " |")
    return lines
