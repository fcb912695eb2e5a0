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
- Every decoded frame is converted to full-size RGB inside decord, whether it is returned or
  skipped, so that conversion (not the H.264 decoding) bounds throughput; and each `get_batch` call
  seeks back to a keyframe first, so reading a long video with one `get_batch` per chunk decodes
  the stretch before each chunk again. Frames are therefore read with one sequential cursor per
  video (`next`, `skip_frames`, and `seek_accurate` only when a keyframe lies ahead).
- Resizing uint8 frames in torch (channels-last, antialiased bilinear) is ~15x faster than resizing
  them as float and differs by at most one grey level.
- Copying full-size frames costs about as much as decoding them: stacking a chunk of 720p frames
  into one array (`asnumpy`, then `np.stack`) took 1.5-3.5 ms a frame, against ~1.7 ms for decord
  to decode one. So each frame is read zero-copy through DLPack and resized at once, one frame per
  call (on one thread, as in decoding workers, that beats copying frames into a batch for one larger
  call); only the small resized frames are kept. Every-frame decoding got about twice as fast.

Frame times count from the video stream's first shown frame, whatever its timestamp in the file
(``-output_ts_offset``, a video starting after its audio): decord does this itself, PyAV here. decord
ignores edit lists (an mp4 cut by stream copy starts with frames the list cuts), so such files go to
PyAV, which applies them as ffmpeg does.

When decord cannot open or decode a file (a codec its build lacks, such as AV1, or seeking errors),
the file is read with PyAV instead (`decoder="auto"`, the default): the same frame selection over the
frame start times PyAV reports, frames converted to RGB by ffmpeg's swscale and rotated by the display
matrix tag as decord does. Each piece of `iter_decoded_frames` names the decoder that produced it.

