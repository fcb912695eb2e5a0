"""The search index: every video of a collection encoded once by its model, in one HDF5 file.

``index.h5`` (built as ``index.h5.partial``, renamed when complete) holds, for V videos:

    rows/<key>      (V, ...)           the model's `represent_videos` output, one dataset per key: what
                                       its `score` and `spans` read (models/registry.py). AMDNet's:
                                       clip_features (V, N, d) unit clip embeddings (float16 in an index
                                       searched approximately: half the disk and reads), proposals
                                       (V, K, d), centers and widths (V, K); MS-SL's, GMMFormer's and
                                       clip-zero-shot's: see docs/search.md
    clip_fractions  (V, N, 2) float32  models that read clips: each clip's [start, end] as fractions of
                                       the video (amdnet.moments), for the span rules that use clip spans
    clip_spans      (V, N, 2) float32  the same in seconds
    durations (V,) seconds; video_ids, paths, playable, video_keys (V,) strings; is_frames (V,) bool

Attributes: ``model_source`` (models.checkpoints.ModelSource as JSON: the checkpoint, or a training-free
model's name and options), the text settings a query must be encoded with, ``video_dim`` and
``query_dim`` (what the model is built for), ``video_inputs`` (what it reads), ``search_method``.

An AMDNet index of more than ``search.exact_max_videos`` videos (or ``search.method=approximate``)
also has ``approximate.faiss`` (and its ids), the first stage of approximate search
(search/approximate.py), written before ``index.h5`` is renamed. Other models are searched exactly. Every array is stored contiguous and uncompressed, so a
searcher memory-maps it and reads only the rows of its hits: the collection may exceed RAM.

An index grows by what changed. Each row carries its video's key (``video_keys``: the model source and
that video's feature-cache entries, see ``tasks.Index``); a new index of a collection that gained,
lost or replaced videos copies the rows of unchanged videos from the index it supersedes and encodes
only the others through the model, and updates that index's first stage (``update_approximate``)
instead of building a new one. Rows are in the collection's order, whatever was reused, so the
result is the index a full rebuild writes (same rows, same bytes up to the batch a video was encoded
in: scores agree to 1e-6).

Videos are addressed by their row; ids are data, never HDF5 names or file paths. ``playable`` is the
file a browser is given: the source itself, or a proxy made once per video (in the per-video cache,
like features) when the container is one browsers do not play.

Readers hold a shared lock on the index folder (``reading``) for as long as they use it; the stage that
publishes a newer index of the same collection deletes the folders it supersedes only when it can lock
them exclusively (``pipeline.superseded``).
"""
from __future__ import annotations

import json
import logging
import os
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import h5py
import numpy as np
import torch

from amdnet.config import resolve_device
from amdnet.data import VideoInputs, collate_video_inputs, video_inputs
from amdnet.moments import clip_spans
from models.checkpoints import ModelSource, read_checkpoint
from pipeline.superseded import ReaderHold, SupersededFolder, held_for_reading
from pipeline.video_cache import VideoCache
from search.approximate import (APPROXIMATE_FILE, ApproximateSettings, build_approximate, choose_method,
                                needs_retraining, update_approximate)
from storage import FeatureFile

log = logging.getLogger("search")

INDEX_FILE = "index.h5"
# Containers Chromium, Firefox and Safari play as they are; any other source gets an H.264 mp4 proxy.
BROWSER_CONTAINERS = (".mp4", ".m4v", ".webm")
PROXY_SETTINGS = {"stage": "browser-proxy", "version": "1", "fps": 25.0, "short_side": 360}
ROWS = "rows"  # the group of the model's per-video rows, one dataset per represent_videos key
CLIP_ROWS = f"{ROWS}/clip_features"  # AMDNet's clip embeddings: float16 when approximate, its first stage's input
_BATCH = 256  # videos per model call: bounds memory however large the collection
_COPY_ROWS = 4096  # rows copied from the superseded index at a time: about 100 MB of AMDNet's float16 clips


@dataclass(frozen=True)
class Features:
    """The collection's features as the index reads them (the one place it does: port a new layout here)."""

    present: set[str]  # ids of the videos with visual features
    backbone: str
    dim: int  # Dv [+ Ds]: the size of a video's input rows
    # (video id, what the model reads) -> (amdnet.data.video_inputs' clips and/or frames, feature rows T)
    inputs: Callable[[str, VideoInputs], tuple[dict[str, np.ndarray], int]]


