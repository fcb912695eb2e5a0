import json
import pickle

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from amdnet import FeatureFiles
from amdnet.data import (VideoCaptionDataset, VideoInputs, bin_clips, clip_statistics, collate_videos_with_captions,
                         read_queries)
from amdnet.synthetic import SyntheticCorpusSpec, write_synthetic_corpus
from storage import SUBTITLE_GROUPS, FeatureFile, FeatureFileError, FeatureWriter

CLIPS = VideoInputs(("clips",), map_size=32)  # AMDNet's inputs


def binned_by_hand(features: np.ndarray, map_size: int) -> np.ndarray:
    n_frames = features.shape[0]
    bins = []
    for k in range(map_size):
        start = min(int(np.round(k * n_frames / map_size)), n_frames - 1)
        end = min(int(np.round((k + 1) * n_frames / map_size)), n_frames - 1)
        bins.append(features[start:end].mean(axis=0) if start < end else features[start])
    return np.stack(bins)


@pytest.mark.parametrize("n_frames", [1, 5, 20, 31, 32, 33, 45, 77, 100])
def test_bin_clips_matches_hand_computation(n_frames):
    features = np.random.default_rng(n_frames).standard_normal((n_frames, 3)).astype(np.float32)
    np.testing.assert_allclose(bin_clips(features, 32), binned_by_hand(features, 32), rtol=1e-5, atol=1e-6)


def test_bin_clips_concrete_cases():
    frames = np.arange(64, dtype=np.float32)[:, None]  # frame i has value i
    binned = bin_clips(frames, 32)[:, 0]
    assert binned[0] == 0.5  # frames 0, 1
    assert binned[31] == 62.0  # end edge 64 clamped to 63: only frame 62
    identity = np.arange(32, dtype=np.float32)[:, None]
    np.testing.assert_array_equal(bin_clips(identity, 32), identity)  # T == 32: bin k is frame k
    # T < 32, numpy rounds half to even: edges 0, 0(0.5), 1, 2(1.5), 2, 2(2.5), 3, 4(3.5), 4 ...
    sixteen = np.arange(16, dtype=np.float32)[:, None]
    np.testing.assert_array_equal(bin_clips(sixteen, 32)[:8, 0], [0, 0, 1, 2, 2, 2, 3, 4])


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    spec = SyntheticCorpusSpec({"train": 5, "val": 3}, captions_per_video=2, video_dim=6, query_dim=4,
                               frame_range=(10, 40))
    return write_synthetic_corpus(tmp_path_factory.mktemp("corpus"), spec)


def write_subtitles(path, video_file):
    videos = FeatureFile(video_file).group()
    with FeatureWriter(path, {}, groups=SUBTITLE_GROUPS) as subtitles:
        for video_id, n_frames in zip(videos.ids, videos.lengths):
            subtitles.write(video_id, np.ones((n_frames, 2), dtype=np.float32), group="features")
            subtitles.write(video_id, (np.arange(n_frames) % 2).astype(np.uint8), group="mask")
        subtitles.finish()


def test_dataset_groups_captions_by_video_and_reads_in_every_process(corpus):
    files, queries_path = corpus
    dataset = VideoCaptionDataset(files, queries_path, "train", CLIPS)
    assert len(dataset) == 5 and dataset.video_dim == 6 and dataset.query_dim == 4
    item = dataset[2]
    assert item["video_id"] == "train_video000002"
    assert item["cap_ids"] == ["train_video000002#enc#0", "train_video000002#enc#1"]
    assert item["clips"].shape == (32, 6)
    videos, queries = FeatureFile(files.video).group(), FeatureFile(files.query).group("pooled")
    np.testing.assert_allclose(item["clips"].numpy(), bin_clips(videos.read("train_video000002")))
    np.testing.assert_array_equal(item["queries"][1].numpy(), queries.read("train_video000002#enc#1"))
    # Worker processes (forked, or given a pickled copy) open the files themselves and read the same.
    workers = DataLoader(dataset, batch_size=None, num_workers=2)
    for index, (direct, in_worker) in enumerate(zip([dataset[i] for i in range(len(dataset))], workers)):
        assert torch.equal(direct["clips"], in_worker["clips"]), index
    torch.testing.assert_close(pickle.loads(pickle.dumps(dataset))[2]["clips"], item["clips"], rtol=0, atol=0)


