"""The pipeline as one Luigi graph: raw videos -> features -> trained and evaluated AMDNet.

    luigi --module tasks FullPipeline --dataset demo [--set "train.max_epochs=5"]
    python -m tasks --dataset demo        # print the metrics table and the output folders

DemoDataset (demo only) -> PrepareDataset -> VisualFeatures ---------------------\\
                                          -> QueryFeatures ----------------------> Train -> Evaluate
                                          -> SubtitleFeatures (train.use_subtitles)/
"""

from __future__ import annotations

import argparse
import json
import logging
import os
from pathlib import Path

import luigi

from amdnet.atomic import write_jsonl_atomic
from amdnet.metrics import moment_table
from pipeline.config import ConfigError
from pipeline.datasets import (
    check_data_files,
    expected_data_files,
    folder_videos,
    read_dataset,
    read_jsonl,
    resolve_data_root,
)
from pipeline.stage import DatasetTask, Stage
from pipeline.subtitle_files import SUBTITLE_EXTENSIONS


class _ConfigErrorAsMessage(logging.Filter):
    """A bad config reaches the user as its message (file, key path, value), not at the bottom of a
    Luigi traceback. Luigi logs a ConfigError raised while it parses the command line (creating the
    root task validates the config) with the exception attached, and one raised while it builds the
    graph as a formatted traceback; either way only the message is kept. The exit code stays non-zero."""

    _MARKER = f"{ConfigError.__module__}.{ConfigError.__qualname__}: "

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        text = record.getMessage()
        if isinstance(error, ConfigError):
            message = str(error)
        elif self._MARKER in text:
            message = text.split(self._MARKER, 1)[1].rstrip()
        else:
            return True
        record.msg, record.args, record.exc_info, record.exc_text = f"config error: {message}", (), None, None
        return True


logging.getLogger("luigi-interface").addFilter(_ConfigErrorAsMessage())


class DemoDataset(Stage):
    """Generates the embedded demo dataset (real clips + synthetic scenes) in TVR's file formats."""

    stage, version, reads = "demo_data", "1", ("data.demo_videos", "data.demo_seed")

    def build(self, out_dir):
        from pipeline.demo_data import build_demo_dataset

        summary = build_demo_dataset(out_dir, n_videos=self.config["data"]["demo_videos"],
                                     seed=self.config["data"]["demo_seed"])
        return {"inputs": {"videos": self.config["data"]["demo_videos"]}, "summary": summary}


class PrepareDataset(Stage):
    """Reads the dataset's own annotation files into our manifest (videos, queries, subtitles).

    Problems found (missing videos, bad timestamps, ...) that ``data.on_problem`` lets through are
    listed under ``problems`` in the manifest, each with its file and line.
    """

    stage, version, reads = "dataset", "3", ("data",)

    def upstream(self):
        return {"demo": self.clone(DemoDataset)} if self.config["data"]["source"] == "demo" else {}

    def _fingerprint_payload(self):
        # Missing data fails here, while Luigi builds the graph: before any stage runs.
        if self.config["data"]["source"] == "files":
            check_data_files(self.config["data"], self.root, self.config["name"])
        # Edited annotation files must count as a change even though the config is the same.
        files = [] if self.config["data"]["source"] == "demo" else self._input_files()
        stats = {str(p): [p.stat().st_size, p.stat().st_mtime_ns] for p in files if p.is_file()}
        return {**super()._fingerprint_payload(), "files": stats}

    @property
    def root(self) -> Path:
        data = self.config["data"]
        return self.upstream_dir("demo") if data["source"] == "demo" else resolve_data_root(data["root"])

    def _input_files(self) -> list[Path]:
        data = self.config["data"]
        if data["source"] == "folder":  # the collection is whatever the folder holds now
            if data["root"] is None:
                raise ConfigError(f"dataset {self.config['name']!r}: data.source=folder needs data.root, the folder")
            return folder_videos(self.root)
        files = list(expected_data_files(data, self.root).values())
        if data["format"] == "custom":  # subtitle files sit next to the videos
            files += [path for ext in SUBTITLE_EXTENSIONS for path in sorted((self.root / data["videos"]).glob(f"*{ext}"))]
        return files

    def build(self, out_dir):
        manifest = read_dataset(self.config["data"], self.root)
        write_jsonl_atomic(out_dir / "videos.jsonl", manifest.videos)
        write_jsonl_atomic(out_dir / "queries.jsonl", manifest.queries)
        write_jsonl_atomic(out_dir / "subtitles.jsonl", manifest.subtitles)
        return {"inputs": {"videos": len(manifest.videos), "queries": len(manifest.queries),
                           "videos_with_subtitles": len(manifest.subtitles)},
                "problems": manifest.problems}


