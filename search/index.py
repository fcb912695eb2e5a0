"""The search index: every video of a collection encoded once by a trained AMDNet, in one HDF5 file.

``index.h5`` (built as ``index.h5.partial``, renamed when complete) holds, for V videos of N clips:

    clip_embeddings (V, N, d) float32  L2-normalised clip embeddings (what a query's cosine is taken with);
                                       float16 in an index searched approximately (half the disk and reads)
    clip_fractions  (V, N, 2) float32  each clip's [start, end] as fractions of the video (amdnet.moments)
    clip_spans      (V, N, 2) float32  the same in seconds
    proposals       (V, K, d) float32  L2-normalised moment proposals; centers, widths (V, K) fractions
    durations (V,) seconds; video_ids, paths, playable (V,) strings; is_frames (V,) bool

An index of more than ``search.exact_max_videos`` videos (or ``search.method=approximate``) also has
``approximate.faiss``, the first stage of approximate search (search/approximate.py), written before
``index.h5`` is renamed. Every array is stored contiguous and uncompressed, so a searcher memory-maps it
and reads only the rows of its hits: the collection may exceed RAM.

Videos are addressed by their row; ids are data, never HDF5 names or file paths. ``playable`` is the
file a browser is given: the source itself, or a proxy made here once when the container is one
browsers do not play. Attributes record the checkpoint, the text settings a query must be encoded
with and the inputs the model reads.
"""
from __future__ import annotations

import json
import logging
import os
from contextlib import nullcontext
from pathlib import Path

import h5py
import numpy as np
import torch
import torch.nn.functional as F

from amdnet.config import resolve_device
from amdnet.data import video_clips
from amdnet.evaluate import load_model
from amdnet.moments import clip_spans
from search.approximate import APPROXIMATE_FILE, ApproximateSettings, build_approximate, choose_method
from storage import FeatureFile

log = logging.getLogger("search")

INDEX_FILE = "index.h5"
# Containers Chromium, Firefox and Safari play as they are; any other source gets an H.264 mp4 proxy.
BROWSER_CONTAINERS = (".mp4", ".m4v", ".webm")
_PROXY_FPS, _PROXY_SHORT_SIDE = 25.0, 360
_BATCH = 256  # videos per model call: bounds memory however large the collection


