"""Both decoders on streams whose first timestamp is not 0 (an offset, a video starting after its audio)
and on mp4 files with an edit list (cut by stream copy), checked against ffmpeg's own frames: the
ffmpeg binary decodes every frame (showinfo: its timestamp and mean luma, hence the ramp frame index),
and frame times count from the stream's start time, as ``ffprobe -show_frames`` best-effort
timestamps minus ``start_time`` do."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import av
import imageio_ffmpeg
import numpy as np
import pytest

from extractors.decode import VideoDecodeError, decode_frames, sample_times, video_duration
from videos import make_ramp_video, ramp_frame_index, run_ffmpeg

FPS, N_FRAMES = 10, 30
_SHOWINFO_RE = re.compile(r"pts_time:\s*(-?[\d.]+).*?duration_time:\s*([\d.]+).*?mean:\[(\d+)")


def _ramp_with_b_frames(path: Path) -> Path:
    """The ramp with B-frames and a keyframe every 10 frames: the mp4 muxer shifts it by an edit list."""
    ramp = f"color=c=black:size=64x48:rate={FPS},geq=lum='16+2*N':cb=128:cr=128,trim=end_frame={N_FRAMES}"
    run_ffmpeg("-f", "lavfi", "-i", ramp, "-c:v", "libx264", "-preset", "ultrafast", "-bf", "2", "-g", "10",
               "-qp", "0", "-pix_fmt", "yuv420p", str(path))
    return path


# name -> (made from the plain ramp or the B-frame one, ffmpeg options before and after its -i, whether
# an edit list cuts frames)
VARIANTS = {
    "offset.mp4": ("ramp", [], ["-c", "copy", "-output_ts_offset", "2.5"], False),
    "offset.mkv": ("ramp", [], ["-c", "copy", "-output_ts_offset", "2.5"], False),
    "offset.ts": ("ramp", [], ["-c", "copy", "-output_ts_offset", "3.9", "-f", "mpegts"], False),
    "video_after_audio.mp4": ("ramp", ["-f", "lavfi", "-i", "sine=duration=4", "-itsoffset", "1.5"],
                              ["-map", "0:a", "-map", "1:v", "-c:v", "copy", "-c:a", "aac"], False),
    "b_frames.mp4": ("b_frames", [], ["-c", "copy"], False),
    "edit_list.mp4": ("ramp", ["-ss", "1.05"], ["-c", "copy"], True),
    "edit_list_b_frames.mp4": ("b_frames", ["-ss", "1.05"], ["-c", "copy"], True),
}


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("timebase")
    sources = {"ramp": make_ramp_video(folder / "ramp.mp4", N_FRAMES, FPS),
               "b_frames": _ramp_with_b_frames(folder / "ramp_b_frames.mp4")}
    for name, (source, before, after, _) in VARIANTS.items():
        run_ffmpeg(*before, "-i", str(sources[source]), *after, str(folder / name))
    return {name: folder / name for name in VARIANTS}


def ffmpeg_frames(path: Path) -> tuple[np.ndarray, np.ndarray, float]:
    """Every frame ffmpeg shows: start times (s) counted from the stream's start time, ramp frame
    indices, and the end of the last frame."""
    command = [imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-copyts", "-i", str(path), "-map", "0:v:0",
               "-fps_mode", "passthrough", "-vf", "showinfo", "-f", "null", "-"]
    lines = subprocess.run(command, capture_output=True, text=True, timeout=60, check=True).stderr
    shown = [(float(time), float(length), int(luma)) for time, length, luma in _SHOWINFO_RE.findall(lines)]
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        start_time = float(stream.start_time * stream.time_base)
    times = np.array([time for time, _, _ in shown]) - start_time
    indices = np.array([round((luma - 16) / 2) for _, _, luma in shown])
    return times, indices, float(times[-1] + shown[-1][1])


def _expected(times: np.ndarray, frame_times: np.ndarray, frame_indices: np.ndarray):
    """The frame on screen at each time: the last one starting at or before it (the first before it)."""
    shown = np.clip(np.searchsorted(frame_times, times + 1e-4, side="right") - 1, 0, len(frame_times) - 1)
    return frame_indices[shown], frame_times[shown]


def test_the_variants_are_what_they_claim(videos):
    """The files do start late or carry an edit list, or these tests would test nothing."""
    for name, (_, _, _, cuts) in VARIANTS.items():
        with av.open(str(videos[name])) as container:
            stream = container.streams.video[0]
            first_pts = min(packet.pts for packet in container.demux(stream) if packet.pts is not None)
            start_time = float(stream.start_time * stream.time_base)
        if name.startswith(("offset", "video_after")):
            assert start_time >= 1.5, name
        if cuts:
            assert first_pts < 0, name  # packets before the cut, decoded but not shown
    times, indices, _ = ffmpeg_frames(videos["edit_list.mp4"])
    assert times[0] == 0 and indices[0] == 11  # the cut starts at 1.1 s of the ramp


@pytest.mark.parametrize("decoder", ["decord", "pyav", "auto"])
@pytest.mark.parametrize("name", list(VARIANTS))
def test_frames_and_times_match_ffmpeg(videos, name, decoder):
    path = videos[name]
    frame_times, frame_indices, end = ffmpeg_frames(path)
    if decoder == "decord" and VARIANTS[name][3]:
        with pytest.raises(VideoDecodeError, match="edit list"):
            decode_frames(path, np.array([0.5]), decoder="decord")
        return
    duration = video_duration(path, decoder=decoder)
    assert duration == pytest.approx(end, abs=1 / FPS + 1e-3)  # decord ends mpegts streams at the last start
    times = np.concatenate([sample_times(end, 7.0), [0.0, end - 0.01, 1.0, 0.31]])  # forward, then back
    decoded = decode_frames(path, times, short_side=32, chunk=4, decoder=decoder)
    if decoder == "auto":
        assert decoded.decoder == ("pyav" if VARIANTS[name][3] else "decord")
    expected_indices, expected_times = _expected(times, frame_times, frame_indices)
    np.testing.assert_array_equal(ramp_frame_index(decoded.frames), expected_indices)
    np.testing.assert_allclose(decoded.timestamps, expected_times, atol=1e-4)
