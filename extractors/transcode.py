"""Small H.264 proxies of videos, so every backbone of a sampling recipe decodes a cheap file once.

A proxy has a constant frame rate `fps` (frames are duplicated or dropped as ffmpeg's fps filter
does: each output frame shows the source frame on screen at its time), a short side of `short_side`
pixels (aspect ratio kept, both sides even as H.264 4:2:0 needs) and no audio. The display
rotation of the source is applied, so proxies are always upright and carry no rotation tag.
"""

from __future__ import annotations

from pathlib import Path

import ffmpeg
import imageio_ffmpeg

from amdnet.atomic import atomic_path

# Quality of the proxy: x264's constant rate factor (lower is better; 18 is visually lossless) and a
# preset that trades a little file size for several times the encoding speed of the default.
_CRF = 18
_PRESET = "veryfast"


class TranscodeError(RuntimeError):
    """A video could not be transcoded; the message names it and gives ffmpeg's reason."""

    def __init__(self, path: str | Path, reason: str):
        self.path = Path(path)
        self.reason = reason
        super().__init__(f"cannot transcode video {self.path}: {reason}")


def transcode_proxy(src: str | Path, dst: str | Path, fps: float, short_side: int) -> Path:
    """Re-encodes `src` to an H.264 mp4 at `fps` frames per second whose short side is `short_side`.

    `dst` appears only when ffmpeg succeeded (written under a temporary name, then renamed); its
    folder is created if needed. Returns `dst`.
    """
    src, dst = Path(src), Path(dst)
    if not fps > 0 or short_side < 2 or short_side % 2:
        raise ValueError(f"transcode_proxy needs fps > 0 and an even short_side >= 2 (H.264 4:2:0), "
                         f"got fps={fps}, short_side={short_side}")
    if not src.is_file():
        raise TranscodeError(src, "file not found")
    dst.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(dst) as temporary:
        stream = ffmpeg.input(str(src)).video.filter("fps", fps=fps).filter("scale", *_scale_to_short_side(short_side))
        output = ffmpeg.output(stream, str(temporary), format="mp4", vcodec="libx264", crf=_CRF, preset=_PRESET,
                               pix_fmt="yuv420p", an=None, movflags="+faststart")
        output = output.global_args("-hide_banner", "-loglevel", "error")
        try:
            output.run(cmd=imageio_ffmpeg.get_ffmpeg_exe(), overwrite_output=True, capture_stdout=True,
                       capture_stderr=True)
        except ffmpeg.Error as error:
            raise TranscodeError(src, _last_line(error.stderr)) from None
    return dst


def _scale_to_short_side(short_side: int) -> tuple[str, str]:
    """Width and height expressions of ffmpeg's scale filter: the short side becomes `short_side`,
    the other side follows the aspect ratio, rounded to an even number (-2)."""
    return (f"if(lt(iw,ih),{short_side},-2)", f"if(lt(iw,ih),-2,{short_side})")


def _last_line(stderr: bytes | None) -> str:
    lines = (stderr or b"").decode(errors="replace").strip().splitlines()
    return lines[-1] if lines else "ffmpeg failed without a message"
