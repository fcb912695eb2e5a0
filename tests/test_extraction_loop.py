"""The visual extraction loop: worker decoding, padded batches spanning videos, streaming, failures, resuming."""

from pathlib import Path

import numpy as np
import pytest

from extractors import create_extractor
from extractors.decode import decode_frames, probe_video, sample_times
from pipeline.features import _DecodedVideos, _Piece, _VideoBatcher
from pipeline.video_cache import ENTRY_SUFFIX, VideoCache, video_identity, write_feature_entry
from storage import FeatureFile
from videos import extract_as_a_stage, make_testsrc_video, run_ffmpeg

FPS, SIZE, BATCH = 4.0, 64, 8


def _visual(num_workers: int) -> dict:
    return {"backbone": "clip", "model": "TinyViT-32-test", "pretrained": None, "seed": 0, "fps": FPS,
            "size": SIZE, "batch_size": BATCH, "num_workers": num_workers, "device": "cpu",
            "max_failed_fraction": 0.5}


@pytest.fixture(scope="module")
def clip():
    return create_extractor("clip", model="TinyViT-32-test", device="cpu", batch_size=BATCH)


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> list[dict]:
    """Videos of 0.5 to 6 s (2 to 24 samples: shorter and longer than a batch), a frame folder and a
    broken file."""
    folder = tmp_path_factory.mktemp("extraction_loop")
    entries = []
    for index, seconds in enumerate([6, 0.5, 2.5, 1]):
        path = make_testsrc_video(folder / f"testsrc_{index}.mp4", seconds=seconds, fps=10, size=(96, 64))
        entries.append({"video_id": path.stem, "path": str(path), "duration": probe_video(path).duration})
    frames = folder / "frames"
    frames.mkdir()
    run_ffmpeg("-f", "lavfi", "-i", "testsrc2=size=96x64:rate=3:duration=3", str(frames / "%05d.jpg"))
    entries.append({"video_id": "frames", "path": str(frames), "duration": 3.0})
    broken = folder / "broken.mp4"
    broken.write_text("this is not a video\n")
    entries.append({"video_id": "broken", "path": str(broken), "duration": 2.0})
    return entries


def _encoded_alone(video: dict, frames: np.ndarray, extractor, batch_size: int = BATCH) -> np.ndarray:
    """One video's frames through the batcher with no other video: padded batches of its own."""
    batcher = _VideoBatcher(extractor, batch_size, pin_memory=False)
    batcher.add(_Piece(video, frames, np.arange(len(frames), dtype=np.float64), last=True))
    batcher.flush()
    ((_, features, _),) = batcher.finished()
    return features


def _expected(video: dict, clip) -> tuple[np.ndarray, np.ndarray]:
    """Features of one video decoded and encoded on its own: what the loop must reproduce."""
    decoded = decode_frames(video["path"], sample_times(video["duration"], FPS), short_side=SIZE, frames_fps=3.0)
    alone = _encoded_alone(video, decoded.frames, clip)
    # Padding changes nothing but the rounding of a batch of another size.
    np.testing.assert_allclose(alone, clip.encode(decoded.frames), rtol=0, atol=1e-5)
    return alone, decoded.timestamps


@pytest.mark.parametrize("num_workers", [0, 2])
def test_every_video_gets_the_features_of_decoding_it_alone(videos, clip, tmp_path, num_workers):
    result, out = extract_as_a_stage(videos, _visual(num_workers), tmp_path, frames_fps=3.0)

    assert result["inputs"] == {"videos": len(videos)}
    assert sorted(result["decoded"]) == sorted(v["video_id"] for v in videos if v["video_id"] != "broken")
    assert list(result["failures"]) == ["broken"] and "broken.mp4" in result["failures"]["broken"]
    features = FeatureFile(out).group()
    assert sorted(features.ids) == sorted(v["video_id"] for v in videos if v["video_id"] != "broken")
    for video in videos[:-1]:
        expected_features, expected_timestamps = _expected(video, clip)
        # bit for bit: nothing else in its batches
        np.testing.assert_array_equal(features.read(video["video_id"]), expected_features)
        np.testing.assert_allclose(features.read(video["video_id"], "timestamps"), expected_timestamps)
        assert features.column("duration")[features.position(video["video_id"])] == video["duration"]


def test_rerun_skips_videos_already_in_the_cache(videos, tmp_path):
    # As a killed run leaves it: one video's entry written, the stage not assembled.
    done_before = {**videos[0], "identity": video_identity(Path(videos[0]["path"]), tmp_path, "file")}
    cache = VideoCache(tmp_path / "cache", ENTRY_SUFFIX)
    write_feature_entry(cache, cache.path(done_before), np.zeros((3, 64), np.float32), timestamps=np.arange(3.0),
                        pyav=False)
    result, out = extract_as_a_stage([done_before, *videos[1:]], _visual(0), tmp_path, frames_fps=3.0)
    assert done_before["video_id"] not in result["decoded"] and len(result["decoded"]) == len(videos) - 2
    features = FeatureFile(out).group()
    assert features.read(done_before["video_id"]).shape == (3, 64)  # taken from the cache, not recomputed
    assert len(features) == len(videos) - 1


