"""The bodies of the feature stages: visual frames, queries and subtitles into HDF5 feature files."""

from __future__ import annotations

import ctypes
import functools
import logging
import multiprocessing
import os
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from tqdm import tqdm

from extractors import create_extractor
from extractors.decode import VideoDecodeError, iter_decoded_frames, sample_times
from extractors.subtitles import pool_subtitles
from extractors.text_policy import is_blank, over_limit, truncation_note
from pipeline.backbones import items_per_batch, text_encoder, visual_extractor_options
from pipeline.video_cache import VideoCache, write_feature_entry
from storage import QUERY_GROUPS, SUBTITLE_GROUPS, FeatureWriter

log = logging.getLogger("pipeline")

_TEXT_CHUNK = 256  # texts per encoder call: bounds memory and keeps the progress bar moving
# Sampled frames a decoding worker sends at once (~10 MB at 224 x 224): bounds the memory of long videos.
_MAX_FRAMES_PER_PIECE = 64
# A video whose samples show fewer distinct frames than this share of them is sampled above its frame
# rate (25 fps from 3 fps frames: 12%); a little under 1 leaves 24 fps sampled at 25 fps unremarked.
_DISTINCT_FRAMES_WARNING = 0.8
_LISTED_VIDEOS = 3  # videos named in a warning; the rest are counted


@dataclass
class _Piece:
    """Consecutive sampled frames of one video, as decoded by a worker; `last` closes the video.
    A failed video sends one piece with `error` set (and possibly pieces before it)."""

    video: dict
    frames: np.ndarray | None = None  # uint8 (n, S, S, 3)
    timestamps: np.ndarray | None = None  # float64 (n,)
    last: bool = False
    error: str | None = None
    source_frames: int | None = None  # on the last piece: distinct source frames among the video's samples
    decoder: str | None = None  # what decoded the frames: "decord", "pyav" (where decord could not) or "frames"


class _DecodedVideos(torch.utils.data.IterableDataset):
    """Decodes videos in DataLoader worker processes, `frames_per_piece` sampled frames at a time, so
    decoding overlaps the model and memory stays bounded however long a video is. A worker takes the
    next video nobody has taken whenever it finishes one, so one that draws long or large videos does
    not hold the others up; each video's pieces arrive in order. For clip backbones (`windows` set)
    the pieces carry windows of frames instead of frames. Iterate it once."""

    def __init__(self, videos: list[dict], fps: float, size: int, frames_fps: float | None,
                 frames_per_piece: int, windows: "_WindowShape | None" = None):
        self.videos, self.fps, self.size = videos, fps, size
        self.frames_fps, self.frames_per_piece, self.windows = frames_fps, frames_per_piece, windows
        self._taken = multiprocessing.Value("l", 0)  # videos taken so far, shared with the workers

    def __iter__(self) -> Iterator[_Piece]:
        for video in self._take_videos():
            pieces = self._pieces(video)
            yield from pieces if self.windows is None else _windowed(pieces, self.windows)

    def _take_videos(self) -> Iterator[dict]:
        if torch.utils.data.get_worker_info() is None:  # decoding in the main process
            yield from self.videos
            return
        while True:
            with self._taken.get_lock():
                index, self._taken.value = self._taken.value, self._taken.value + 1
            if index >= len(self.videos):
                return
            yield self.videos[index]

    def _pieces(self, video: dict) -> Iterator[_Piece]:
        try:
            times = sample_times(video["duration"], self.fps)
            pieces = iter_decoded_frames(video["path"], times, short_side=self.size,
                                         chunk=self.frames_per_piece, frames_fps=self.frames_fps)
            last_index = (len(times) - 1) // self.frames_per_piece
            distinct, previous = 0, None  # source frames used so far; the start time of the last one
            for index, piece in enumerate(pieces):
                starts = piece.timestamps
                distinct += int(np.count_nonzero(np.diff(starts))) + int(previous is None or starts[0] != previous)
                previous = starts[-1]
                last = index == last_index
                yield _Piece(video, piece.frames, piece.timestamps, last=last, source_frames=distinct if last else None,
                             decoder=piece.decoder)
        except VideoDecodeError as err:
            yield _Piece(video, error=str(err))


