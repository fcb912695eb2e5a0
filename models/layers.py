"""Layers MS-SL and GMMFormer share (AMDNet's input projection and attention sub-layer are reused from
amdnet.model). Shapes: B sequences of L positions, d hidden size."""
from __future__ import annotations

import torch
import torch.nn as nn

from amdnet.model import AttentionSubLayer, FeatureProjection


class PositionalEncoding(nn.Module):
    """Dropout(LayerNorm(x + P[:L])), P a trainable table of `max_positions` rows."""

    def __init__(self, max_positions: int, hidden_size: int, dropout: float):
        super().__init__()
        self.table = nn.Embedding(max_positions, hidden_size)
        self.norm = nn.LayerNorm(hidden_size)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        length = x.shape[1]
        if length > self.table.num_embeddings:
            raise ValueError(f"a sequence of {length} positions is longer than the {self.table.num_embeddings} "
                             "the position table holds")
        return self.dropout(self.norm(x + self.table.weight[:length]))  # (B, L, d)


class AttentionPooling(nn.Module):
    """One vector per sequence: softmax over valid positions of a learned score w . x_l, then the
    weighted sum. (The references' "modular" query vector.)"""

    def __init__(self, hidden_size: int):
        super().__init__()
        self.score = nn.Linear(hidden_size, 1, bias=False)

    def forward(self, x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        logits = self.score(x).squeeze(-1).masked_fill(~valid, float("-inf"))  # (B, L)
        weights = logits.softmax(dim=-1)  # (B, L)
        return (weights.unsqueeze(-1) * x).sum(dim=1)  # (B, d)


class TokenQueryEncoder(nn.Module):
    """The query branch MS-SL and GMMFormer share: token features -> projection + positions ->
    one self-attention sub-layer -> attention pooling, (Nq, L, Dq) tokens to one (Nq, d) vector."""

    def __init__(self, query_dim: int, hidden_size: int, max_tokens: int, n_heads: int, dropout: float,
                 input_dropout: float):
        super().__init__()
        self.projection = FeatureProjection(query_dim, hidden_size, input_dropout)
        self.positions = PositionalEncoding(max_tokens, hidden_size, input_dropout)
        self.attention = AttentionSubLayer(hidden_size, n_heads, dropout)
        self.pooling = AttentionPooling(hidden_size)

    def forward(self, tokens: torch.Tensor, token_mask: torch.Tensor) -> torch.Tensor:
        x = self.positions(self.projection(tokens))  # (Nq, L, d)
        x = self.attention(x, key_valid=token_mask)  # (Nq, L, d)
        return self.pooling(x, token_mask)  # (Nq, d)