class _BatchSizes:
    """The real extractor, recording the number of frames of each call."""

    def __init__(self, extractor):
        self.extractor, self.sizes = extractor, []

    def encode(self, frames: np.ndarray) -> np.ndarray:
        self.sizes.append(len(frames))
        return self.extractor.encode(frames)


def test_batches_are_full_and_span_videos_and_pieces_stay_small(videos, clip):
    decodable = videos[:-1]
    recorder = _BatchSizes(clip)
    batcher = _VideoBatcher(recorder, BATCH, pin_memory=False)
    piece_sizes, written, frames = [], {}, {}
    for piece in _DecodedVideos(decodable, FPS, SIZE, frames_fps=3.0, frames_per_piece=5):
        piece_sizes.append(len(piece.frames))
        frames.setdefault(piece.video["video_id"], []).append(piece.frames)
        batcher.add(piece)
        written.update((video["video_id"], features) for video, features, _ in batcher.finished())
    batcher.flush()
    written.update((video["video_id"], features) for video, features, _ in batcher.finished())

    samples = [len(sample_times(v["duration"], FPS)) for v in decodable]
    assert max(piece_sizes) == 5  # the 6 s video (24 samples) arrives in pieces, not whole
    # Every batch has the same shape (the last one padded): as few model calls as the frames need.
    assert recorder.sizes == [BATCH] * -(-sum(samples) // BATCH)
    assert sorted(written) == sorted(v["video_id"] for v in decodable)
    assert written["testsrc_1"].shape == (2, clip.dim)
    for video in decodable:  # bit for bit what the video gives alone
        alone = _encoded_alone(video, np.concatenate(frames[video["video_id"]]), clip)
        np.testing.assert_array_equal(written[video["video_id"]], alone)


@pytest.mark.parametrize("model, size, batch", [("TinyViT-32-test", 64, 8), ("ViT-B-32", 224, 4)])
def test_a_videos_features_do_not_depend_on_its_neighbours(model, size, batch):
    """What the batcher relies on: each row of a fixed-shape batch is encoded independently of the
    other rows, for the tests' CLIP and one of real size (random weights), so a video's features are
    the same bit for bit whatever videos share its batches, in any order, in any position."""
    extractor = create_extractor("clip", model=model, device="cpu", batch_size=batch)
    rng = np.random.default_rng(0)
    lengths = [3, batch + 2, 1, 2 * batch - 1]
    clips = {f"v{i}": rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8) for i, n in enumerate(lengths)}

    def run(order: list[str]) -> dict[str, np.ndarray]:
        batcher = _VideoBatcher(extractor, batch, pin_memory=False)
        for video_id in order:
            frames = clips[video_id]
            for start in range(0, len(frames), 2):  # pieces of 2 frames
                piece = frames[start:start + 2]
                batcher.add(_Piece({"video_id": video_id}, piece, np.zeros(len(piece)), last=start + 2 >= len(frames)))
        batcher.flush()
        return {video["video_id"]: features for video, features, _ in batcher.finished()}

    forwards, backwards = run(list(clips)), run(list(clips)[::-1])
    for video_id, frames in clips.items():
        alone = _encoded_alone({"video_id": video_id}, frames, extractor, batch)
        np.testing.assert_array_equal(forwards[video_id], alone)
        np.testing.assert_array_equal(backwards[video_id], alone)


def test_video_failing_after_some_pieces_is_dropped_whole(videos, clip, tmp_path):
    frames = tmp_path / "frames"
    frames.mkdir()
    for image in sorted(Path(videos[4]["path"]).glob("*.jpg")):
        (frames / image.name).write_bytes(image.read_bytes())
    (frames / "00008.jpg").write_text("this is not an image\n")  # late in the video: pieces came before it
    broken = {"video_id": "broken_late", "path": str(frames), "duration": 3.0}
    batcher = _VideoBatcher(clip, BATCH, pin_memory=False)
    pieces_before_error = 0
    for piece in _DecodedVideos([broken, videos[1]], FPS, SIZE, frames_fps=3.0, frames_per_piece=4):
        if piece.error is None:
            pieces_before_error += piece.video is broken
            batcher.add(piece)
        else:
            assert "00008.jpg" in piece.error
            batcher.drop(piece.video["video_id"])
    batcher.flush()
    assert pieces_before_error >= 1
    assert [video["video_id"] for video, _, _ in batcher.finished()] == [videos[1]["video_id"]]


def test_the_manifest_names_the_videos_pyav_decoded(tmp_path, clip):
    """An AV1 file (decord 0.6.0 has no AV1 decoder) is decoded by PyAV and listed under "decoders";
    an H.264 one, which decord reads, is not."""
    h264 = make_testsrc_video(tmp_path / "h264.mp4", seconds=2, fps=10, size=(96, 64))
    av1 = tmp_path / "av1.mp4"
    run_ffmpeg("-i", str(h264), "-c:v", "libsvtav1", "-preset", "12", str(av1))
    videos = [{"video_id": path.stem, "path": str(path), "duration": 2.0} for path in (h264, av1)]
    result, _ = extract_as_a_stage(videos, _visual(0), tmp_path)
    assert result["failures"] == {} and result["decoders"] == {"av1": "pyav"}