Inputs can also be folders of JPEG/PNG frames (TVQA ships 3 fps frames per clip): frame k of the
folder, in natural name order (`00001.jpg`, `00002.jpg`, ...), is on screen from k / frames_fps
to (k + 1) / frames_fps, and is sampled, resized and cropped exactly like a video frame.
"""

from __future__ import annotations

import logging
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import av
import decord
import imageio_ffmpeg
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError

log = logging.getLogger("pipeline")

# decord reports frame times as float32; a grid time that sits exactly on a frame boundary must not
# fall onto the previous frame because of that rounding.
_TIMESTAMP_TOLERANCE_S = 1e-4

_DISPLAY_MATRIX_RE = re.compile(r"display ?matrix: rotation of (-?[\d.]+) degrees", re.IGNORECASE)
# decord prefixes its messages with "[hh:mm:ss] /build/path/file.cc:123: ".
_DECORD_LOG_PREFIX_RE = re.compile(r"^\[[\d:]+\]\s+\S+:\d+:\s*")
_ROTATE_TAG_RE = re.compile(r"^\s*rotate\s*:\s*(-?[\d.]+)\s*$", re.IGNORECASE | re.MULTILINE)
_FRAME_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
_DIGITS_RE = re.compile(r"(\d+)")
# "auto": decord, then PyAV for a file decord cannot read; a name forces that decoder.
DECODERS = ("auto", "decord", "pyav")
_TRANSCODE_HINT = ("if ffmpeg plays the file, re-encode every video once to H.264 with "
                   "--set visual.transcode.enabled=true")


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
    decoder: str = "decord"  # what read the frames: "decord", "pyav" or "frames" (a folder of images)


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


def probe_video(path: str | Path, frames_fps: float | None = None, decoder: str = "auto") -> VideoInfo:
    """Reads duration, frame count, frame rate, decoded size and the rotation tag of a video file, or
    of a folder of frames shown at `frames_fps` (which folders require)."""
    source = _open_source(path, frames_fps, decoder)
    first_frame = next(source.frames(np.array([0])))
    return VideoInfo(
        duration=source.duration,
        n_frames=len(source.frame_starts),
        avg_fps=source.avg_fps,
        width=int(first_frame.shape[1]),
        height=int(first_frame.shape[0]),
        rotation=source.rotation(),
    )


def video_duration(path: str | Path, frames_fps: float | None = None, decoder: str = "auto") -> float:
    """Seconds (end of the last frame) of a video file or a folder of frames shown at `frames_fps`,
    without decoding a frame or running ffmpeg for the rotation tag: ~15x cheaper than `probe_video`,
    which matters when a dataset manifest needs the duration of tens of thousands of videos."""
    return _open_source(path, frames_fps, decoder).duration


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
    frames_fps: float | None = None,
    decoder: str = "auto",
) -> DecodedFrames:
    """Decodes the frames on screen at `times` (seconds), resized so the short side is `short_side`.

    The frame for time t is the last source frame starting at or before t (times before the first
    frame take the first frame, times past the end the last one), so variable frame rate videos
    are sampled correctly. `path` is a video file, or a folder of frames shown at `frames_fps`.
    Only the needed frames are decoded, `chunk` samples at a time (see `iter_decoded_frames`).
    """
    pieces = list(iter_decoded_frames(path, times, short_side, crop, chunk, frames_fps, decoder))
    return DecodedFrames(frames=np.concatenate([piece.frames for piece in pieces]),
                         timestamps=np.concatenate([piece.timestamps for piece in pieces]),
                         decoder="+".join(dict.fromkeys(piece.decoder for piece in pieces)))


def iter_decoded_frames(
    path: str | Path,
    times: np.ndarray,
    short_side: int = 224,
    crop: bool = True,
    chunk: int = 64,
    frames_fps: float | None = None,
    decoder: str = "auto",
) -> Iterator[DecodedFrames]:
    """`decode_frames` in consecutive pieces of at most `chunk` samples, in the order of `times`, so
    memory stays bounded however long the video is. Increasing times read the video once, front to
    back; the file is opened (and errors for unreadable inputs raised) before the first piece."""
    times = np.asarray(times, dtype=np.float64)
    if times.ndim != 1 or len(times) == 0:
        raise ValueError(f"decode_frames needs a non-empty 1-d array of times for {path}, got shape {times.shape}")
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    source = _open_source(path, frames_fps, decoder)
    return _decode_pieces(source, times, short_side, crop, chunk, fall_back=decoder == "auto")


def _decode_pieces(source, times: np.ndarray, short_side: int, crop: bool, chunk: int,
                   fall_back: bool) -> Iterator[DecodedFrames]:
    start = 0
    while start < len(times):
        try:
            piece = _decode_piece(source, times[start : start + chunk], short_side, crop)
        except VideoDecodeError as error:
            if fall_back and isinstance(source, _VideoFile):
                # decord opened the file but failed part-way (e.g. seeking): PyAV decodes from this piece on.
                source = _open_pyav_after(error)
                continue
            if fall_back and isinstance(source, _PyAVFile) and source.replaces is not None:
                raise _both_failed(source.replaces, error) from error
            raise
        yield piece
        start += chunk


def _decode_piece(source, times: np.ndarray, short_side: int, crop: bool) -> DecodedFrames:
    frame_of_time = np.searchsorted(source.frame_starts, times + _TIMESTAMP_TOLERANCE_S, side="right") - 1
    frame_of_time = np.clip(frame_of_time, 0, len(source.frame_starts) - 1)
    needed_frames, sample_to_needed = np.unique(frame_of_time, return_inverse=True)
    resized = [_resize(frame, short_side, crop) for frame in source.frames(needed_frames)]
    frames = torch.stack(resized).numpy()[sample_to_needed]  # (n, S, S, 3)
    return DecodedFrames(frames=frames, timestamps=source.frame_starts[frame_of_time], decoder=source.name)


def _open_source(path: str | Path, frames_fps: float | None, decoder: str = "auto"):
    path = Path(path)
    if decoder not in DECODERS:
        raise ValueError(f"decoder must be one of {', '.join(DECODERS)}, got {decoder!r}")
    if path.is_dir():
        return _FrameFolder(path, frames_fps)
    if not path.is_file():
        raise VideoDecodeError(path, "file not found")
    if path.stat().st_size == 0:
        raise VideoDecodeError(path, "file is empty")
    if decoder == "pyav":
        return _PyAVFile(path)
    try:
        return _VideoFile(path)
    except VideoDecodeError as decord_error:
        if decoder == "decord":
            raise
        return _open_pyav_after(decord_error)


def _open_pyav_after(decord_error: VideoDecodeError) -> "_PyAVFile":
    """The PyAV reader of a file decord failed on; if PyAV fails too, one error with both reasons."""
    try:
        source = _PyAVFile(decord_error.path)
    except VideoDecodeError as pyav_error:
        raise _both_failed(decord_error, pyav_error) from pyav_error
    source.replaces = decord_error
    log.info("%s: decord failed (%s); decoding with PyAV", decord_error.path, decord_error.reason)
    return source


def _both_failed(decord_error: VideoDecodeError, pyav_error: VideoDecodeError) -> VideoDecodeError:
    return VideoDecodeError(decord_error.path, f"decord: {decord_error.reason}; PyAV: {pyav_error.reason}; "
                                               f"{_TRANSCODE_HINT}")


class _VideoFile:
    """A video file read through decord with one forward-moving cursor."""

    name = "decord"

    def __init__(self, path: Path):
        self.path = path
        self._reader = self._call(decord.VideoReader, "not a readable video", str(path), ctx=decord.cpu(0))
        if len(self._reader) == 0:
            raise VideoDecodeError(path, "video stream has no frames")
        start_end = self._call(self._reader.get_frame_timestamp, "cannot read frame timestamps",
                               range(len(self._reader)))
        start_end = np.asarray(start_end, dtype=np.float64).reshape(-1, 2)
        if start_end[0, 0] < 0:
            # decord lists the frames an edit list cuts (at negative times) but returns the shown frames
            # from index 0: times and frames would disagree. PyAV applies the edit list.
            raise VideoDecodeError(path, f"an edit list cuts its first frames (decord lists frames from "
                                         f"{start_end[0, 0]:g} s but does not apply the cut)")
        if not _plausible_frame_times(start_end):
            # e.g. AV_NOPTS_VALUE (~9.2e15 s) for every frame of some low frame rate .mkv files
            raise VideoDecodeError(path, f"decord reports implausible frame times ({start_end[0, 0]:g} .. "
                                         f"{start_end[-1, 1]:g} s)")
        self.frame_starts = start_end[:, 0]  # float64 (n_frames,), seconds
        self.duration = float(start_end[-1, 1])
        self.avg_fps = float(self._reader.get_avg_fps())
        self._keyframes = np.asarray(self._reader.get_key_indices(), dtype=np.int64)
        self._next_frame: int | None = None  # index the reader returns on its next `next()`; None: unknown

    def rotation(self) -> int:
        return read_rotation(self.path)

    def frames(self, indices: np.ndarray) -> Iterator[torch.Tensor]:
        """uint8 (H, W, 3) RGB frames for increasing frame indices, views of decord's frames."""
        for index in indices:
            yield self._read_one(int(index))

    def _read_one(self, index: int) -> torch.Tensor:
        if index != self._next_frame:
            self._move_to(index)
        frame = self._call(self._reader.next, "decoding frames failed")
        self._next_frame = index + 1
        return torch.utils.dlpack.from_dlpack(frame.to_dlpack())  # decord's memory, not a copy

    def _move_to(self, index: int) -> None:
        # Decoding forward from the cursor beats seeking unless a keyframe lies between the two.
        keyframe_before = self._keyframes[max(0, np.searchsorted(self._keyframes, index, side="right") - 1)]
        if self._next_frame is None or index < self._next_frame or keyframe_before > self._next_frame:
            self._call(self._reader.seek_accurate, "seeking failed", index)
        else:
            self._call(self._reader.skip_frames, "decoding frames failed", index - self._next_frame)

    def _call(self, function, failure: str, *args, **kwargs):
        try:
            return function(*args, **kwargs)
        except (RuntimeError, decord.DECORDError) as error:
            raise VideoDecodeError(self.path, f"{failure} ({_first_line(error)})") from error


