"""Training/evaluation data: a model's video inputs (HDF5 feature rows binned to clips and/or sampled
frames, models/inputs.py), grouped as videos with all their captions.

Feature files are read through `storage` (the layout is in docs/data-formats.md): a video file's
root group holds (T, Dv) per video with `timestamps` and `duration`; a query file's groups `pooled`
(Dq,) and `tokens` (L, Dq) per caption; a subtitle file's groups `features` (T, Ds) and `mask` (T,)
per video. Each file's ids and offsets are read once; an item is a few slices.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from torch.nn.utils.rnn import pad_sequence
from torch.utils.data import Dataset

from amdnet.config import FeatureFiles
from storage import FeatureFile, FeatureFileError

log = logging.getLogger(__name__)

QUERY_FIELDS = ("cap_id", "video_id", "text", "split")


def read_queries(queries_path: Path, split: str) -> list[dict]:
    """Reads queries.jsonl and keeps the records of `split`; bad lines raise naming file and line."""
    queries_path = Path(queries_path)
    records = []
    with open(queries_path, encoding="utf-8") as lines:
        for line_number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise ValueError(f"{queries_path}:{line_number}: not valid JSON ({error})") from error
            missing = [field for field in QUERY_FIELDS if field not in record]
            if missing:
                raise ValueError(f"{queries_path}:{line_number}: missing keys {missing}")
            if record["split"] == split:
                records.append(record)
    return records


@lru_cache(maxsize=None)
def clip_bin_edges(num_frames: int, map_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Start/end frame of each of `map_size` bins: round(k*T/map_size), clamped to T-1.

    numpy's round (half to even) on numpy's linspace, as the reference does. With T < map_size some
    bins are empty (start == end); with any T the clamp leaves the last frame out of the last bin
    whenever that bin has other frames. Both are the reference's behaviour, kept on purpose.
    """
    if num_frames < 1:
        raise ValueError(f"cannot bin a video with {num_frames} frames")
    edges = np.round(np.linspace(0, num_frames, map_size + 1)).astype(np.int64)
    edges = np.minimum(edges, num_frames - 1)
    return edges[:-1], edges[1:]


def bin_clips(features: np.ndarray, map_size: int = 32) -> np.ndarray:
    """(T, D) frame features -> (map_size, D): each bin is the mean of its frames, or the frame at
    its start edge when it is empty."""
    starts, ends = clip_bin_edges(features.shape[0], map_size)
    # Prefix sums laid out (D, T + 1), each running sum a contiguous row: the same additions as along
    # axis 0 of (T, D), in about half the time.
    prefix_sums = np.zeros((features.shape[1], features.shape[0] + 1), dtype=np.float64)
    np.cumsum(features.T, axis=1, dtype=np.float64, out=prefix_sums[:, 1:])
    counts = (ends - starts)[:, None]  # (map_size, 1)
    means = (prefix_sums[:, ends] - prefix_sums[:, starts]).T / np.maximum(counts, 1)  # (map_size, D)
    return np.where(counts > 0, means, features[starts]).astype(np.float32)


@dataclass(frozen=True)
class VideoInputs:
    """What a model reads of each video (models/inputs.py describes the batch): "clips", its rows
    mean-binned to map_size clips, and/or "frames", the rows themselves mean-sampled down to at most
    max_frames."""

    kinds: tuple[str, ...]
    map_size: int | None = None
    max_frames: int | None = None

    @classmethod
    def of(cls, model) -> "VideoInputs":
        """The inputs of a registered model (its `video_inputs` and its options' map_size/max_frames)."""
        options = model.options
        return cls(tuple(model.video_inputs), options.get("map_size"), options.get("max_frames"))


def video_inputs(video_file: FeatureFile, subtitle_file: FeatureFile | None, video_id: str,
                 inputs: VideoInputs) -> dict[str, np.ndarray]:
    """One video's model inputs: "clips" (N, Dv [+ Ds]) and/or "frames" (F, Dv [+ Ds]), its visual
    features with its subtitle features beside them when the model reads subtitles (all zero for a
    video without any, as SubtitleFeatures writes them). Training, evaluation and the search index all
    build a video's inputs here."""
    rows = video_file.group().read(video_id)  # (T, Dv)
    if subtitle_file is not None:
        rows = np.concatenate([rows, subtitle_file.group("features").read(video_id)], axis=1)  # (T, Dv+Ds)
    built = {}
    if "clips" in inputs.kinds:
        built["clips"] = bin_clips(rows, inputs.map_size)  # (N, D)
    if "frames" in inputs.kinds:
        built["frames"] = sample_frames(rows, inputs.max_frames)  # (F, D), F <= max_frames
    return built


def sample_frames(features: np.ndarray, max_frames: int) -> np.ndarray:
    """(T, D) rows -> (min(T, max_frames), D): unchanged when T <= max_frames, else mean-binned onto
    max_frames bins exactly as clips are (the references' uniform sampling is that same binning)."""
    if features.shape[0] <= max_frames:
        return np.ascontiguousarray(features, dtype=np.float32)
    return bin_clips(features, max_frames)


