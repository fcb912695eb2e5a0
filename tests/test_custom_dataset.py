"""FullPipeline on a user's own folder of videos with a queries CSV and an .srt; and a shipped dataset
config whose data files are missing fails at once, saying what is expected where."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from videos import make_testsrc_video

import tasks
from pipeline.datasets import MissingDataError, read_jsonl
from storage import FeatureFile

REPO = Path(__file__).resolve().parent.parent
SPLITS = {"train": ["dog", "cat", "bird"], "val": ["fish"], "test": ["horse", "cow"]}


@pytest.fixture
def custom_folder(tmp_path):
    root = tmp_path / "footage"
    (root / "videos").mkdir(parents=True)
    rows = ["video,text,start,end,split"]
    for split, names in SPLITS.items():
        for index, name in enumerate(names):
            make_testsrc_video(root / "videos" / f"{name}.mp4", seconds=3 + index, fps=10, size=(96, 64))
            rows += [f"{name}.mp4,a test card with a {name},0.5,2.0,{split}", f"{name},colour bars and a {name},,,{split}"]
    (root / "queries.csv").write_text("\n".join(rows) + "\n")
    (root / "videos" / "horse.srt").write_text("1\n00:00:01,000 --> 00:00:02,000\nThe horse runs.\n")
    return root


def test_full_pipeline_on_a_folder_of_videos(custom_folder, make_config, run_stages):
    config = make_config({
        "data": {"source": "files", "format": "custom", "root": str(custom_folder), "videos": "videos",
                 "annotations": {"train": "queries.csv", "val": None, "test": None}, "subtitles": None},
        "train": {"use_subtitles": True},
    }, name="custom.yaml")

    ran = run_stages.build([tasks.FullPipeline(dataset=str(config))])
    assert {"dataset", "visual", "queries", "subtitles", "train", "evaluate"} <= set(ran)
    dataset = tasks.PrepareDataset(dataset=str(config))
    manifest = json.loads((dataset.out_dir / "manifest.json").read_text())
    assert manifest["inputs"] == {"videos": 6, "queries": 12, "videos_with_subtitles": 1}
    assert manifest["problems"] == []
    durations = {v["video_id"]: v["duration"] for v in read_jsonl(dataset.out_dir / "videos.jsonl")}
    assert durations == pytest.approx({"dog": 3, "cat": 4, "bird": 5, "fish": 3, "horse": 3, "cow": 4}, abs=0.01)
    mask = FeatureFile(tasks.SubtitleFeatures(dataset=str(config)).features).group("mask")
    assert mask.read("horse").tolist() == [0, 1, 1]  # 1 fps grid; the line covers 1-2 s
    assert mask.read("cow").sum() == 0
    metrics = json.loads((tasks.Evaluate(dataset=str(config)).out_dir / "metrics.json").read_text())
    assert (metrics["split"], metrics["n_queries"], metrics["n_videos"]) == ("test", 4, 2)


def test_tvr_without_its_data_fails_at_once_naming_each_expected_file(tmp_path):
    empty = tmp_path / "no-tvr-here"
    empty.mkdir()
    overrides = f"data.root={empty} workdir={tmp_path / 'work'}"
    with pytest.raises(MissingDataError) as error:
        tasks.PrepareDataset(dataset="tvr", set=overrides).fingerprint
    message = str(error.value)
    for name in ("tvr_train_release.jsonl", "tvr_val_release.jsonl", "tvqa_preprocessed_subtitles.jsonl", "videos"):
        assert str(empty / name) in message
    assert "TVRetrieval" in message and "tvqa.cs.unc.edu" in message
    # A per-video stage counts the videos for its shards first: the same message.
    with pytest.raises(MissingDataError, match="expected data file"):
        tasks.VisualPart(dataset="tvr", set=overrides, part="clip").requires()

    # The command users type: Luigi stops while building the graph, before any stage runs.
    luigi = str(Path(sys.executable).with_name("luigi"))
    result = subprocess.run([luigi, "--module", "tasks", "FullPipeline", "--dataset", "tvr", "--set", overrides],
                            cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    assert str(empty / "tvr_train_release.jsonl") in result.stdout + result.stderr
    assert not (tmp_path / "work").exists()