@contextmanager
def read_features(video_features: Path, subtitle_features: Path | None) -> Iterator[Features]:
    with FeatureFile(video_features) as video_file, \
            (FeatureFile(subtitle_features) if subtitle_features is not None else nullcontext()) as subtitle_file:
        videos = video_file.group()
        frames = dict(zip(videos.ids, videos.lengths.tolist()))  # video id -> T

        def inputs(video_id: str, wanted: VideoInputs) -> tuple[dict[str, np.ndarray], int]:
            return video_inputs(video_file, subtitle_file, video_id, wanted), frames[video_id]

        dim = videos.dim + (subtitle_file.group("features").dim if subtitle_file is not None else 0)
        yield Features(set(frames), str(video_file.attrs.get("backbone", "unknown")), dim, inputs)


def query_dim(source: ModelSource, text: dict) -> int:
    """The query size the model is built for: its checkpoint's, or, for a training-free model, the
    size of the text encoder's vectors (the encoder is loaded to say it)."""
    if source.checkpoint is not None:
        return int(read_checkpoint(source.checkpoint)["query_dim"])
    from pipeline.backbones import text_encoder

    return int(text_encoder({**text, "device": "cpu"}).dim)


def build_index(source: ModelSource, videos: list[dict], video_features: Path, subtitle_features: Path | None,
                text: dict, out_dir: Path, attrs: dict, search: dict, proxies: VideoCache,
                previous: Path | None = None, device: str = "cpu") -> dict:
    """Encodes ``videos`` (videos.jsonl records, each with its ``index_key``) with the model of
    ``source`` into ``out_dir/index.h5``; rows of videos whose key the ``previous`` index folder holds
    are copied from it. ``search`` (the config section) decides between exact and approximate search
    (ValueError, one line, for approximate search of a model that has none).

    Videos without visual features (failed extraction) are left out and counted in the report.
    """
    torch_device = resolve_device(device)
    held = _hold(previous)
    previous = previous if held is not None else None
    with read_features(video_features, subtitle_features if source.use_subtitles else None) as features, \
            (held or nullcontext()):
        present = [video for video in videos if video["video_id"] in features.present]
        missing = [video["video_id"] for video in videos if video["video_id"] not in features.present]
        if not present:
            raise ValueError(f"{video_features}: none of the {len(videos)} videos to index has visual features")
        method = choose_method(search["method"], len(present), search["exact_max_videos"], source.name)
        dims = features.dim, query_dim(source, text)
        model = source.load(*dims, device=str(torch_device))
        inputs = VideoInputs.of(model)
        playable = [playable_source(video, proxies) for video in present]
        approximate = ApproximateSettings.from_config(search["approximate"])
        reused = _reusable_rows(previous, present, method, approximate)  # (V,) the previous index's row or -1
        final, partial = out_dir / INDEX_FILE, out_dir / f"{INDEX_FILE}.partial"
        with h5py.File(partial, "w") as index:
            index.attrs.update(attrs)
            index.attrs.update(model_source=source.to_json(), text=json.dumps(text), video_dim=dims[0],
                               query_dim=dims[1], video_inputs=json.dumps(inputs.__dict__),
                               query_input=source.query_input, use_subtitles=source.use_subtitles,
                               visual_backbone=features.backbone, search_method=method,
                               approximate=json.dumps(approximate.__dict__))
            _write_strings(index, present, playable)
            index["durations"] = np.array([video["duration"] for video in present], dtype=np.float64)  # (V,)
            index["is_frames"] = np.array([Path(video["path"]).is_dir() for video in present])
            rows = _RowWriter(index, partial, len(present), "float16" if method == "approximate" else "float32")
            if previous is not None:
                _copy_rows(previous / INDEX_FILE, reused, rows)
            encoded = np.flatnonzero(reused < 0)
            _encode_rows(model, torch_device, features, present, encoded, inputs, rows)
            rows.close()
        with h5py.File(partial, "r+") as index:  # seconds from the fractions, written or copied
            if "clip_fractions" in index:
                durations = index["durations"][()]
                index["clip_spans"] = (index["clip_fractions"][()] * durations[:, None, None]).astype(np.float32)
        report = {"inputs": {"videos": len(videos), "indexed": len(present)}, "missing_features": missing,
                  "encoded": int(len(encoded)), "reused": int(len(present) - len(encoded)),
                  "superseded_index": str(previous) if previous is not None else None,
                  "proxies": sum(1 for video, path in zip(present, playable) if str(path) != str(video["path"])),
                  "method": method}
        if method == "approximate":
            report["approximate"] = _first_stage(partial, out_dir, previous, reused, approximate)
            with h5py.File(partial, "r+") as index:
                index.attrs["first_stage"] = json.dumps(report["approximate"])
    os.replace(partial, final)
    return report