def build_index(checkpoint: Path, videos: list[dict], video_features: Path, subtitle_features: Path | None,
                text: dict, out_dir: Path, attrs: dict, search: dict, device: str = "cpu") -> dict:
    """Encodes ``videos`` (videos.jsonl records) with the checkpoint into ``out_dir/index.h5``; ``search``
    (the config section) decides between exact and approximate search and sizes the latter.

    Videos without visual features (failed extraction) are left out and counted in the report.
    """
    torch_device = resolve_device(device)
    state = torch.load(checkpoint, map_location=torch_device, weights_only=True)
    model, train_config = load_model(state, torch_device)
    model.eval()
    map_size = model.config.map_size
    with FeatureFile(video_features) as video_file:
        present = [video for video in videos if video["video_id"] in video_file.group()]
        backbone = str(video_file.attrs.get("backbone", "unknown"))
    missing = [video["video_id"] for video in videos if video not in present]
    if not present:
        raise ValueError(f"{video_features}: none of the {len(videos)} videos to index has visual features")
    playable = [_playable_source(video, out_dir / "proxies", row) for row, video in enumerate(present)]
    method = choose_method(search["method"], len(present), search["exact_max_videos"])
    approximate = ApproximateSettings.from_config(search["approximate"])
    final, partial = out_dir / INDEX_FILE, out_dir / f"{INDEX_FILE}.partial"
    with h5py.File(partial, "w") as index, FeatureFile(video_features) as video_file, \
            (FeatureFile(subtitle_features) if train_config.use_subtitles else nullcontext()) as subtitle_file:
        index.attrs.update(attrs)
        index.attrs.update(checkpoint=str(checkpoint), text=json.dumps(text), map_size=map_size,
                           query_input=train_config.query_input, use_subtitles=train_config.use_subtitles,
                           visual_backbone=backbone, search_method=method,
                           approximate=json.dumps(approximate.__dict__))
        arrays = None
        for start in range(0, len(present), _BATCH):
            batch = present[start:start + _BATCH]
            clips = torch.from_numpy(np.stack([video_clips(video_file, subtitle_file, video["video_id"], map_size)
                                               for video in batch])).to(torch_device)  # (B, N, Dv)
            with torch.no_grad():
                encoded = model.encode_videos(clips)
            values = {"clip_embeddings": F.normalize(encoded.clip_features, dim=-1),  # (B, N, d)
                      "proposals": F.normalize(encoded.proposals, dim=-1),  # (B, K, d)
                      "centers": encoded.centers, "widths": encoded.widths}  # (B, K)
            if arrays is None:
                clip_dtype = "float16" if method == "approximate" else "float32"
                arrays = {name: index.create_dataset(name, (len(present), *value.shape[1:]),
                                                     dtype=clip_dtype if name == "clip_embeddings" else "float32")
                          for name, value in values.items()}
            for name, value in values.items():
                arrays[name][start:start + len(batch)] = value.float().cpu().numpy()
        durations = np.array([video["duration"] for video in present], dtype=np.float64)  # (V,)
        rows = video_file.group().lengths[[video_file.group().position(video["video_id"]) for video in present]]
        fractions = np.stack([clip_spans(int(count), map_size).numpy() for count in rows])  # (V, N, 2)
        index["clip_fractions"] = fractions
        index["clip_spans"] = (fractions * durations[:, None, None]).astype(np.float32)
        index["durations"] = durations
        strings = h5py.string_dtype()
        index.create_dataset("video_ids", data=[video["video_id"] for video in present], dtype=strings)
        index.create_dataset("paths", data=[str(video["path"]) for video in present], dtype=strings)
        index.create_dataset("playable", data=[str(path) for path in playable], dtype=strings)
        index["is_frames"] = np.array([Path(video["path"]).is_dir() for video in present])
    report = {"inputs": {"videos": len(videos), "indexed": len(present)}, "missing_features": missing,
              "proxies": sum(1 for video, path in zip(present, playable) if str(path) != str(video["path"])),
              "method": method}
    if method == "approximate":
        with h5py.File(partial, "r") as index:
            report["approximate"] = build_approximate(index["clip_embeddings"], out_dir / APPROXIMATE_FILE, approximate)
    os.replace(partial, final)
    return report


def memory_map(path: Path, index: h5py.File, name: str) -> np.ndarray:
    """The dataset ``name`` of the open index file at ``path``, memory-mapped read-only (no copy in RAM)."""
    dataset = index[name]
    offset = dataset.id.get_offset()
    if dataset.chunks is not None or dataset.compression is not None or offset is None:
        raise ValueError(f"{path}: {name} is not stored contiguous; rebuild the index")
    return np.memmap(path, mode="r", dtype=dataset.dtype, offset=offset, shape=dataset.shape)


def _playable_source(video: dict, proxy_dir: Path, row: int) -> Path | str:
    """What a browser plays for this video: the file itself, a proxy made once, or '' (frame folders,
    sources ffmpeg cannot transcode): the page then shows frames instead of a player."""
    from extractors.transcode import TranscodeError, transcode_proxy

    path = Path(video["path"])
    if path.is_dir():
        return ""
    if path.suffix.lower() in BROWSER_CONTAINERS:
        return path
    proxy = proxy_dir / f"{row}.mp4"  # named by row: a video id is never a file name
    if not proxy.is_file():
        log.info("making a browser-playable proxy of %s", path)
        try:
            transcode_proxy(path, proxy, _PROXY_FPS, _PROXY_SHORT_SIDE)
        except TranscodeError as error:
            log.warning("%s; it is searchable, shown as frames", error)
            return ""
    return proxy
