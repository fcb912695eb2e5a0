"""A visual part's features file, assembled from its videos' per-video cache entries.

Apart from the model (``pipeline.features``), so that assembling, which costs the bytes it copies,
does not import torch (seconds a process) to copy them.
"""

from __future__ import annotations

from pathlib import Path

from tqdm import tqdm

from pipeline.stage import StageFailed
from pipeline.video_cache import VideoCache, read_feature_entry
from storage import FeatureWriter


def assemble_visual_features(videos: list[dict], visual: dict, cache: VideoCache, failures: dict[str, str],
                             out_path: Path, attrs: dict) -> dict:
    """The stage's features file, one entry per video copied from the cache (failed videos left out)."""
    _check_failures(failures, len(videos), visual["max_failed_fraction"])
    done = [video for video in videos if video["video_id"] not in failures]
    for video in done:
        if not cache.path(video).is_file():
            raise StageFailed(f"video {video['video_id']}: its cache entry {cache.path(video)} is missing (removed "
                              f"after its shard ran?); delete {out_path.parent / 'shards'} and rerun")
    dim = read_feature_entry(cache.path(done[0]))[0].shape[1] if done else _part_dim(visual)
    decoders = {}
    backbone = ":".join(name for name in (visual["backbone"], visual["model"]) if name)
    with FeatureWriter(out_path, {**attrs, "backbone": backbone, "dim": dim, "fps": visual["fps"]}) as writer:
        for video in tqdm(done, desc="assemble visual features", unit="video"):
            features, entry_attrs = read_feature_entry(cache.path(video))
            if entry_attrs["pyav"]:  # decord could not read (some of) its frames
                decoders[video["video_id"]] = "pyav"
            if not writer.done(video["video_id"]):
                writer.write(video["video_id"], features, timestamps=entry_attrs["timestamps"],
                             duration=float(video["duration"]))
        writer.finish()
    return {"inputs": {"videos": len(videos)}, "failures": failures, "decoders": decoders, "dim": dim}


def _part_dim(visual: dict) -> int:
    """The feature size of a part none of whose videos has an entry: its backbone's."""
    from pipeline.features import _create_extractor

    return _create_extractor(visual).dim


def _check_failures(failures: dict[str, str], total: int, max_fraction: float) -> None:
    if total and len(failures) / total > max_fraction:
        listing = "\n".join(f"  {vid}: {reason}" for vid, reason in sorted(failures.items()))
        raise StageFailed(f"{len(failures)} of {total} videos failed (more than "
                          f"visual.max_failed_fraction={max_fraction}):\n{listing}")
