"""AMDNet training losses, vectorised over a batch of B videos and all Nq of their captions.

`caption_to_video` (Nq,) holds, for each caption, the index of its video within the batch.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

from amdnet.config import TrainConfig
from amdnet.model import VideoEncoding


class LossTerms(NamedTuple):
    total: torch.Tensor
    nce: torch.Tensor
    div: torch.Tensor
    rel: torch.Tensor


def max_dot_scores(queries: torch.Tensor, clip_features: torch.Tensor) -> torch.Tensor:
    """(Nq, d) x (B, N, d) -> (Nq, B): the best clip's dot product with each query."""
    batch, n_clips, hidden = clip_features.shape
    per_clip = queries @ clip_features.reshape(batch * n_clips, hidden).T  # (Nq, B*N)
    return per_clip.view(-1, batch, n_clips).amax(dim=-1)  # (Nq, B)


def own_video_matrix(caption_to_video: torch.Tensor, n_videos: int) -> torch.Tensor:
    """(Nq,) video indices -> (Nq, B) bool, True where the caption belongs to the video."""
    return caption_to_video.unsqueeze(1) == torch.arange(n_videos, device=caption_to_video.device)


def info_nce_loss(scores: torch.Tensor, caption_to_video: torch.Tensor) -> torch.Tensor:
    """Text-to-video plus video-to-text InfoNCE without temperature on (Nq, B) scores."""
    own = own_video_matrix(caption_to_video, scores.shape[1])  # (Nq, B)
    own_scores = scores.gather(1, caption_to_video.unsqueeze(1)).squeeze(1)  # (Nq,)
    text_to_video = (scores.logsumexp(dim=1) - own_scores).mean()
    own_captions = scores.masked_fill(~own, float("-inf")).logsumexp(dim=0)  # (B,)
    video_to_text = (scores.logsumexp(dim=0) - own_captions).mean()
    return text_to_video + video_to_text


def diversity_loss(masks: torch.Tensor, target: float) -> torch.Tensor:
    """Pushes the K moments of a video apart: mean_b ||G G^T - target I||_F^2, G rows summing to 1."""
    normalised = masks / masks.sum(dim=-1, keepdim=True)  # G: (B, K, N)
    gram = normalised @ normalised.transpose(1, 2)  # (B, K, K)
    identity = torch.eye(masks.shape[1], device=masks.device, dtype=masks.dtype)
    return ((gram - target * identity) ** 2).sum(dim=(1, 2)).mean()


def relevance_loss(queries: torch.Tensor, proposals: torch.Tensor, global_vector: torch.Tensor,
                   caption_to_video: torch.Tensor, margin: float) -> torch.Tensor:
    """Hinge asking the best own-video moment to beat the whole-video vector by `margin` (cosine)."""
    own_proposals = proposals[caption_to_video]  # (Nq, K, d)
    moment_similarity = F.cosine_similarity(queries.unsqueeze(1), own_proposals, dim=-1)  # (Nq, K)
    positive = moment_similarity.amax(dim=1)  # (Nq,)
    reference = F.cosine_similarity(queries, global_vector[caption_to_video], dim=-1)  # (Nq,)
    return F.relu(margin + reference - positive).mean()


def amdnet_loss(queries: torch.Tensor, videos: VideoEncoding, caption_to_video: torch.Tensor,
                config: TrainConfig, relevance_queries: torch.Tensor | None = None) -> LossTerms:
    """Weighted total lambda_nce * L_nce + lambda_div * L_div + lambda_rel * L_rel, and its terms.

    `relevance_queries` (Nq, d), default `queries`: what the relevance loss sees. The trainer passes a
    second run of the query projection, as the reference does, so each loss gets its own dropout mask.
    """
    relevance_queries = queries if relevance_queries is None else relevance_queries
    nce = info_nce_loss(max_dot_scores(queries, videos.clip_features), caption_to_video)
    div = diversity_loss(videos.masks, config.div_target)
    rel = relevance_loss(relevance_queries, videos.proposals, videos.global_vector, caption_to_video,
                         config.rel_margin)
    total = config.lambda_nce * nce + config.lambda_div * div + config.lambda_rel * rel
    return LossTerms(total, nce, div, rel)
