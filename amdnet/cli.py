"""Command line: `python -m amdnet {train,evaluate,summary}`."""
from __future__ import annotations

import argparse
import json
import logging
from dataclasses import fields
from pathlib import Path

from amdnet.config import FeatureFiles, ModelConfig, TrainConfig
from amdnet.evaluate import evaluate
from amdnet.metrics import format_metrics
from amdnet.model import AMDNet, parameter_table
from amdnet.train import train

TRUE_WORDS, FALSE_WORDS = {"true", "1", "yes", "on"}, {"false", "0", "no", "off"}


def parse_value(text: str, default):
    """Converts `text` to the type of the field's default value."""
    if isinstance(default, bool):
        if text.lower() not in TRUE_WORDS | FALSE_WORDS:
            raise ValueError(f"expected a boolean, got {text!r}")
        return text.lower() in TRUE_WORDS
    return type(default)(text)


def apply_overrides(model_config: ModelConfig, train_config: TrainConfig, assignments: list[str]):
    """Applies `key=value` (or `model.key=value` / `train.key=value`) to the two configs in place."""
    sections = {"model": model_config, "train": train_config}
    for assignment in assignments:
        key, separator, text = assignment.partition("=")
        if not separator:
            raise SystemExit(f"--set expects key=value, got {assignment!r}")
        section, _, name = key.rpartition(".")
        candidates = [sections[section]] if section in sections else [
            config for config in sections.values() if name in {f.name for f in fields(config)}]
        if len(candidates) != 1 or name not in {f.name for f in fields(candidates[0])}:
            raise SystemExit(f"--set: unknown key {key!r}")
        config = candidates[0]
        try:
            setattr(config, name, parse_value(text, getattr(config, name)))
            config.__post_init__()  # ranges and combinations, e.g. "lr must be > 0 (got 0)"
        except ValueError as error:
            raise SystemExit(f"--set {key}: {error}") from error


def add_feature_arguments(parser: argparse.ArgumentParser):
    parser.add_argument("--video-features", type=Path, required=True)
    parser.add_argument("--query-features", type=Path, required=True)
    parser.add_argument("--subtitle-features", type=Path)
    parser.add_argument("--queries", type=Path, required=True, help="queries.jsonl")
    parser.add_argument("--out", type=Path, required=True)


def feature_files(args) -> FeatureFiles:
    return FeatureFiles(args.video_features, args.query_features, args.subtitle_features)


def run_train(args):
    model_config, train_config = ModelConfig(), TrainConfig()
    apply_overrides(model_config, train_config, args.set)
    summary = train(model_config, train_config, feature_files(args), args.queries, args.out,
                    progress=not args.no_progress)
    print(f"best epoch {summary['best_epoch']} of {summary['epochs_run']}"
          f" (stopped early: {summary['stopped_early']}): {format_metrics(summary['best_val_metrics'])}")


def run_evaluate(args):
    metrics = evaluate(args.checkpoint, feature_files(args), args.queries, args.split, args.out,
                       chunk_size=args.chunk_size, device=args.device)
    print(f"{args.split} ({metrics['n_queries']} queries x {metrics['n_videos']} videos): {format_metrics(metrics)}")
    print(json.dumps(metrics))


def run_summary(args):
    model = AMDNet(ModelConfig(hidden_size=args.hidden_size), args.video_dim, args.query_dim)
    table = parameter_table(model)
    name_width = max(len(name) for name, _, _ in table)
    print(f"{'parameter':<{name_width}}  {'shape':<14}  {'count':>11}")
    for name, shape, count in table:
        print(f"{name:<{name_width}}  {str(list(shape)):<14}  {count:>11,}")
    print(f"Total parameters: {sum(count for _, _, count in table):,}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m amdnet", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    train_parser = commands.add_parser("train", help="train on split 'train', select on split 'val'")
    add_feature_arguments(train_parser)
    train_parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                              help="override a ModelConfig/TrainConfig field, e.g. lr=1e-4 or model.hidden_size=256")
    train_parser.add_argument("--no-progress", action="store_true")
    train_parser.set_defaults(handler=run_train)

    evaluate_parser = commands.add_parser("evaluate", help="score a split with a checkpoint")
    add_feature_arguments(evaluate_parser)
    evaluate_parser.add_argument("--checkpoint", type=Path, required=True)
    evaluate_parser.add_argument("--split", default="test")
    evaluate_parser.add_argument("--chunk-size", type=int, default=1024)
    evaluate_parser.add_argument("--device", default="auto")
    evaluate_parser.set_defaults(handler=run_evaluate)

    summary_parser = commands.add_parser("summary", help="print the parameter table")
    summary_parser.add_argument("--hidden-size", type=int, default=384)
    summary_parser.add_argument("--video-dim", type=int, default=512)
    summary_parser.add_argument("--query-dim", type=int, default=512)
    summary_parser.set_defaults(handler=run_summary)
    return parser


def main(argv: list[str] | None = None):
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    args = build_parser().parse_args(argv)
    args.handler(args)