def _hold(previous: Path | None) -> ReaderHold | None:
    """The superseded index held for reading while its rows are copied; None if there is none (or
    another publisher deleted it meanwhile: then everything is encoded)."""
    if previous is None:
        return None
    try:
        return held_for_reading(previous, required=INDEX_FILE)
    except SupersededFolder as error:
        log.warning("%s; encoding every video", error)
        return None


def _write_strings(index: h5py.File, present: list[dict], playable: list) -> None:
    strings = h5py.string_dtype()
    index.create_dataset("video_ids", data=[video["video_id"] for video in present], dtype=strings)
    index.create_dataset("paths", data=[str(video["path"]) for video in present], dtype=strings)
    index.create_dataset("playable", data=[str(path) for path in playable], dtype=strings)
    index.create_dataset("video_keys", data=[video["index_key"] for video in present], dtype=strings)


def _reusable_rows(previous: Path | None, present: list[dict], method: str,
                   approximate: ApproximateSettings) -> np.ndarray:
    """(V,) int64: for each video, its row in the previous index when that row can be copied, else -1.
    Rows are not copied from a float16 index into a float32 one: they would differ from encoding. An
    old row is copied once (two files of one content, keyed by content, are two rows and two vectors)."""
    reused = np.full(len(present), -1, dtype=np.int64)
    if previous is None:
        return reused
    with h5py.File(previous / INDEX_FILE, "r") as old:
        if CLIP_ROWS in old and old[CLIP_ROWS].dtype == np.float16 and method == "exact":
            return reused
        row_of = {key.decode(): row for row, key in enumerate(old["video_keys"][()])}
    for row, video in enumerate(present):
        reused[row] = row_of.pop(video["index_key"], -1)
    return reused


def row_arrays(index: h5py.File) -> list[str]:
    """The names of an index's per-video arrays: the model's rows and, if it reads clips, their fractions."""
    return [f"{ROWS}/{key}" for key in index[ROWS]] + (["clip_fractions"] if "clip_fractions" in index else [])


class _RowWriter:
    """Writes rows of the per-video arrays of an index being built, through memory maps of the file:
    rows arrive in any order (copied ones, then encoded ones); the arrays are made at the first write,
    float32 (bool for masks), AMDNet's clip rows in ``clip_dtype``."""

    def __init__(self, index: h5py.File, path: Path, n_videos: int, clip_dtype: str):
        self.index, self.path, self.n_videos, self.clip_dtype = index, path, n_videos, clip_dtype
        self.arrays: dict[str, np.memmap] = {}

    def write(self, rows: np.ndarray, values: dict[str, np.ndarray]) -> None:
        if not self.arrays:
            for name, value in values.items():
                dtype = self.clip_dtype if name == CLIP_ROWS else value.dtype
                self.index.create_dataset(name, (self.n_videos, *value.shape[1:]), dtype=dtype,
                                          dcpl=_allocated_now())
            self.index.flush()
            self.arrays = {name: memory_map(self.path, self.index, name, mode="r+") for name in values}
        for name, value in values.items():
            self.arrays[name][rows] = value  # numpy casts float32 to float16 the same way for every row

    def close(self) -> None:
        for array in self.arrays.values():
            array.flush()
        self.arrays.clear()


def _allocated_now() -> h5py.h5p.PropDCID:
    """Contiguous storage allocated when the dataset is made (so it can be memory-mapped), never filled."""
    dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
    dcpl.set_alloc_time(h5py.h5d.ALLOC_TIME_EARLY)
    dcpl.set_fill_time(h5py.h5d.FILL_TIME_NEVER)
    return dcpl


def _copy_rows(previous: Path, reused: np.ndarray, rows: _RowWriter) -> None:
    """The rows of unchanged videos, from the previous index file: read in its row order, a block at a time."""
    new_rows = np.flatnonzero(reused >= 0)
    new_rows = new_rows[np.argsort(reused[new_rows], kind="stable")]  # by old row: sequential reads
    with h5py.File(previous, "r") as old:
        arrays = {name: memory_map(previous, old, name) for name in row_arrays(old)}
        for start in range(0, len(new_rows), _COPY_ROWS):
            block = new_rows[start:start + _COPY_ROWS]
            rows.write(block, {name: np.asarray(array[reused[block]]) for name, array in arrays.items()})