# Longer than any video (about 116 days): a frame time beyond it is a missing timestamp, not a time.
_MAX_PLAUSIBLE_SECONDS = 1e7


def _plausible_frame_times(start_end: np.ndarray) -> bool:
    """(n, 2) frame start and end times: finite, from 0 up, in order, and within any real video's length."""
    starts = start_end[:, 0]
    return bool(np.all(np.isfinite(start_end)) and starts[0] >= 0 and np.all(np.diff(starts) >= 0)
                and start_end[-1, 1] >= starts[-1] and start_end[-1, 1] < _MAX_PLAUSIBLE_SECONDS)


class _PyAVFile:
    """A video file read through PyAV (ffmpeg's libraries), for files decord cannot read.

    Frame start times come from the packets' presentation times (demuxed, not decoded), sorted, so
    frame k is the k-th frame on screen, as in decord; packets an edit list cuts are left out, and times
    count from the first shown frame (a stream starting at 2.5 s starts at 0, as decord has it). Frames are decoded forward from the nearest
    keyframe, converted only when requested, and rotated by the display matrix tag like decord's."""

    name = "pyav"

    def __init__(self, path: Path):
        self.path = path
        self.replaces: VideoDecodeError | None = None  # decord's error, when PyAV stands in for it
        with self._opened() as container:
            stream = self._video_stream(container)
            demuxed = [packet for packet in self._call(container.demux, "cannot read packets", stream)
                       if packet.pts is not None and packet.size > 0]
            if stream.frames and len(demuxed) < stream.frames:  # demuxing stops quietly where data ends
                raise VideoDecodeError(path, f"truncated: {len(demuxed)} of the {stream.frames} frames its index "
                                             f"lists are in the file")
            # Packets an edit list cuts (flagged discard) are decoded only as references, never shown.
            packets = sorted((packet.pts, packet.duration or 0, packet.is_keyframe)
                             for packet in demuxed if not packet.is_discard)
            if not packets:
                raise VideoDecodeError(path, "video stream has no frames")
            self._time_base = stream.time_base
            self._first_pts = packets[0][0]
            rate = stream.average_rate or stream.guessed_rate
            self.avg_fps = float(rate) if rate else 0.0
        self._pts = np.array([pts for pts, _, _ in packets], dtype=np.int64)
        self.frame_starts = (self._pts - self._first_pts) * float(self._time_base)  # float64 (n_frames,)
        last_length = packets[-1][1] * float(self._time_base) or (1 / self.avg_fps if self.avg_fps else 0.0)
        self.duration = float(self.frame_starts[-1] + last_length)
        # The first shown frame is always a seek target: seeking backward to it lands on the keyframe it
        # is decoded from, which an edit list may have cut (so it is not among the packets kept).
        self._keyframes = np.flatnonzero([index == 0 or is_keyframe for index, (_, _, is_keyframe)
                                          in enumerate(packets)])
        self._rotation: int | None = None

    def rotation(self) -> int:
        if self._rotation is None:
            self._rotation = read_rotation(self.path)
        return self._rotation

    def frames(self, indices: np.ndarray) -> Iterator[np.ndarray]:
        """uint8 (H, W, 3) RGB frames for increasing frame indices."""
        quarter_turns = self.rotation() // 90
        with self._opened() as container:
            stream = self._video_stream(container)
            decoded, position = iter(()), None  # position: index of the next frame `decoded` gives
            for index in indices:
                index = int(index)
                if position is None or index < position or self._keyframe_before(index) > position:
                    decoded, position = self._decode_from(container, stream, index)
                while True:
                    frame = next(decoded, None)
                    if frame is None:
                        raise VideoDecodeError(self.path, f"decoding frames failed (frame {index} never came)")
                    position = int(np.searchsorted(self._pts, frame.pts)) + 1
                    if position - 1 >= index:
                        break
                rgb = self._call(frame.to_ndarray, "converting a frame failed", format="rgb24")  # (H, W, 3)
                yield np.ascontiguousarray(np.rot90(rgb, k=quarter_turns)) if quarter_turns else rgb

    def _keyframe_before(self, index: int) -> int:
        return int(self._keyframes[max(0, np.searchsorted(self._keyframes, index, side="right") - 1)])

    def _decode_from(self, container, stream, index: int):
        """A generator of decoded frames starting at or before `index`, and the index of its first frame."""
        keyframe = self._keyframe_before(index)
        self._call(container.seek, "seeking failed", int(self._pts[keyframe]), stream=stream, backward=True)

        def frames_with_pts():
            for frame in self._call(container.decode, "decoding frames failed", stream):
                if frame.pts is not None:
                    yield frame

        return self._guarded(frames_with_pts()), keyframe

    def _guarded(self, frames):
        try:
            yield from frames
        except (av.FFmpegError, ValueError) as error:
            raise VideoDecodeError(self.path, f"decoding frames failed ({_first_line(error)})") from error

    def _video_stream(self, container):
        if not container.streams.video:
            raise VideoDecodeError(self.path, "no video stream")
        return container.streams.video[0]

    def _opened(self):
        return self._call(av.open, "not a readable video", str(self.path))

    def _call(self, function, failure: str, *args, **kwargs):
        try:
            return function(*args, **kwargs)
        except (av.FFmpegError, ValueError) as error:
            raise VideoDecodeError(self.path, f"{failure} ({_first_line(error)})") from error


