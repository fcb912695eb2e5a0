"""Subtitle features on the visual sampling grid (TVR's recipe, with clip length 1/fps).

Sample i of the grid stands for the clip [i/fps, (i+1)/fps). A subtitle sentence [start, end]
covers clips floor(start*fps) .. ceil(end*fps), both inclusive, clamped to the grid; each clip
gets the element-wise max over the token features of every sentence covering it, and a mask
marks the clips that have any subtitle. With fps = 1/1.5 this is exactly TVR's 1.5 s clip rule.
"""

import math

import numpy as np

Sentence = tuple[float, float, np.ndarray]  # (start s, end s, token features (L, D))


def pool_subtitles(
    sentences: list[Sentence], timestamps: np.ndarray, fps: float, dim: int
) -> tuple[np.ndarray, np.ndarray]:
    """-> features float32 (T, dim), zero where no sentence covers a clip, and mask uint8 (T,).

    T = len(timestamps), the visual feature count of the same video. Sentences that start after
    the last clip ends are ignored (subtitle files sometimes run past a trimmed video).
    """
    if timestamps.ndim != 1 or len(timestamps) == 0:
        raise ValueError(f"timestamps must be a non-empty 1-D array, got shape {timestamps.shape}")
    if fps <= 0:
        raise ValueError(f"fps must be positive, got {fps}")
    clip_count = len(timestamps)
    pooled = np.full((clip_count, dim), -np.inf, dtype=np.float32)  # (T, D) running max
    has_subtitle = np.zeros(clip_count, dtype=bool)  # (T,)
    for index, (start, end, tokens) in enumerate(sentences):
        _check_sentence(index, start, end, tokens, dim)
        first_clip = max(0, math.floor(start * fps))
        last_clip = min(clip_count - 1, math.ceil(end * fps))
        if first_clip > last_clip:
            continue  # the sentence lies entirely outside the video
        sentence_max = tokens.max(axis=0)  # (D,)
        covered = pooled[first_clip : last_clip + 1]  # (C, D) view
        np.maximum(covered, sentence_max, out=covered)
        has_subtitle[first_clip : last_clip + 1] = True
    pooled[~has_subtitle] = 0.0
    return pooled, has_subtitle.astype(np.uint8)


def _check_sentence(index: int, start: float, end: float, tokens: np.ndarray, dim: int) -> None:
    if not end >= start:
        raise ValueError(f"subtitle sentence {index}: end {end} is before start {start}")
    if tokens.ndim != 2 or tokens.shape[0] == 0 or tokens.shape[1] != dim:
        raise ValueError(f"subtitle sentence {index}: token features must be (L >= 1, {dim}), got {tokens.shape}")
