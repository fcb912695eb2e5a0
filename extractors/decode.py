"""Video probing and frame sampling with decord.

Every visual and subtitle stage samples a video on the same uniform time grid (`sample_times`), and
`decode_frames` returns, for each grid time, the source frame that is on screen at that time, resized
on its short side and optionally centre-cropped.

Findings about decord 0.6.0 (the wheel installed here) that shape this module:
- It applies the display-matrix rotation itself: frames of a video tagged "rotation of 90 degrees"
  come out already rotated, identical to ffmpeg's autorotated output. So `decode_frames` does not
  rotate again; `probe_video` still reports the tag, read from `ffmpeg -i`, for the record.
- Missing, empty, non-video, header-truncated, data-truncated and byte-corrupted files raise Python
  exceptions (RuntimeError or decord.DECORDError) in the constructor or in `get_batch`; none crashed
  the interpreter in a few hundred fuzzed files, so decoding runs in-process and those exceptions
  are turned into `VideoDecodeError`.
"""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

import decord
import imageio_ffmpeg
import numpy as np
import torch
import torch.nn.functional as F

# decord reports frame times as float32; a grid time that sits exactly on a frame boundary must not
# fall onto the previous frame because of that rounding.
_TIMESTAMP_TOLERANCE_S = 1e-4

_DISPLAY_MATRIX_RE = re.compile(r"display ?matrix: rotation of (-?[\d.]+) degrees", re.IGNORECASE)
# decord prefixes its messages with "[hh:mm:ss] /build/path/file.cc:123: ".
_DECORD_LOG_PREFIX_RE = re.compile(r"^\[[\d:]+\]\s+\S+:\d+:\s*")
_ROTATE_TAG_RE = re.compile(r"^\s*rotate\s*:\s*(-?[\d.]+)\s*$", re.IGNORECASE | re.MULTILINE)


class VideoDecodeError(RuntimeError):
    """A video file cannot be opened or decoded; the message names the file."""

    def __init__(self, path: str | Path, reason: str):
        self.path = Path(path)
        self.reason = reason
        super().__init__(f"cannot decode video {self.path}: {reason}")


@dataclass(frozen=True)
class VideoInfo:
    duration: float  # seconds, end time of the last frame
    n_frames: int
    avg_fps: float
    width: int  # of the frames as decoded, i.e. after display rotation
    height: int
    rotation: int  # display rotation tag in degrees counter-clockwise, one of 0, 90, 180, 270


@dataclass(frozen=True)
class DecodedFrames:
    frames: np.ndarray  # uint8 (N, S, S, 3) when cropped, else (N, h, w, 3); RGB
    timestamps: np.ndarray  # float64 (N,), start time of the source frame used for each sample


def sample_times(duration: float, fps: float) -> np.ndarray:
    """The uniform sampling grid (seconds, float64) shared by the visual and subtitle stages.

    There are n = max(1, round(duration * fps)) samples (round half up), sample i sits in the middle
    of its interval, (i + 0.5) / fps, clamped to at most `duration`. A video shorter than one
    interval (duration * fps < 1) gets one sample, at duration / 2.
    """
    if not duration > 0 or not fps > 0:
        raise ValueError(f"sample_times needs duration > 0 and fps > 0, got duration={duration}, fps={fps}")
    if duration * fps < 1:
        return np.array([duration / 2], dtype=np.float64)
    n_samples = max(1, int(np.floor(duration * fps + 0.5)))
    return np.minimum((np.arange(n_samples) + 0.5) / fps, duration)


def probe_video(path: str | Path) -> VideoInfo:
    """Reads duration, frame count, frame rate, decoded size and the rotation tag of a video."""
    reader = _open(path)
    start_end = _frame_start_end(reader, path)
    first_frame = _get_batch(reader, [0], path)[0]
    return VideoInfo(
        duration=float(start_end[-1, 1]),
        n_frames=len(reader),
        avg_fps=float(reader.get_avg_fps()),
        width=int(first_frame.shape[1]),
        height=int(first_frame.shape[0]),
        rotation=read_rotation(path),
    )


