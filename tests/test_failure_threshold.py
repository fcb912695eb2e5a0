"""visual.max_failed_fraction on real corrupt files: exactly that fraction of failed videos passes (and
is recorded), one more failure stops the stage without publishing a features file."""

import pytest

from extractors.decode import probe_video
from pipeline.stage import StageFailed
from pipeline.video_cache import ENTRY_SUFFIX
from storage import FeatureFile
from videos import extract_as_a_stage, make_testsrc_video


def _visual(max_failed_fraction: float) -> dict:
    return {"backbone": "clip", "model": "TinyViT-32-test", "pretrained": None, "seed": 0, "fps": 2.0,
            "size": 64, "batch_size": 8, "num_workers": 0, "device": "cpu", "clip_len": 16, "clip_stride": None,
            "max_failed_fraction": max_failed_fraction}


@pytest.fixture(scope="module")
def good_video(tmp_path_factory):
    path = make_testsrc_video(tmp_path_factory.mktemp("threshold") / "good.mp4", seconds=1, fps=10, size=(96, 64))
    return path, probe_video(path).duration


def _corrupt(folder, index: int, good_path) -> str:
    """Three kinds of broken file in turn: not a video, empty, and a real video cut after its header."""
    path = folder / f"broken_{index}.mp4"
    kind = index % 3
    if kind == 0:
        path.write_text("this is not a video\n")
    elif kind == 1:
        path.write_bytes(b"")
    else:
        data = good_path.read_bytes()
        path.write_bytes(data[: len(data) // 3])
    return str(path)


@pytest.mark.parametrize("n_videos, fraction, n_broken, passes", [
    (4, 0.0, 0, True), (4, 0.0, 1, False),
    (4, 0.25, 1, True), (4, 0.25, 2, False),
    (5, 0.6, 3, True), (5, 0.6, 4, False),
    (10, 0.1, 1, True), (10, 0.1, 2, False),  # 1 / 10 is 0.1 exactly in floating point too
    (10, 0.3, 3, True), (10, 0.3, 4, False),
])
def test_exactly_the_allowed_fraction_of_failures_passes(tmp_path, good_video, n_videos, fraction, n_broken,
                                                         passes):
    good_path, duration = good_video
    videos = [{"video_id": f"broken_{i}", "path": _corrupt(tmp_path, i, good_path), "duration": duration}
              for i in range(n_broken)]
    videos += [{"video_id": f"good_{i}", "path": str(good_path), "duration": duration}
               for i in range(n_videos - n_broken)]
    if passes:
        result, out = extract_as_a_stage(videos, _visual(fraction), tmp_path)
        assert sorted(result["failures"]) == [f"broken_{i}" for i in range(n_broken)]
        assert sorted(FeatureFile(out).group().ids) == sorted(f"good_{i}" for i in range(n_videos - n_broken))
    else:
        with pytest.raises(StageFailed, match=f"{n_broken} of {n_videos} videos failed"):
            extract_as_a_stage(videos, _visual(fraction), tmp_path)
        assert not (tmp_path / "features.h5").exists()  # nothing published that a later run could take as complete
        assert not (tmp_path / "features.h5.partial").exists()
        # The good videos' work is kept for a rerun: one cache entry (they are the same file).
        assert len(list((tmp_path / "cache").glob(f"*/*{ENTRY_SUFFIX}"))) == (1 if n_videos > n_broken else 0)
