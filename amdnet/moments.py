"""Where in a video a query happens: span rules that turn a model's outputs into [start, end].

Every rule maps P (query, video) pairs to (P, 2) [start, end] fractions of the video in [0, 1];
`evaluate` and the search layer call `moment_spans` with the same rule, so the spans a user sees are
the spans the VCMR metrics measure.

Rules:
- "anchor": the best of the model's K learned moments (proposal with the highest cosine), centre +- width/2.
- "whole": the whole video (the baseline any moment rule has to beat).
- "best_clip": the span of the single clip with the highest cosine.
- "grown": the best clip, grown over neighbouring clips while their cosine stays >= fraction * best.

Clip spans follow the binning of `amdnet.data.clip_bin_edges` exactly: clip k is the mean of feature
rows [start_k, end_k) of a video with T rows, so it covers [start_k / T, end_k / T] (an empty bin
repeats row start_k and covers [start_k / T, (start_k + 1) / T]). Without the row counts, clip k of N
is taken to cover [k / N, (k + 1) / N].

Ties choose the lowest index (torch.argmax returns the first maximum), so a rule is deterministic.
"""
from __future__ import annotations

import torch

from amdnet.config import DEFAULT_SPAN_RULE, SPAN_RULES  # noqa: F401 (part of this module's interface)
from amdnet.data import clip_bin_edges

GROW_FRACTION = 0.5  # "grown": a neighbour joins the span while its cosine >= 0.5 * the best clip's


def clip_spans(num_frames: int, map_size: int) -> torch.Tensor:
    """(N, 2) [start, end] fractions of a video with `num_frames` feature rows covered by each clip."""
    starts, ends = clip_bin_edges(num_frames, map_size)
    starts_t = torch.from_numpy(starts).double()
    ends_t = torch.from_numpy(ends).double()
    ends_t = torch.where(ends_t > starts_t, ends_t, starts_t + 1)  # an empty bin holds row start_k
    return (torch.stack([starts_t, ends_t], dim=1) / num_frames).float()


def uniform_clip_spans(map_size: int) -> torch.Tensor:
    """(N, 2): clip k of N covers [k / N, (k + 1) / N]."""
    edges = torch.linspace(0.0, 1.0, map_size + 1)
    return torch.stack([edges[:-1], edges[1:]], dim=1)


def pair_cosines(queries: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """(P, d) queries and (P, M, d) rows -> (P, M): each query's dot product with its own pair's M rows.

    When the P pairs share one video's rows (expanded from one, stride 0, as `evaluate` groups its
    pairs by video), one (P, d) x (d, M) product gives them all, instead of P products that each read
    the same rows. The two products may round the last bit differently.
    """
    if rows.shape[0] > 1 and rows.stride(0) == 0:
        return queries @ rows[0].T  # (P, M)
    return (rows @ queries.unsqueeze(-1)).squeeze(-1)  # (P, M)


def moment_spans(rule: str, queries: torch.Tensor, clip_features: torch.Tensor, proposals: torch.Tensor,
                 centers: torch.Tensor, widths: torch.Tensor, *, clip_spans: torch.Tensor | None = None,
                 grow_fraction: float = GROW_FRACTION) -> torch.Tensor:
    """(P, 2) [start, end] fractions of the video for P (query, video) pairs under `rule`.

    queries (P, d), clip_features (P, N, d) and proposals (P, K, d) are unit vectors; centers and
    widths (P, K) fractions. clip_spans: (P, N, 2) or (N, 2) fractions per clip (see `clip_spans`);
    None means clip k of N covers [k / N, (k + 1) / N].
    """
    if rule not in SPAN_RULES:
        raise ValueError(f"unknown span rule {rule!r}; choose one of {', '.join(SPAN_RULES)}")
    num_pairs, num_clips = clip_features.shape[:2]
    if rule == "whole":
        return torch.tensor([0.0, 1.0], device=queries.device).expand(num_pairs, 2).clone()
    if rule == "anchor":
        return anchor_spans(queries, proposals, centers, widths)
    if clip_spans is None:
        clip_spans = uniform_clip_spans(num_clips)
    clip_spans = clip_spans.to(queries.device).expand(num_pairs, num_clips, 2)  # (P, N, 2)
    cosines = pair_cosines(queries, clip_features)  # (P, N)
    best = cosines.argmax(dim=1)  # (P,)
    if rule == "best_clip":
        first = last = best
    else:
        first, last = grown_clip_range(cosines, best, grow_fraction)
    start = clip_spans[:, :, 0].gather(1, first.unsqueeze(1)).squeeze(1)  # (P,)
    end = clip_spans[:, :, 1].gather(1, last.unsqueeze(1)).squeeze(1)  # (P,)
    return torch.stack([start, end], dim=1)


def anchor_spans(queries: torch.Tensor, proposals: torch.Tensor, centers: torch.Tensor,
                 widths: torch.Tensor) -> torch.Tensor:
    """(P, 2): centre +- width / 2 of the moment whose proposal has the highest cosine, clamped to [0, 1]."""
    similarity = pair_cosines(queries, proposals)  # (P, K)
    moment = similarity.argmax(dim=1, keepdim=True)  # (P, 1)
    center = centers.gather(1, moment).squeeze(1)  # (P,)
    width = widths.gather(1, moment).squeeze(1)  # (P,)
    return torch.stack([center - width / 2, center + width / 2], dim=1).clamp(0.0, 1.0)  # (P, 2)


def grown_clip_range(cosines: torch.Tensor, best: torch.Tensor, fraction: float):
    """First and last clip (P,) each of the contiguous run around `best` whose cosine >= fraction * best.

    With a negative best cosine the threshold lies above it and the run is the best clip alone.
    """
    index = torch.arange(cosines.shape[1], device=cosines.device)  # (N,)
    threshold = fraction * cosines.gather(1, best.unsqueeze(1))  # (P, 1)
    below = (cosines < threshold) & (index != best.unsqueeze(1))  # (P, N) clips that end the run
    best_column = best.unsqueeze(1)  # (P, 1)
    first = torch.where(below & (index < best_column), index, -1).amax(dim=1) + 1  # (P,)
    last = torch.where(below & (index > best_column), index, cosines.shape[1]).amin(dim=1) - 1  # (P,)
    return first, last