def read_rotation(path: str | Path) -> int:
    """Display rotation (degrees counter-clockwise, 0/90/180/270) parsed from `ffmpeg -i` output.

    decord exposes no metadata, so the ffmpeg binary is asked; it prints a display matrix
    ("Display Matrix: rotation of -90.00 degrees") or, for old files, a "rotate" tag, which counts
    clockwise.
    """
    command = [imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-i", str(path)]
    # ffmpeg exits non-zero here because no output is given; the stream description is on stderr.
    stderr = subprocess.run(command, capture_output=True, text=True, timeout=60).stderr
    display_matrix = _DISPLAY_MATRIX_RE.search(stderr)
    if display_matrix:
        return round(float(display_matrix.group(1))) % 360
    rotate_tag = _ROTATE_TAG_RE.search(stderr)
    if rotate_tag:
        return -round(float(rotate_tag.group(1))) % 360
    return 0


def decode_frames(
    path: str | Path,
    times: np.ndarray,
    short_side: int = 224,
    crop: bool = True,
    chunk: int = 64,
) -> DecodedFrames:
    """Decodes the frames on screen at `times` (seconds), resized so the short side is `short_side`.

    The frame for time t is the last source frame starting at or before t (times before the first
    frame take the first frame, times past the end the last one), so variable frame rate videos
    are sampled correctly. Only the needed frames are decoded, `chunk` at a time.
    """
    times = np.asarray(times, dtype=np.float64)
    if times.ndim != 1 or len(times) == 0:
        raise ValueError(f"decode_frames needs a non-empty 1-d array of times for {path}, got shape {times.shape}")
    reader = _open(path)
    frame_starts = _frame_start_end(reader, path)[:, 0]
    frame_of_time = np.searchsorted(frame_starts, times + _TIMESTAMP_TOLERANCE_S, side="right") - 1
    frame_of_time = np.clip(frame_of_time, 0, len(frame_starts) - 1)

    needed_frames, sample_to_needed = np.unique(frame_of_time, return_inverse=True)
    resized_chunks = [
        _resize(_get_batch(reader, needed_frames[i : i + chunk].tolist(), path), short_side, crop)
        for i in range(0, len(needed_frames), chunk)
    ]
    frames = np.concatenate(resized_chunks)[sample_to_needed]
    return DecodedFrames(frames=frames, timestamps=frame_starts[frame_of_time])


def _open(path: str | Path) -> decord.VideoReader:
    path = Path(path)
    if not path.is_file():
        raise VideoDecodeError(path, "file not found")
    if path.stat().st_size == 0:
        raise VideoDecodeError(path, "file is empty")
    try:
        reader = decord.VideoReader(str(path), ctx=decord.cpu(0))
    except (RuntimeError, decord.DECORDError) as error:
        raise VideoDecodeError(path, f"not a readable video ({_first_line(error)})") from error
    if len(reader) == 0:
        raise VideoDecodeError(path, "video stream has no frames")
    return reader


def _frame_start_end(reader: decord.VideoReader, path: str | Path) -> np.ndarray:
    """float64 (n_frames, 2): display start and end time of every frame, in seconds."""
    try:
        start_end = reader.get_frame_timestamp(range(len(reader)))
    except (RuntimeError, decord.DECORDError) as error:
        raise VideoDecodeError(path, f"cannot read frame timestamps ({_first_line(error)})") from error
    return np.asarray(start_end, dtype=np.float64).reshape(-1, 2)


def _get_batch(reader: decord.VideoReader, indices: list[int], path: str | Path) -> np.ndarray:
    """uint8 (len(indices), H, W, 3) RGB frames."""
    try:
        return reader.get_batch(indices).asnumpy()
    except (RuntimeError, decord.DECORDError) as error:
        raise VideoDecodeError(path, f"decoding frames failed ({_first_line(error)})") from error


def _resize(frames: np.ndarray, short_side: int, crop: bool) -> np.ndarray:
    """Antialiased bilinear resize of uint8 (N, H, W, 3) frames to short side `short_side`, then an
    optional centre crop to (N, short_side, short_side, 3)."""
    _, height, width, _ = frames.shape
    scale = short_side / min(height, width)
    new_height, new_width = max(short_side, round(height * scale)), max(short_side, round(width * scale))
    images = torch.from_numpy(frames).permute(0, 3, 1, 2).float()  # (N, 3, H, W)
    images = F.interpolate(images, size=(new_height, new_width), mode="bilinear", antialias=True, align_corners=False)
    if crop:
        top, left = (new_height - short_side) // 2, (new_width - short_side) // 2
        images = images[:, :, top : top + short_side, left : left + short_side]  # (N, 3, S, S)
    return images.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous().numpy()


def _first_line(error: Exception) -> str:
    lines = str(error).strip().splitlines()
    return _DECORD_LOG_PREFIX_RE.sub("", lines[0]) if lines else type(error).__name__
