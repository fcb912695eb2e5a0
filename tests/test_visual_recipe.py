"""Visual recipes with several parts: each backbone is its own stage, combined on one clip grid."""

import numpy as np
import yaml

import tasks
from conftest import REPO
from storage import FeatureFile


def _recipe_config(tmp_path, parts: dict, **visual) -> str:
    """A 4-video demo (the fewest with a video in every split) whose visual section is exactly ``parts``
    on a 1.5 s clip grid."""
    config = yaml.safe_load((REPO / "configs" / "demo.yaml").read_text())
    config["workdir"] = str(tmp_path / "work")
    config["data"]["demo_videos"] = 4
    config["visual"] = {"fps": 0.5, "size": 112, "clip_seconds": 1.5, "parts": parts, "num_workers": 0,
                        "batch_size": 8, **visual}
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(config))
    return str(path)


TVR_PARTS = {"resnet": {"backbone": "resnet152", "pool": "max"},
             "i3d": {"backbone": "i3d", "pool": "mean", "fps": 4.0, "clip_len": 8}}


def test_tvr_recipe_gives_3072_d_clips_and_an_i3d_change_reruns_only_its_part(tmp_path, run_stages):
    config = _recipe_config(tmp_path, TVR_PARTS)
    visual = tasks.VisualFeatures(dataset=config)
    assert run_stages.build([visual]) == ["dataset", "demo_data", "visual", "visual-i3d", "visual-resnet"]
    combined = FeatureFile(visual.features)
    videos = combined.group()
    assert combined.attrs["dim"] == 3072 and len(videos) == 4
    for video_id, duration in zip(videos.ids, videos.column("duration")):
        features, timestamps = videos.read(video_id), videos.read(video_id, "timestamps")
        assert features.shape == (int(np.ceil(duration / 1.5 - 1e-6)), 3072)
        np.testing.assert_allclose(timestamps[:2], [0.75, 2.25])
        # parts in config order, each L2-normalised before the concatenation
        bounds = np.cumsum([0] + [{"resnet": 2048, "i3d": 1024}[name] for name in combined.attrs["parts"]])
        for start, end in zip(bounds[:-1], bounds[1:]):
            np.testing.assert_allclose(np.linalg.norm(features[:, start:end], axis=1), 1.0, rtol=1e-4)

    changed = tasks.VisualFeatures(dataset=config, set="visual.parts.i3d.seed=1")
    assert run_stages.build([changed]) == ["visual", "visual-i3d"]


def test_subtitles_follow_the_clip_grid(tmp_path, run_stages):
    config = _recipe_config(tmp_path, {"clip": {"backbone": "clip", "model": "TinyViT-32-test"}})
    visual, subtitles = tasks.VisualFeatures(dataset=config), tasks.SubtitleFeatures(dataset=config)
    run_stages.build([visual, subtitles])
    v, s = FeatureFile(visual.features).group(), FeatureFile(subtitles.features).group("features")
    assert sorted(s.ids) == sorted(v.ids)
    for video_id in v.ids:
        assert s.read(video_id).shape[0] == v.read(video_id).shape[0]
        np.testing.assert_allclose(s.read(video_id, "timestamps"), v.read(video_id, "timestamps"))


def test_each_part_is_pooled_with_its_own_mode_through_the_graph(tmp_path, run_stages):
    """Two parts of one backbone, one max- and one mean-pooled: the combined features equal the
    part files pooled by hand (numpy over each clip's frames), each L2-normalised."""
    tiny = {"backbone": "clip", "model": "TinyViT-32-test"}
    config = _recipe_config(tmp_path, {"peak": {**tiny, "pool": "max"}, "average": {**tiny, "pool": "mean"}},
                            fps=2.0, size=64)
    visual = tasks.VisualFeatures(dataset=config)
    run_stages.build([visual])
    reducers = {"peak": np.max, "average": np.mean}
    combined = FeatureFile(visual.features)
    assert list(combined.attrs["parts"]) == list(visual.parts) and set(visual.parts) == {"average", "peak"}
    videos = combined.group()
    for video_id, duration in zip(videos.ids, videos.column("duration")):
        expected = []
        for name, part in visual.parts.items():
            part_videos = FeatureFile(part.features).group()
            frames, times = part_videos.read(video_id), part_videos.read(video_id, "timestamps")
            clips, n_clips = [], len(videos.read(video_id))
            for index in range(n_clips):  # [start, start + 1.5), the last one [start, duration]
                start = 1.5 * index
                end = min(start + 1.5, duration)
                inside = (times >= start) & ((times < end) if index < n_clips - 1 else (times <= end))
                assert inside.any()
                clips.append(reducers[name](frames[inside], axis=0))
            clips = np.stack(clips)
            expected.append(clips / np.linalg.norm(clips, axis=1, keepdims=True))
        np.testing.assert_allclose(videos.read(video_id), np.concatenate(expected, axis=1), rtol=1e-5, atol=1e-6)
