"""Ids and config values never become paths outside their root, nor change the shape of a file tree.

Hostile video ids go through the real TVR reader, the real feature stages (HDF5), transcoding, the
bundle export and the training data reader; the config's `name` and bundle names are confined too.
"""

import json
import os
import re
from pathlib import Path

import h5py
import pytest
import torch

import tasks
from amdnet import FeatureFiles
from amdnet.data import VideoCaptionDataset, VideoInputs
from pipeline.bundle import BundleLayout
from pipeline.config import ConfigError, load_config
from pipeline.datasets import AnnotationError, read_dataset, read_jsonl, resolve_data_root
from pipeline.paths import UnsafePathError, confined, opaque_name, plain_name
from storage import FeatureFile
from videos import make_testsrc_video


def test_confined_accepts_inside_and_refuses_every_way_out(tmp_path):
    root, outside = tmp_path / "root", tmp_path / "outside"
    (root / "sub").mkdir(parents=True)
    outside.mkdir()
    (outside / "secret.mp4").write_bytes(b"x")
    (root / "inside.mp4").write_bytes(b"x")
    (root / "file_link.mp4").symlink_to(outside / "secret.mp4")
    (root / "dir_link").symlink_to(outside)
    (root / "good_link.mp4").symlink_to(root / "inside.mp4")

    for relative in ("inside.mp4", "sub/new.mp4", "not-there-yet", "sub/../inside.mp4", "good_link.mp4", "a%2Fb"):
        assert confined(root, relative) == root / relative
    for relative in ("../outside/secret.mp4", str(outside / "secret.mp4"), "/etc/passwd", "file_link.mp4",
                     "dir_link/secret.mp4", "sub/../../outside", "..", ".", "", "sub/..", "a\x00b"):
        with pytest.raises(UnsafePathError):
            confined(root, relative)
    # A root reached through a symlink is fine: the root is resolved too.
    (tmp_path / "root_link").symlink_to(root)
    assert confined(tmp_path / "root_link", "inside.mp4") == tmp_path / "root_link" / "inside.mp4"


def test_opaque_names_are_single_distinct_components():
    ids = ["plain", "v_abc#enc#0", "with space", "a/b", "a%2Fb", "a%b", "..", ".", "", "/abs/path", "a\\b",
           "tab\there", "nul\x00", "../../etc/passwd", "%", "%%2E", ".hidden"]
    names = [opaque_name(value) for value in ids]
    assert len(set(names)) == len(ids)  # distinct ids stay distinct
    for name in names:
        assert name and name not in (".", "..") and "/" not in name and "\\" not in name
        assert all(ord(char) >= 0x20 for char in name)
    assert opaque_name("plain") == "plain" and opaque_name("v_abc#enc#0") == "v_abc#enc#0"
    for bad in ("a/b", "..", ".", "", "x\\y", "a%b"):
        with pytest.raises(UnsafePathError):
            plain_name(bad)
    assert plain_name("tvr") == "tvr"


SAFE_IDS = ["plain", "sub/clip", "a%2Fb"]  # all inside the videos folder: read, stored as data


def _hostile_dataset(tmp_path: Path) -> tuple[Path, dict[str, int]]:
    """A TVR-format dataset whose queries name videos by hostile ids; returns the data root and the
    line of each refused id in the annotation file."""
    root, elsewhere = tmp_path / "data", tmp_path / "elsewhere"
    (root / "videos" / "sub").mkdir(parents=True)
    elsewhere.mkdir()
    make_testsrc_video(root / "videos" / "plain.mp4", 3, 5, (64, 48))
    for copy in ("sub/clip.mp4", "a%2Fb.mp4", "../outside.mp4"):
        (root / "videos" / copy).write_bytes((root / "videos" / "plain.mp4").read_bytes())
    (elsewhere / "abs.mp4").write_bytes((root / "videos" / "plain.mp4").read_bytes())
    (root / "videos" / "link.mp4").symlink_to(elsewhere / "abs.mp4")
    (root / "videos" / "linkdir").symlink_to(elsewhere)
    refused = ["../outside", str(elsewhere / "abs"), "link", "linkdir/abs", "..", ".", "sub/../../outside"]
    lines, refused_lines = [], {}
    for index, video_id in enumerate(SAFE_IDS + refused):
        lines.append(json.dumps({"desc_id": index, "desc": f"a test pattern number {index}", "vid_name": video_id,
                                 "duration": 3.0, "ts": [0.5, 2.0]}))
        if video_id in refused:
            refused_lines[video_id] = index + 1
    (root / "queries.jsonl").write_text("\n".join(lines) + "\n")
    subtitles = [{"vid_name": video_id, "sub": [{"text": f"spoken in {video_id}", "start": 0.2, "end": 1.5}]}
                 for video_id in SAFE_IDS[1:]]
    (root / "subs.jsonl").write_text("".join(json.dumps(entry) + "\n" for entry in subtitles))
    return root, refused_lines


