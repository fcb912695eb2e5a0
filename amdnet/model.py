"""AMDNet: a small video encoder with K actively discovered moments (arXiv 2504.10920).

Shapes use: B videos, N = map_size clips (32), d hidden size, K moments (= attention heads),
Nq queries, L query tokens, Dv / Dq video / query input sizes.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from amdnet.config import ModelConfig

MIN_MOMENT_WIDTH = 0.01
WIDTH_TO_SIGMA = 9.0  # a moment of width w is a Gaussian with sigma = w / 9


class VideoEncoding(NamedTuple):
    clip_features: torch.Tensor  # V_g (B, N, d): what queries are matched against
    global_vector: torch.Tensor  # v_bar (B, d)
    centers: torch.Tensor  # (B, K) moment centres in (0, 1), fractions of the video
    widths: torch.Tensor  # (B, K) moment widths in (0, 1)
    masks: torch.Tensor  # (B, K, N) peak-1 Gaussian moment masks
    proposals: torch.Tensor  # (B, K, d) mask-weighted sums of the clip embeddings


class FeatureProjection(nn.Module):
    """ReLU(Linear(Dropout(LayerNorm(x)))): the input projection used for queries and clips."""

    def __init__(self, in_dim: int, out_dim: int, dropout: float):
        super().__init__()
        self.norm = nn.LayerNorm(in_dim)
        self.dropout = nn.Dropout(dropout)
        self.linear = nn.Linear(in_dim, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.linear(self.dropout(self.norm(x))))


class AttentionSubLayer(nn.Module):
    """BERT-style self-attention sub-layer without a feed-forward block.

    `logit_weights`, broadcastable to (B, H, N, N), multiply the logits element-wise before the softmax:
    AMDNet passes head h's moment mask along the key axis, (B, H, 1, N), and GMMFormer a Gaussian around
    each query position, (B, 1, N, N). That is the references' rule: a weight of 0 gives logit 0, not
    -inf, so that key still receives weight exp(0) / Z. `key_valid` (B, N) bool leaves padding keys out.
    """

    def __init__(self, hidden_size: int, n_heads: int, dropout: float):
        super().__init__()
        self.n_heads = n_heads
        self.head_size = hidden_size // n_heads
        self.query = nn.Linear(hidden_size, hidden_size)
        self.key = nn.Linear(hidden_size, hidden_size)
        self.value = nn.Linear(hidden_size, hidden_size)
        self.attention_dropout = nn.Dropout(dropout)
        self.dense = nn.Linear(hidden_size, hidden_size)
        self.output_dropout = nn.Dropout(dropout)
        self.norm = nn.LayerNorm(hidden_size)

    def split_heads(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, _ = x.shape
        return x.view(batch, length, self.n_heads, self.head_size).transpose(1, 2)  # (B, H, N, d/H)

    def attention_weights(self, x: torch.Tensor, logit_weights: torch.Tensor | None = None,
                          key_valid: torch.Tensor | None = None) -> torch.Tensor:
        queries = self.split_heads(self.query(x))  # (B, H, N, d/H)
        keys = self.split_heads(self.key(x))  # (B, H, N, d/H)
        logits = queries @ keys.transpose(-1, -2) / math.sqrt(self.head_size)  # (B, H, N, N)
        if logit_weights is not None:
            logits = logits * logit_weights
        if key_valid is not None:
            logits = logits.masked_fill(~key_valid[:, None, None, :], float("-inf"))  # (B, 1, 1, N)
        return logits.softmax(dim=-1)  # (B, H, N, N)

    def forward(self, x: torch.Tensor, logit_weights: torch.Tensor | None = None,
                key_valid: torch.Tensor | None = None) -> torch.Tensor:
        batch, length, hidden = x.shape
        weights = self.attention_dropout(self.attention_weights(x, logit_weights, key_valid))  # (B, H, N, N)
        values = self.split_heads(self.value(x))  # (B, H, N, d/H)
        context = (weights @ values).transpose(1, 2).reshape(batch, length, hidden)  # (B, N, d)
        return self.norm(x + self.output_dropout(self.dense(context)))  # (B, N, d)


def gaussian_moment_masks(centers: torch.Tensor, widths: torch.Tensor, map_size: int) -> torch.Tensor:
    """Peak-1 Gaussian masks over the clip grid linspace(0, 1, map_size): (B, K) x2 -> (B, K, N).

    The spec divides the normal density by its row maximum. The density's constant factor cancels
    in that division, and subtracting the smallest squared distance before exponentiating is the
    same division done in log space: identical values, but no 0/0 for very narrow moments.
    """
    grid = torch.linspace(0.0, 1.0, map_size, device=centers.device, dtype=centers.dtype)  # (N,)
    sigma = widths.clamp(min=MIN_MOMENT_WIDTH).unsqueeze(-1) / WIDTH_TO_SIGMA  # (B, K, 1)
    squared_distance = (grid - centers.unsqueeze(-1)) ** 2  # (B, K, N)
    closest = squared_distance.min(dim=-1, keepdim=True).values  # (B, K, 1)
    return torch.exp(-(squared_distance - closest) / (2 * sigma ** 2))  # (B, K, N), row max 1


def pool_query_tokens(tokens: torch.Tensor, token_mask: torch.Tensor, pooling: str) -> torch.Tensor:
    """(Nq, L, Dq) tokens and (Nq, L) bool validity -> (Nq, Dq), using valid tokens only."""
    valid = token_mask.unsqueeze(-1)  # (Nq, L, 1)
    if pooling == "mean":
        return (tokens * valid).sum(dim=1) / valid.sum(dim=1).clamp(min=1)
    if pooling == "max":
        return tokens.masked_fill(~valid, float("-inf")).amax(dim=1)
    if pooling == "first":
        return tokens[:, 0]
    raise ValueError(f"unknown query pooling {pooling!r}")


class AMDNet(nn.Module):
    def __init__(self, config: ModelConfig, video_dim: int, query_dim: int):
        super().__init__()
        self.config = config
        d, n_moments = config.hidden_size, config.n_moments
        self.query_projection = FeatureProjection(query_dim, d, config.input_dropout)
        self.video_projection = FeatureProjection(video_dim, d, config.input_dropout)
        self.position_table = nn.Embedding(config.max_positions, d)
        self.video_norm = nn.LayerNorm(d)
        self.video_dropout = nn.Dropout(config.input_dropout)  # the reference's rate here, not `dropout`
        self.global_norm = nn.LayerNorm(d)
        self.global_linear = nn.Linear(d, d)
        self.anchor_head = nn.Linear(d, 2 * n_moments)
        self.self_attention = AttentionSubLayer(d, n_moments, config.dropout)
        self.moment_attention = AttentionSubLayer(d, n_moments, config.dropout)
        if config.standardize_video:
            self.register_buffer("video_mean", torch.zeros(video_dim))  # (Dv,)
            self.register_buffer("video_std", torch.ones(video_dim))  # (Dv,)
        self.apply(self.init_weights)

    def set_video_statistics(self, mean: torch.Tensor, std: torch.Tensor):
        """Per-dimension statistics of the training clips, used when config.standardize_video."""
        self.video_mean.copy_(mean)
        self.video_std.copy_(std.clamp(min=1e-6))

    @staticmethod
    def init_weights(module: nn.Module):
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)
        if isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)

    def encode_queries(self, features: torch.Tensor, token_mask: torch.Tensor | None = None) -> torch.Tensor:
        """(Nq, Dq) pooled features, or (Nq, L, Dq) tokens with (Nq, L) bool mask -> (Nq, d)."""
        if features.dim() == 3:
            if token_mask is None:
                token_mask = torch.ones(features.shape[:2], dtype=torch.bool, device=features.device)
            features = pool_query_tokens(features, token_mask, self.config.query_pooling)  # (Nq, Dq)
        return self.query_projection(features)  # (Nq, d)

    def encode_videos(self, clips: torch.Tensor) -> VideoEncoding:
        """(B, N, Dv) binned clip features -> VideoEncoding."""
        n_clips = clips.shape[1]
        if self.config.standardize_video:
            clips = (clips - self.video_mean) / self.video_std  # (B, N, Dv)
        positions = self.position_table.weight[:n_clips]  # (N, d)
        projected = self.video_projection(clips)  # (B, N, d)
        embedded = self.video_dropout(self.video_norm(projected + positions))  # V: (B, N, d)

        global_vector = self.global_linear(self.global_norm(embedded.mean(dim=1)))  # (B, d)
        anchors = torch.sigmoid(self.anchor_head(global_vector))  # (B, 2K)
        anchors = anchors.view(anchors.shape[0], self.config.n_moments, 2)  # (B, K, 2): (centre, width)
        centers, widths = anchors[..., 0], anchors[..., 1]  # (B, K) each
        masks = gaussian_moment_masks(centers, widths, n_clips)  # (B, K, N)
        proposals = masks @ embedded  # (B, K, d)

        plain = self.self_attention(embedded)  # (B, N, d)
        masked = self.moment_attention(plain, logit_weights=masks.unsqueeze(2))  # (B, N, d): per key
        clip_features = (plain + masked) / 2  # V_g: (B, N, d)
        return VideoEncoding(clip_features, global_vector, centers, widths, masks, proposals)

    def forward(self, clips: torch.Tensor, queries: torch.Tensor,
                token_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, VideoEncoding]:
        return self.encode_queries(queries, token_mask), self.encode_videos(clips)


def parameter_table(model: nn.Module) -> list[tuple[str, tuple[int, ...], int]]:
    """(parameter name, shape, element count) for every trainable parameter, in module order."""
    return [(name, tuple(p.shape), p.numel()) for name, p in model.named_parameters() if p.requires_grad]