class _FrameFolder:
    """A folder of JPEG/PNG frames, frame k on screen from k / frames_fps on."""

    name = "frames"

    def __init__(self, path: Path, frames_fps: float | None):
        if frames_fps is None or not frames_fps > 0:
            raise VideoDecodeError(path, f"is a folder of frames, which needs frames_fps > 0 (got {frames_fps})")
        self.path = path
        self._images = sorted((entry for entry in path.iterdir()
                               if entry.is_file() and entry.suffix.lower() in _FRAME_IMAGE_SUFFIXES),
                              key=_natural_order)
        if not self._images:
            raise VideoDecodeError(path, f"folder has no frame images ({', '.join(_FRAME_IMAGE_SUFFIXES)})")
        self.frame_starts = np.arange(len(self._images), dtype=np.float64) / frames_fps
        self.duration = len(self._images) / frames_fps
        self.avg_fps = float(frames_fps)

    def rotation(self) -> int:
        return 0

    def frames(self, indices: np.ndarray) -> Iterator[np.ndarray]:
        """uint8 (H, W, 3) RGB frames; all must have the size of the first one read."""
        first_shape = None
        for index in indices:
            frame = self._read_one(self._images[index])
            first_shape = first_shape or frame.shape
            if frame.shape != first_shape:
                raise VideoDecodeError(self.path, f"frame {self._images[index].name} is {frame.shape[1]}x"
                                                  f"{frame.shape[0]}, unlike the frames before it "
                                                  f"({first_shape[1]}x{first_shape[0]})")
            yield frame

    def _read_one(self, image: Path) -> np.ndarray:
        try:
            with Image.open(image) as picture:
                return np.array(picture.convert("RGB"))  # (H, W, 3), writable: torch shares it
        except (UnidentifiedImageError, OSError) as error:
            raise VideoDecodeError(self.path, f"unreadable frame {image.name} ({_first_line(error)})") from error


