"""Real dataset layouts: TVQA's frames as distributed (frames_hq/<show>_frames/<vid_name>/, some shows
without the show prefix in vid_name), read by the TVR adapter and decoded; and ExportBundle on a TVR
config whose val and test are the same file (every query listed twice)."""

import json

import h5py
import numpy as np
import pytest
from videos import run_ffmpeg

import tasks
from extractors.decode import decode_frames, sample_times
from pipeline.bundle import BundleLayout, import_bundle
from pipeline.datasets import AnnotationError, read_jsonl, read_tvr

# vid_name -> (show folder, seconds); The Big Bang Theory's vid_names carry no show prefix.
CLIPS = {"friends_s01e01_seg01_clip_00": ("friends_frames", 4), "s01e01_seg01_clip_00": ("bbt_frames", 3),
         "house_s01e02_seg02_clip_07": ("house_frames", 5), "s02e03_seg02_clip_11": ("bbt_frames", 4)}
SPLIT_OF = {"friends_s01e01_seg01_clip_00": "train", "house_s01e02_seg02_clip_07": "train",
            "s01e01_seg01_clip_00": "val", "s02e03_seg02_clip_11": "val"}


def _jpeg_frames(folder, seconds, pattern="testsrc"):
    """Real JPEG frames at 3 fps, named as TVQA's (00001.jpg, ...), made by ffmpeg as TVQA's were."""
    folder.mkdir(parents=True)
    run_ffmpeg("-f", "lavfi", "-i", f"{pattern}=size=80x60:rate=3:duration={seconds}", "-q:v", "3",
               str(folder / "%05d.jpg"))


def _tvr_line(desc_id, vid_name, seconds, text):
    return json.dumps({"desc_id": desc_id, "desc": text, "vid_name": vid_name, "duration": float(seconds),
                       "ts": [0.5, seconds - 0.5], "type": "v"}) + "\n"


@pytest.fixture(scope="module")
def tvqa(tmp_path_factory):
    """A TVR miniature: frames_hq/<show>_frames/<vid_name>/ and the release's annotation files."""
    root = tmp_path_factory.mktemp("tvr")
    for vid_name, (show, seconds) in CLIPS.items():
        _jpeg_frames(root / "frames_hq" / show / vid_name, seconds)
    lines = {"train": "", "val": ""}
    for index, (vid_name, (_, seconds)) in enumerate(CLIPS.items()):
        for k in range(2):
            lines[SPLIT_OF[vid_name]] += _tvr_line(100 + 2 * index + k, vid_name, seconds,
                                                   f"query {k} about {vid_name.replace('_', ' ')}")
    for split, text in lines.items():
        (root / f"tvr_{split}_release.jsonl").write_text(text)
    return root


def _annotations(root):
    val = root / "tvr_val_release.jsonl"
    return {"train": root / "tvr_train_release.jsonl", "val": val, "test": val}  # TVR: val is the test set


def test_tvqa_frames_as_distributed_are_found_and_decoded(tvqa):
    manifest = read_tvr(_annotations(tvqa), tvqa / "frames_hq")
    assert manifest.problems == []
    paths = {video["video_id"]: video["path"] for video in manifest.videos}
    assert paths == {vid: str(tvqa / "frames_hq" / show / vid) for vid, (show, _) in CLIPS.items()}
    assert {video["video_id"]: video["duration"] for video in manifest.videos} == {
        vid: pytest.approx(seconds) for vid, (_, seconds) in CLIPS.items()}
    decoded = decode_frames(paths["s01e01_seg01_clip_00"], sample_times(3.0, 1.0), short_side=48, frames_fps=3.0)
    assert decoded.frames.shape == (3, 48, 48, 3) and decoded.frames.std() > 20  # the real test pattern
    np.testing.assert_allclose(decoded.timestamps, [1 / 3, 4 / 3, 7 / 3])  # frames 00002, 00005, 00008


def test_flat_and_show_folders_together_and_a_vid_name_in_two_shows(tvqa, tmp_path):
    videos = tmp_path / "frames"
    _jpeg_frames(videos / "s01e01_seg01_clip_00", 3)  # flat: found first
    _jpeg_frames(videos / "castle_frames" / "castle_s01e01_seg01_clip_01", 3)
    train = tmp_path / "train.jsonl"
    train.write_text(_tvr_line(1, "s01e01_seg01_clip_00", 3, "a") + _tvr_line(2, "castle_s01e01_seg01_clip_01", 3, "b"))
    manifest = read_tvr({"train": train}, videos)
    assert [video["path"] for video in manifest.videos] == [
        str(videos / "s01e01_seg01_clip_00"), str(videos / "castle_frames" / "castle_s01e01_seg01_clip_01")]

    _jpeg_frames(videos / "bbt_frames" / "castle_s01e01_seg01_clip_01", 3)
    with pytest.raises(AnnotationError, match=r"train\.jsonl:2: video castle_s01e01_seg01_clip_01 has a frame folder "
                                              r"in several show folders: .*bbt_frames.*castle_frames"):
        read_tvr({"train": train}, videos)


def test_export_bundle_on_a_config_whose_val_and_test_are_one_file(tvqa, make_config, run_stages, tmp_path):
    config = make_config({
        "data": {"source": "files", "format": "tvr", "root": str(tvqa), "videos": "frames_hq",
                 "annotations": {"train": "tvr_train_release.jsonl", "val": "tvr_val_release.jsonl",
                                 "test": "tvr_val_release.jsonl"}, "subtitles": None},
        "features": {"collection": "tvqa"},
        "train": {"use_subtitles": False},
    }, name="tvqa.yaml")
    assert {"dataset", "visual", "queries", "bundle_export"} <= set(run_stages.build([tasks.ExportBundle(
        dataset=str(config))]))
    queries = read_jsonl(tasks.PrepareDataset(dataset=str(config)).out_dir / "queries.jsonl")
    assert len(queries) == 12 and len({q["cap_id"] for q in queries}) == 8  # val's 4 queries listed twice

    exported = tasks.ExportBundle(dataset=str(config)).out_dir / "tvqa"
    captions = {split: (exported / "TextData" / f"tvqa{split}.caption.txt").read_text().splitlines()
                for split in ("train", "val", "test")}
    assert captions["val"] == captions["test"] and len(captions["val"]) == 4 and len(captions["train"]) == 4
    assert captions["val"][0] == "s01e01_seg01_clip_00#enc#0 query 0 about s01e01 seg01 clip 00"
    with h5py.File(exported / "TextData" / "clip_ViT_B_32_tvqa_query_feat.hdf5") as clip:
        assert len(clip) == 8  # one entry per query, not per listing
    with h5py.File(exported / "FeatureData" / "new_clip_vit_32_tvqa_vid_features.hdf5") as video_file:
        assert sorted(video_file) == sorted(CLIPS)

    again = tmp_path / "again"
    again.mkdir()
    import_bundle(BundleLayout(exported, "tvqa"), again, 1.0, {})
    reimported = read_jsonl(again / "queries.jsonl")
    assert [(q["split"], q["text"]) for q in reimported] == [
        (q["split"], q["text"]) for split in ("train", "val", "test") for q in queries if q["split"] == split]
    assert {v["video_id"]: v["split"] for v in read_jsonl(again / "videos.jsonl")}["s01e01_seg01_clip_00"] == "test"