@dataclass(frozen=True)
class _WindowShape:
    length: int  # frames per window
    stride: int  # frames between window starts


def _windowed(pieces: Iterator[_Piece], shape: _WindowShape) -> Iterator[_Piece]:
    """Frame pieces of one video -> pieces of windows (n, length, S, S, 3), cut as frames arrive.

    A window's time is the mean of its frames' times. The frames after the last full window (or a
    video shorter than one window) make one more window, padded with the video's last frame.
    """
    frames, times = None, None  # frames not yet behind a window start, with their times
    for piece in pieces:
        if piece.error is not None:
            yield piece
            return
        frames = piece.frames if frames is None else np.concatenate([frames, piece.frames])
        times = piece.timestamps if times is None else np.concatenate([times, piece.timestamps])
        n_windows = max(0, (len(frames) - shape.length) // shape.stride + 1)
        if piece.last and (n_windows == 0 or (n_windows - 1) * shape.stride + shape.length < len(frames)):
            padding = n_windows * shape.stride + shape.length - len(frames)
            frames = np.concatenate([frames, np.repeat(frames[-1:], padding, axis=0)])
            times = np.concatenate([times, np.repeat(times[-1:], padding)])
            n_windows += 1
        starts = np.arange(n_windows) * shape.stride
        index = starts[:, None] + np.arange(shape.length)  # (n, length)
        if n_windows or piece.last:
            yield _Piece(piece.video, frames[index], times[index].mean(axis=1), last=piece.last,
                         source_frames=piece.source_frames, decoder=piece.decoder)
        frames, times = frames[n_windows * shape.stride:], times[n_windows * shape.stride:]


class _VideoBatcher:
    """Encodes frames in batches of exactly batch_size rows, filled in arrival order across videos;
    the rows left at the end of the input (``flush``) make one more batch, padded with zero rows.

    A row's features depend on that row alone, never on the other rows of its batch, as long as the
    batch has the same shape: measured on CPU (1 and 2 threads) for the tests' tiny CLIP and a
    ViT-B/32, each video's rows from a padded batch spanning videos are bit-identical to the video
    encoded alone in padded batches (tests/test_extraction_loop.py checks it), whereas a batch of
    another size rounds differently (up to 3e-6 for ViT-B/32). So a video's features do not depend on
    the videos decoded beside it (its cached entry is the same whatever the shard, order or worker
    count), and short videos still fill the model's batches. Hands back each video's features once
    all its frames are encoded."""

    def __init__(self, extractor, batch_size: int, pin_memory: bool):
        self.extractor, self.batch_size, self.pin_memory = extractor, batch_size, pin_memory
        self._pending: list[tuple[str, np.ndarray]] = []  # (video id, uint8 rows) not yet encoded, in arrival order
        self._pending_rows = 0
        self._features: dict[str, list[np.ndarray]] = {}  # video id -> its encoded (n, dim) rows so far
        self._timestamps: dict[str, list[np.ndarray]] = {}
        self._closed: dict[str, dict] = {}  # video id -> record, for the videos whose last piece arrived
        self._ready: list[tuple[dict, np.ndarray, np.ndarray]] = []

    def add(self, piece: _Piece) -> None:
        video_id = piece.video["video_id"]
        self._features.setdefault(video_id, [])
        self._timestamps.setdefault(video_id, []).append(piece.timestamps)
        if len(piece.frames):
            self._pending.append((video_id, piece.frames))
            self._pending_rows += len(piece.frames)
        if piece.last:
            self._closed[video_id] = piece.video
        while self._pending_rows >= self.batch_size:
            self._encode_batch()
        self._collect_finished()

    def flush(self) -> None:
        """No more pieces: encodes the rows still waiting (one padded batch)."""
        if self._pending_rows:
            self._encode_batch()
        self._collect_finished()

    def drop(self, video_id: str) -> None:
        """Forget a video that failed part-way: its frames are neither encoded nor written."""
        kept = [(owner, rows) for owner, rows in self._pending if owner != video_id]
        self._pending, self._pending_rows = kept, sum(len(rows) for _, rows in kept)
        for per_video in (self._features, self._timestamps, self._closed):
            per_video.pop(video_id, None)

    def finished(self) -> list[tuple[dict, np.ndarray, np.ndarray]]:
        """(video, features (T, dim), timestamps (T,)) of the videos completed since the last call."""
        ready, self._ready = self._ready, []
        return ready

    def _encode_batch(self) -> None:
        """Encodes the first batch_size waiting rows (fewer: padded to batch_size), splitting a piece
        where the batch ends, and hands each video its rows."""
        taken, owners, n_taken = [], [], 0
        while self._pending and n_taken < self.batch_size:
            video_id, rows = self._pending[0]
            part = rows[: self.batch_size - n_taken]
            if len(part) == len(rows):
                self._pending.pop(0)
            else:
                self._pending[0] = (video_id, rows[len(part):])
            taken.append(part)
            owners.append((video_id, len(part)))
            n_taken += len(part)
        self._pending_rows -= n_taken
        if n_taken < self.batch_size:
            taken.append(np.zeros((self.batch_size - n_taken, *taken[0].shape[1:]), dtype=taken[0].dtype))
        batch = np.concatenate(taken) if not self.pin_memory else _pinned_concatenate(taken)
        features = self.extractor.encode(batch)  # (batch_size, dim)
        start = 0
        for video_id, count in owners:
            self._features[video_id].append(features[start:start + count])
            start += count

    def _collect_finished(self) -> None:
        waiting = {video_id for video_id, _ in self._pending}
        for video_id in [video_id for video_id in self._closed if video_id not in waiting]:
            self._ready.append((self._closed.pop(video_id), np.concatenate(self._features.pop(video_id)),
                                np.concatenate(self._timestamps.pop(video_id))))


def _pinned_concatenate(frames: list[np.ndarray]) -> np.ndarray:
    """np.concatenate into page-locked memory, which the extractor's copy to the GPU reads by DMA."""
    total = sum(len(piece) for piece in frames)
    pinned = torch.empty((total, *frames[0].shape[1:]), dtype=torch.uint8, pin_memory=True).numpy()
    return np.concatenate(frames, out=pinned)


def _single_item(piece: _Piece) -> _Piece:
    return piece


_PR_SET_PDEATHSIG = 1  # linux/prctl.h


def exit_with_parent(parent_pid: int, worker_id: int = 0) -> None:
    """Worker start-up: this process exits when ``parent_pid`` does, however it dies (kill -9, the OOM
    killer), instead of decoding on as an orphan. Linux kills it at once (prctl PR_SET_PDEATHSIG);
    elsewhere a thread checks every second whether the parent is still there."""
    try:
        needs_watcher = ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0
    except (OSError, AttributeError):  # no prctl: not Linux
        needs_watcher = True
    if os.getppid() != parent_pid:  # the parent died before the prctl took effect
        os._exit(1)
    if needs_watcher:
        threading.Thread(target=_exit_when_orphaned, args=(parent_pid,), daemon=True).start()


def _exit_when_orphaned(parent_pid: int) -> None:
    while os.getppid() == parent_pid:
        time.sleep(1.0)
    os._exit(1)


def decode_videos(videos: list[dict], visual: dict, frames_fps: float | None = None,
                  windows: _WindowShape | None = None) -> Iterator[_Piece]:
    """The decoded pieces of `videos`, sampled as `visual` says, from `visual.num_workers` worker
    processes (none: in this process). Pieces of different videos interleave as workers deliver them."""
    decoded = _DecodedVideos(videos, visual["fps"], visual["size"], frames_fps,
                             frames_per_piece=min(visual["batch_size"], _MAX_FRAMES_PER_PIECE), windows=windows)
    # in_order=False: a worker's pieces are taken as soon as they are ready, not in turn with the
    # others', which would pace every worker to the slowest one.
    return iter(torch.utils.data.DataLoader(decoded, batch_size=None, collate_fn=_single_item,
                                            num_workers=visual["num_workers"], in_order=False,
                                            worker_init_fn=functools.partial(exit_with_parent, os.getpid())))


def _create_extractor(visual: dict):
    """The part's backbone."""
    name, options = visual_extractor_options(visual)
    extractor = create_extractor(name, **options)
    if extractor.kind == "text":
        raise ValueError(f"visual backbone {visual['backbone']!r} is a text encoder")
    return extractor


def extract_visual_features(videos: list[dict], visual: dict, cache: VideoCache, stage: str,
                            frames_fps: float | None = None) -> dict:
    """Decode every video of ``videos`` not yet in ``cache`` at ``visual.fps`` and encode its frames
    into its cache entry; failures are recorded, not fatal.

    Videos are decoded in ``visual.num_workers`` worker processes and reach the model in batches of
    ``visual.batch_size`` frames spanning videos, the last one padded (``_VideoBatcher``). Each video's
    entry is written as soon as its last frame is encoded, so a crash loses only the videos in flight
    and a rerun skips finished ones.
    ``frames_fps`` is the frame rate of inputs that are folders of frames.
    """
    todo = [video for video in videos if not cache.path(video).is_file()]
    _log_resume(stage, len(videos) - len(todo), len(videos), "videos")
    failures: dict[str, str] = {}
    decoded: list[str] = []
    if todo:
        extractor = _create_extractor(visual)
        windows = _WindowShape(visual["clip_len"], visual["clip_stride"] or visual["clip_len"]) \
            if extractor.kind == "clips" else None
        batcher = _VideoBatcher(extractor, items_per_batch(visual), pin_memory=extractor.device.type == "cuda")
        source_frames: dict[str, int] = {}
        decoders: dict[str, str] = {}  # video id -> "pyav": videos (some of) whose frames decord could not decode
        with tqdm(total=len(todo), desc="visual features", unit="video") as progress:
            for piece in decode_videos(todo, visual, frames_fps, windows):
                if piece.error is None:
                    batcher.add(piece)
                    if piece.decoder == "pyav":
                        decoders[piece.video["video_id"]] = piece.decoder
                    if piece.last:
                        source_frames[piece.video["video_id"]] = piece.source_frames
                else:
                    _record_failure(failures, piece.video["video_id"], piece.error)
                    batcher.drop(piece.video["video_id"])
                    progress.update()
                decoded += _write_finished(batcher, cache, decoders, progress)
            batcher.flush()
            decoded += _write_finished(batcher, cache, decoders, progress)
        _warn_repeated_frames(stage, todo, source_frames, visual["fps"])
    return {"decoded": decoded, "failures": failures,
            "entries": [cache.path(video) for video in videos if video["video_id"] not in failures]}


def _log_resume(stage: str, done: int, total: int, unit: str) -> None:
    if done:
        log.info("resuming %s: %d of %d %s already done", stage, done, total, unit)


def _warn_repeated_frames(stage: str, videos: list[dict], source_frames: dict[str, int], fps: float) -> None:
    """Sampling a video above its own frame rate repeats its frames (25 fps clips from TVQA's 3 fps
    frame folders): allowed, but rarely meant, so it is said, naming the videos and their rates."""
    repeating = {}
    for video in videos:
        samples = len(sample_times(video["duration"], fps))
        used = source_frames.get(video["video_id"])
        if used is not None and used < _DISTINCT_FRAMES_WARNING * samples:
            repeating[video["video_id"]] = fps * used / samples
    if not repeating:
        return
    listed = ", ".join(f"{vid} (about {rate:.3g} fps)" for vid, rate in list(repeating.items())[:_LISTED_VIDEOS])
    more = f" and {len(repeating) - _LISTED_VIDEOS} more" if len(repeating) > _LISTED_VIDEOS else ""
    log.warning("%s samples %g fps, but %d of %d videos have fewer frames per second, so their frames are "
                "repeated: %s%s. Set this part's fps (visual.parts.<name>.fps) to their rate to use each frame "
                "once.", stage, fps, len(repeating), len(videos), listed, more)


def _write_finished(batcher: _VideoBatcher, cache: VideoCache, decoders: dict[str, str],
                    progress: tqdm) -> list[str]:
    """Writes the cache entries of the videos the batcher has finished; returns their ids."""
    written = []
    for video, features, timestamps in batcher.finished():
        write_feature_entry(cache, cache.path(video), features, timestamps=timestamps,
                            pyav=video["video_id"] in decoders)
        written.append(video["video_id"])
        progress.update()
    return written


def _record_failure(failures: dict[str, str], video_id: str, error: str) -> None:
    failures[video_id] = error
    log.warning("video %s failed: %s", video_id, error)


def encode_queries(queries: list[dict], text: dict, out_path: Path, attrs: dict) -> dict:
    """Token features (L, D) and a pooled vector (D,) per caption id."""
    captions = list({query["cap_id"]: query for query in queries}.values())  # one listed in two splits: once
    encoder = text_encoder(text)
    with FeatureWriter(out_path, {**attrs, "model": text["model"], "dim": encoder.dim, "layer": text["layer"]},
                       groups=QUERY_GROUPS) as writer:
        todo = [query for query in captions if not writer.done(query["cap_id"])]
        _log_resume(attrs["stage"], len(captions) - len(todo), len(captions), "queries")
        cut = []  # caption ids of the queries the encoder cuts to its limit
        for start in tqdm(range(0, len(todo), _TEXT_CHUNK), desc="query features", unit="chunk"):
            chunk = todo[start:start + _TEXT_CHUNK]
            cut += [chunk[index]["cap_id"] for index, _ in over_limit(encoder, [q["text"] for q in chunk])]
            encoded = encoder.encode([q["text"] for q in chunk])
            ids = [query["cap_id"] for query in chunk]
            writer.write_many(ids, np.concatenate([features.tokens for features in encoded]),
                              [len(features.tokens) for features in encoded], group="tokens")
            writer.write_many(ids, np.stack([features.pooled for features in encoded]), group="pooled")
        writer.finish()
    if cut:
        log.warning("%s", truncation_note("queries", len(cut), len(todo), cut, encoder.max_length))
    return {"inputs": {"queries": len(queries)}, "dim": encoder.dim, "truncated_queries": len(cut)}


def _write_subtitle_chunk(writer: FeatureWriter, video_ids: list[str], pooled: list[tuple]) -> None:
    """A chunk of videos' pooled subtitles in one write per group (no per-video writer cost)."""
    features, masks, timestamps = zip(*pooled)
    lengths = [len(mask) for mask in masks]
    writer.write_many(video_ids, np.concatenate(features), lengths, group="features",
                      row_columns={"timestamps": np.concatenate(timestamps)})
    writer.write_many(video_ids, np.concatenate(masks), lengths, group="mask")


def encode_subtitles(videos: list[dict], subtitles: list[dict], text: dict, visual: dict,
                     out_path: Path, attrs: dict) -> dict:
    """Subtitle token features max-pooled onto each video's visual feature grid, with a mask."""
    from pipeline.visual import feature_grid

    encoder = text_encoder(text)
    sentences_of = {entry["video_id"]: entry["sub"] for entry in subtitles}
    with FeatureWriter(out_path, {**attrs, "model": text["model"], "dim": encoder.dim, "layer": text["layer"]},
                       groups=SUBTITLE_GROUPS) as writer:
        todo = [video for video in videos if not writer.done(video["video_id"])]
        _log_resume(attrs["stage"], len(videos) - len(todo), len(videos), "videos")
        cut_lines = 0  # subtitle lines the encoder cuts to its limit
        for start in tqdm(range(0, len(todo), _TEXT_CHUNK), desc="subtitle features", unit="chunk"):
            pooled = []  # (features (T, D), mask (T,), timestamps (T,)) of each video of the chunk
            for video in todo[start:start + _TEXT_CHUNK]:
                sentences = [s for s in sentences_of.get(video["video_id"], []) if not is_blank(s["text"])]
                encoded = encoder.encode([s["text"] for s in sentences]) if sentences else []
                cut_lines += len(over_limit(encoder, [s["text"] for s in sentences]))
                timestamps, rate = feature_grid(video["duration"], visual)
                pooled.append((*pool_subtitles([(s["start"], s["end"], e.tokens) for s, e in zip(sentences, encoded)],
                                               timestamps, rate, encoder.dim), timestamps))
            _write_subtitle_chunk(writer, [video["video_id"] for video in todo[start:start + _TEXT_CHUNK]], pooled)
        writer.finish()
    with_subtitles = sum(1 for video in videos if sentences_of.get(video["video_id"]))
    if cut_lines:
        log.warning("%d subtitle lines have more than %d tokens (text.max_length) and are cut to it", cut_lines,
                    encoder.max_length)
    return {"inputs": {"videos": len(videos), "videos_with_subtitles": with_subtitles}, "dim": encoder.dim,
            "truncated_subtitle_lines": cut_lines}
