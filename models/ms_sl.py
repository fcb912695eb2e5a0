"""MS-SL: multi-scale similarity learning for partially relevant video retrieval (Dong et al., ACM MM 2022).

Written from the reference code (HuiGuanLab/ms-sl, method/), not copied. Two views of a video:
- clip scale: its rows mean-binned to N = 32 clips, encoded, then every run of 1..N consecutive clips
  averaged into one proposal (P = N(N+1)/2 = 528); a query's clip score is its best proposal cosine.
- frame scale: its rows (at most 128), encoded; the query's best proposal (the "key clip") attends over
  them (keys and values are two linear maps of the frames) into one vector; the frame score is the
  query's cosine with it.
Score = clip_scale_weight * clip score + frame_scale_weight * frame score.

Shapes: B videos, N clips, P proposals, F frame rows, Nq captions, L tokens, d hidden size.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from amdnet.losses import info_nce_loss
from amdnet.model import AMDNet, AttentionSubLayer, FeatureProjection
from amdnet.moments import clip_run_spans, pair_cosines, per_video_pairs, video_cosines
from models.configs import MSSLConfig
from models.inputs import l2_normalize, query_tokens, video_frames
from models.layers import PositionalEncoding, TokenQueryEncoder
from models.losses import hard_negatives_on, sampled_negative_scores, triplet_loss
from models.registry import RetrievalModel, Rows, register_model, score_in_chunks, token_model_reference


def proposal_windows(n_clips: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Every run of consecutive clips, shortest first, then by start: (P, N) averaging weights (1/k on
    the k clips of a run) and (P, 2) first and last clip of each run; P = N(N+1)/2."""
    bounds = [(start, start + length - 1) for length in range(1, n_clips + 1)
              for start in range(n_clips - length + 1)]
    weights = torch.zeros(len(bounds), n_clips)
    for row, (first, last) in enumerate(bounds):
        weights[row, first:last + 1] = 1.0 / (last - first + 1)
    return weights, torch.tensor(bounds)


def key_clip_attention(key_proposals: torch.Tensor, frame_keys: torch.Tensor, frame_values: torch.Tensor,
                       frame_mask: torch.Tensor) -> torch.Tensor:
    """(..., d) key proposal attends over (..., F, d) frames -> (..., d): softmax over valid frames of
    key . proposal (unscaled, as the reference), times the values."""
    logits = (frame_keys @ key_proposals.unsqueeze(-1)).squeeze(-1)  # (..., F)
    weights = logits.masked_fill(~frame_mask, float("-inf")).softmax(dim=-1)  # (..., F)
    return (weights.unsqueeze(-1) * frame_values).sum(dim=-2)  # (..., d)


def frame_nce_loss(scores: torch.Tensor) -> torch.Tensor:
    """MS-SL's frame-scale InfoNCE on square (Nq, Nq) scores, caption i paired with the vector its own
    video gave it: mean_i [logsumexp(row i and column i together) - s_ii] (s_ii counted twice)."""
    both = torch.cat([scores, scores.T], dim=1)  # (Nq, 2 Nq): row i, then column i
    return (both.logsumexp(dim=1) - scores.diagonal()).mean()


def paired_triplet_loss(scores: torch.Tensor, margin: float, hard_pool_size: int | None) -> torch.Tensor:
    """MS-SL's frame-scale ranking loss on square (Nq, Nq) cosines with positives on the diagonal: a
    negative drawn per row (wrong vector for the caption) and per column (wrong caption for the vector).
    As in the reference, the vectors of other captions of the same video count as negatives."""
    if scores.shape[0] < 2:
        return scores.sum() * 0.0
    diagonal = torch.arange(scores.shape[0], device=scores.device)
    positive = scores.diagonal()  # (Nq,)
    wrong_vector = sampled_negative_scores(scores, diagonal, hard_pool_size)  # (Nq,)
    wrong_caption = sampled_negative_scores(scores.T, diagonal, hard_pool_size)  # (Nq,)
    return F.relu(margin + wrong_vector - positive).mean() + F.relu(margin + wrong_caption - positive).mean()


def _reference(margin: float, clip_weight: float, frame_weight: float, video: str, video_dim: int,
               query_dim: int) -> dict:
    return token_model_reference({"margin": margin, "clip_scale_weight": clip_weight, "frame_scale_weight": frame_weight},
                                 2.5e-4, 2018, video, video_dim, query_dim)


