"""The PRVR feature bundle: a miniature authored here in the released layout trains and evaluates
through FullPipeline; export then import gives back the same arrays; bad bundles fail clearly."""

import json
import weakref
from pathlib import Path

import h5py
import numpy as np
import pytest

import tasks
from pipeline.bundle import BundleError, BundleLayout, import_bundle
from pipeline.datasets import AnnotationError, read_jsonl
from storage import FeatureFile, FeatureWriter

SPLIT_VIDEOS = {"train": [f"tv{i}" for i in range(6)], "val": ["va0", "va1"], "test": ["te0", "te1", "te2"]}
VIDEO_DIM, QUERY_DIM = 12, 8


def _author_bundle(root: Path, seed: int = 0) -> dict[str, np.ndarray]:
    """TextData caption files, a RoBERTa-style token HDF5 (both key forms), a CLIP-style video HDF5 and
    an i3d_resnet BigFile folder. Returns the video features by id."""
    rng = np.random.default_rng(seed)
    text_dir, feature_dir = root / "TextData", root / "FeatureData"
    text_dir.mkdir(parents=True)
    (feature_dir / "i3d_resnet").mkdir(parents=True)
    videos = {vid: rng.normal(size=(int(rng.integers(3, 9)), VIDEO_DIM)).astype(np.float32)
              for split_videos in SPLIT_VIDEOS.values() for vid in split_videos}
    with h5py.File(text_dir / "roberta_mini_query_feat.hdf5", "w") as queries:
        for split, split_videos in SPLIT_VIDEOS.items():
            lines = []
            for vid in split_videos:
                for k in range(2):
                    lines.append(f"{vid}#enc#{k} a caption of {vid} number {k}\n")
                    # Some released files key captions as <vid>#<k>: the import falls back to that form.
                    key = f"{vid}#{k}" if k == 1 else f"{vid}#enc#{k}"
                    queries[key] = rng.normal(size=(int(rng.integers(2, 6)), QUERY_DIM)).astype(np.float32)
            (text_dir / f"mini{split}.caption.txt").write_text("".join(lines))
    with h5py.File(feature_dir / "new_clip_vit_32_mini_vid_features.hdf5", "w") as clip:
        for vid, features in videos.items():
            clip[vid] = features
    _write_bigfile_by_hand(feature_dir / "i3d_resnet", videos)
    return videos


def _write_bigfile_by_hand(folder: Path, videos: dict[str, np.ndarray]) -> None:
    # Rows stored in reverse order, so reading must follow video2frames, not the file order.
    rows = [(f"{vid}_{t}", features[t]) for vid, features in videos.items() for t in range(len(features))][::-1]
    (folder / "shape.txt").write_text(f"{len(rows)} {VIDEO_DIM}\n")
    (folder / "id.txt").write_text(" ".join(row_id for row_id, _ in rows))
    np.stack([row for _, row in rows]).astype(np.float32).tofile(folder / "feature.bin")
    mapping = {vid: [f"{vid}_{t}" for t in range(len(features))] for vid, features in videos.items()}
    (folder / "video2frames.txt").write_text(repr(mapping))


def _bundle_config(make_config, root: Path, **features):
    return make_config({
        "data": {"source": "files", "root": str(root), "annotations": {"train": None, "val": None, "test": None},
                 "subtitles": None},
        "features": {"source": "bundle", "collection": "mini", **features},
        "train": {"use_subtitles": False, "query_input": "tokens"},
    }, name="bundle.yaml")


def test_bundle_trains_and_evaluates_through_full_pipeline_and_exports(make_config, run_stages, tmp_path):
    root = tmp_path / "mini"
    videos = _author_bundle(root)
    config = _bundle_config(make_config, root, video="i3d_resnet", query="roberta")

    assert run_stages.build([tasks.FullPipeline(dataset=str(config))]) == ["bundle", "evaluate", "train"]
    imported = tasks.ImportBundle(dataset=str(config))
    video_features = FeatureFile(imported.video_features).group()
    assert sorted(video_features.ids) == sorted(videos)
    np.testing.assert_array_equal(video_features.read("tv3"), videos["tv3"])  # BigFile rows in video2frames order
    assert video_features.column("duration")[video_features.position("tv3")] == pytest.approx(len(videos["tv3"]) * 1.5)
    query_features = FeatureFile(imported.query_features)
    tokens = query_features.group("tokens").read("va1#enc#1")
    assert tokens.shape[1] == QUERY_DIM  # found under its short key va1#1
    np.testing.assert_allclose(query_features.group("pooled").read("va1#enc#1"), tokens.mean(axis=0))
    metrics = json.loads((tasks.Evaluate(dataset=str(config)).out_dir / "metrics.json").read_text())
    assert (metrics["split"], metrics["n_queries"], metrics["n_videos"]) == ("test", 6, 3)

    # Export writes the bundle layout; importing it again gives the same arrays.
    assert run_stages.build([tasks.ExportBundle(dataset=str(config))]) == ["bundle_export"]
    exported = tasks.ExportBundle(dataset=str(config)).out_dir / "mini"
    assert (exported / "TextData" / "minitest.caption.txt").read_text().splitlines()[0] == \
        "te0#enc#0 a caption of te0 number 0"
    for video, query in (("clip", "roberta"), ("features", "clip")):
        again = tmp_path / f"again-{video}"
        again.mkdir()
        import_bundle(BundleLayout(exported, "mini", video, query), again, 1 / 1.5, {})
        _assert_same_features(imported, again, tokens=query == "roberta")
        assert read_jsonl(again / "queries.jsonl") == read_jsonl(imported.out_dir / "queries.jsonl")