def input_dims(files: FeatureFiles, query_input: str, use_subtitles: bool) -> tuple[int, int]:
    """(video_dim, query_dim): the size of a video's input rows (its visual features, plus its subtitle
    features when use_subtitles) and of the query group `query_input`. A model is built for these before
    the datasets that feed it, which need its VideoInputs."""
    with FeatureFile(files.video) as videos, FeatureFile(files.query) as queries:
        video_dim, query_dim = videos.group().dim, queries.group(query_input).dim
    if use_subtitles:
        if files.subtitle is None:
            raise ValueError("use_subtitles is set but no subtitle feature file was given")
        with FeatureFile(files.subtitle) as subtitles:
            video_dim += subtitles.group("features").dim
    return video_dim, query_dim


class VideoCaptionDataset(Dataset):
    """One item per video of a split: its model inputs (`inputs`: "clips" and/or "frames", as
    video_inputs builds them) and the features of all its captions.

    Videos of a split are those with captions in that split that have video features. The feature
    files' indexes are read here, once; their HDF5 handles are opened by each process on first use,
    so DataLoader workers never share one.
    """

    def __init__(self, files: FeatureFiles, queries_path: Path, split: str, inputs: VideoInputs,
                 query_input: str = "pooled", use_subtitles: bool = False):
        if use_subtitles and files.subtitle is None:
            raise ValueError("use_subtitles is set but no subtitle feature file was given")
        self.files = files
        self.split = split
        self.query_group = query_input
        self.use_subtitles = use_subtitles
        self.inputs = inputs
        self.video_file = FeatureFile(files.video)
        self.query_file = FeatureFile(files.query)
        self.subtitle_file = FeatureFile(files.subtitle) if use_subtitles else None

        queries = read_queries(queries_path, split)
        videos = self.video_file.group()
        self.video_ids = self.videos_with_features(queries, queries_path)
        rows = np.array([videos.position(video_id) for video_id in self.video_ids], np.int64)
        self.num_frames = videos.lengths[rows].tolist()
        if "duration" not in videos.entry_columns:
            raise FeatureFileError(f"{files.video}: no 'duration' column")
        self.durations = videos.column("duration")[rows].astype(float).tolist()
        self.video_dim = videos.dim
        wanted = set(self.video_ids)
        self.captions: list[list[str]] = [[] for _ in self.video_ids]  # cap ids per video, manifest order
        self.truth_spans: dict[str, list[float] | None] = {}  # each caption's "ts" [start, end] s, if any
        position = {video_id: index for index, video_id in enumerate(self.video_ids)}
        for record in queries:
            if record["video_id"] in wanted:
                self.captions[position[record["video_id"]]].append(record["cap_id"])
                self.truth_spans[record["cap_id"]] = record.get("ts")
        self.query_dim = self.check_query_file()
        if use_subtitles:
            self.video_dim += self.check_subtitle_file()
        self.video_file.close()  # opened again by whichever process reads items
        self.query_file.close()
        bin_counts = [inputs.map_size] * ("clips" in inputs.kinds) + [inputs.max_frames] * ("frames" in inputs.kinds)
        for num_frames in set(self.num_frames):  # fill the cache once, before any worker forks
            for bins in bin_counts:
                clip_bin_edges(num_frames, bins)

    def videos_with_features(self, queries: list[dict], queries_path) -> list[str]:
        videos = self.video_file.group()
        video_ids = list(dict.fromkeys(record["video_id"] for record in queries))
        present = [video_id for video_id in video_ids if video_id in videos]
        if len(present) < len(video_ids):
            missing = [video_id for video_id in video_ids if video_id not in videos]
            log.warning("split %r: %d of %d videos of %s have no features in %s and are skipped (e.g. %s)",
                        self.split, len(missing), len(video_ids), queries_path, self.files.video, missing[0])
        if not present:
            raise ValueError(f"split {self.split!r}: no video of {queries_path} has features in {self.files.video}")
        return present

    def check_query_file(self) -> int:
        group = self.query_file.group(self.query_group)
        missing = [cap_id for captions in self.captions for cap_id in captions if cap_id not in group]
        if missing:
            raise FeatureFileError(f"{self.files.query}: caption {missing[0]!r} missing from group "
                                   f"{self.query_group!r} ({len(missing)} captions missing)")
        return group.dim

    def check_subtitle_file(self) -> int:
        features, mask = self.subtitle_file.group("features"), self.subtitle_file.group("mask")
        for group in (features, mask):
            missing = [video_id for video_id in self.video_ids if video_id not in group]
            if missing:
                raise FeatureFileError(f"{self.files.subtitle}: video {missing[0]!r} missing from group "
                                       f"{group.name!r}")
        subtitle_frames = features.lengths[[features.position(video_id) for video_id in self.video_ids]]
        for video_id, samples, num_frames in zip(self.video_ids, subtitle_frames, self.num_frames):
            if samples != num_frames:
                raise ValueError(f"{self.files.subtitle}: video {video_id!r} has {samples} subtitle"
                                 f" samples but {num_frames} visual samples in {self.files.video}")
        self.subtitle_file.close()
        return features.dim

    def __len__(self) -> int:
        return len(self.video_ids)

    def __getitem__(self, index: int) -> dict:
        video_id = self.video_ids[index]
        item = {"video_index": index, "video_id": video_id, "cap_ids": self.captions[index]}
        for kind, rows in video_inputs(self.video_file, self.subtitle_file, video_id, self.inputs).items():
            item[kind] = torch.from_numpy(rows)  # "clips" (N, D) and/or "frames" (F, D)
        if self.subtitle_file is not None and "clips" in self.inputs.kinds:
            mask = self.subtitle_file.group("mask").read(video_id).astype(np.float32)[:, None]  # (T, 1)
            item["subtitle_mask"] = torch.from_numpy(bin_clips(mask, self.inputs.map_size)[:, 0])  # (N,) fraction
        queries = self.query_file.group(self.query_group).gather(self.captions[index])
        item["queries"] = [torch.from_numpy(query) for query in queries]
        return item


