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
import os
from pathlib import Path

import luigi

from amdnet.atomic import write_jsonl_atomic
from pipeline.datasets import read_jsonl, read_tvr
from pipeline.stage import DatasetTask, Stage


class DemoDataset(Stage):
    """Generates the embedded demo dataset (real clips + synthetic scenes) in TVR's file formats."""

    stage, version, reads = "demo_data", "1", ("data.demo_videos", "data.demo_seed")

    def build(self, out_dir):
        from pipeline.demo_data import build_demo_dataset

        summary = build_demo_dataset(out_dir, n_videos=self.config["data"]["demo_videos"],
                                     seed=self.config["data"]["demo_seed"])
        return {"inputs": {"videos": self.config["data"]["demo_videos"]}, "summary": summary}


class PrepareDataset(Stage):
    """Reads the dataset's own annotation files into our manifest (videos, queries, subtitles)."""

    stage, version, reads = "dataset", "1", ("data",)

    def upstream(self):
        return {"demo": self.clone(DemoDataset)} if self.config["data"]["source"] == "demo" else {}

    def _fingerprint_payload(self):
        # Edited annotation files must count as a change even though the config is the same.
        files = [] if self.config["data"]["source"] == "demo" else self._annotation_files()
        stats = {str(p): [p.stat().st_size, p.stat().st_mtime_ns] for p in files if p.is_file()}
        return {**super()._fingerprint_payload(), "files": stats}

    @property
    def root(self) -> Path:
        data = self.config["data"]
        return self.upstream_dir("demo") if data["source"] == "demo" else Path(data["root"] or ".")

    def _annotation_files(self) -> list[Path]:
        data = self.config["data"]
        names = [*data["annotations"].values(), data["subtitles"]]
        return [self.root / name for name in names if name is not None]

    def build(self, out_dir):
        data = self.config["data"]
        annotations = {split: None if name is None else self.root / name
                       for split, name in data["annotations"].items()}
        manifest = read_tvr(annotations, self.root / data["videos"], data["video_ext"],
                            None if data["subtitles"] is None else self.root / data["subtitles"])
        write_jsonl_atomic(out_dir / "videos.jsonl", manifest.videos)
        write_jsonl_atomic(out_dir / "queries.jsonl", manifest.queries)
        write_jsonl_atomic(out_dir / "subtitles.jsonl", manifest.subtitles)
        return {"inputs": {"videos": len(manifest.videos), "queries": len(manifest.queries),
                           "videos_with_subtitles": len(manifest.subtitles)}}


class _FeatureStage(Stage):
    def upstream(self):
        return {"dataset": self.clone(PrepareDataset)}

    def dataset_file(self, name: str) -> list[dict]:
        return read_jsonl(self.upstream_dir("dataset") / name)

    @property
    def features(self) -> Path:
        return self.out_dir / "features.h5"


class VisualFeatures(_FeatureStage):
    """Decodes every video at the configured fps and encodes the frames with the visual backbone."""

    stage, version, reads = "visual", "1", ("visual",)

    def build(self, out_dir):
        from pipeline.features import extract_visual_features

        return extract_visual_features(self.dataset_file("videos.jsonl"), self.config["visual"],
                                       self.features, {"stage": self.stage, "fingerprint": self.fingerprint})


class QueryFeatures(_FeatureStage):
    """Encodes every query with the text encoder: token features and a pooled vector."""

    stage, version, reads = "queries", "1", ("text",)

    def build(self, out_dir):
        from pipeline.features import encode_queries

        return encode_queries(self.dataset_file("queries.jsonl"), self.config["text"], self.features,
                              {"stage": self.stage, "fingerprint": self.fingerprint})


class SubtitleFeatures(_FeatureStage):
    """Encodes subtitles and pools them onto the visual sampling grid (which only depends on fps)."""

    stage, version, reads = "subtitles", "1", ("text", "visual.fps")

    def build(self, out_dir):
        from pipeline.features import encode_subtitles

        return encode_subtitles(self.dataset_file("videos.jsonl"), self.dataset_file("subtitles.jsonl"),
                                self.config["text"], self.config["visual"]["fps"], self.features,
                                {"stage": self.stage, "fingerprint": self.fingerprint})


def _feature_stages(task: DatasetTask) -> dict[str, _FeatureStage]:
    stages = {"visual": task.clone(VisualFeatures), "queries": task.clone(QueryFeatures)}
    if task.config["train"]["use_subtitles"]:
        stages["subtitles"] = task.clone(SubtitleFeatures)
    return stages


def _feature_files(task: Stage):
    from amdnet import FeatureFiles

    stages = task.upstream()
    subtitles = stages.get("subtitles")
    return FeatureFiles(video=stages["visual"].features, query=stages["queries"].features,
                        subtitle=None if subtitles is None else subtitles.features)


class Train(Stage):
    """Trains AMDNet on the train split, selecting the epoch with the best validation SumR."""

    stage, version, reads = "train", "1", ("model", "train")

    def upstream(self):
        return {"dataset": self.clone(PrepareDataset), **_feature_stages(self)}

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
        return {"train": self.clone(Train), "dataset": self.clone(PrepareDataset), **_feature_stages(self)}

    def build(self, out_dir):
        from amdnet import evaluate

        settings = self.config["evaluate"]
        metrics = evaluate(self.upstream_dir("train") / "best.pt", _feature_files(self),
                           self.upstream_dir("dataset") / "queries.jsonl", settings["split"], out_dir,
                           chunk_size=settings["chunk_size"], device=settings["device"])
        return {"metrics": metrics}


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
              f"| mean rank | {metrics['mean_rank']:.1f} | {(n_videos + 1) / 2:.1f} |",
              "", "Outputs:"]
    for task in _graph(evaluate_task):
        lines.append(f"  {task.stage:<10} {os.path.relpath(task.out_dir)}")
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
    print(report(args.dataset, args.set))


if __name__ == "__main__":
    main()
