import numpy as np
import pytest

from extractors.subtitles import pool_subtitles


def grid(clip_count: int, fps: float) -> np.ndarray:
    return (np.arange(clip_count) + 0.5) / fps


def test_matches_hand_computation():
    # fps 2: clip i covers [i/2, (i+1)/2); six clips, the video ends at 3 s
    first = (0.3, 0.9, np.array([[1.0, -3.0, 5.0], [2.0, -1.0, 0.0]]))  # clips floor(0.6)=0 .. ceil(1.8)=2
    second = (1.2, 1.6, np.array([[0.0, 4.0, 1.0]]))  # clips floor(2.4)=2 .. ceil(3.2)=4
    after_end = (10.0, 12.0, np.array([[9.0, 9.0, 9.0]]))
    features, mask = pool_subtitles([first, second, after_end], grid(6, 2.0), fps=2.0, dim=3)

    expected = np.array(
        [
            [2.0, -1.0, 5.0],  # first only: max over its two tokens (negative values survive)
            [2.0, -1.0, 5.0],
            [2.0, 4.0, 5.0],  # both sentences
            [0.0, 4.0, 1.0],
            [0.0, 4.0, 1.0],
            [0.0, 0.0, 0.0],  # no subtitle
        ],
        dtype=np.float32,
    )
    np.testing.assert_array_equal(features, expected)
    np.testing.assert_array_equal(mask, [1, 1, 1, 1, 1, 0])
    assert features.dtype == np.float32 and mask.dtype == np.uint8


def test_tvr_clip_length_and_clamping():
    fps = 1 / 1.5  # TVR: 1.5 s clips
    tokens = np.ones((2, 4))
    starts_before_zero = (-0.5, 1.0, tokens)  # clips 0 .. ceil(0.67)=1
    runs_past_end = (5.0, 30.0, 2 * tokens)  # clips floor(3.33)=3 .. clamped to the last clip, 4
    features, mask = pool_subtitles([starts_before_zero, runs_past_end], grid(5, fps), fps=fps, dim=4)

    np.testing.assert_array_equal(mask, [1, 1, 0, 1, 1])
    np.testing.assert_array_equal(features[:, 0], [1, 1, 0, 2, 2])


def test_no_sentences_gives_zeros():
    features, mask = pool_subtitles([], grid(3, 3.0), fps=3.0, dim=8)
    assert features.shape == (3, 8) and not features.any() and not mask.any()


@pytest.mark.parametrize(
    ("sentence", "message"),
    [
        ((2.0, 1.0, np.ones((1, 3))), "sentence 1: end 1.0 is before start 2.0"),
        ((0.0, 1.0, np.ones((1, 5))), r"sentence 1: token features must be \(L >= 1, 3\), got \(1, 5\)"),
        ((0.0, 1.0, np.ones((0, 3))), r"sentence 1: token features must be"),
    ],
)
def test_bad_sentence_is_named(sentence, message):
    good = (0.0, 1.0, np.ones((2, 3)))
    with pytest.raises(ValueError, match=message):
        pool_subtitles([good, sentence], grid(4, 1.0), fps=1.0, dim=3)


def test_subtitle_file_holds_each_videos_pooling_across_chunks(tmp_path, monkeypatch):
    """encode_subtitles writes chunks of videos at once: every video's stored features, mask and
    timestamps are its own pooling, whichever chunk it falls in, videos without subtitles included."""
    import pipeline.features
    from extractors import create_extractor
    from pipeline.features import encode_subtitles
    from pipeline.visual import feature_grid
    from storage import FeatureFile

    monkeypatch.setattr(pipeline.features, "_TEXT_CHUNK", 2)  # 5 videos: chunks of 2, 2 and 1
    text = {"encoder": "clip-text", "model": "TinyViT-32-test", "pretrained": None, "seed": 0, "layer": -1,
            "max_length": 77, "strip_special_tokens": False, "batch_size": 4, "device": "cpu"}
    visual = {"fps": 1.0, "clip_seconds": None}
    videos = [{"video_id": f"v{k}", "duration": 2.0 + k} for k in range(5)]
    subtitles = [{"video_id": f"v{k}", "sub": [{"text": f"line {k}", "start": 0.0, "end": 1.0},
                                               {"text": "another line", "start": 1.5, "end": 2.5}]}
                 for k in (0, 2, 3)]  # v1 and v4 have none
    encode_subtitles(videos, subtitles, text, visual, tmp_path / "subtitles.h5", {"stage": "subtitles"})

    encoder = create_extractor("clip-text", model="TinyViT-32-test", seed=0, device="cpu")
    sentences_of = {entry["video_id"]: entry["sub"] for entry in subtitles}
    with FeatureFile(tmp_path / "subtitles.h5") as stored:
        for video in videos:
            sentences = sentences_of.get(video["video_id"], [])
            encoded = encoder.encode([s["text"] for s in sentences]) if sentences else []
            timestamps, rate = feature_grid(video["duration"], visual)
            features, mask = pool_subtitles([(s["start"], s["end"], e.tokens) for s, e in zip(sentences, encoded)],
                                            timestamps, rate, encoder.dim)
            np.testing.assert_array_equal(stored.group("features").read(video["video_id"]), features)
            np.testing.assert_array_equal(stored.group("mask").read(video["video_id"]), mask)
            np.testing.assert_array_equal(stored.group("features").read(video["video_id"], "timestamps"), timestamps)
