"""clip-zero-shot: training-free search with a pretrained CLIP (the TF-PRVR baseline).

A video is its CLIP visual feature rows (frames or clips, at most max_frames, each L2-normalised).
Windows of s neighbouring rows, s = 1, 2, 4, ... up to max_scale, slide over them one row at a time;
each window is the mean of its rows, L2-normalised. A query is its CLIP text vector, L2-normalised.
Score = the best cosine between the query and any window of the video (the best scale wins), and the
best window's span is the moment. There are no parameters and no Train stage; it needs the visual and
the text features to come from the same CLIP model (`check_same_clip`).

Shapes: B videos, F rows, W windows (all scales, padded to a fixed count), Nq queries, D CLIP size.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from amdnet.moments import pair_cosines, pair_rows
from models.configs import ClipZeroShotConfig
from models.inputs import video_frames
from models.registry import RetrievalModel, Rows, register_model, score_in_chunks


def window_scales(max_scale: int, max_frames: int) -> list[int]:
    """1, 2, 4, ... up to min(max_scale, max_frames)."""
    scales, scale = [], 1
    while scale <= min(max_scale, max_frames):
        scales.append(scale)
        scale *= 2
    return scales


@register_model("clip-zero-shot")
class ClipZeroShot(RetrievalModel):
    Config = ClipZeroShotConfig
    trainable = False
    video_inputs = ("frames",)
    query_input = "pooled"
    span_rules = ("best_window", "whole")
    default_span_rule = "best_window"
    loss_terms = ()
    reference_datasets = {
        dataset: {"model": {"max_frames": 128, "max_scale": 8}, "train": {},
                  "inputs": {"video": "CLIP image features per frame", "query": "the same CLIP's text vector"}}
        for dataset in ("tvr", "activitynet", "charades")}

    def __init__(self, config: ClipZeroShotConfig, video_dim: int, query_dim: int):
        super().__init__()
        if video_dim != query_dim:
            raise ValueError(f"model clip-zero-shot compares video and query vectors directly, but the video "
                             f"features are {video_dim}-d and the query features {query_dim}-d: they must come "
                             "from one CLIP model")
        self.config = config
        self.scales = window_scales(config.max_scale, config.max_frames)

    def represent_videos(self, batch: dict) -> Rows:
        """Every window of every scale: unit vectors (B, W, D), validity (B, W) and [start, end]
        fractions of the video (B, W, 2), W the same for every batch (rows padded to max_frames)."""
        frames, frame_mask = video_frames(batch, self.config.max_frames)  # (B, F, D), (B, F)
        padding = self.config.max_frames - frames.shape[1]
        rows = F.pad(F.normalize(frames, dim=-1), (0, 0, 0, padding))  # (B, max_frames, D), padding zero
        lengths = frame_mask.sum(dim=1, keepdim=True).float()  # (B, 1)
        windows, valid, spans = [], [], []
        for scale in self.scales:
            means = rows.unfold(1, scale, 1).mean(dim=-1)  # (B, max_frames - scale + 1, D)
            starts = torch.arange(means.shape[1], device=rows.device, dtype=torch.float32)  # (w,)
            windows.append(F.normalize(means, dim=-1))
            valid.append(starts + scale <= lengths)  # (B, w): the window lies inside the video
            spans.append(torch.stack([starts / lengths, (starts + scale) / lengths], dim=-1))  # (B, w, 2)
        return {"windows": torch.cat(windows, dim=1), "window_valid": torch.cat(valid, dim=1),
                "window_spans": torch.cat(spans, dim=1)}

    def represent_queries(self, batch: dict) -> torch.Tensor:
        queries = batch["queries"]
        if queries.dim() != 2:
            raise ValueError(f"model clip-zero-shot reads one CLIP text vector per query (Nq, D), got shape "
                             f"{tuple(queries.shape)}; set train.query_input: pooled")
        return F.normalize(queries, dim=-1)  # (Nq, D)

    def window_cosines(self, queries: torch.Tensor, videos: Rows) -> torch.Tensor:
        """(Q, D) x V videos -> (Q, V, W) cosines, -inf on windows outside the video."""
        cosines = torch.einsum("qd,vwd->qvw", queries, videos["windows"])  # (Q, V, W)
        return cosines.masked_fill(~videos["window_valid"], float("-inf"))

    def score(self, queries: torch.Tensor, videos: Rows) -> torch.Tensor:
        n_windows = videos["windows"].shape[1]
        return score_in_chunks(lambda q, rows: self.window_cosines(q, rows).amax(dim=-1), queries, videos,
                               n_windows)  # (Q, V)

    def spans(self, queries: torch.Tensor, videos: Rows, clip_spans: torch.Tensor | None, rule: str, *,
              pair_videos: torch.Tensor | None = None) -> torch.Tensor:
        """"best_window": the span of the pair's best window; "whole": [0, 1]. (clip_spans is not used:
        windows carry their own spans.)"""
        self.check_rule(rule)
        if rule == "whole":
            return torch.tensor([0.0, 1.0], device=queries.device).expand(queries.shape[0], 2).clone()
        cosines = pair_cosines(queries, videos["windows"], pair_videos)  # (P, W)
        best = cosines.masked_fill(~pair_rows(videos["window_valid"], pair_videos), float("-inf")).argmax(dim=1)  # (P,)
        return pair_rows(videos["window_spans"], pair_videos)[torch.arange(len(best), device=best.device), best]  # (P, 2)