def _assert_same_features(imported, again: Path, tokens: bool) -> None:
    first, second = FeatureFile(imported.video_features).group(), FeatureFile(again / "video_features.h5").group()
    assert sorted(first.ids) == sorted(second.ids)
    for vid in first.ids:
        np.testing.assert_array_equal(first.read(vid), second.read(vid))
        np.testing.assert_array_equal(first.read(vid, "timestamps"), second.read(vid, "timestamps"))
    first, second = FeatureFile(imported.query_features), FeatureFile(again / "query_features.h5")
    assert sorted(first.group("pooled").ids) == sorted(second.group("pooled").ids)
    for cap_id in first.group("pooled").ids:
        np.testing.assert_allclose(first.group("pooled").read(cap_id), second.group("pooled").read(cap_id), rtol=1e-6)
        if tokens:
            np.testing.assert_array_equal(first.group("tokens").read(cap_id), second.group("tokens").read(cap_id))


def test_missing_features_are_reported_and_left_out(tmp_path):
    root = tmp_path / "mini"
    _author_bundle(root)
    with open(root / "TextData" / "minitest.caption.txt", "a") as f:
        f.write("gone#enc#0 a caption whose video has no features\nte0#enc#7 a caption without features\n")
    report = import_bundle(BundleLayout(root, "mini", query="roberta"), tmp_path, 1.0, {})
    assert report["missing"] == {"video_features": ["gone"], "query_features": ["gone#enc#0", "te0#enc#7"]}
    assert report["inputs"] == {"captions": 24, "videos": 11, "queries_kept": 22}


def test_video2frames_is_parsed_as_a_literal_never_evaluated(tmp_path):
    root = tmp_path / "mini"
    _author_bundle(root)
    marker = tmp_path / "evaluated"
    (root / "FeatureData" / "i3d_resnet" / "video2frames.txt").write_text(
        f"__import__('pathlib').Path({str(marker)!r}).touch()")
    with pytest.raises(BundleError, match=r"video2frames\.txt: not a Python dict literal"):
        import_bundle(BundleLayout(root, "mini", "i3d_resnet", "roberta"), tmp_path, 1.0, {})
    assert not marker.exists()


def test_bad_shapes_and_missing_files_name_the_file_and_key(tmp_path):
    root = tmp_path / "mini"
    _author_bundle(root)
    with h5py.File(root / "FeatureData" / "new_clip_vit_32_mini_vid_features.hdf5", "a") as clip:
        del clip["va1"]
        clip["va1"] = np.zeros((4, VIDEO_DIM + 1), dtype=np.float32)
    with pytest.raises(BundleError, match=r"new_clip_vit_32_mini_vid_features\.hdf5: video 'va1': dimension 13"):
        import_bundle(BundleLayout(root, "mini", query="roberta"), tmp_path, 1.0, {})

    (root / "FeatureData" / "i3d_resnet" / "feature.bin").write_bytes(b"\0" * 8)
    with pytest.raises(BundleError, match=r"feature\.bin: 8 bytes, expected"):
        import_bundle(BundleLayout(root, "mini", "i3d_resnet", "roberta"), tmp_path, 1.0, {})

    (root / "TextData" / "minival.caption.txt").unlink()
    with pytest.raises(BundleError, match=r"2 expected file\(s\) missing:\n.*minival\.caption\.txt\n.*"
                                          r"clip_ViT_B_32_mini_query_feat\.hdf5\nHow to get them"):
        BundleLayout(root, "mini", query="clip").check_present()


