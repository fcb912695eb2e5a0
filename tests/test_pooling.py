"""Clip grids, frame-to-clip pooling, clip-backbone windows and per-part normalisation, by hand."""

import numpy as np
import pytest

from extractors.pooling import (
    clip_grid,
    clip_windows,
    concat_feature_parts,
    pool_frames_to_clips,
    window_frame_indices,
)
from pipeline.visual import combine_parts
from storage import FeatureFile, FeatureWriter


def test_clip_grid_covers_the_video_and_cuts_the_last_clip():
    np.testing.assert_allclose(clip_grid(4.0, 1.5), [[0.0, 1.5], [1.5, 3.0], [3.0, 4.0]])
    np.testing.assert_allclose(clip_grid(4.5, 1.5), [[0.0, 1.5], [1.5, 3.0], [3.0, 4.5]])  # no empty 4th clip
    np.testing.assert_allclose(clip_grid(0.4, 1.5), [[0.0, 0.4]])


def test_clip_grid_rejects_non_positive_lengths():
    with pytest.raises(ValueError, match="duration > 0 and clip_seconds > 0"):
        clip_grid(0.0, 1.5)


def test_frames_at_3_fps_pool_over_1_5_second_clips():
    timestamps = (np.arange(11) + 0.5) / 3  # 3 fps over 3.7 s: 0.17, 0.5, ..., 3.5
    features = np.stack([np.arange(11.0), -np.arange(11.0)], axis=1)  # (11, 2)
    spans = clip_grid(3.7, 1.5)  # [0, 1.5) holds frames 0-3, [1.5, 3) 4-8 (t=1.5 starts clip 1), [3, 3.7] 9-10

    max_pooled = pool_frames_to_clips(features, timestamps, spans, "max")
    mean_pooled = pool_frames_to_clips(features, timestamps, spans, "mean")
    np.testing.assert_allclose(max_pooled, [[3, 0], [8, -4], [10, -9]])
    np.testing.assert_allclose(mean_pooled, [[1.5, -1.5], [6, -6], [9.5, -9.5]])
    assert max_pooled.dtype == np.float32


def test_a_clip_without_frames_takes_the_frame_nearest_its_centre():
    timestamps = np.array([0.1, 2.9])
    features = np.array([[1.0], [2.0]])
    spans = np.array([[0.0, 1.0], [1.0, 1.8], [1.8, 2.4], [2.4, 3.0]])  # centres 1.4 and 2.1 hold no frame
    np.testing.assert_allclose(pool_frames_to_clips(features, timestamps, spans, "mean"), [[1], [1], [2], [2]])


def test_the_last_clip_includes_a_frame_at_its_end():
    spans = clip_grid(3.0, 1.5)
    pooled = pool_frames_to_clips(np.array([[1.0], [5.0], [7.0]]), np.array([0.5, 2.0, 3.0]), spans, "max")
    np.testing.assert_allclose(pooled, [[1], [7]])


@pytest.mark.parametrize(
    "features, timestamps, spans, mode, message",
    [
        (np.zeros((3, 2)), np.zeros(3), np.zeros((1, 2)), "median", "pool mode must be one of"),
        (np.zeros((3, 2)), np.zeros(2), np.zeros((1, 2)), "max", r"timestamps \(T,\)"),
        (np.zeros((0, 2)), np.zeros(0), np.zeros((1, 2)), "max", "T >= 1"),
        (np.zeros((3, 2)), np.zeros(3), np.zeros((2, 3)), "max", r"spans must have shape \(C, 2\)"),
    ],
)
def test_bad_pooling_input_is_rejected(features, timestamps, spans, mode, message):
    with pytest.raises(ValueError, match=message):
        pool_frames_to_clips(features, timestamps, spans, mode)


def test_windows_step_by_stride_and_a_last_one_ends_on_the_last_frame():
    np.testing.assert_array_equal(clip_windows(40, clip_len=16, stride=8), [0, 8, 16, 24])
    np.testing.assert_array_equal(clip_windows(42, clip_len=16, stride=8), [0, 8, 16, 24, 26])
    np.testing.assert_array_equal(clip_windows(16, clip_len=16, stride=16), [0])


def test_a_video_shorter_than_a_window_repeats_its_last_frame():
    starts = clip_windows(5, clip_len=8, stride=4)
    np.testing.assert_array_equal(starts, [0])
    np.testing.assert_array_equal(window_frame_indices(starts, 8, 5), [[0, 1, 2, 3, 4, 4, 4, 4]])
    np.testing.assert_array_equal(window_frame_indices(np.array([0, 2]), 3, 5), [[0, 1, 2], [2, 3, 4]])


def test_window_arguments_must_be_positive():
    with pytest.raises(ValueError, match="stride=0"):
        clip_windows(10, clip_len=4, stride=0)


