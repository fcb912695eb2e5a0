"""The triplet ranking loss MS-SL and GMMFormer share, with the references' negative sampling.

Shapes: B videos in the batch, Nq captions; `caption_to_video` (Nq,) holds each caption's video index.
Before the hard-negative epoch, negatives are drawn uniformly from all of them; from it on, the
caption-to-video negative is drawn from the `hard_pool_size` highest-scoring wrong videos and the
video-to-caption negative is the single highest-scoring caption of another video. Draws use torch's
global generator, which the trainer seeds per epoch. (The InfoNCE term both use is AMDNet's:
amdnet.losses.info_nce_loss computes exactly their "clip_nce".)
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from amdnet.losses import own_video_matrix


def sampled_negative_scores(scores: torch.Tensor, positive: torch.Tensor, hard_pool_size: int | None) -> torch.Tensor:
    """(R, C) scores and (R,) positive column per row -> (R,) one negative score per row: the other
    columns ranked by score, one drawn uniformly from the first `hard_pool_size` (all when None)."""
    n_rows, n_columns = scores.shape
    ranked = scores.detach().scatter(1, positive.unsqueeze(1), float("inf"))  # the positive ranks first
    order = ranked.argsort(dim=1, descending=True)  # (R, C)
    end = n_columns if hard_pool_size is None else min(1 + hard_pool_size, n_columns)
    pick = torch.randint(1, end, (n_rows,), device=scores.device)  # (R,), never 0: the positive
    return scores.gather(1, order.gather(1, pick.unsqueeze(1))).squeeze(1)


def video_negative_scores(scores: torch.Tensor, own: torch.Tensor, hardest: bool) -> torch.Tensor:
    """(Nq, B) scores, (Nq, B) bool own-video matrix -> (B,) per video one score of a caption of another
    video: the highest when `hardest`, else one drawn uniformly."""
    others = scores.masked_fill(own, float("-inf"))  # (Nq, B)
    if hardest:
        return others.amax(dim=0)
    n_negatives = (~own).sum(dim=0)  # (B,)
    order = others.detach().argsort(dim=0, descending=True)  # (Nq, B): negatives first
    pick = (torch.rand(scores.shape[1], device=scores.device) * n_negatives).long()  # (B,) in [0, n)
    pick = torch.minimum(pick, n_negatives - 1)
    return scores.gather(0, order.gather(0, pick.unsqueeze(0))).squeeze(0)


def triplet_loss(scores: torch.Tensor, caption_to_video: torch.Tensor, margin: float, hard: bool,
                 hard_pool_size: int) -> torch.Tensor:
    """Hinge ranking loss on (Nq, B) cosine scores, both directions:
    caption -> video: mean_i max(0, margin + s(i, sampled wrong video) - s(i, own video));
    video -> caption: (1/B) sum_j max(0, margin + s(sampled caption of another video, j) - mean own s(., j)).
    A batch of one video has no negatives: the loss is 0."""
    n_videos = scores.shape[1]
    if n_videos < 2:
        return scores.sum() * 0.0
    own = own_video_matrix(caption_to_video, n_videos)  # (Nq, B)
    own_mean = (scores * own).sum(dim=0) / own.sum(dim=0)  # (B,) mean score of each video's captions
    video_to_text = F.relu(margin + video_negative_scores(scores, own, hardest=hard) - own_mean).sum() / n_videos
    positive = scores.gather(1, caption_to_video.unsqueeze(1)).squeeze(1)  # (Nq,)
    negative = sampled_negative_scores(scores, caption_to_video, hard_pool_size if hard else None)  # (Nq,)
    text_to_video = F.relu(margin + negative - positive).mean()
    return text_to_video + video_to_text


def hard_negatives_on(epoch: int, hard_negative_start_epoch: int) -> bool:
    """Whether 1-based `epoch` samples hard negatives: the references switch at 0-based epoch
    `hard_negative_start_epoch`, i.e. from 1-based epoch hard_negative_start_epoch + 1 on."""
    return epoch - 1 >= hard_negative_start_epoch
