"""GMMFormer: Gaussian-mixture-model based transformer for efficient PRVR (Wang et al., AAAI 2024).

Written from the reference code (huangmozhi9527/GMMFormer, src/), not copied. Like MS-SL it reads a
clip view (32 mean-binned clips) and a frame view (at most 128 rows) of each video, but replaces
MS-SL's exhaustive proposals by attention that is itself local: each encoder block runs four attention
sub-layers side by side, one plain and three whose logits are multiplied by a Gaussian around the
query position (widths 0.5, 1.0 and 5.0 of the sequence), and averages them. Two such blocks encode
the clips; two more encode the frames, which are then attention-pooled into one video vector.
Score = clip_scale_weight * best clip cosine + frame_scale_weight * cosine with the video vector.

Shapes: B videos, N clips, F frame rows, Nq captions, L tokens, d hidden size.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from amdnet.losses import info_nce_loss, max_dot_scores, own_video_matrix
from amdnet.model import AMDNet, AttentionSubLayer, FeatureProjection
from amdnet.moments import moment_spans
from models.configs import GMMFormerConfig
from models.inputs import l2_normalize, query_tokens, video_frames
from models.layers import AttentionPooling, PositionalEncoding, TokenQueryEncoder
from models.losses import hard_negatives_on, triplet_loss
from models.registry import RetrievalModel, Rows, register_model, token_model_reference

# Widths (fractions of the sequence) of a block's sub-layers; None: plain attention.
GAUSSIAN_WIDTHS = (None, 0.5, 1.0, 5.0)
MIN_WIDTH = 0.01
WIDTH_TO_SIGMA = 9.0  # as AMDNet, which inherited it: a width w is a Gaussian with sigma = w / 9


def gaussian_position_weights(lengths: torch.Tensor, n_positions: int, width: float) -> torch.Tensor:
    """(B,) valid lengths -> (B, 1, n, n) weights of key position j for query position i in a sequence
    of length n_b: a Gaussian over the key grid linspace(0, 1, n_b) centred at i / n_b, sigma =
    max(width, 0.01) / 9, divided by its maximum over the valid keys (peak 1). Keys past n_b get weight
    0 (they are masked anyway). With n_b = n this is the reference's mask exactly."""
    positions = torch.arange(n_positions, device=lengths.device, dtype=torch.float32)  # (n,)
    length = lengths.to(torch.float32).unsqueeze(1)  # (B, 1)
    centers = positions / length  # (B, n) query positions
    grid = positions / (length - 1).clamp(min=1)  # (B, n) key positions
    squared_distance = (grid.unsqueeze(1) - centers.unsqueeze(2)) ** 2  # (B, n, n)
    valid_key = (positions < length).unsqueeze(1)  # (B, 1, n)
    closest = squared_distance.masked_fill(~valid_key, float("inf")).amin(dim=-1, keepdim=True)  # (B, n, 1)
    sigma = max(width, MIN_WIDTH) / WIDTH_TO_SIGMA
    weights = torch.exp(-(squared_distance - closest) / (2 * sigma ** 2)) * valid_key  # (B, n, n), row max 1
    return weights.unsqueeze(1)  # (B, 1, n, n): the same for every head


