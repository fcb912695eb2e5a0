"""Span rules: each checked against a case whose right answer is known by construction."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from amdnet.data import bin_clips
from amdnet.moments import GROW_FRACTION, SPAN_RULES, clip_spans, moment_spans, uniform_clip_spans


def unit_vectors(*shape, seed=0) -> torch.Tensor:
    return F.normalize(torch.randn(*shape, generator=torch.Generator().manual_seed(seed)), dim=-1)


def clips_with_cosines(query: torch.Tensor, cosines: list[float]) -> torch.Tensor:
    """(N, d) unit clip features whose cosine with the unit `query` (d,) are exactly `cosines`."""
    orthogonal = F.normalize(torch.randn(query.shape[0], generator=torch.Generator().manual_seed(1)), dim=0)
    orthogonal = F.normalize(orthogonal - (orthogonal @ query) * query, dim=0)
    cos = torch.tensor(cosines).unsqueeze(1)  # (N, 1)
    return cos * query + (1 - cos ** 2).sqrt() * orthogonal


@pytest.mark.parametrize("num_frames", [1, 2, 5, 31, 32, 33, 45, 100, 301])
@pytest.mark.parametrize("map_size", [8, 32])
def test_clip_spans_cover_exactly_the_rows_each_clip_averages(num_frames, map_size):
    # bin_clips of an identity matrix shows which feature rows each clip is made of.
    weights = bin_clips(np.eye(num_frames, dtype=np.float32), map_size)  # (N, T)
    spans = clip_spans(num_frames, map_size).numpy()
    for clip, row_weights in enumerate(weights):
        rows = np.flatnonzero(row_weights)
        assert rows.size and np.all(np.diff(rows) == 1), "a clip is a contiguous run of rows"
        assert spans[clip] == pytest.approx([rows[0] / num_frames, (rows[-1] + 1) / num_frames])


def test_uniform_clip_spans_split_the_video_evenly():
    assert uniform_clip_spans(4).tolist() == [[0.0, 0.25], [0.25, 0.5], [0.5, 0.75], [0.75, 1.0]]


@pytest.mark.parametrize("seed", range(5))
def test_anchor_span_is_the_moment_whose_proposal_matches_best(seed):
    num_pairs, num_clips, num_moments, dim = 6, 8, 4, 16
    queries = unit_vectors(num_pairs, dim, seed=seed)
    best = torch.randint(num_moments, (num_pairs,), generator=torch.Generator().manual_seed(seed))
    # Every proposal is a noisy copy of the query's opposite, except the best one, a near copy of it.
    noise = unit_vectors(num_pairs, num_moments + 1, dim, seed=seed + 9)
    proposals = F.normalize(-queries.unsqueeze(1) + 0.5 * noise[:, 1:], dim=-1)  # (P, K, d)
    proposals[torch.arange(num_pairs), best] = F.normalize(queries + 0.1 * noise[:, 0], dim=-1)
    centers = torch.rand(num_pairs, num_moments, generator=torch.Generator().manual_seed(seed + 1)) * 0.6 + 0.2
    widths = torch.rand(num_pairs, num_moments, generator=torch.Generator().manual_seed(seed + 2)) * 0.3 + 0.05
    spans = moment_spans("anchor", queries, unit_vectors(num_pairs, num_clips, dim), proposals, centers, widths)
    center, width = centers[torch.arange(num_pairs), best], widths[torch.arange(num_pairs), best]
    expected = torch.stack([center - width / 2, center + width / 2], dim=1)
    assert torch.allclose(spans, expected)


def test_anchor_spans_are_clamped_to_the_video():
    query = torch.tensor([[1.0, 0.0]])
    proposals = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])
    spans = moment_spans("anchor", query, query.expand(1, 3, 2), proposals, torch.tensor([[0.1, 0.5]]),
                         torch.tensor([[0.6, 0.2]]))
    assert spans.tolist() == [[0.0, pytest.approx(0.4)]]


def test_best_clip_span_is_the_span_of_the_clip_that_matches_best():
    query = unit_vectors(1, 8)[0]
    clips = clips_with_cosines(query, [0.1, 0.3, -0.2, 0.9, 0.4, 0.8])
    arguments = (query.unsqueeze(0), clips.unsqueeze(0), unit_vectors(1, 2, 8), torch.rand(1, 2), torch.rand(1, 2))
    assert moment_spans("best_clip", *arguments)[0].tolist() == pytest.approx([3 / 6, 4 / 6])
    exact = clip_spans(45, 6)  # clip 3 of 6 over 45 rows: rows round(22.5)=22 .. round(30)=30
    assert moment_spans("best_clip", *arguments, clip_spans=exact)[0].tolist() == pytest.approx([22 / 45, 30 / 45])


@pytest.mark.parametrize("cosines, fraction, first, last", [
    ([0.1, 0.85, 0.95, 1.0, 0.5, 0.92], 0.9, 2, 3),  # 0.92 is above the bar but not contiguous
    ([0.95, 0.96, 0.97, 1.0, 0.99, 0.98], 0.9, 0, 5),  # the whole video
    ([0.2, 0.5, 0.4, 0.3], 0.9, 1, 1),  # nothing near the best: the best clip alone
    ([0.2, 0.5, 0.4, 0.3], 0.5, 1, 3),  # 0.4 and 0.3 >= 0.25 > 0.2
    ([0.2, 0.5, 0.4, 0.2], 0.5, 1, 2),
    ([-0.4, -0.3, -0.35, -0.9], 0.9, 1, 1),  # negative best: the best clip alone
])
def test_grown_span_is_the_contiguous_run_above_the_fraction_of_the_best(cosines, fraction, first, last):
    query = unit_vectors(1, 8)[0]
    clips = clips_with_cosines(query, cosines).unsqueeze(0)
    span = moment_spans("grown", query.unsqueeze(0), clips, unit_vectors(1, 2, 8), torch.rand(1, 2),
                        torch.rand(1, 2), grow_fraction=fraction)
    n = len(cosines)
    assert span[0].tolist() == pytest.approx([first / n, (last + 1) / n])


def test_grown_with_default_fraction_contains_the_best_clip_for_many_pairs():
    queries, clips = unit_vectors(50, 12, seed=3), unit_vectors(50, 32, 12, seed=4)
    arguments = (queries, clips, unit_vectors(50, 4, 12), torch.rand(50, 4), torch.rand(50, 4))
    grown, best = moment_spans("grown", *arguments), moment_spans("best_clip", *arguments)
    assert GROW_FRACTION < 1
    assert torch.all(grown[:, 0] <= best[:, 0]) and torch.all(grown[:, 1] >= best[:, 1])
    assert torch.any(grown[:, 1] - grown[:, 0] > best[:, 1] - best[:, 0])


def test_whole_rule_is_the_whole_video():
    arguments = (unit_vectors(3, 4), unit_vectors(3, 5, 4), unit_vectors(3, 2, 4), torch.rand(3, 2), torch.rand(3, 2))
    assert moment_spans("whole", *arguments).tolist() == [[0.0, 1.0]] * 3


def test_ties_choose_the_first_clip_and_moment():
    query = torch.tensor([[1.0, 0.0]])
    clips = torch.tensor([[[0.0, 1.0], [1.0, 0.0], [1.0, 0.0]]])  # clips 1 and 2 tie
    proposals = torch.tensor([[[1.0, 0.0], [1.0, 0.0]]])  # moments 0 and 1 tie
    arguments = (query, clips, proposals, torch.tensor([[0.3, 0.7]]), torch.tensor([[0.2, 0.2]]))
    assert moment_spans("best_clip", *arguments)[0].tolist() == pytest.approx([1 / 3, 2 / 3])
    assert moment_spans("anchor", *arguments)[0].tolist() == pytest.approx([0.2, 0.4])


def test_every_rule_gives_ordered_spans_inside_the_video():
    arguments = (unit_vectors(20, 6, seed=5), unit_vectors(20, 7, 6, seed=6), unit_vectors(20, 3, 6, seed=7),
                 torch.rand(20, 3), torch.rand(20, 3))
    for rule in SPAN_RULES:
        spans = moment_spans(rule, *arguments, clip_spans=clip_spans(23, 7))
        assert spans.shape == (20, 2)
        assert torch.all((0 <= spans[:, 0]) & (spans[:, 0] <= spans[:, 1]) & (spans[:, 1] <= 1)), rule


def test_unknown_rule_is_refused_by_name():
    with pytest.raises(ValueError, match="unknown span rule 'best'.*anchor, whole, best_clip, grown"):
        moment_spans("best", unit_vectors(1, 2), unit_vectors(1, 3, 2), unit_vectors(1, 2, 2), torch.rand(1, 2),
                     torch.rand(1, 2))
