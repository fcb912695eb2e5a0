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


def per_video_pairs(queries: torch.Tensor, pair_videos: torch.Tensor, product, columns: int) -> torch.Tensor:
    """(P, d) queries of P (query, video) pairs and (P,) their video indices -> (P, columns), in pair order:
    `product(group, video)` gives the (P_v, columns) values of the P_v pairs of one video from their
    queries (P_v, d), stably ordered by video, as `EncodedSplit.spans` has always grouped them.

    One product per video, not per pair: the pairs of a video share its rows, so P_v queries meet them
    in one (P_v, d) x (d, M) product instead of P_v products that each read the same rows.
    """
    if not len(pair_videos):
        return queries.new_empty(0, columns)
    grouped = bool((pair_videos[1:] >= pair_videos[:-1]).all())  # Evaluate passes them sorted: no copy to make
    order = None if grouped else torch.sort(pair_videos, stable=True).indices  # (P,) pairs grouped by video
    videos, counts = torch.unique_consecutive(pair_videos if grouped else pair_videos[order], return_counts=True)
    groups = (queries if grouped else queries[order]).split(counts.tolist())
    values = torch.cat([product(group, video) for video, group in zip(videos.tolist(), groups)])  # (P, columns)
    if grouped:
        return values
    in_pair_order = torch.empty_like(values)
    in_pair_order[order] = values
    return in_pair_order


def pair_cosines(queries: torch.Tensor, rows: torch.Tensor, pair_videos: torch.Tensor | None = None) -> torch.Tensor:
    """(P, d) queries and their pairs' rows -> (P, M): each query's dot product with its pair's M rows.

    rows: (P, M, d), one per pair, when pair_videos is None; else (V, M, d) per video, and pair_videos (P,)
    names each pair's video (`per_video_pairs`: one product per video). The two forms may round the
    last bit differently.
    """
    if pair_videos is None:
        return (rows @ queries.unsqueeze(-1)).squeeze(-1)  # (P, M)
    return per_video_pairs(queries, pair_videos, lambda group, video: video_cosines(group, rows[video:video + 1]),
                           rows.shape[1])


def video_cosines(queries: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """(Q, d) queries of one video's pairs and its (1, M, d) rows -> (Q, M): one (Q, d) x (d, M) product,
    or with one query the per-pair product, so that every span is the one Evaluate has always written."""
    if queries.shape[0] > 1:
        return queries @ rows[0].T
    return (rows @ queries.unsqueeze(-1)).squeeze(-1)


def pair_rows(values: torch.Tensor, pair_videos: torch.Tensor | None) -> torch.Tensor:
    """(P, ...) each pair's own row of a per-video tensor: values (V, ...) indexed by pair_videos (P,), or
    values already (P, ...) when pair_videos is None."""
    return values if pair_videos is None else values[pair_videos]


def clip_run_spans(clip_spans: torch.Tensor | None, pair_videos: torch.Tensor | None, first: torch.Tensor,
                   last: torch.Tensor, num_clips: int) -> torch.Tensor:
    """(P, 2) [start of clip `first`, end of clip `last`] of each pair's video, first and last (P,).

    clip_spans: (V, N, 2) per video (or (P, N, 2) per pair when pair_videos is None), (N, 2) for every
    video, or None: clip k of N covers [k / N, (k + 1) / N].
    """
    if clip_spans is None:
        clip_spans = uniform_clip_spans(num_clips)
    clip_spans = clip_spans.to(first.device)
    if clip_spans.dim() == 2:
        return torch.stack([clip_spans[first, 0], clip_spans[last, 1]], dim=1)
    videos = torch.arange(len(first), device=first.device) if pair_videos is None else pair_videos  # (P,)
    return torch.stack([clip_spans[videos, first, 0], clip_spans[videos, last, 1]], dim=1)


def moment_spans(rule: str, queries: torch.Tensor, clip_features: torch.Tensor, proposals: torch.Tensor | None,
                 centers: torch.Tensor | None, widths: torch.Tensor | None, *,
                 pair_videos: torch.Tensor | None = None, clip_spans: torch.Tensor | None = None,
                 grow_fraction: float = GROW_FRACTION) -> torch.Tensor:
    """(P, 2) [start, end] fractions of the video for P (query, video) pairs under `rule`.

    queries (P, d) are unit vectors. The video tensors hold one row per pair (P, ...) when pair_videos
    is None, else one per video (V, ...) and pair_videos (P,) names each pair's video: clip_features
    (., N, d) and proposals (., K, d) unit vectors, centers and widths (., K) fractions. clip_spans: (., N, 2)
    or (N, 2) fractions per clip (see `clip_spans`); None means clip k of N covers [k / N, (k + 1) / N].
    """
    if rule not in SPAN_RULES:
        raise ValueError(f"unknown span rule {rule!r}; choose one of {', '.join(SPAN_RULES)}")
    num_pairs, num_clips = queries.shape[0], clip_features.shape[1]
    if rule == "whole":
        return torch.tensor([0.0, 1.0], device=queries.device).expand(num_pairs, 2).clone()
    if rule == "anchor":
        return anchor_spans(queries, proposals, centers, widths, pair_videos)
    cosines = pair_cosines(queries, clip_features, pair_videos)  # (P, N)
    best = cosines.argmax(dim=1)  # (P,)
    if rule == "best_clip":
        first = last = best
    else:
        first, last = grown_clip_range(cosines, best, grow_fraction)
    return clip_run_spans(clip_spans, pair_videos, first, last, num_clips)


def anchor_spans(queries: torch.Tensor, proposals: torch.Tensor, centers: torch.Tensor, widths: torch.Tensor,
                 pair_videos: torch.Tensor | None = None) -> torch.Tensor:
    """(P, 2): centre +- width / 2 of the moment whose proposal has the highest cosine, clamped to [0, 1]
    (tensors per pair or per video as in `moment_spans`)."""
    similarity = pair_cosines(queries, proposals, pair_videos)  # (P, K)
    moment = similarity.argmax(dim=1, keepdim=True)  # (P, 1)
    center = pair_rows(centers, pair_videos).gather(1, moment).squeeze(1)  # (P,)
    width = pair_rows(widths, pair_videos).gather(1, moment).squeeze(1)  # (P,)
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
