"""Per-video stages split into shard tasks, so that many workers (on many hosts) share the work.

A per-video stage (``PerVideoStage``: Transcode, each VisualPart) requires N shard tasks
(``VideoShard``); shard i of N processes its share of the videos into the per-video cache
(``pipeline.video_cache``) and writes a report, then the stage itself assembles its usual output from
the cache. The shard count is an execution setting (``visual.shards``; null: derived from the
collection size) and is not part of any fingerprint: 1 shard and 40 shards give the same stage folder
and the same features. Reports live in the stage folder, ``shards/<N>/<i>/report.json``; a shard is
complete when its report exists, written last.

Videos are assigned to shards by duration, longest first, each to the shard with the least total so
far (ties by video id, then shard number): every worker computes the same assignment from the same
videos.jsonl, and shards take about the same time whatever the order of the list.
"""

from __future__ import annotations

import heapq
import json
import logging
import math
import os
import socket
import time
from pathlib import Path
from functools import cached_property
from typing import Any, ClassVar

import luigi

from amdnet.atomic import write_json_atomic
from pipeline.stage import DatasetTask, Stage, sigterm_raises, stage_lock
from pipeline.video_cache import CACHE_FOLDER, VideoCache, write_entries_list

log = logging.getLogger("pipeline")

VIDEOS_PER_SHARD = 100  # TVR (21.8k videos): 218 shards a stage, a few hundred tasks for luigid
MAX_SHARDS = 1000  # the scheduler slows down with very many pending tasks


def default_shard_count(n_videos: int) -> int:
    return max(1, min(MAX_SHARDS, math.ceil(n_videos / VIDEOS_PER_SHARD)))


def assign_shards(videos: list[dict], count: int) -> list[list[dict]]:
    """``videos`` split into ``count`` lists of about equal total duration (each list in input order)."""
    loads = [(0.0, shard) for shard in range(count)]  # (total seconds, shard) heap
    shard_of: dict[str, int] = {}
    for video in sorted(videos, key=lambda v: (-float(v["duration"]), v["video_id"])):
        total, shard = heapq.heappop(loads)
        shard_of[video["video_id"]] = shard
        heapq.heappush(loads, (total + float(video["duration"]), shard))
    shards: list[list[dict]] = [[] for _ in range(count)]
    for video in videos:
        shards[shard_of[video["video_id"]]].append(video)
    return shards


