"""Synthetic PRVR corpora in the project's on-disk formats, for tests and the speed benchmark.

Each video is a sequence of segments; every frame of a segment is the segment's random "topic"
vector plus noise. Each caption describes one segment: a fixed random linear map of that topic
plus noise (token features: the caption vector plus per-token noise). A model can therefore
only retrieve a caption's video by finding the right segment inside it: partial relevance.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from amdnet.atomic import write_text_atomic
from amdnet.config import FeatureFiles
from storage import QUERY_GROUPS, ROW, FeatureWriter

SAMPLE_FPS = 3.0  # pretend sampling rate: sample times are n / 3 seconds


@dataclass
class SyntheticCorpusSpec:
    videos_per_split: dict  # split name -> number of videos
    captions_per_video: int = 2
    video_dim: int = 16
    query_dim: int = 12
    frame_range: tuple[int, int] = (20, 60)  # T drawn uniformly from [low, high]
    segments_per_video: int = 4
    frame_noise: float = 0.3
    query_noise: float = 0.1
    token_range: tuple[int, int] = (3, 8)  # L drawn uniformly from [low, high]; 0 = write no tokens group
    seed: int = 0


def write_synthetic_corpus(folder: Path, spec: SyntheticCorpusSpec) -> tuple[FeatureFiles, Path]:
    """Writes videos.h5, queries.h5 and queries.jsonl into `folder`; returns (files, queries path)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(spec.seed)
    topic_to_query = rng.standard_normal((spec.video_dim, spec.query_dim)) / np.sqrt(spec.video_dim)
    files = FeatureFiles(folder / "videos.h5", folder / "queries.h5")
    records = []
    query_groups = QUERY_GROUPS if spec.token_range[1] > 0 else {"pooled": ROW}
    video_attrs = {"stage": "synthetic", "backbone": "synthetic", "dim": spec.video_dim, "fps": SAMPLE_FPS,
                   "fingerprint": f"synthetic-{spec.seed}"}
    query_attrs = {"model": "synthetic", "dim": spec.query_dim, "layer": -1, "fingerprint": f"synthetic-{spec.seed}"}
    with FeatureWriter(files.video, video_attrs, resume=False) as video_file, \
            FeatureWriter(files.query, query_attrs, groups=query_groups, resume=False) as query_file:
        for split, n_videos in spec.videos_per_split.items():
            for video_number in range(n_videos):
                video_id = f"{split}_video{video_number:06d}"
                topics = write_video(video_file, video_id, spec, rng)
                for caption_number in range(spec.captions_per_video):
                    cap_id = f"{video_id}#enc#{caption_number}"
                    segment = int(rng.integers(len(topics)))
                    write_query(query_file, cap_id, topics[segment] @ topic_to_query, spec, rng)
                    records.append({"cap_id": cap_id, "video_id": video_id, "text": f"segment {segment}",
                                    "ts": None, "split": split})
        video_file.finish()
        query_file.finish()
    queries_path = folder / "queries.jsonl"
    write_text_atomic(queries_path, "".join(json.dumps(record) + "\n" for record in records))
    return files, queries_path


def write_video(video_file: FeatureWriter, video_id: str, spec: SyntheticCorpusSpec, rng) -> np.ndarray:
    """Writes one (T, Dv) video entry; returns its (segments, Dv) topic vectors."""
    n_frames = int(rng.integers(spec.frame_range[0], spec.frame_range[1] + 1))
    topics = rng.standard_normal((spec.segments_per_video, spec.video_dim))
    segment_of_frame = np.arange(n_frames) * spec.segments_per_video // n_frames  # (T,)
    frames = topics[segment_of_frame] + spec.frame_noise * rng.standard_normal((n_frames, spec.video_dim))
    video_file.write(video_id, frames.astype(np.float32), timestamps=np.arange(n_frames, dtype=np.float64) / SAMPLE_FPS,
                     duration=n_frames / SAMPLE_FPS)
    return topics


def write_query(query_file: FeatureWriter, cap_id: str, clean_query: np.ndarray, spec: SyntheticCorpusSpec, rng):
    query = clean_query + spec.query_noise * rng.standard_normal(spec.query_dim)  # (Dq,)
    query_file.write(cap_id, query.astype(np.float32), group="pooled")
    if spec.token_range[1] > 0:
        n_tokens = int(rng.integers(spec.token_range[0], spec.token_range[1] + 1))
        tokens = query + spec.query_noise * rng.standard_normal((n_tokens, spec.query_dim))  # (L, Dq)
        query_file.write(cap_id, tokens.astype(np.float32), group="tokens")
