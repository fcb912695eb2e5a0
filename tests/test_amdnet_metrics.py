import math

import pytest
import torch

from amdnet.metrics import format_metrics, ranks_from_scores, retrieval_metrics


def test_ranks_with_ties_against_the_relevant_video_and_nan():
    scores = torch.tensor([
        [0.9, 0.1, 0.2, 0.3],  # relevant 0, best: rank 1
        [0.5, 0.5, 0.1, 0.7],  # relevant 1, tied with 0 and beaten by 3: rank 3
        [float("nan"), 0.2, 0.3, 0.1],  # relevant 2, the NaN counts as -inf: rank 1
        [0.4, float("nan"), 0.3, 0.2],  # relevant 1 is NaN: everything beats it: rank 4
        [0.1, 0.1, 0.1, 0.1],  # all tied: rank 4
    ])
    ranks = ranks_from_scores(scores, torch.tensor([0, 1, 2, 1, 3]))
    assert ranks.tolist() == [1, 3, 1, 4, 4]


def test_retrieval_metrics_from_known_ranks():
    ranks = [1, 2, 6, 11, 150]
    metrics = retrieval_metrics(ranks)
    assert metrics["R@1"] == pytest.approx(20.0)
    assert metrics["R@5"] == pytest.approx(40.0)
    assert metrics["R@10"] == pytest.approx(60.0)
    assert metrics["R@100"] == pytest.approx(80.0)
    assert metrics["SumR"] == pytest.approx(200.0)
    assert metrics["median_rank"] == 6.0
    assert metrics["mean_rank"] == pytest.approx(34.0)
    assert not math.isnan(metrics["mean_rank"])


def test_metrics_are_printed_to_one_decimal():
    line = format_metrics(retrieval_metrics([1, 2, 3]))
    assert "R@1 33.3" in line and "SumR 333.3" in line and "MedR 2.0" in line
