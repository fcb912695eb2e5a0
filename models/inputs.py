"""What a model reads, and how the data layer builds it from a video's feature rows.

Every model reads the same batch dictionary (shapes: B videos, N = map_size clips, F <= max_frames
frame rows, Nq captions, L tokens, Dv / Dq input sizes):

    clips            (B, N, Dv)  each video's T feature rows mean-binned to N clips (amdnet.data.bin_clips)
    frames           (B, F, Dv)  the rows themselves, mean-sampled down to max_frames when T is larger
                                 (amdnet.data.sample_frames), zero-padded; frame_mask (B, F) bool marks real rows
    queries          (Nq, Dq) pooled vectors, or (Nq, L, Dq) tokens with token_mask (Nq, L) bool
    caption_to_video (Nq,)       the batch index of each caption's video (training only)

The data layer builds them (amdnet.data: `VideoInputs`, `video_inputs`, `collate_video_inputs`), the same
way for training, evaluation and the search index. A model names the video inputs it needs in `video_inputs` ("clips", "frames") and the query input in
`query_input` ("pooled" or "tokens"). The rows are passed as the feature files hold them: models that
want unit vectors normalise after pooling themselves (`l2_normalize`), as their references do.
"""
from __future__ import annotations

import torch

# MS-SL's and GMMFormer's normaliser adds this to the norm (x / (|x| + eps)), so zero padding stays zero.
NORM_EPS = 1e-5


def l2_normalize(x: torch.Tensor) -> torch.Tensor:
    """x / (|x| + 1e-5) along the last axis, the references' normaliser; zero rows stay zero."""
    return x / (x.norm(dim=-1, keepdim=True) + NORM_EPS)


def query_tokens(batch: dict, max_tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The batch's token queries, cut to the first max_tokens and each token L2-normalised:
    (Nq, L, Dq) tokens and (Nq, L) bool mask, L <= max_tokens."""
    tokens, token_mask = batch["queries"], batch.get("token_mask")
    if tokens.dim() != 3:
        raise ValueError(f"this model reads token-level queries (Nq, L, Dq), got shape {tuple(tokens.shape)}; "
                         "set train.query_input: tokens")
    if token_mask is None:
        token_mask = torch.ones(tokens.shape[:2], dtype=torch.bool, device=tokens.device)
    return l2_normalize(tokens[:, :max_tokens]), token_mask[:, :max_tokens]


def video_frames(batch: dict, max_frames: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The batch's frame rows (B, F, Dv), padding zero, and frame_mask (B, F) bool; F <= max_frames."""
    frames, frame_mask = batch["frames"], batch["frame_mask"]
    if frames.shape[1] > max_frames:
        raise ValueError(f"the batch holds {frames.shape[1]} frame rows per video, more than max_frames="
                         f"{max_frames}: the data layer must sample them (amdnet.data.sample_frames)")
    if not frame_mask[:, 0].all():
        raise ValueError("a video in the batch has no frame rows (frame_mask is all false)")
    return frames * frame_mask.unsqueeze(-1), frame_mask