@torch.no_grad()
def _encode_rows(model, device: torch.device, features: Features, present: list[dict], encoded: np.ndarray,
                 inputs: VideoInputs, rows: _RowWriter) -> None:
    """The rows of the videos ``encoded``, _BATCH videos per `represent_videos` call, built from their
    features exactly as the data layer builds them for training and Evaluate."""
    for start in range(0, len(encoded), _BATCH):
        block = encoded[start:start + _BATCH]
        read = [features.inputs(present[row]["video_id"], inputs) for row in block]
        batch = collate_video_inputs([{kind: torch.from_numpy(array) for kind, array in built.items()}
                                      for built, _ in read])  # clips (B, N, D) and/or frames (B, F, D) + mask
        represented = model.represent_videos({name: value.to(device) for name, value in batch.items()})
        values = {f"{ROWS}/{key}": (value.float() if value.is_floating_point() else value).cpu().numpy()
                  for key, value in represented.items()}  # (B, ...) each
        if "clips" in inputs.kinds:
            values["clip_fractions"] = np.stack([clip_spans(frames, inputs.map_size).numpy()
                                                 for _, frames in read])  # (B, N, 2)
        rows.write(block, values)


def _first_stage(partial: Path, out_dir: Path, previous: Path | None, reused: np.ndarray,
                 settings: ApproximateSettings) -> dict:
    """The index's first stage: the superseded index's, updated, while the collection has not outgrown
    what its coarse quantiser was trained on (approximate.needs_retraining); else built anew."""
    old = _previous_first_stage(previous, settings)
    with h5py.File(partial, "r") as index:
        clips = memory_map(partial, index, CLIP_ROWS)  # (V, N, d)
        if old is not None and not needs_retraining(old, int(np.sum(reused < 0))):
            return update_approximate(previous / APPROXIMATE_FILE, old, reused, clips, out_dir / APPROXIMATE_FILE,
                                      settings)
        return {**build_approximate(clips, out_dir / APPROXIMATE_FILE, settings), "trained_in": out_dir.name}


def _previous_first_stage(previous: Path | None, settings: ApproximateSettings) -> dict | None:
    """The superseded index's first-stage report, when it has one built with ``settings``."""
    if previous is None:
        return None
    with h5py.File(previous / INDEX_FILE, "r") as old:
        if "first_stage" not in old.attrs or json.loads(old.attrs["approximate"]) != settings.__dict__:
            return None
        return json.loads(old.attrs["first_stage"])


def memory_map(path: Path, index: h5py.File, name: str, mode: str = "r") -> np.ndarray:
    """The dataset ``name`` of the open index file at ``path``, memory-mapped (read-only unless ``mode``
    says "r+"; no copy in RAM)."""
    dataset = index[name]
    offset = dataset.id.get_offset()
    if dataset.chunks is not None or dataset.compression is not None or offset is None:
        raise ValueError(f"{path}: {name} is not stored contiguous; rebuild the index")
    return np.memmap(path, mode=mode, dtype=dataset.dtype, offset=offset, shape=dataset.shape)


def reading(index_dir: Path):
    """Holds the index folder for a reader (a searcher, a server) until the returned lock is closed:
    a newer index never deletes a folder held so. Raises pipeline.superseded.SupersededFolder if it
    was deleted first."""
    return held_for_reading(Path(index_dir), required=INDEX_FILE)


def playable_source(video: dict, proxies: VideoCache) -> Path | str:
    """What a browser plays for this video: the file itself, its proxy (made once per video content and
    proxy settings, in the per-video cache), or '' (frame folders, sources ffmpeg cannot transcode): the
    page then shows frames instead of a player."""
    from extractors.transcode import TranscodeError, transcode_proxy

    path = Path(video["path"])
    if path.is_dir():
        return ""
    if path.suffix.lower() in BROWSER_CONTAINERS:
        return path
    proxy = proxies.path(video)  # named by the video's identity: a video id is never a file name
    if not proxy.is_file():
        log.info("making a browser-playable proxy of %s", path)
        try:
            with proxies.writing(proxy) as temporary:
                transcode_proxy(path, temporary, PROXY_SETTINGS["fps"], PROXY_SETTINGS["short_side"])
        except TranscodeError as error:
            log.warning("%s; it is searchable, shown as frames", error)
            return ""
    return proxy
