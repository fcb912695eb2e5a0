"""The visual recipe: proxies, per-part settings, the feature grid, and parts combined on it.

A recipe has one or more named parts (``visual.parts``), each a backbone extracted by its own stage.
With ``visual.clip_seconds`` null the single part's per-frame features are used as they are (AMDNet's
reference inputs); with a clip length every part is pooled onto the same clip grid and the parts are
concatenated, each L2-normalised when there are several (the TVR recipe: ResNet-152 max-pooled + I3D
mean-pooled over 1.5 s); a single part keeps its backbone's scale, as the reference's inputs do.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from tqdm import tqdm

from amdnet.atomic import write_jsonl_atomic
from extractors.decode import sample_times
from extractors.pooling import clip_grid, concat_feature_parts, pool_frames_to_clips
from pipeline.stage import StageFailed
from pipeline.video_cache import VideoCache
from storage import FeatureFile, FeatureWriter, RaggedGroup

def feature_grid(duration: float, visual: dict) -> tuple[np.ndarray, float]:
    """Times (T,) of the recipe's features for a video, and their rate (features per second)."""
    if visual["clip_seconds"] is None:
        return sample_times(duration, visual["fps"]), visual["fps"]
    spans = clip_grid(duration, visual["clip_seconds"])  # (C, 2)
    return spans.mean(axis=1), 1.0 / visual["clip_seconds"]


def combine_parts(videos: list[dict], parts: dict[str, tuple[Path, str]], clip_seconds: float,
                  out_path: Path, attrs: dict) -> dict:
    """The parts pooled onto clips of ``clip_seconds`` and concatenated, in one features file;
    ``parts`` maps name -> (features file, pool mode)."""
    files = {name: FeatureFile(path) for name, (path, _) in parts.items()}
    groups = {name: f.group() for name, f in files.items()}
    try:
        complete = [v for v in videos if all(v["video_id"] in group for group in groups.values())]
        dims = {name: group.dim for name, group in groups.items() if len(group)}
        with FeatureWriter(out_path, {**attrs, "parts": list(parts), "dim": sum(dims.values()),
                                      "backbone": "+".join(f.attrs["backbone"] for f in files.values())}) as writer:
            for video in tqdm([v for v in complete if not writer.done(v["video_id"])], desc="combine visual parts",
                              unit="video"):
                features, timestamps = _combined(video, groups, parts, clip_seconds)
                writer.write(video["video_id"], features, timestamps=timestamps, duration=float(video["duration"]))
            writer.finish()
    finally:
        for f in files.values():
            f.close()
    missing = sorted({v["video_id"] for v in videos} - {v["video_id"] for v in complete})
    return {"inputs": {"videos": len(videos), "parts": dims}, "missing": missing}


def _combined(video: dict, groups: dict[str, RaggedGroup], parts: dict[str, tuple[Path, str]],
              clip_seconds: float) -> tuple[np.ndarray, np.ndarray]:
    video_id = video["video_id"]
    spans = clip_grid(video["duration"], clip_seconds)  # (C, 2)
    pooled = [pool_frames_to_clips(group.read(video_id), group.read(video_id, "timestamps"), spans, parts[name][1])
              for name, group in groups.items()]  # each (C, D_part)
    features = concat_feature_parts(pooled) if len(pooled) > 1 else pooled[0]
    return features, spans.mean(axis=1)


def transcode_videos(videos: list[dict], transcode: dict, cache: VideoCache) -> dict:
    """A proxy per video (``visual.transcode`` settings) in ``cache``, made once; failures are
    recorded, not fatal."""
    from extractors.transcode import transcode_proxy

    failures, decoded = {}, []
    for video in tqdm(videos, desc="transcode", unit="video"):
        proxy = cache.path(video)
        if proxy.is_file():
            continue
        try:
            with cache.writing(proxy) as temporary:
                transcode_proxy(video["path"], temporary, fps=transcode["fps"], short_side=transcode["short_side"])
            decoded.append(video["video_id"])
        except RuntimeError as err:
            failures[video["video_id"]] = str(err)
    return {"decoded": decoded, "failures": failures,
            "entries": [cache.path(video) for video in videos if video["video_id"] not in failures]}


def proxy_records(videos: list[dict], cache: VideoCache, failures: dict[str, str], out_dir: Path) -> dict:
    """``out_dir/videos.jsonl``: each video's record pointing at its proxy, whose identity is the
    source's with the transcode settings; a video that could not be transcoded keeps its original
    (the visual parts report it if they cannot decode it either)."""
    records = []
    for video in videos:
        if video["video_id"] in failures:
            records.append(video)
            continue
        proxy = cache.path(video)
        if not proxy.is_file():
            raise StageFailed(f"video {video['video_id']}: its proxy {proxy} is missing (removed after its shard "
                              f"ran?); delete {out_dir / 'shards'} and rerun")
        records.append({**video, "path": str(proxy), "identity": f"{video['identity']}@{cache.folder.name}"})
    write_jsonl_atomic(out_dir / "videos.jsonl", records)
    return {"inputs": {"videos": len(videos)}, "failures": failures}