def collate_frames(videos: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """B tensors (F_b, D) -> frames (B, max F_b, D) zero-padded and frame_mask (B, max F_b) bool."""
    lengths = torch.tensor([video.shape[0] for video in videos])  # (B,)
    frames = pad_sequence(videos, batch_first=True)  # (B, F, D)
    frame_mask = torch.arange(frames.shape[1]) < lengths.unsqueeze(1)  # (B, F)
    return frames, frame_mask


def collate_video_inputs(items: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """B videos' inputs (video_inputs' dictionaries, as tensors) -> the batch's clips (B, N, D) and/or
    frames (B, F, D) with frame_mask (B, F)."""
    batch = {}
    if "clips" in items[0]:
        batch["clips"] = torch.stack([item["clips"] for item in items])
    if "frames" in items[0]:
        batch["frames"], batch["frame_mask"] = collate_frames([item["frames"] for item in items])
    return batch


def to_device(batch: dict, device: torch.device) -> dict:
    """A collated batch with its tensors on `device` (lists of ids and None stay as they are)."""
    return {key: value.to(device, non_blocking=True) if isinstance(value, torch.Tensor) else value
            for key, value in batch.items()}


def clip_statistics(dataset: VideoCaptionDataset) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-dimension mean and standard deviation (Dv,) of all binned clips of a dataset."""
    total = torch.zeros(dataset.video_dim, dtype=torch.float64)
    total_sq = torch.zeros(dataset.video_dim, dtype=torch.float64)
    for index in range(len(dataset)):
        clips = dataset[index]["clips"].double()  # (N, Dv)
        total += clips.sum(dim=0)
        total_sq += (clips ** 2).sum(dim=0)
    count = len(dataset) * dataset.inputs.map_size
    mean = total / count
    std = (total_sq / count - mean ** 2).clamp(min=0).sqrt()
    return mean.float(), std.float()


def collate_videos_with_captions(items: list[dict]) -> dict:
    """Batches B videos with ALL their captions, as the batch dictionary of models/inputs.py.

    Returns the items' video inputs (collate_video_inputs: clips (B, N, Dv) and/or frames (B, F, Dv)
    with frame_mask (B, F)); queries (Nq, Dq), or (Nq, L, Dq) zero-padded tokens with token_mask
    (Nq, L) bool; caption_to_video (Nq,) index of each caption's video in the batch; video_indices
    (B,) dataset indices; video_ids, cap_ids (lists); subtitle_mask (B, N) or None.
    """
    queries = [query for item in items for query in item["queries"]]
    caption_to_video = torch.tensor([b for b, item in enumerate(items) for _ in item["queries"]])
    if queries[0].dim() == 1:
        query_tensor, token_mask = torch.stack(queries), None  # (Nq, Dq)
    else:
        query_tensor = pad_sequence(queries, batch_first=True)  # (Nq, L, Dq)
        lengths = torch.tensor([query.shape[0] for query in queries])
        token_mask = torch.arange(query_tensor.shape[1]) < lengths.unsqueeze(1)  # (Nq, L)
    has_subtitles = "subtitle_mask" in items[0]
    return {
        **collate_video_inputs(items),
        "queries": query_tensor,
        "token_mask": token_mask,
        "caption_to_video": caption_to_video,
        "video_indices": torch.tensor([item["video_index"] for item in items]),
        "video_ids": [item["video_id"] for item in items],
        "cap_ids": [cap_id for item in items for cap_id in item["cap_ids"]],
        "subtitle_mask": torch.stack([item["subtitle_mask"] for item in items]) if has_subtitles else None,
    }
