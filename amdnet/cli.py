"""Command line: `python -m amdnet {train,evaluate,summary}` for any registered model (`--model NAME`,
default amdnet; its options and the train settings with `--set KEY=VALUE`)."""
from __future__ import annotations

import argparse
import json
import logging
from dataclasses import asdict, fields
from pathlib import Path

from amdnet.config import FeatureFiles, TrainConfig
from amdnet.evaluate import evaluate
from amdnet.metrics import format_metrics
from amdnet.model import parameter_table
from amdnet.train import train
from models.checkpoints import ModelSource
from models.configs import DEFAULT_MODEL, model_facts, model_options

TRUE_WORDS, FALSE_WORDS = {"true", "1", "yes", "on"}, {"false", "0", "no", "off"}


def parse_value(text: str, default):
    """Converts `text` to the type of the field's default value."""
    if isinstance(default, bool):
        if text.lower() not in TRUE_WORDS | FALSE_WORDS:
            raise ValueError(f"expected a boolean, got {text!r}")
        return text.lower() in TRUE_WORDS
    return type(default)(text)


def apply_overrides(model_config, train_config: TrainConfig, assignments: list[str]):
    """Applies `key=value` (or `model.key=value` / `train.key=value`) to the model's options dataclass
    and the TrainConfig in place."""
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


def pipeline_config(args) -> tuple[dict, TrainConfig]:
    """The --model with its --set overrides as the model and train sections of a pipeline config, and the
    TrainConfig. As in a pipeline config, AMDNet's loss weights are train settings (lambda_nce=...);
    query_input defaults to the first query input the model reads."""
    facts = model_facts(args.model)
    model_config, train_config = facts.config(), TrainConfig(query_input=facts.query_inputs[0])
    apply_overrides(model_config, train_config, args.set)
    return {"model": {"name": args.model, args.model: asdict(model_config)}, "train": asdict(train_config)}, train_config


def add_feature_arguments(parser: argparse.ArgumentParser):
    parser.add_argument("--video-features", type=Path, required=True)
    parser.add_argument("--query-features", type=Path, required=True)
    parser.add_argument("--subtitle-features", type=Path)
    parser.add_argument("--queries", type=Path, required=True, help="queries.jsonl")
    parser.add_argument("--out", type=Path, required=True)


def feature_files(args) -> FeatureFiles:
    return FeatureFiles(args.video_features, args.query_features, args.subtitle_features)


def run_train(args):
    config, train_config = pipeline_config(args)
    summary = train(args.model, model_options(config), train_config, feature_files(args), args.queries, args.out,
                    progress=not args.no_progress)
    print(f"best epoch {summary['best_epoch']} of {summary['epochs_run']}"
          f" (stopped early: {summary['stopped_early']}): {format_metrics(summary['best_val_metrics'])}")


def model_source(args) -> ModelSource:
    """The checkpoint's model, or with no --checkpoint the training-free --model with its --set options."""
    if args.checkpoint is not None:
        return ModelSource.from_checkpoint(args.checkpoint)
    return ModelSource.training_free(pipeline_config(args)[0])


def run_evaluate(args):
    metrics = evaluate(model_source(args), feature_files(args), args.queries, args.split, args.out,
                       chunk_size=args.chunk_size, device=args.device, span_rule=args.span_rule)
    print(f"{args.split} ({metrics['n_queries']} queries x {metrics['n_videos']} videos): {format_metrics(metrics)}")
    print(json.dumps(metrics))


def run_summary(args):
    from models.registry import create_model

    if args.hidden_size is not None:
        args.set.append(f"model.hidden_size={args.hidden_size}")
    options = model_options(pipeline_config(args)[0])
    table = parameter_table(create_model(args.model, args.video_dim, args.query_dim, **options))
    name_width = max((len(name) for name, _, _ in table), default=9)
    print(f"{'parameter':<{name_width}}  {'shape':<14}  {'count':>11}")
    for name, shape, count in table:
        print(f"{name:<{name_width}}  {str(list(shape)):<14}  {count:>11,}")
    print(f"Total parameters: {sum(count for _, _, count in table):,}")


def add_model_arguments(parser: argparse.ArgumentParser, help_text: str):
    parser.add_argument("--model", default=DEFAULT_MODEL, help=help_text)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a field of the model's options or of TrainConfig, e.g. lr=1e-4 or "
                             "model.hidden_size=256")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m amdnet", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    train_parser = commands.add_parser("train", help="train on split 'train', select on split 'val'")
    add_feature_arguments(train_parser)
    add_model_arguments(train_parser, "the registered model to train (default %(default)s)")
    train_parser.add_argument("--no-progress", action="store_true")
    train_parser.set_defaults(handler=run_train)

    evaluate_parser = commands.add_parser("evaluate", help="score a split with a checkpoint or a training-free model")
    add_feature_arguments(evaluate_parser)
    evaluate_parser.add_argument("--checkpoint", type=Path, help="a Train checkpoint (best.pt); without it, "
                                 "--model names a training-free model, e.g. clip-zero-shot")
    add_model_arguments(evaluate_parser, "the training-free model to evaluate when there is no --checkpoint")
    evaluate_parser.add_argument("--split", default="test")
    evaluate_parser.add_argument("--chunk-size", type=int, default=1024)
    evaluate_parser.add_argument("--device", default="auto")
    evaluate_parser.add_argument("--span-rule", help="how predictions choose a moment (default: the model's)")
    evaluate_parser.set_defaults(handler=run_evaluate)

    summary_parser = commands.add_parser("summary", help="print the parameter table")
    add_model_arguments(summary_parser, "the registered model (default %(default)s)")
    summary_parser.add_argument("--hidden-size", type=int, help="the model's hidden_size (default: its own)")
    summary_parser.add_argument("--video-dim", type=int, default=512)
    summary_parser.add_argument("--query-dim", type=int, default=512)
    summary_parser.set_defaults(handler=run_summary)
    return parser


def main(argv: list[str] | None = None):
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    args = build_parser().parse_args(argv)
    try:
        args.handler(args)
    except ValueError as error:  # bad input (model, options, features): one line, no traceback
        raise SystemExit(f"error: {error}") from error