def _natural_order(path: Path) -> tuple:
    """Sort key that puts "frame_9.jpg" before "frame_10.jpg" whether or not numbers are zero-padded."""
    return tuple(int(part) if part.isdigit() else part for part in _DIGITS_RE.split(path.name))


def _resize(frame, short_side: int, crop: bool) -> torch.Tensor:
    """Antialiased bilinear resize of one uint8 (H, W, 3) frame (tensor or array) to short side
    `short_side`, then an optional centre crop to (short_side, short_side, 3)."""
    height, width, _ = frame.shape
    scale = short_side / min(height, width)
    new_height, new_width = max(short_side, round(height * scale)), max(short_side, round(width * scale))
    # A permuted (1, H, W, 3) tensor is a channels-last (1, 3, H, W) one: torch's fast uint8 kernel.
    image = torch.as_tensor(frame)[None].permute(0, 3, 1, 2)  # (1, 3, H, W) uint8
    if (new_height, new_width) != (height, width):
        image = F.interpolate(image, size=(new_height, new_width), mode="bilinear", antialias=True,
                              align_corners=False)
    if crop:
        top, left = (new_height - short_side) // 2, (new_width - short_side) // 2
        image = image[:, :, top : top + short_side, left : left + short_side]  # (1, 3, S, S)
    return image[0].permute(1, 2, 0)  # (S, S, 3)


def _first_line(error: Exception) -> str:
    lines = str(error).strip().splitlines()
    return _DECORD_LOG_PREFIX_RE.sub("", lines[0]) if lines else type(error).__name__
