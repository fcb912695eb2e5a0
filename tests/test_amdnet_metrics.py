import math

import pytest
import torch

from amdnet.metrics import (
    format_metrics,
    moment_table,
    moment_metrics,
    ranks_from_scores,
    retrieval_metrics,
    temporal_iou,
    top_k_videos,
)


def test_ranks_break_ties_by_video_index_and_count_nan_as_minus_infinity():
    scores = torch.tensor([
        [0.9, 0.1, 0.2, 0.3],  # relevant 0, best: rank 1
        [0.5, 0.5, 0.1, 0.7],  # relevant 1, tied with video 0 (lower index, first) and beaten by 3: rank 3
        [0.5, 0.5, 0.1, 0.7],  # relevant 0, tied with video 1 (higher index, after): rank 2
        [float("nan"), 0.2, 0.3, 0.1],  # relevant 2, the NaN counts as -inf: rank 1
        [0.4, float("nan"), 0.3, 0.2],  # relevant 1 is NaN: everything beats it: rank 4
        [0.1, 0.1, 0.1, 0.1],  # all tied: rank = 1 + index
        [-0.0, 0.0, -1.0, float("-inf")],  # -0.0 equals 0.0: video 0 first
    ])
    ranks = ranks_from_scores(scores, torch.tensor([0, 1, 0, 2, 1, 3, 1]))
    assert ranks.tolist() == [1, 3, 2, 1, 4, 4, 2]


def reference_order(row: list[float]) -> list[int]:
    """The documented order, written independently: score descending (NaN last), then index ascending."""
    score = [-math.inf if math.isnan(value) else value for value in row]
    return sorted(range(len(row)), key=lambda video: (-score[video], video))


@pytest.mark.parametrize("seed", range(4))
def test_top_k_and_ranks_follow_the_same_order_with_many_ties(seed):
    generator = torch.Generator().manual_seed(seed)
    values = torch.tensor([-2.5, -1.0, -0.0, 0.0, 0.25, 1.0, 3.0, float("inf"), float("-inf"), float("nan")])
    scores = values[torch.randint(len(values), (12, 30), generator=generator)]  # (12, 30), ties everywhere
    videos, top_scores = top_k_videos(scores, 10)
    for query, row in enumerate(scores.tolist()):
        order = reference_order(row)
        assert videos[query].tolist() == order[:10]
        assert top_scores[query].tolist() == pytest.approx([row[v] for v in order[:10]], nan_ok=True)
        ranks = ranks_from_scores(scores[query].expand(30, -1), torch.arange(30))
        assert [int(ranks[video]) for video in order] == list(range(1, 31))


@pytest.mark.parametrize("levels", [2, 7, 100, 0])
def test_ranks_and_top_k_equal_a_plain_sort_of_random_scores(levels):
    """Random scores rounded to a few levels (0: not rounded), so that ties fall on the relevant video
    and across the k-th place of the top-k lists; compared with the documented order written plainly."""
    generator = torch.Generator().manual_seed(levels)
    scores = torch.rand((300, 57), generator=generator) * 2 - 1  # (300, 57)
    if levels:
        scores = (scores * levels).round() / levels
    relevant = torch.randint(57, (300,), generator=generator)
    videos, top_scores = top_k_videos(scores, 10)
    ranks = ranks_from_scores(scores, relevant)
    for query, row in enumerate(scores.tolist()):
        order = reference_order(row)
        assert videos[query].tolist() == order[:10]
        assert top_scores[query].tolist() == [row[video] for video in order[:10]]
        assert int(ranks[query]) == order.index(int(relevant[query])) + 1


def test_top_k_of_large_scores_keeps_index_order_among_equal_values():
    scores = torch.full((2, 100_000), 0.5)
    scores[0, 70_000] = 0.9
    videos, _ = top_k_videos(scores, 5)
    assert videos.tolist() == [[70_000, 0, 1, 2, 3], [0, 1, 2, 3, 4]]


@pytest.mark.parametrize("span, truth, iou", [
    ([0.0, 10.0], [0.0, 10.0], 1.0),  # identical
    ([0.0, 10.0], [5.0, 15.0], 5.0 / 15.0),  # half overlap
    ([2.0, 4.0], [0.0, 10.0], 0.2),  # inside
    ([0.0, 3.0], [3.0, 6.0], 0.0),  # touching
    ([7.0, 9.0], [1.0, 2.0], 0.0),  # disjoint
    ([1.0, 1.0], [1.0, 1.0], 0.0),  # empty union
    ([1.0, 5.0], [3.0, 3.0], 0.0),  # a point inside a span: no length in common
    ([0.0, 20.0], [5.0, 19.0], 14.0 / 20.0),  # whole video around a long moment
])
def test_temporal_iou_of_hand_computed_cases(span, truth, iou):
    assert temporal_iou(torch.tensor([span]), torch.tensor([truth])).tolist() == pytest.approx([iou])


def test_moment_metrics_need_the_video_in_the_top_k_and_the_iou():
    ranks = [1, 1, 3, 7, 50, 200]
    ious = [0.8, 0.6, 0.75, 0.4, 0.5, 0.9]
    metrics = moment_metrics(ranks, ious)
    assert metrics["IoU>=0.5 R@1"] == pytest.approx(100 * 2 / 6)
    assert metrics["IoU>=0.7 R@1"] == pytest.approx(100 * 1 / 6)
    assert metrics["IoU>=0.5 R@5"] == pytest.approx(100 * 3 / 6)
    assert metrics["IoU>=0.7 R@5"] == pytest.approx(100 * 2 / 6)
    assert metrics["IoU>=0.5 R@10"] == pytest.approx(100 * 3 / 6)  # rank 7 has IoU 0.4
    assert metrics["IoU>=0.5 R@100"] == pytest.approx(100 * 4 / 6)  # IoU exactly 0.5 counts
    assert metrics["IoU>=0.7 R@100"] == pytest.approx(100 * 2 / 6)  # rank 200 is out
    assert metrics["mean IoU top-1"] == pytest.approx(0.7)
    assert moment_metrics([2, 3], [1.0, 1.0])["mean IoU top-1"] is None
    with pytest.raises(ValueError, match="one IoU per ranked query"):
        moment_metrics([1, 2], [0.5])


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


def test_moment_table_lists_every_rule_and_marks_the_one_in_use():
    rules = {"anchor": moment_metrics([1, 2], [0.6, 0.8]), "whole": moment_metrics([1, 2], [0.3, 0.9])}
    lines = moment_table({"n_queries": 2, "rules": rules}, "whole")
    assert "2 queries with a ground-truth span" in lines[0] and "'whole'" in lines[0]
    assert lines[2].startswith("| span rule | IoU>=0.5 R@1 |") and lines[2].endswith("| mean IoU top-1 |")
    assert lines[4] == "| anchor | 50.0 | 100.0 | 100.0 | 100.0 | 0.0 | 50.0 | 50.0 | 50.0 | 0.600 |"
    assert lines[5].startswith("| whole (used) | 0.0 | 50.0 |") and lines[5].endswith("| 0.300 |")
    assert moment_table({"n_queries": 0}, "anchor") == [
        "No query of this split has a ground-truth [start, end]: no moment metrics."]
