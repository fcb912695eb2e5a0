"""The bodies of the feature stages: visual frames, queries and subtitles into HDF5 feature files."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from extractors import create_extractor
from extractors.decode import VideoDecodeError, decode_frames, sample_times
from extractors.subtitles import pool_subtitles
from pipeline.stage import StageFailed
from pipeline.store import FeatureWriter

log = logging.getLogger("pipeline")

_TEXT_CHUNK = 256  # texts per encoder call: bounds memory and keeps the progress bar moving


class _DecodedVideos(torch.utils.data.Dataset):
    """Decodes one video per item, in DataLoader worker processes, so decoding overlaps the model."""

    def __init__(self, videos: list[dict], fps: float, size: int):
        self.videos, self.fps, self.size = videos, fps, size

    def __len__(self) -> int:
        return len(self.videos)

    def __getitem__(self, index: int) -> tuple[dict, Any, str | None]:
        video = self.videos[index]
        try:
            decoded = decode_frames(video["path"], sample_times(video["duration"], self.fps),
                                    short_side=self.size)
        except VideoDecodeError as err:
            return video, None, str(err)
        return video, decoded, None


def _single_item(batch):
    return batch


def extract_visual_features(videos: list[dict], visual: dict, out_path: Path, attrs: dict) -> dict:
    """Decode every video at ``visual.fps`` and encode its frames; failures are recorded, not fatal."""
    extractor = create_extractor(visual["backbone"], model=visual["model"], pretrained=visual["pretrained"],
                                 seed=visual["seed"], device=visual["device"], batch_size=visual["batch_size"])
    failures: dict[str, str] = {}
    with FeatureWriter(out_path, {**attrs, "backbone": f"{visual['backbone']}:{visual['model']}",
                                  "dim": extractor.dim, "fps": visual["fps"]}) as writer:
        todo = [video for video in videos if not writer.done(video["video_id"])]
        loader = torch.utils.data.DataLoader(_DecodedVideos(todo, visual["fps"], visual["size"]),
                                             batch_size=None, collate_fn=_single_item,
                                             num_workers=visual["num_workers"])
        for video, decoded, error in tqdm(loader, total=len(todo), desc="visual features", unit="video"):
            if error is not None:
                failures[video["video_id"]] = error
                log.warning("video %s failed: %s", video["video_id"], error)
                continue
            writer.write(video["video_id"], extractor.encode(decoded.frames),
                         timestamps=decoded.timestamps, duration=video["duration"])
        _check_failures(failures, len(videos), visual["max_failed_fraction"])
        writer.finish()
    return {"inputs": {"videos": len(videos), "resumed": len(videos) - len(todo)},
            "failures": failures, "dim": extractor.dim}


def _check_failures(failures: dict[str, str], total: int, max_fraction: float) -> None:
    if total and len(failures) / total > max_fraction:
        listing = "\n".join(f"  {vid}: {reason}" for vid, reason in sorted(failures.items()))
        raise StageFailed(f"{len(failures)} of {total} videos failed (more than "
                          f"visual.max_failed_fraction={max_fraction}):\n{listing}")


def _text_encoder(text: dict):
    return create_extractor("hf-text", model=text["model"], layer=text["layer"], max_length=text["max_length"],
                            strip_special_tokens=text["strip_special_tokens"], device=text["device"],
                            batch_size=text["batch_size"])


def encode_queries(queries: list[dict], text: dict, out_path: Path, attrs: dict) -> dict:
    """Token features (L, D) and a pooled vector (D,) per caption id."""
    encoder = _text_encoder(text)
    with FeatureWriter(out_path, {**attrs, "model": text["model"], "dim": encoder.dim,
                                  "layer": text["layer"]}) as writer:
        todo = [query for query in queries if not writer.done(f"pooled/{query['cap_id']}")]
        for start in tqdm(range(0, len(todo), _TEXT_CHUNK), desc="query features", unit="chunk"):
            chunk = todo[start:start + _TEXT_CHUNK]
            for query, features in zip(chunk, encoder.encode([q["text"] for q in chunk])):
                writer.write(f"tokens/{query['cap_id']}", features.tokens)
                writer.write(f"pooled/{query['cap_id']}", features.pooled)
        writer.finish()
    return {"inputs": {"queries": len(queries)}, "dim": encoder.dim}


def encode_subtitles(videos: list[dict], subtitles: list[dict], text: dict, fps: float,
                     out_path: Path, attrs: dict) -> dict:
    """Subtitle token features max-pooled onto each video's visual sampling grid, with a mask."""
    encoder = _text_encoder(text)
    sentences_of = {entry["video_id"]: entry["sub"] for entry in subtitles}
    with FeatureWriter(out_path, {**attrs, "model": text["model"], "dim": encoder.dim,
                                  "layer": text["layer"], "fps": fps}) as writer:
        for video in tqdm(videos, desc="subtitle features", unit="video"):
            if writer.done(f"mask/{video['video_id']}"):
                continue
            sentences = [s for s in sentences_of.get(video["video_id"], []) if s["text"].strip()]
            encoded = encoder.encode([s["text"] for s in sentences]) if sentences else []
            timestamps = sample_times(video["duration"], fps)
            features, mask = pool_subtitles([(s["start"], s["end"], e.tokens) for s, e in zip(sentences, encoded)],
                                            timestamps, fps, encoder.dim)
            writer.write(f"features/{video['video_id']}", features, timestamps=timestamps)
            writer.write(f"mask/{video['video_id']}", mask)
        writer.finish()
    with_subtitles = sum(1 for video in videos if sentences_of.get(video["video_id"]))
    return {"inputs": {"videos": len(videos), "videos_with_subtitles": with_subtitles}, "dim": encoder.dim}
