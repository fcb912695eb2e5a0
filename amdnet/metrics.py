"""Retrieval metrics from ranks.

Rank rule (deterministic, pessimistic on ties): the rank of a query's relevant video is
1 + the number of OTHER videos whose score is >= the relevant video's score. A tie therefore
counts against the relevant video. NaN scores are treated as -inf before ranking.
"""
from __future__ import annotations

import numpy as np
import torch

RECALL_LEVELS = (1, 5, 10, 100)


def ranks_from_scores(scores: torch.Tensor, relevant_video: torch.Tensor) -> torch.Tensor:
    """(Nq, Nv) scores and (Nq,) relevant video indices -> (Nq,) int64 ranks (1 = best)."""
    scores = torch.nan_to_num(scores.float(), nan=float("-inf"))
    relevant_scores = scores.gather(1, relevant_video.view(-1, 1))  # (Nq, 1)
    at_least_as_good = (scores >= relevant_scores).sum(dim=1)  # (Nq,), includes the relevant video
    return at_least_as_good.to(torch.int64)


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