class ImportBundle(Stage):
    """Reads the PRVR feature bundle (features.bundle_dir) into our store: it stands in for the dataset
    and every feature stage when ``features.source: bundle``; no video is decoded."""

    stage, version, reads = "bundle", "2", ("features", "data.root")

    @property
    def layout(self):
        from pipeline.bundle import BundleLayout

        features = self.config["features"]
        return BundleLayout(resolve_data_root(self.config["data"]["root"]) / features["bundle_dir"],
                            features["collection"] or self.config["name"], features["video"], features["query"])

    def _fingerprint_payload(self):
        layout = self.layout
        layout.check_present()  # fails while Luigi builds the graph, before any stage runs
        stats = {str(path): [path.stat().st_size, path.stat().st_mtime_ns] for path in layout.expected()}
        return {**super()._fingerprint_payload(), "files": stats}

    @property
    def video_features(self) -> Path:
        return self.out_dir / "video_features.h5"

    @property
    def query_features(self) -> Path:
        return self.out_dir / "query_features.h5"

    def build(self, out_dir):
        from pipeline.bundle import import_bundle

        return import_bundle(self.layout, out_dir, self.config["features"]["rows_per_second"],
                             {"stage": self.stage, "fingerprint": self.fingerprint})


class _FeatureStage(Stage):
    def upstream(self):
        return {"dataset": self.clone(PrepareDataset)}

    def dataset_file(self, name: str) -> list[dict]:
        return read_jsonl(self.upstream_dir("dataset") / name)

    @property
    def features(self) -> Path:
        return self.out_dir / "features.h5"


class Transcode(_FeatureStage):
    """Re-encodes every video once to a small proxy (visual.transcode) that every visual part decodes."""

    stage, version, reads = "transcode", "2", ("visual.transcode",)

    def build(self, out_dir):
        from pipeline.visual import transcode_videos

        return transcode_videos(self.dataset_file("videos.jsonl"), self.config["visual"], out_dir)


class VisualPart(Stage):
    """One backbone of the visual recipe: its features at the sampling grid of that backbone."""

    part = luigi.Parameter(description="a name under visual.parts")
    version = "2"

    @property
    def stage(self) -> str:
        return f"visual-{self.part}"

    @property
    def reads(self) -> tuple[str, ...]:
        return ("visual.fps", "visual.size", f"visual.parts.{self.part}")

    def upstream(self):
        source = Transcode if self.config["visual"]["transcode"]["enabled"] else PrepareDataset
        return {"videos": self.clone(source)}

    @property
    def features(self) -> Path:
        return self.out_dir / "features.h5"

    def build(self, out_dir):
        from pipeline.features import extract_visual_features
        from pipeline.visual import part_settings

        return extract_visual_features(read_jsonl(self.upstream_dir("videos") / "videos.jsonl"),
                                       part_settings(self.config["visual"], self.part), self.features,
                                       {"stage": self.stage, "fingerprint": self.fingerprint},
                                       frames_fps=self.config["data"]["frame_fps"])


class VisualFeatures(_FeatureStage):
    """The visual recipe's parts on one grid: a single per-frame part as it is, or every part pooled
    onto clips of visual.clip_seconds and concatenated."""

    stage, version, reads = "visual", "4", ("visual.clip_seconds",)

    def upstream(self):
        parts = {f"part-{name}": self.clone(VisualPart, part=name) for name in self.config["visual"]["parts"]}
        return {"dataset": self.clone(PrepareDataset), **parts}

    @property
    def parts(self) -> dict[str, VisualPart]:
        return {name: self.upstream()[f"part-{name}"] for name in self.config["visual"]["parts"]}

    @property
    def features(self) -> Path:
        if self.config["visual"]["clip_seconds"] is None:  # one part (the config check): read, not copied
            (part,) = self.parts.values()
            return part.features
        return self.out_dir / "features.h5"

    def build(self, out_dir):
        from pipeline.visual import combine_parts

        visual = self.config["visual"]
        if visual["clip_seconds"] is None:
            return {"features": str(self.features)}
        parts = {name: (task.features, visual["parts"][name]["pool"]) for name, task in self.parts.items()}
        return combine_parts(self.dataset_file("videos.jsonl"), parts, visual["clip_seconds"], self.features,
                             {"stage": self.stage, "fingerprint": self.fingerprint})


class QueryFeatures(_FeatureStage):
    """Encodes every query with the text encoder: token features and a pooled vector."""

    stage, version, reads = "queries", "2", ("text",)

    def build(self, out_dir):
        from pipeline.features import encode_queries

        return encode_queries(self.dataset_file("queries.jsonl"), self.config["text"], self.features,
                              {"stage": self.stage, "fingerprint": self.fingerprint})