class PerVideoStage(Stage):
    """A stage whose work is done video by video into the per-video cache, by shard tasks; ``build``
    assembles the stage's output from the cache. Subclasses set ``shard_task`` and ``cache_suffix``
    and implement ``videos``, ``cache_settings``, ``process`` and ``assemble``."""

    shard_task: ClassVar[type["VideoShard"]]
    cache_suffix: ClassVar[str]

    def requires(self) -> dict[str, Any]:
        count = self.shard_count
        return {**self.upstream(), "shards": [self.clone(self.shard_task, index=i, count=count) for i in range(count)]}

    @property
    def shard_count(self) -> int:
        configured = self.config["visual"]["shards"]
        return configured if configured is not None else default_shard_count(self.collection_size())

    def collection_size(self) -> int:
        """About how many videos the stage processes, known before any stage runs (shard count)."""
        raise NotImplementedError

    @property
    def cache_root(self) -> Path:
        return self.dataset_dir / CACHE_FOLDER

    @cached_property
    def cache(self) -> VideoCache:
        return VideoCache.for_stage(self.dataset_dir, self.stage,
                                    {"stage": self.stage, "version": self.version, **self.cache_settings()},
                                    self.cache_suffix)

    def cache_settings(self) -> dict:
        """What the per-video results depend on besides the video: the stage's result settings."""
        return self._fingerprint_payload()["config"]

    def videos(self) -> list[dict]:
        """The videos.jsonl records the stage processes."""
        raise NotImplementedError

    def shard_videos(self, count: int, index: int) -> list[dict]:
        """The videos of shard ``index`` of ``count``. The assignment is made once per process and count:
        a worker running many shards of one stage (one Luigi task instance) reads videos.jsonl and sorts
        it once, not once a shard (at 20k videos and 200 shards that was a quarter of a second a shard).
        The list cannot change meanwhile: it comes from a complete upstream folder, named by its inputs."""
        if count not in self._shard_assignments:
            self._shard_assignments[count] = assign_shards(self.videos(), count)
        return self._shard_assignments[count][index]

    @cached_property
    def _shard_assignments(self) -> dict[int, list[list[dict]]]:
        return {}

    def process(self, videos: list[dict]) -> dict:
        """Puts the results of ``videos`` into the cache (skipping those there already); returns the
        shard's report: ``decoded`` (ids), ``failures`` (id -> reason), ``entries`` (their cache paths)."""
        raise NotImplementedError

    def assemble(self, out_dir: Path, videos: list[dict], failures: dict[str, str]) -> dict:
        """The stage's output from the cache; returns the manifest's report."""
        raise NotImplementedError

    def shard_reports(self) -> list[dict]:
        return [task.report() for task in self.requires()["shards"]]

    def build(self, out_dir: Path) -> dict:
        reports = self.shard_reports()
        failures = {vid: reason for report in reports for vid, reason in report["failures"].items()}
        videos = self.videos()
        with stage_lock(self.cache_root, shared=True):  # no clean-up while entries are copied
            redone = self._remake_lost_entries([video for video in videos if video["video_id"] not in failures])
            failures.update(redone["failures"])
            result = self.assemble(out_dir, videos, failures)
        write_entries_list(out_dir, [self.cache.path(video) for video in videos if video["video_id"] not in failures],
                           self.cache_root)
        decoded = sorted({vid for report in [*reports, redone] for vid in report["decoded"]})
        return {**result, "shards": len(reports), "decoded": decoded, "remade": sorted(redone["decoded"]),
                "from_cache": result["inputs"]["videos"] - len(decoded) - len(failures)}

    def _remake_lost_entries(self, videos: list[dict]) -> dict:
        """Entries the shards made that are damaged or gone by now (a full disk, a clean-up, a hand):
        made again here, so that the stage completes instead of failing on every rerun."""
        self.cache.discard_damaged(videos)
        lost = [video for video in videos if not self.cache.path(video).is_file()]
        if not lost:
            return {"decoded": [], "failures": {}}
        log.warning("%s: %d cache entries the shards made are gone or damaged; making them again",
                    self.stage, len(lost))
        return self.process(lost)


class VideoShard(DatasetTask):
    """Shard ``index`` of ``count`` of a per-video stage (``owner``)."""

    index = luigi.IntParameter(description="this shard's number, from 0")
    count = luigi.IntParameter(description="how many shards the stage has")

    def owner(self) -> PerVideoStage:
        raise NotImplementedError

    def requires(self) -> dict[str, Stage]:
        return self.owner().upstream()

    @property
    def folder(self) -> Path:
        return self.owner().out_dir / "shards" / str(self.count) / str(self.index)

    def output(self) -> luigi.LocalTarget:
        return luigi.LocalTarget(str(self.folder / "report.json"))

    def report(self) -> dict:
        return json.loads(Path(self.output().path).read_text())

    def run(self) -> None:
        owner = self.owner()
        with stage_lock(self.folder), stage_lock(owner.cache_root, shared=True), sigterm_raises():
            if self.complete():  # another process ran this shard while this one waited for the lock
                log.warning("%s: built meanwhile by another process; using its output", self.folder)
                return
            clock = time.perf_counter()
            videos = owner.shard_videos(self.count, self.index)
            owner.cache.discard_damaged(videos)  # a damaged entry is made again, not taken as done
            report = owner.process(videos)
            report["entries"] = [entry.relative_to(owner.cache_root).as_posix() for entry in report["entries"]]
            write_json_atomic(self.folder / "report.json", {
                "stage": owner.stage, "shard": self.index, "of": self.count,
                "videos": [video["video_id"] for video in videos], **report,
                "host": socket.gethostname(), "pid": os.getpid(), "seconds": round(time.perf_counter() - clock, 3)})
