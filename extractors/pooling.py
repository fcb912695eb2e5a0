"""Temporal pooling of per-frame or per-window features onto a grid of fixed-length clips.

TVR's visual features are, per 1.5 s clip, ResNet-152 frame features (3 fps) max-pooled and I3D
features mean-pooled, each part L2-normalised and concatenated (3072-d):

    spans = clip_grid(duration, 1.5)                                   # (C, 2)
    parts = [pool_frames_to_clips(resnet, resnet_times, spans, "max"),    # (C, 2048)
             pool_frames_to_clips(i3d, i3d_times, spans, "mean")]        # (C, 1024)
    features = concat_feature_parts(parts)                             # (C, 3072)

Clip backbones see windows of `clip_len` frames (`clip_windows`, `window_frame_indices`); the time
of a window's feature is the mean of its frames' timestamps.
"""

import math

import numpy as np

POOL_MODES = ("max", "mean")
# A duration that is a multiple of the clip length up to float rounding (4.5 / 1.5) must not get
# an extra, empty clip.
_GRID_TOLERANCE = 1e-9


def clip_grid(duration: float, clip_seconds: float) -> np.ndarray:
    """Consecutive clips [i * clip_seconds, (i + 1) * clip_seconds) covering [0, duration], the
    last one cut at `duration`: float64 spans (C, 2), C = ceil(duration / clip_seconds) >= 1."""
    if not duration > 0 or not clip_seconds > 0:
        raise ValueError(f"clip_grid needs duration > 0 and clip_seconds > 0, got {duration}, {clip_seconds}")
    clip_count = max(1, math.ceil(duration / clip_seconds - _GRID_TOLERANCE))
    starts = np.arange(clip_count) * clip_seconds
    ends = np.minimum(starts + clip_seconds, duration)
    return np.stack([starts, ends], axis=1)  # (C, 2)


def pool_frames_to_clips(features: np.ndarray, timestamps: np.ndarray, spans: np.ndarray, mode: str) -> np.ndarray:
    """Pool features (T, D) sampled at `timestamps` (T,) over each span [start, end) of `spans`
    (C, 2) (the last span includes its end) with "max" or "mean" -> float32 (C, D).

    A clip that contains no sample takes the sample nearest to its centre, so short clips at a
    low sampling rate still get a feature.
    """
    features, timestamps, spans = np.asarray(features), np.asarray(timestamps), np.asarray(spans)
    if mode not in POOL_MODES:
        raise ValueError(f"pool mode must be one of {POOL_MODES}, got {mode!r}")
    if features.ndim != 2 or timestamps.shape != (len(features),) or len(features) == 0:
        raise ValueError(
            f"need features (T, D) with T >= 1 and timestamps (T,), got {features.shape} and {timestamps.shape}"
        )
    if spans.ndim != 2 or spans.shape[1] != 2:
        raise ValueError(f"spans must have shape (C, 2), got {spans.shape}")
    reduce = np.max if mode == "max" else np.mean
    pooled = np.empty((len(spans), features.shape[1]), dtype=np.float32)  # (C, D)
    for index, (start, end) in enumerate(spans):
        before_end = timestamps <= end if index == len(spans) - 1 else timestamps < end
        inside = (timestamps >= start) & before_end
        if inside.any():
            pooled[index] = reduce(features[inside], axis=0)
        else:
            pooled[index] = features[np.argmin(np.abs(timestamps - (start + end) / 2))]
    return pooled


def clip_windows(n_frames: int, clip_len: int, stride: int) -> np.ndarray:
    """Start indices of windows of `clip_len` frames every `stride` frames -> int64 (N,).

    When the last regular window stops short of the end, one more window ends on the last frame,
    so every frame is seen. A video shorter than `clip_len` gets the single window 0, padded by
    `window_frame_indices`.
    """
    if n_frames < 1 or clip_len < 1 or stride < 1:
        raise ValueError(f"clip_windows needs positive arguments, got n_frames={n_frames}, "
                         f"clip_len={clip_len}, stride={stride}")
    last_start = max(0, n_frames - clip_len)
    starts = np.arange(0, last_start + 1, stride)
    if starts[-1] != last_start:
        starts = np.append(starts, last_start)
    return starts


def window_frame_indices(starts: np.ndarray, clip_len: int, n_frames: int) -> np.ndarray:
    """Frame index of each position of each window -> int64 (N, clip_len); positions past the end of
    the video repeat its last frame."""
    indices = np.asarray(starts)[:, None] + np.arange(clip_len)[None, :]  # (N, clip_len)
    return np.minimum(indices, n_frames - 1)


def concat_feature_parts(parts: list[np.ndarray]) -> np.ndarray:
    """L2-normalise each row of each part (C, D_i), then concatenate -> float32 (C, sum D_i).
    An all-zero row stays zero."""
    if not parts:
        raise ValueError("concat_feature_parts needs at least one part")
    clip_counts = [part.shape[0] for part in parts]
    if any(part.ndim != 2 for part in parts) or len(set(clip_counts)) != 1:
        shapes = ", ".join(f"part {index}: {part.shape}" for index, part in enumerate(parts))
        raise ValueError(f"feature parts must be 2-D with the same number of clips, got {shapes}")
    normalised = []
    for part in parts:
        norms = np.linalg.norm(part, axis=1, keepdims=True)  # (C, 1)
        normalised.append(part / np.maximum(norms, np.finfo(np.float32).tiny))
    return np.concatenate(normalised, axis=1).astype(np.float32)