class SubtitleFeatures(_FeatureStage):
    """Encodes subtitles and pools them onto the visual feature grid (which only depends on timing)."""

    stage, version, reads = "subtitles", "3", ("text", "visual.fps", "visual.clip_seconds")

    def build(self, out_dir):
        from pipeline.features import encode_subtitles

        return encode_subtitles(self.dataset_file("videos.jsonl"), self.dataset_file("subtitles.jsonl"),
                                self.config["text"], self.config["visual"], self.features,
                                {"stage": self.stage, "fingerprint": self.fingerprint})


def _manifest_stage(task: DatasetTask) -> Stage:
    """Where queries.jsonl comes from: the dataset's own files, or the imported feature bundle."""
    return task.clone(ImportBundle if task.config["features"]["source"] == "bundle" else PrepareDataset)


def _feature_stages(task: DatasetTask) -> dict[str, Stage]:
    """The extraction stages whose features Train and Evaluate read (none with a feature bundle)."""
    if task.config["features"]["source"] == "bundle":
        if task.config["train"]["use_subtitles"]:
            raise ConfigError(f"dataset {task.config['name']!r}: features.source=bundle has no subtitle "
                              f"features; set train.use_subtitles=false")
        return {}
    stages = {"visual": task.clone(VisualFeatures), "queries": task.clone(QueryFeatures)}
    if task.config["train"]["use_subtitles"]:
        stages["subtitles"] = task.clone(SubtitleFeatures)
    return stages


def _feature_files(task: Stage):
    from amdnet import FeatureFiles

    stages = task.upstream()
    if isinstance(stages["dataset"], ImportBundle):
        return FeatureFiles(video=stages["dataset"].video_features, query=stages["dataset"].query_features)
    subtitles = stages.get("subtitles")
    return FeatureFiles(video=stages["visual"].features, query=stages["queries"].features,
                        subtitle=None if subtitles is None else subtitles.features)


class ExportBundle(Stage):
    """Writes the dataset's features in the PRVR bundle layout, for other PRVR code (MS-SL, GMMFormer,
    AMDNet's reference): <out_dir>/<collection>/{TextData,FeatureData}/."""

    stage, version, reads = "bundle_export", "2", ("features.collection",)

    def upstream(self):
        stages = {"dataset": _manifest_stage(self), **_feature_stages(self)}
        stages.pop("subtitles", None)  # the bundle format carries video and query features only
        return stages

    def build(self, out_dir):
        from pipeline.bundle import BundleLayout, export_bundle

        collection = self.config["features"]["collection"] or self.config["name"]
        files = _feature_files(self)
        return export_bundle(files.video, files.query, read_jsonl(self.upstream_dir("dataset") / "queries.jsonl"),
                             BundleLayout(out_dir / collection, collection))


class Train(Stage):
    """Trains AMDNet on the train split, selecting the epoch with the best validation SumR."""

    stage, version, reads = "train", "2", ("model", "train")

    def upstream(self):
        return {"dataset": _manifest_stage(self), **_feature_stages(self)}

    def build(self, out_dir):
        from amdnet import train
        from pipeline.config import model_config, train_config

        summary = train(model_config(self.config), train_config(self.config), _feature_files(self),
                        self.upstream_dir("dataset") / "queries.jsonl", out_dir)
        return {"summary": summary}


class Evaluate(Stage):
    """Ranks every test video for every test query with the best checkpoint; writes metrics."""

    stage, version, reads = "evaluate", "1", ("evaluate",)

    def upstream(self):
        return {"train": self.clone(Train), "dataset": _manifest_stage(self), **_feature_stages(self)}

    def build(self, out_dir):
        from amdnet import evaluate

        settings = self.config["evaluate"]
        metrics = evaluate(self.upstream_dir("train") / "best.pt", _feature_files(self),
                           self.upstream_dir("dataset") / "queries.jsonl", settings["split"], out_dir,
                           chunk_size=settings["chunk_size"], device=settings["device"],
                           span_rule=settings["span_rule"])
        return {"metrics": metrics}