@register_model("ms-sl")
class MSSL(RetrievalModel):
    Config = MSSLConfig
    video_inputs = ("clips", "frames")
    query_input = "tokens"
    span_rules = ("proposal", "whole")
    default_span_rule = "proposal"
    loss_terms = ("loss", "clip_nce", "clip_trip", "frame_nce", "frame_trip")
    # do_tvr.sh / do_activitynet.sh / do_charades.sh over method/config.py's defaults
    reference_datasets = {
        "tvr": _reference(0.1, 0.7, 0.3, "I3D + ResNet-152 per 1.5 s clip (i3d_resnet)", 3072, 768),
        "activitynet": _reference(0.2, 0.7, 0.3, "I3D (i3d)", 1024, 1024),
        "charades": _reference(0.2, 0.5, 0.5, "I3D RGB (i3d_rgb_lgi)", 1024, 1024),
    }

    def __init__(self, config: MSSLConfig, video_dim: int, query_dim: int):
        super().__init__()
        self.config = config
        d, heads, dropout, input_dropout = config.hidden_size, config.n_heads, config.dropout, config.input_dropout
        self.query_encoder = TokenQueryEncoder(query_dim, d, config.max_tokens, heads, dropout, input_dropout)
        self.clip_projection = FeatureProjection(video_dim, d, input_dropout)
        self.clip_positions = PositionalEncoding(config.max_frames, d, input_dropout)
        self.clip_attention = AttentionSubLayer(d, heads, dropout)
        self.frame_projection = FeatureProjection(video_dim, d, input_dropout)
        self.frame_positions = PositionalEncoding(config.max_frames, d, input_dropout)
        self.frame_attention = AttentionSubLayer(d, heads, dropout)
        self.frame_key = nn.Linear(d, d, bias=False)
        self.frame_value = nn.Linear(d, d, bias=False)
        weights, bounds = proposal_windows(config.map_size)
        self.register_buffer("proposal_weights", weights, persistent=False)  # (P, N)
        self.register_buffer("proposal_bounds", bounds, persistent=False)  # (P, 2)
        self.apply(AMDNet.init_weights)

    # -- encoders (unnormalised outputs, as training uses them) --

    def encode_queries(self, batch: dict) -> torch.Tensor:
        tokens, token_mask = query_tokens(batch, self.config.max_tokens)  # (Nq, L, Dq), (Nq, L)
        return self.query_encoder(tokens, token_mask)  # (Nq, d)

    def encode_clips(self, clips: torch.Tensor) -> torch.Tensor:
        x = self.clip_positions(self.clip_projection(l2_normalize(clips)))  # (B, N, d)
        return self.clip_attention(x)  # (B, N, d)

    def encode_frames(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Frame keys and values (B, F, d) each, and the frame mask (B, F)."""
        frames, frame_mask = video_frames(batch, self.config.max_frames)  # (B, F, Dv), (B, F)
        x = self.frame_positions(self.frame_projection(l2_normalize(frames)))  # (B, F, d)
        x = self.frame_attention(x, key_valid=frame_mask)  # (B, F, d)
        return self.frame_key(x), self.frame_value(x), frame_mask

    # -- the interface --

    def represent_videos(self, batch: dict) -> Rows:
        """Encoded clips (proposals are formed from them when scoring), each proposal's norm, and the
        frame keys and values padded to max_frames rows so that batches stack."""
        clips = self.encode_clips(batch["clips"])  # (B, N, d)
        frame_keys, frame_values, frame_mask = self.encode_frames(batch)
        real = frame_mask.unsqueeze(-1)  # (B, F, 1): padding rows are zeroed, so a video's rows do not
        frame_keys, frame_values = frame_keys * real, frame_values * real  # depend on its batch
        padding = self.config.max_frames - frame_mask.shape[1]
        return {"clip_features": clips,
                "proposal_norms": (self.proposal_weights @ clips).norm(dim=-1),  # (B, P)
                "frame_keys": F.pad(frame_keys, (0, 0, 0, padding)),  # (B, max_frames, d)
                "frame_values": F.pad(frame_values, (0, 0, 0, padding)),  # (B, max_frames, d)
                "frame_mask": F.pad(frame_mask, (0, padding))}  # (B, max_frames)

    def represent_queries(self, batch: dict) -> torch.Tensor:
        return F.normalize(self.encode_queries(batch), dim=-1)  # (Nq, d)

    def proposal_cosines(self, per_clip: torch.Tensor, proposal_norms: torch.Tensor) -> torch.Tensor:
        """A unit query's dot products with the N clips (..., N) and the proposals' norms (..., P) ->
        its cosines with the P proposals (..., P): a proposal is a mean of clips, so its dot product is
        the same mean of the clips' dot products."""
        return (per_clip @ self.proposal_weights.T) / proposal_norms.clamp(min=1e-12)

    def score(self, queries: torch.Tensor, videos: Rows) -> torch.Tensor:
        elements = max(self.proposal_weights.shape[0], self.config.hidden_size)  # per (query, video) pair
        return score_in_chunks(self.score_chunk, queries, videos, elements)

    def score_chunk(self, queries: torch.Tensor, videos: Rows) -> torch.Tensor:
        per_clip = torch.einsum("qd,vnd->qvn", queries, videos["clip_features"])  # (Q, V, N)
        cosines = self.proposal_cosines(per_clip, videos["proposal_norms"])  # (Q, V, P)
        clip_score, key = cosines.max(dim=-1)  # (Q, V) each
        key_proposals = torch.einsum("qvn,vnd->qvd", self.proposal_weights[key], videos["clip_features"])
        attended = key_clip_attention(key_proposals, videos["frame_keys"], videos["frame_values"],
                                      videos["frame_mask"])  # (Q, V, d)
        frame_score = (F.normalize(attended, dim=-1) @ queries.unsqueeze(-1)).squeeze(-1)  # (Q, V)
        return self.config.clip_scale_weight * clip_score + self.config.frame_scale_weight * frame_score

    def spans(self, queries: torch.Tensor, videos: Rows, clip_spans: torch.Tensor | None, rule: str, *,
              pair_videos: torch.Tensor | None = None) -> torch.Tensor:
        """"proposal": the span of the pair's key proposal (its best run of clips); "whole": [0, 1]."""
        self.check_rule(rule)
        if rule == "whole":
            return torch.tensor([0.0, 1.0], device=queries.device).expand(queries.shape[0], 2).clone()
        clip_features, proposal_norms = videos["clip_features"], videos["proposal_norms"]
        if pair_videos is None:
            cosines = self.proposal_cosines(pair_cosines(queries, clip_features), proposal_norms)  # (P, proposals)
        else:  # the proposal product per video too: a video's pairs get the cosines they get alone
            cosines = per_video_pairs(queries, pair_videos, lambda group, video: self.proposal_cosines(
                video_cosines(group, clip_features[video:video + 1]), proposal_norms[video]),
                self.proposal_weights.shape[0])
        first, last = self.proposal_bounds[cosines.argmax(dim=-1)].unbind(-1)  # (P,) each
        return clip_run_spans(clip_spans, pair_videos, first, last, clip_features.shape[1])  # (P, 2)

    def loss(self, batch: dict, epoch: int) -> dict[str, torch.Tensor]:
        config = self.config
        hard_pool = config.hard_pool_size if hard_negatives_on(epoch, config.hard_negative_start_epoch) else None
        caption_to_video = batch["caption_to_video"]  # (Nq,)
        queries = self.encode_queries(batch)  # (Nq, d)
        proposals = self.proposal_weights @ self.encode_clips(batch["clips"])  # (B, P, d)
        frame_keys, frame_values, frame_mask = self.encode_frames(batch)

        n_videos, n_proposals, hidden = proposals.shape
        flat_proposals = proposals.reshape(n_videos * n_proposals, hidden)
        proposal_cos = (F.normalize(queries, dim=-1) @ F.normalize(flat_proposals, dim=-1).T)  # (Nq, B*P)
        clip_cos, key = proposal_cos.view(-1, n_videos, n_proposals).max(dim=-1)  # (Nq, B) each
        clip_dot = (queries @ flat_proposals.T).view(-1, n_videos, n_proposals).amax(dim=-1)  # (Nq, B)

        # Frame scale: each caption's own video, attended from that video's key proposal for it.
        own_key = key.gather(1, caption_to_video.unsqueeze(1)).squeeze(1)  # (Nq,)
        attended = key_clip_attention(proposals[caption_to_video, own_key], frame_keys[caption_to_video],
                                      frame_values[caption_to_video], frame_mask[caption_to_video])  # (Nq, d)
        frame_cos = F.normalize(queries, dim=-1) @ F.normalize(attended, dim=-1).T  # (Nq, Nq)
        frame_dot = queries @ attended.T  # (Nq, Nq)

        terms = {"clip_nce": config.clip_nce_weight * info_nce_loss(clip_dot, caption_to_video),
                 "clip_trip": triplet_loss(clip_cos, caption_to_video, config.margin, hard_pool is not None,
                                           config.hard_pool_size),
                 "frame_nce": config.frame_nce_weight * frame_nce_loss(frame_dot),
                 "frame_trip": paired_triplet_loss(frame_cos, config.margin, hard_pool)}
        return {"loss": sum(terms.values()), **terms}