def test_a_caption_in_val_and_test_is_one_query_unless_its_text_differs(tmp_path):
    root = tmp_path / "mini"
    _author_bundle(root)
    text_dir = root / "TextData"
    (text_dir / "minival.caption.txt").write_text((text_dir / "minitest.caption.txt").read_text())  # as TVR ships it
    report = import_bundle(BundleLayout(root, "mini", query="roberta"), tmp_path, 1.0, {})
    queries = read_jsonl(tmp_path / "queries.jsonl")
    assert report["inputs"]["queries_kept"] == len(queries) == 24
    assert [q["cap_id"] for q in queries if q["split"] == "val"] == [q["cap_id"] for q in queries if q["split"] == "test"]
    assert len(FeatureFile(tmp_path / "query_features.h5").group("pooled")) == 18  # 12 train + 6 val/test, each once
    assert {v["video_id"]: v["split"] for v in read_jsonl(tmp_path / "videos.jsonl")}["te0"] == "test"

    lines = (text_dir / "minival.caption.txt").read_text().splitlines()
    lines[3] = lines[3].split(" ", 1)[0] + " another text under the same id"
    (text_dir / "minival.caption.txt").write_text("\n".join(lines) + "\n")
    with pytest.raises(AnnotationError, match=r"minitest\.caption\.txt:4: caption id te1#enc#1 is also at "
                                              r".*minival\.caption\.txt:4 with another text"):
        import_bundle(BundleLayout(root, "mini", query="roberta"), tmp_path / "x", 1.0, {})


def test_keyed_reads_give_the_stored_arrays_whatever_the_layout(tmp_path):
    """The pread fast path (contiguous) and HDF5's read (chunked, compressed, compact, unallocated, in a
    file with a user block) give the same arrays as h5py."""
    from pipeline.bundle import KeyedH5

    rng = np.random.default_rng(0)
    arrays = {"contiguous": rng.normal(size=(5, 7)).astype(np.float32), "big_endian": np.arange(6, dtype=">f4"),
              "float64": rng.normal(size=(3,)), "chunked": rng.normal(size=(8, 4)).astype(np.float32),
              "gzip": rng.normal(size=(8, 4)).astype(np.float32)}
    for user_block in (0, 512):
        path = tmp_path / f"keyed{user_block}.h5"
        with h5py.File(path, "w", userblock_size=user_block) as file:
            for key in ("contiguous", "big_endian", "float64"):
                file[key] = arrays[key]
            file.create_dataset("chunked", data=arrays["chunked"], chunks=(2, 4))
            file.create_dataset("gzip", data=arrays["gzip"], chunks=(4, 4), compression="gzip")
            file.create_dataset("unallocated", shape=(3, 2), dtype=np.float32)
        keys = (*arrays, "unallocated")
        with h5py.File(path, "r") as file:  # closed first: KeyedH5 opens it with other access properties
            reference = {key: file[key][()] for key in keys}
        with KeyedH5(path) as keyed:
            assert h5py.h5d.open(keyed._file.id, b"contiguous").get_offset() is not None  # the fast path is taken
            for key in keys:
                read = keyed.read(key)
                assert read.dtype == reference[key].dtype and read.tobytes() == reference[key].tobytes(), key
            # Many at once, into one float32 array: the same values, cast as numpy casts them.
            rows = keyed.read_rows([keyed.locate(key) for key in keys], 1)
            expected = np.concatenate([reference[key].reshape(-1).astype(np.float32) for key in keys])
            assert rows.shape == (len(expected), 1) and rows.reshape(-1).tobytes() == expected.tobytes()


def _h5_contents(path: Path) -> dict:
    with h5py.File(path, "r") as file:
        found = {"attrs": dict(file.attrs)}
        file.visititems(lambda name, node: found.update({name: node[()].tolist()}) if isinstance(node, h5py.Dataset)
                        else None)
    return found


@pytest.mark.parametrize("video", ["clip", "i3d_resnet"])
def test_an_interrupted_import_in_small_batches_resumes_to_the_files_of_one_run(tmp_path, monkeypatch, video):
    """Import reads and writes in batches: batches of one entry, an import stopped by a bad video and
    resumed once the bundle is mended, and one run in large batches give the same files."""
    import pipeline.bundle as bundle

    root = tmp_path / "mini"
    videos = _author_bundle(root)
    layout = BundleLayout(root, "mini", video, "roberta")
    whole, resumed = tmp_path / "whole", tmp_path / "resumed"
    whole.mkdir()
    resumed.mkdir()
    import_bundle(layout, whole, 2.0, {"stage": "bundle"})

    monkeypatch.setattr(bundle, "_IMPORT_BATCH_BYTES", 1)  # every entry a batch of its own
    clip_file = root / "FeatureData" / "new_clip_vit_32_mini_vid_features.hdf5"
    bigfile = root / "FeatureData" / "i3d_resnet" / "id.txt"
    good_ids = bigfile.read_text()
    with h5py.File(clip_file, "a") as clip:  # the ninth video in caption order turns bad
        del clip["va1"]
        clip["va1"] = np.zeros((4, VIDEO_DIM + 1), dtype=np.float32)
    bigfile.write_text(good_ids.replace("va1_0", "gone"))
    with pytest.raises(BundleError, match="'va1'"):
        import_bundle(layout, resumed, 2.0, {"stage": "bundle"})
    with FeatureWriter(resumed / "video_features.h5", {}) as partial:  # what the stopped import kept
        assert partial.committed == 7
    with h5py.File(clip_file, "a") as clip:
        del clip["va1"]
        clip["va1"] = videos["va1"]
    bigfile.write_text(good_ids)
    import_bundle(layout, resumed, 2.0, {"stage": "bundle"})
    for name in ("video_features.h5", "query_features.h5"):
        assert _h5_contents(resumed / name) == _h5_contents(whole / name), name
    for name in ("queries.jsonl", "videos.jsonl"):
        assert (resumed / name).read_text() == (whole / name).read_text(), name


