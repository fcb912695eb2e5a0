"""Small test videos made with the imageio-ffmpeg binary, for any test module (`from videos import ...`).

The "ramp" videos encode each frame's index in its brightness (luma 16 + 2 * index, lossless H.264),
so a test can tell exactly which source frame a decoder returned: see `ramp_frame_index`.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import imageio_ffmpeg
import numpy as np

RAMP_MAX_FRAMES = 110  # luma 16 + 2 * index must stay within the video range (<= 235)


def run_ffmpeg(*args: str) -> None:
    command = [imageio_ffmpeg.get_ffmpeg_exe(), "-y", "-hide_banner", "-loglevel", "error", *args]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"ffmpeg failed ({' '.join(command)}): {result.stderr.strip()}")


def make_testsrc_video(path: Path, seconds: float, fps: float, size: tuple[int, int] = (224, 160)) -> Path:
    """ffmpeg's testsrc pattern, H.264 yuv420p. The index is at the front of the file (faststart),
    so `truncate` keeps a readable header and cuts the frame data."""
    width, height = size
    run_ffmpeg(
        "-f", "lavfi", "-i", f"testsrc=size={width}x{height}:rate={fps}:duration={seconds}",
        "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p", "-movflags", "+faststart", str(path),
    )
    return path


def make_ramp_video(path: Path, n_frames: int, fps: float, size: tuple[int, int] = (64, 48)) -> Path:
    """Constant frame rate video whose frame k is a flat grey of luma 16 + 2k."""
    return _encode_ramp(path, n_frames, size, frame_pts_ms=f"N*{1000 / fps}")


def make_vfr_video(
    path: Path, slow_fps: float, fast_fps: float, frames_each: int, size: tuple[int, int] = (64, 48)
) -> Path:
    """Variable frame rate ramp video: `frames_each` frames at `slow_fps`, then `frames_each` at `fast_fps`.
    Frame start times are given by `vfr_frame_starts`."""
    slow_ms, fast_ms = 1000 / slow_fps, 1000 / fast_fps
    pts_ms = f"if(lt(N,{frames_each}),N*{slow_ms},{frames_each * slow_ms}+(N-{frames_each})*{fast_ms})"
    return _encode_ramp(path, 2 * frames_each, size, frame_pts_ms=pts_ms)


def vfr_frame_starts(slow_fps: float, fast_fps: float, frames_each: int) -> np.ndarray:
    slow_part = np.arange(frames_each) / slow_fps
    fast_part = frames_each / slow_fps + np.arange(frames_each) / fast_fps
    return np.concatenate([slow_part, fast_part])


def ramp_frame_index(frames: np.ndarray) -> np.ndarray:
    """Source frame index of each ramp frame in uint8 (N, H, W, 3) RGB frames.

    Decoders convert limited-range luma to full-range RGB: rgb = (luma - 16) * 255 / 219."""
    luma_above_black = frames.reshape(len(frames), -1).mean(axis=1) * 219 / 255
    return np.rint(luma_above_black / 2).astype(int)


def make_rotated_video(source: Path, path: Path, degrees: int) -> Path:
    """Copy of `source` whose display matrix asks players to rotate it `degrees` counter-clockwise."""
    run_ffmpeg("-display_rotation", str(degrees), "-i", str(source), "-c", "copy", str(path))
    return path


def truncate(path: Path, out: Path | None = None, keep_fraction: float = 0.5) -> Path:
    """Writes the first `keep_fraction` of the bytes of `path` to `out` (default: in place)."""
    data = path.read_bytes()
    out = out or path
    out.write_bytes(data[: int(len(data) * keep_fraction)])
    return out


def _encode_ramp(path: Path, n_frames: int, size: tuple[int, int], frame_pts_ms: str) -> Path:
    if n_frames > RAMP_MAX_FRAMES:
        raise ValueError(f"a ramp video holds at most {RAMP_MAX_FRAMES} frames, asked for {n_frames}")
    width, height = size
    ramp = (
        f"color=c=black:size={width}x{height}:rate=10,geq=lum='16+2*N':cb=128:cr=128,"
        f"trim=end_frame={n_frames},settb=1/1000,setpts='{frame_pts_ms}'"
    )
    run_ffmpeg(
        "-f", "lavfi", "-i", ramp,
        # keep every frame at its own time (no frame rate conversion) on a millisecond clock
        "-fps_mode", "passthrough", "-enc_time_base", "1:1000",
        "-c:v", "libx264", "-preset", "ultrafast", "-qp", "0", "-pix_fmt", "yuv420p", str(path),
    )
    return path


def extract_as_a_stage(videos: list[dict], visual: dict, folder: Path, frames_fps: float | None = None,
                       stage: str = "visual-test") -> tuple[dict, Path]:
    """What a VisualPart does with ``videos`` (records without an identity get one): extraction into
    the per-video cache under ``folder``, then the stage's ``folder/features.h5`` assembled from it.
    Returns the assembly's report with the extraction's ``decoded`` ids, and the features file."""
    from pipeline.features import extract_visual_features
    from pipeline.part_assembly import assemble_visual_features
    from pipeline.video_cache import ENTRY_SUFFIX, VideoCache, video_identity

    cache = VideoCache(Path(folder) / "cache", ENTRY_SUFFIX)
    records = [{**video, "identity": video.get("identity") or video_identity(Path(video["path"]), Path(folder), "file")}
               for video in videos]
    extracted = extract_visual_features(records, visual, cache, stage, frames_fps)
    out = Path(folder) / "features.h5"
    assembled = assemble_visual_features(records, visual, cache, extracted["failures"], out,
                                         {"stage": stage, "fingerprint": "f"})
    return {**assembled, "decoded": extracted["decoded"]}, out