def test_parts_are_l2_normalised_per_clip_then_concatenated():
    resnet = np.array([[3.0, 4.0], [0.0, 0.0]])  # (C=2, 2); a zero row must stay zero, not NaN
    i3d = np.array([[0.0, 0.0, 2.0], [1.0, 1.0, 1.0]])  # (C=2, 3)
    combined = concat_feature_parts([resnet, i3d])
    third = 1 / np.sqrt(3)
    np.testing.assert_allclose(combined, [[0.6, 0.8, 0, 0, 1], [0, 0, third, third, third]], atol=1e-7)
    assert combined.dtype == np.float32


def test_the_tvr_recipe_gives_3072_dims_per_clip():
    rng = np.random.default_rng(0)
    spans = clip_grid(6.0, 1.5)
    resnet = pool_frames_to_clips(rng.random((18, 2048)), (np.arange(18) + 0.5) / 3, spans, "max")
    i3d = pool_frames_to_clips(rng.random((9, 1024)), np.linspace(0.3, 5.7, 9), spans, "mean")
    combined = concat_feature_parts([resnet, i3d])
    assert combined.shape == (4, 3072)
    np.testing.assert_allclose(np.linalg.norm(combined[:, :2048], axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(combined[:, 2048:], axis=1), 1.0, rtol=1e-5)


def test_parts_must_share_the_clip_count():
    with pytest.raises(ValueError, match=r"part 0: \(2, 4\), part 1: \(3, 4\)"):
        concat_feature_parts([np.zeros((2, 4)), np.zeros((3, 4))])


def _write_part(path, backbone: str, videos: dict[str, tuple[np.ndarray, np.ndarray]]):
    with FeatureWriter(path, {"backbone": backbone}) as writer:
        for video_id, (features, timestamps) in videos.items():
            writer.write(video_id, features, timestamps=timestamps)
        writer.finish()


def _read(path, video_id):
    videos = FeatureFile(path).group()
    return videos.read(video_id), videos.read(video_id, "timestamps")


# One 3 s video, frames at 0.25, 0.75, ..., 2.75 s (2 fps): two 1.5 s clips of three frames each.
FRAME_TIMES = np.arange(6) * 0.5 + 0.25
FRAMES_A = np.array([[3.0, 0.0], [0.0, 4.0], [1.0, 1.0], [2.0, 2.0], [0.0, 6.0], [4.0, 1.0]])  # (6, 2)
FRAMES_B = np.array([[1.0, 0.0], [2.0, 1.0], [6.0, 0.0], [-3.0, 1.0], [-1.0, 0.0], [-2.0, 2.0]])  # (6, 2)
MAX_A = [[3.0, 4.0], [4.0, 6.0]]  # per clip, per dimension, by hand
MEAN_A = [[4 / 3, 5 / 3], [2.0, 3.0]]
MAX_B, MEAN_B = [[6.0, 1.0], [-1.0, 2.0]], [[3.0, 1 / 3], [-2.0, 1.0]]


def _unit(rows):
    rows = np.asarray(rows, dtype=np.float64)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


@pytest.mark.parametrize("pool_a, pool_b, expected_a, expected_b", [
    ("max", "mean", MAX_A, MEAN_B),
    ("mean", "max", MEAN_A, MAX_B),
    ("max", "max", MAX_A, MAX_B),
    ("mean", "mean", MEAN_A, MEAN_B),
])
def test_combined_parts_use_each_parts_own_pool_mode(tmp_path, pool_a, pool_b, expected_a, expected_b):
    _write_part(tmp_path / "a.h5", "a", {"v1": (FRAMES_A, FRAME_TIMES)})
    _write_part(tmp_path / "b.h5", "b", {"v1": (FRAMES_B, FRAME_TIMES)})
    video = {"video_id": "v1", "duration": 3.0}
    combine_parts([video], {"a": (tmp_path / "a.h5", pool_a), "b": (tmp_path / "b.h5", pool_b)}, 1.5,
                  tmp_path / "combined.h5", {"stage": "visual"})
    features, timestamps = _read(tmp_path / "combined.h5", "v1")
    # Each part pooled with its own mode, L2-normalised, then concatenated in the order given.
    np.testing.assert_allclose(features, np.concatenate([_unit(expected_a), _unit(expected_b)], axis=1), rtol=1e-6)
    np.testing.assert_allclose(timestamps, [0.75, 2.25])


@pytest.mark.parametrize("pool, expected", [("max", MAX_A), ("mean", MEAN_A)])
def test_a_single_part_is_pooled_but_not_normalised(tmp_path, pool, expected):
    """As the reference's single-backbone inputs: one part keeps its scale (see docs/pipeline.md, "Visual recipes and backbones")."""
    _write_part(tmp_path / "a.h5", "a", {"v1": (FRAMES_A, FRAME_TIMES)})
    combine_parts([{"video_id": "v1", "duration": 3.0}], {"a": (tmp_path / "a.h5", pool)}, 1.5,
                  tmp_path / "combined.h5", {"stage": "visual"})
    features, _ = _read(tmp_path / "combined.h5", "v1")
    np.testing.assert_allclose(features, expected, rtol=1e-6)