class _Alive:
    """Weak references to the arrays a function returned: which of them something still holds."""

    def __init__(self):
        self.refs = []

    def wrap(self, function):
        def recorded(*args, **kwargs):
            assert not self.held(), f"{function.__name__} called while an earlier batch is still held"
            result = function(*args, **kwargs)
            self.refs += [weakref.ref(array) for array in (result if isinstance(result, list) else [result])]
            return result
        return recorded

    def held(self) -> int:
        return sum(ref() is not None for ref in self.refs)


@pytest.mark.parametrize("video", ["clip", "i3d_resnet"])
def test_import_and_export_free_each_batch_before_reading_the_next(tmp_path, monkeypatch, video):
    """At most one batch is in memory: with a batch per entry, no array read for an earlier batch is
    still referenced when the next is read (import's video and caption reads, export's gathers)."""
    import pipeline.bundle as bundle
    from storage.features import RaggedGroup

    root = tmp_path / "mini"
    _author_bundle(root)
    for name, value in (("_IMPORT_BATCH_BYTES", 1), ("_EXPORT_BATCH_BYTES", 1)):
        monkeypatch.setattr(bundle, name, value)
    alive = _Alive()
    for owner, name in ((bundle.KeyedH5, "read_rows"), (bundle.BigFileRows, "read"), (RaggedGroup, "gather")):
        monkeypatch.setattr(owner, name, alive.wrap(getattr(owner, name)))
    imported = tmp_path / "imported"
    imported.mkdir()
    import_bundle(BundleLayout(root, "mini", video, "roberta"), imported, 1.0, {})
    bundle.export_bundle(imported / "video_features.h5", imported / "query_features.h5",
                         imported / "queries.jsonl", BundleLayout(tmp_path / "exported" / "mini", "mini"))
    assert len(alive.refs) > 3 * 11 and not alive.held()  # 11 videos and 22 captions, read one by one


def test_bigfile_text_files_are_the_repr_and_join_of_their_rows(tmp_path):
    """id.txt and video2frames.txt are written a video at a time; the text is what one repr and one
    join of the whole mapping give, a video without rows and quotes in ids included."""
    from pipeline.bundle import bigfile_writer

    rows = {"a": 3, "it's": 2, "empty": 0, 'say "b"': 1}
    with bigfile_writer(tmp_path) as writer:
        for video_id, count in rows.items():
            writer.write(video_id, np.zeros((count, 4), np.float32))
    mapping = {video_id: [f"{video_id}_{index}" for index in range(count)] for video_id, count in rows.items()}
    assert (tmp_path / "video2frames.txt").read_text() == repr(mapping) + "\n"
    assert (tmp_path / "id.txt").read_text() == " ".join(row for ids in mapping.values() for row in ids) + "\n"
    assert (tmp_path / "shape.txt").read_text() == "6 4\n"


def test_keyed_reads_evict_each_dataset_from_the_metadata_cache(tmp_path):
    """Each dataset is opened once, so its header must not stay cached (100k of them took ~120 MB); a
    file already open in the process, which HDF5 will not reopen with eviction, is still read."""
    from pipeline.bundle import KeyedH5

    path = tmp_path / "many.h5"
    with h5py.File(path, "w") as file:
        for index in range(2000):
            file[f"caption{index}"] = np.full(3, index, np.float32)
    with KeyedH5(path) as keyed:
        for key in sorted(keyed.keys):
            keyed.locate(key)
        assert keyed._file.id.get_mdc_size()[3] < 500  # cached entries: the group's nodes, not 2000 headers
    with h5py.File(path, "r"), KeyedH5(path) as keyed:
        assert keyed.read("caption7").tolist() == [7, 7, 7]