def _hostile_config(make_config, root: Path, extra: dict | None = None):
    data = {"source": "files", "format": "tvr", "root": str(root), "videos": "videos", "subtitles": "subs.jsonl",
            "annotations": {"train": "queries.jsonl", "val": None, "test": None}}
    config = {"data": data, "train": {"use_subtitles": True}}
    for section, values in (extra or {}).items():
        config[section] = {**config.get(section, {}), **values}
    return make_config(config, name="hostile.yaml")


def _assert_flat(path: Path, expected: set[str]) -> None:
    """The (bundle) file's entries are exactly `expected`, every one a dataset: no id made a group."""
    with h5py.File(path, "r") as f:
        assert set(f) == expected
        assert all(isinstance(f[name], h5py.Dataset) for name in f)


def test_hostile_video_ids_are_refused_recorded_and_stored_as_data(make_config, run_stages, tmp_path):
    root, refused_lines = _hostile_dataset(tmp_path)
    config = _hostile_config(make_config, root)
    outside_before = sorted(str(p) for p in tmp_path.rglob("*") if "work" not in p.parts)

    dataset = tasks.PrepareDataset(dataset=str(config))
    export = tasks.ExportBundle(dataset=str(config))
    subtitles = tasks.SubtitleFeatures(dataset=str(config))
    run_stages.build([export, subtitles])

    manifest = json.loads((dataset.out_dir / "manifest.json").read_text())
    unsafe = {(p["line"], p["action"]) for p in manifest["problems"] if p["problem"] == "unsafe_path"}
    assert unsafe == {(line, "skip") for line in refused_lines.values()}
    assert all(p["file"] == str(root / "queries.jsonl") for p in manifest["problems"])
    videos = read_jsonl(dataset.out_dir / "videos.jsonl")
    assert [v["video_id"] for v in videos] == SAFE_IDS
    assert all(Path(v["path"]).resolve().is_relative_to((root / "videos").resolve()) for v in videos)

    # Feature files hold ids as data (storage): every id as it is, none an HDF5 name.
    part = tasks.VisualPart(dataset=str(config), part="clip")
    assert FeatureFile(part.features).group().ids == SAFE_IDS
    queries = tasks.QueryFeatures(dataset=str(config))
    assert sorted(FeatureFile(queries.features).group("pooled").ids) == ["0", "1", "2"]
    assert FeatureFile(subtitles.features).group("features").ids == SAFE_IDS
    assert FeatureFile(subtitles.features).group("mask").ids == SAFE_IDS
    with h5py.File(part.features) as f:
        assert set(f) == {"data", "ids", "offsets", "timestamps", "duration"}

    # The training data reader finds every video and caption by its id.
    files = FeatureFiles(video=part.features, query=queries.features, subtitle=subtitles.features)
    data = VideoCaptionDataset(files, dataset.out_dir / "queries.jsonl", "train", VideoInputs(("clips",), 4),
                               use_subtitles=True)
    assert data.video_ids == SAFE_IDS
    items = [data[index] for index in range(len(data))]
    assert all(item["clips"].shape[0] == 4 and torch.isfinite(item["clips"]).all() for item in items)
    assert [float(item["subtitle_mask"].sum()) > 0 for item in items] == [False, True, True]

    # The reference bundle format keys files by raw ids: ids it cannot hold are left out, and listed.
    export_manifest = json.loads((export.out_dir / "manifest.json").read_text())
    assert export_manifest["unexportable_video_ids"] == ["a%2Fb", "sub/clip"]
    name = export.config["name"]
    _assert_flat(export.out_dir / name / "FeatureData" / f"new_clip_vit_32_{name}_vid_features.hdf5", {"plain"})

    # Nothing was written outside the work folder.
    assert sorted(str(p) for p in tmp_path.rglob("*") if "work" not in p.parts) == outside_before