def test_collate_pads_tokens_and_maps_captions_to_videos(corpus):
    files, queries_path = corpus
    dataset = VideoCaptionDataset(files, queries_path, "val", CLIPS, query_input="tokens")
    batch = next(iter(DataLoader(dataset, batch_size=3, collate_fn=collate_videos_with_captions)))
    assert batch["clips"].shape == (3, 32, 6)
    n_queries, max_tokens, dim = batch["queries"].shape
    assert (n_queries, dim) == (6, 4)
    assert batch["caption_to_video"].tolist() == [0, 0, 1, 1, 2, 2]
    lengths = batch["token_mask"].sum(dim=1)
    assert lengths.max() == max_tokens
    queries = FeatureFile(files.query).group("tokens")
    for row, cap_id in enumerate(batch["cap_ids"]):
        tokens = queries.read(cap_id)
        assert lengths[row] == tokens.shape[0]
        np.testing.assert_array_equal(batch["queries"][row, :len(tokens)].numpy(), tokens)
        assert torch.all(batch["queries"][row, len(tokens):] == 0)


def test_subtitles_are_concatenated_and_binned_like_the_video(corpus, tmp_path):
    files, queries_path = corpus
    subtitle_path = tmp_path / "subtitles.h5"
    write_subtitles(subtitle_path, files.video)
    with_subtitles = FeatureFiles(files.video, files.query, subtitle_path)
    dataset = VideoCaptionDataset(with_subtitles, queries_path, "train", CLIPS, use_subtitles=True)
    item = dataset[0]
    assert dataset.video_dim == 8 and item["clips"].shape == (32, 8)
    assert torch.all(item["clips"][:, 6:] == 1)
    assert ((item["subtitle_mask"] >= 0) & (item["subtitle_mask"] <= 1)).all()
    assert 0 < item["subtitle_mask"].mean() < 1


def test_missing_caption_feature_names_the_caption_and_file(corpus, tmp_path):
    files, queries_path = corpus
    broken = tmp_path / "queries.jsonl"
    extra = {"cap_id": "train_video000000#enc#9", "video_id": "train_video000000", "text": "x",
             "ts": None, "split": "train"}
    broken.write_text(queries_path.read_text() + json.dumps(extra) + "\n")
    with pytest.raises(FeatureFileError, match=r"queries.h5: caption 'train_video000000#enc#9' missing from group 'pooled'"):
        VideoCaptionDataset(files, broken, "train", CLIPS)


def test_videos_without_features_are_skipped(corpus, tmp_path):
    files, queries_path = corpus
    manifest = tmp_path / "queries.jsonl"
    ghost = {"cap_id": "ghost#enc#0", "video_id": "ghost", "text": "x", "ts": None, "split": "train"}
    manifest.write_text(queries_path.read_text() + json.dumps(ghost) + "\n")
    dataset = VideoCaptionDataset(files, manifest, "train", CLIPS)
    assert "ghost" not in dataset.video_ids and len(dataset) == 5


def test_bad_manifest_line_is_reported_with_its_line_number(tmp_path):
    manifest = tmp_path / "queries.jsonl"
    manifest.write_text('{"cap_id": "a", "video_id": "v", "text": "t", "split": "train"}\n{broken\n')
    with pytest.raises(ValueError, match=r"queries.jsonl:2"):
        read_queries(manifest, "train")


def test_clip_statistics_match_a_direct_computation(corpus):
    files, queries_path = corpus
    dataset = VideoCaptionDataset(files, queries_path, "train", CLIPS)
    mean, std = clip_statistics(dataset)
    clips = torch.cat([dataset[index]["clips"] for index in range(len(dataset))])  # (n*N, Dv)
    torch.testing.assert_close(mean, clips.mean(dim=0), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(std, clips.std(dim=0, unbiased=False), atol=1e-5, rtol=1e-4)


def test_frames_are_the_rows_mean_sampled_to_max_frames_and_padded_with_a_mask(corpus):
    """MS-SL's and GMMFormer's frame view: rows as they are up to max_frames, mean-binned above."""
    files, queries_path = corpus
    dataset = VideoCaptionDataset(files, queries_path, "train", VideoInputs(("clips", "frames"), 4, max_frames=24))
    videos = FeatureFile(files.video).group()
    items = [dataset[index] for index in range(len(dataset))]
    lengths = [videos.read(video_id).shape[0] for video_id in dataset.video_ids]
    assert min(lengths) < 24 < max(lengths), "the corpus must have videos on both sides of max_frames"
    for item, length in zip(items, lengths):
        rows = videos.read(item["video_id"])
        expected = rows if length <= 24 else bin_clips(rows, 24)
        np.testing.assert_array_equal(item["frames"].numpy(), expected)
        np.testing.assert_array_equal(item["clips"].numpy(), bin_clips(rows, 4))
    batch = collate_videos_with_captions(items)
    assert batch["frames"].shape == (len(items), 24, 6)
    assert batch["frame_mask"].sum(dim=1).tolist() == [min(length, 24) for length in lengths]
    assert torch.all(batch["frames"][~batch["frame_mask"]] == 0)