class Index(Stage):
    """Encodes every video of a collection once with the trained model: what search/ reads.

    The model comes from the dataset's own config (``--dataset``, ``--set``); the collection is that
    same config with the ``collection`` overrides on top, e.g. ``data.source=folder data.root=/footage``:
    its visual (and subtitle) features are extracted with the model's own recipe.
    """

    stage, version, reads = "index", "1", ("search.split",)
    collection = luigi.Parameter(default="", description='overrides naming the collection to index, e.g. '
                                                         '"data.source=folder data.root=/footage"; empty: the dataset')

    def _collection_stage(self, cls) -> Stage:
        return cls(dataset=self.dataset, set=f"{self.set} {self.collection}".strip())

    def upstream(self):
        stages = {"train": self.clone(Train), "dataset": self._collection_stage(PrepareDataset),
                  "visual": self._collection_stage(VisualFeatures)}
        if self.config["train"]["use_subtitles"]:
            stages["subtitles"] = self._collection_stage(SubtitleFeatures)
        return stages

    def build(self, out_dir):
        from search.index import build_index

        stages, split = self.upstream(), self.config["search"]["split"]
        videos = self.dataset_videos(split)
        subtitles = stages.get("subtitles")
        return build_index(self.upstream_dir("train") / "best.pt", videos, stages["visual"].features,
                           None if subtitles is None else subtitles.features, stages["dataset"].config["text"],
                           out_dir, {"stage": self.stage, "fingerprint": self.fingerprint,
                                     "frame_fps": stages["dataset"].config["data"]["frame_fps"]},
                           device=self.config["search"]["device"])

    def dataset_videos(self, split: str | None) -> list[dict]:
        """The collection's videos; with a split, those with queries in it, in Evaluate's order (a
        folder collection has no splits: all of it)."""
        folder = self.upstream_dir("dataset")
        videos = read_jsonl(folder / "videos.jsonl")
        if split is None or self.upstream()["dataset"].config["data"]["source"] == "folder":
            return videos
        by_id = {video["video_id"]: video for video in videos}
        wanted = dict.fromkeys(q["video_id"] for q in read_jsonl(folder / "queries.jsonl") if q["split"] == split)
        return [by_id[video_id] for video_id in wanted if video_id in by_id]


class Features(DatasetTask, luigi.WrapperTask):
    """Every feature stage of the dataset (``make features``)."""

    def requires(self):
        stages = {"visual": self.clone(VisualFeatures), "queries": self.clone(QueryFeatures)}
        if self.config["data"]["subtitles"] is not None:
            stages["subtitles"] = self.clone(SubtitleFeatures)
        return stages


class FullPipeline(DatasetTask, luigi.WrapperTask):
    """Raw videos to an evaluated model."""

    def requires(self):
        return self.clone(Evaluate)


def report(dataset: str, overrides: str = "") -> str:
    """The metrics table of the evaluated model and where every stage wrote its outputs."""
    evaluate_task = Evaluate(dataset=dataset, set=overrides)
    metrics_path = evaluate_task.out_dir / "metrics.json"
    if not metrics_path.is_file():
        return f"no evaluation yet at {metrics_path}: run `luigi --module tasks FullPipeline --dataset {dataset}`"
    metrics = json.loads(metrics_path.read_text())
    n_videos = metrics["n_videos"]
    lines = [f"AMDNet on {evaluate_task.config['name']} ({metrics['split']} split: "
             f"{metrics['n_queries']} queries x {n_videos} videos)",
             "",
             "| metric | model | chance |",
             "|---|---|---|"]
    for k in (1, 5, 10, 100):
        chance = 100.0 * min(k, n_videos) / n_videos
        lines.append(f"| R@{k} | {metrics[f'R@{k}']:.1f} | {chance:.1f} |")
    lines += [f"| SumR | {metrics['SumR']:.1f} | |",
              f"| median rank | {metrics['median_rank']:.1f} | {(n_videos + 1) / 2:.1f} |",
              f"| mean rank | {metrics['mean_rank']:.1f} | {(n_videos + 1) / 2:.1f} |", ""]
    lines += moment_table(metrics["moments"], metrics["span_rule"]) + ["", "Outputs:"]
    for task in _graph(evaluate_task):
        lines.append(f"  {task.stage:<14} {os.path.relpath(task.out_dir)}")
    return "\n".join(lines)


def _graph(task: Stage) -> list[Stage]:
    """``task`` and every stage it depends on, upstream first, each once."""
    seen: dict[str, Stage] = {}
    for upstream in task.upstream().values():
        seen.update({t.stage: t for t in _graph(upstream)})
    seen[task.stage] = task
    return list(seen.values())


def main() -> None:
    parser = argparse.ArgumentParser(description="Print the metrics and output folders of a pipeline run.")
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--set", default="", help='config overrides, e.g. "train.max_epochs=5"')
    args = parser.parse_args()
    try:
        print(report(args.dataset, args.set))
    except ConfigError as err:
        raise SystemExit(f"config error: {err}") from None


if __name__ == "__main__":
    main()