def test_refused_ids_fail_with_file_and_line_when_the_policy_says_fail(make_config, tmp_path):
    root, refused_lines = _hostile_dataset(tmp_path)
    config = load_config(str(_hostile_config(make_config, root, {"data": {"on_problem": {"unsafe_path": "fail"}}})))
    with pytest.raises(AnnotationError) as error:
        read_dataset(config["data"], resolve_data_root(config["data"]["root"]))
    first = min(refused_lines, key=refused_lines.get)
    assert f"queries.jsonl:{refused_lines[first]}: video id {first!r}" in str(error.value)
    assert "outside" in str(error.value)


def test_transcode_proxies_are_named_by_key_never_by_id(make_config, run_stages, tmp_path):
    root, _ = _hostile_dataset(tmp_path)
    config = _hostile_config(make_config, root, {"visual": {"transcode": {"enabled": True}}})
    transcode = tasks.Transcode(dataset=str(config))
    run_stages.build([tasks.VisualPart(dataset=str(config), part="clip")])
    proxies = [Path(v["path"]) for v in read_jsonl(transcode.out_dir / "videos.jsonl")]
    assert len(proxies) == 3 and all(proxy.is_file() for proxy in proxies)
    for proxy in proxies:  # <cache>/<2 hex>/<hex key>.mp4: nothing of the video id in the path
        assert proxy.parent.parent == transcode.cache.folder
        assert re.fullmatch(r"[0-9a-f]{24}\.mp4", proxy.name) and proxy.name.startswith(proxy.parent.name)


@pytest.mark.parametrize("name", ["../escaped", "a/b", "..", "/tmp/abs", "."])
def test_config_name_cannot_lead_outside_the_workdir(make_config, name):
    config = make_config({"name": name}, name="named.yaml")
    with pytest.raises(ConfigError, match="must be a single folder name"):
        tasks.PrepareDataset(dataset=str(config)).out_dir


def test_workdir_link_leading_outside_is_refused(make_config, tmp_path):
    config = make_config()
    name = load_config(str(config))["name"]
    (tmp_path / "work").mkdir()
    (tmp_path / "elsewhere").mkdir()
    os.symlink(tmp_path / "elsewhere", tmp_path / "work" / name)
    with pytest.raises(ConfigError, match="leads outside"):
        tasks.PrepareDataset(dataset=str(config)).out_dir


def test_bundle_names_are_confined(tmp_path):
    for collection in ("../x", "a/b", ".."):
        with pytest.raises(UnsafePathError):
            BundleLayout(tmp_path, collection)
    with pytest.raises(UnsafePathError):
        BundleLayout(tmp_path, "tvr", video="../../elsewhere").video_source
    assert BundleLayout(tmp_path, "tvr").captions("train") == tmp_path / "TextData" / "tvrtrain.caption.txt"


@pytest.mark.parametrize("layout", ["link", "dotdot", "absolute"])
def test_config_paths_are_trusted_and_followed_but_data_values_stay_confined(layout, tmp_path):
    """data.videos and data.annotations are the user's choice (a videos folder linked to another disk):
    followed wherever they lead. Ids and subtitle files read from the data stay inside that folder."""
    root, disk = tmp_path / "data", tmp_path / "other_disk"
    (root).mkdir()
    (disk / "videos").mkdir(parents=True)
    make_testsrc_video(disk / "videos" / "clip.mp4", 2, 5, (32, 24))
    (disk / "secret.mp4").write_bytes((disk / "videos" / "clip.mp4").read_bytes())
    (disk / "videos" / "out.mp4").symlink_to(disk / "secret.mp4")  # a data value leading out of the folder
    (disk / "secret.srt").write_text("1\n00:00:00,000 --> 00:00:01,000\nnot to be read\n")
    (disk / "videos" / "clip.srt").symlink_to(disk / "secret.srt")
    (disk / "queries.csv").write_text("video,text\nclip,a test card\nout,a test card again\n../secret,a third\n")
    videos = {"link": "videos", "dotdot": "../other_disk/videos", "absolute": str(disk / "videos")}[layout]
    if layout == "link":
        (root / "videos").symlink_to(disk / "videos")
    data = load_config("custom", f"data.root={root} data.videos={videos} "
                                 f"data.annotations.train=../other_disk/queries.csv data.annotations.test=null")["data"]
    manifest = read_dataset(data, resolve_data_root(data["root"]))
    assert [video["video_id"] for video in manifest.videos] == ["clip"]
    assert Path(manifest.videos[0]["path"]).resolve() == (disk / "videos" / "clip.mp4").resolve()
    assert [(p["problem"], p["line"]) for p in manifest.problems] == [("unsafe_path", 3), ("unsafe_path", 4)]
    assert manifest.subtitles == []  # clip.srt links out of the videos folder: not read