class GaussianBlock(nn.Module):
    """The mean of one plain and three Gaussian-weighted attention sub-layers on the same input."""

    def __init__(self, hidden_size: int, n_heads: int, dropout: float):
        super().__init__()
        self.sublayers = nn.ModuleList(AttentionSubLayer(hidden_size, n_heads, dropout) for _ in GAUSSIAN_WIDTHS)

    def forward(self, x: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
        batch, length = x.shape[:2]
        lengths = torch.full((batch,), length, device=x.device) if valid is None else valid.sum(dim=1)  # (B,)
        outputs = [sublayer(x, None if width is None else gaussian_position_weights(lengths, length, width), valid)
                   for sublayer, width in zip(self.sublayers, GAUSSIAN_WIDTHS)]
        return torch.stack(outputs).mean(dim=0)  # (B, L, d)


def query_diversity_loss(queries: torch.Tensor, caption_to_video: torch.Tensor, margin: float,
                         scale: float) -> torch.Tensor:
    """Pushes apart the captions of one video: (1/Nq) sum_j log(1 + sum_{i != j, same video}
    exp(scale * (cos(q_i, q_j) + margin)))."""
    unit = F.normalize(queries, dim=-1)
    cosines = unit @ unit.T  # (Nq, Nq)
    same_video = own_video_matrix(caption_to_video, int(caption_to_video.max()) + 1)  # (Nq, B)
    siblings = (same_video.float() @ same_video.float().T).bool()  # (Nq, Nq) same video
    siblings.fill_diagonal_(False)
    pushed = torch.where(siblings, torch.exp(scale * (cosines + margin)), torch.zeros_like(cosines))
    return torch.log1p(pushed.sum(dim=0)).sum() / queries.shape[0]


def _reference(lr: float, dropout: float, margin: float, hard_start: int, loss_weights: tuple[float, float, float],
               diversity_margin: float, video: str, video_dim: int, query_dim: int) -> dict:
    clip_nce, frame_nce, diversity = loss_weights
    options = {"input_dropout": dropout, "dropout": dropout, "margin": margin, "hard_negative_start_epoch": hard_start,
               "clip_nce_weight": clip_nce, "frame_nce_weight": frame_nce, "diversity_weight": diversity,
               "diversity_margin": diversity_margin}
    return token_model_reference(options, lr, 9527, video, video_dim, query_dim)


@register_model("gmmformer")
class GMMFormer(RetrievalModel):
    Config = GMMFormerConfig
    video_inputs = ("clips", "frames")
    query_input = "tokens"
    span_rules = ("grown", "best_clip", "whole")
    default_span_rule = "grown"
    loss_terms = ("loss", "clip_nce", "clip_trip", "frame_nce", "frame_trip", "query_div")
    # src/Configs/tvr.py, act.py, cha.py (Charades' hard-negative epoch 100 = n_epoch: never)
    reference_datasets = {
        "tvr": _reference(3e-4, 0.2, 0.1, 30, (0.05, 0.04, 0.001), 0.15,
                          "I3D + ResNet-152 per 1.5 s clip (i3d_resnet)", 3072, 768),
        "activitynet": _reference(2.5e-4, 0.2, 0.2, 20, (0.02, 0.04, 0.015), 0.2, "I3D (i3d)", 1024, 1024),
        "charades": _reference(2.5e-4, 0.15, 0.2, 100, (0.02, 0.02, 0.005), 0.15,
                               "I3D RGB (i3d_rgb_lgi)", 1024, 1024),
    }

    def __init__(self, config: GMMFormerConfig, video_dim: int, query_dim: int):
        super().__init__()
        self.config = config
        d, heads, dropout, input_dropout = config.hidden_size, config.n_heads, config.dropout, config.input_dropout
        self.query_encoder = TokenQueryEncoder(query_dim, d, config.max_tokens, heads, dropout, input_dropout)
        self.clip_projection = FeatureProjection(video_dim, d, input_dropout)
        self.clip_positions = PositionalEncoding(config.max_frames, d, input_dropout)
        self.clip_blocks = nn.ModuleList([GaussianBlock(d, heads, dropout), GaussianBlock(d, heads, dropout)])
        self.frame_projection = FeatureProjection(video_dim, d, input_dropout)
        self.frame_positions = PositionalEncoding(config.max_frames, d, input_dropout)
        self.frame_blocks = nn.ModuleList([GaussianBlock(d, heads, dropout), GaussianBlock(d, heads, dropout)])
        self.frame_pooling = AttentionPooling(d)
        self.apply(AMDNet.init_weights)

    # -- encoders (unnormalised outputs, as training uses them) --

    def encode_queries(self, batch: dict) -> torch.Tensor:
        tokens, token_mask = query_tokens(batch, self.config.max_tokens)  # (Nq, L, Dq), (Nq, L)
        return self.query_encoder(tokens, token_mask)  # (Nq, d)

    def encode_clips(self, clips: torch.Tensor) -> torch.Tensor:
        x = self.clip_positions(self.clip_projection(l2_normalize(clips)))  # (B, N, d)
        for block in self.clip_blocks:
            x = block(x)  # (B, N, d)
        return x

    def encode_frames(self, batch: dict) -> torch.Tensor:
        frames, frame_mask = video_frames(batch, self.config.max_frames)  # (B, F, Dv), (B, F)
        x = self.frame_positions(self.frame_projection(l2_normalize(frames)))  # (B, F, d)
        for block in self.frame_blocks:
            x = block(x, frame_mask)  # (B, F, d)
        return self.frame_pooling(x, frame_mask)  # (B, d)

    # -- the interface --

    def represent_videos(self, batch: dict) -> Rows:
        return {"clip_features": F.normalize(self.encode_clips(batch["clips"]), dim=-1),  # (B, N, d)
                "video_vector": F.normalize(self.encode_frames(batch), dim=-1)}  # (B, d)

    def represent_queries(self, batch: dict) -> torch.Tensor:
        return F.normalize(self.encode_queries(batch), dim=-1)  # (Nq, d)

    def score(self, queries: torch.Tensor, videos: Rows) -> torch.Tensor:
        clip_score = max_dot_scores(queries, videos["clip_features"])  # (Q, V)
        frame_score = queries @ videos["video_vector"].T  # (Q, V)
        return self.config.clip_scale_weight * clip_score + self.config.frame_scale_weight * frame_score

    def spans(self, queries: torch.Tensor, videos: Rows, clip_spans: torch.Tensor | None, rule: str, *,
              pair_videos: torch.Tensor | None = None) -> torch.Tensor:
        """The clip-scale span rules of amdnet.moments ("grown", "best_clip", "whole")."""
        self.check_rule(rule)
        return moment_spans(rule, queries, videos["clip_features"], None, None, None, pair_videos=pair_videos,
                            clip_spans=clip_spans)

    def loss(self, batch: dict, epoch: int) -> dict[str, torch.Tensor]:
        config = self.config
        hard = hard_negatives_on(epoch, config.hard_negative_start_epoch)
        caption_to_video = batch["caption_to_video"]  # (Nq,)
        queries = self.encode_queries(batch)  # (Nq, d)
        clips = self.encode_clips(batch["clips"])  # (B, N, d)
        video = self.encode_frames(batch)  # (B, d)
        unit_queries = F.normalize(queries, dim=-1)
        clip_cos = max_dot_scores(unit_queries, F.normalize(clips, dim=-1))  # (Nq, B)
        frame_cos = unit_queries @ F.normalize(video, dim=-1).T  # (Nq, B)
        # A second run of the query encoder, as the reference: its own dropout mask.
        diversity_queries = self.encode_queries(batch)  # (Nq, d)
        terms = {
            "clip_nce": config.clip_nce_weight * info_nce_loss(max_dot_scores(queries, clips), caption_to_video),
            "clip_trip": triplet_loss(clip_cos, caption_to_video, config.margin, hard, config.hard_pool_size),
            "frame_nce": config.frame_nce_weight * info_nce_loss(queries @ video.T, caption_to_video),
            "frame_trip": triplet_loss(frame_cos, caption_to_video, config.margin, hard, config.hard_pool_size),
            "query_div": config.diversity_weight * query_diversity_loss(
                diversity_queries, caption_to_video, config.diversity_margin, config.diversity_scale),
        }
        return {"loss": sum(terms.values()), **terms}
