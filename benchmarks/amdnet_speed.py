"""Speed of AMDNet training and evaluation at TVR shape, on synthetic features, each part against a
baseline measured in the same run.

TVR shape: 17,435 train videos x 5 captions, 2,179 test videos x 5 captions (10,895 queries), 512-d frame
features with T in [20, 100], 512-d pooled query features, reference TVR config (d = 384, 32 clips).

Parts and their baselines:
- data path: building the training dataset, and reading batches through the trainer's DataLoader
  (no model), against the model step;
- model step: training steps on batches already in memory (forward, losses, backward, optimizer) at 1
  and at 2 intra-op threads (`train.threads`);
- epoch: training steps through the DataLoader (a partial epoch of --steps steps), with the data read
  in the training process (num_workers 0) and in one worker process (num_workers 1), against the
  model step alone;
- per-epoch validation: `split_metrics` as the trainer calls it (split read once, then from memory),
  and as before (features read again every epoch), against its model compute: encoding + the score
  matrix on inputs already in memory;
- Evaluate: `evaluate` (feature reads, encoding, ranking, top-10 predictions with spans, JSONL),
  against the same model compute.

    python benchmarks/amdnet_speed.py --scale 0.1          # quick smoke run
    python benchmarks/amdnet_speed.py --workdir /tmp/tvr   # TVR shape, keeps the features for reruns

Times are wall-clock seconds; with one thread the process CPU seconds are printed too (on a shared
machine they show the work when other jobs take part of the core). Report `uptime` with the figures.
"""
from __future__ import annotations

import argparse
import math
import os
import resource
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from amdnet import FeatureFiles, TrainConfig
from amdnet.data import VideoCaptionDataset, VideoInputs, collate_videos_with_captions
from amdnet.evaluate import PreloadedSplit, evaluate, score_videos, split_metrics
from amdnet.optim import BertAdam
from amdnet.synthetic import SyntheticCorpusSpec, write_synthetic_corpus
from amdnet.train import intra_op_threads, training_step
from models import concat_rows, create_model
from models.checkpoints import ModelSource, save_checkpoint

AMDNET_INPUTS = VideoInputs(("clips",), map_size=32)  # AMDNet's default: 32 clips a video

TVR_TRAIN_VIDEOS, TVR_TEST_VIDEOS, TVR_CAPTIONS_PER_VIDEO = 17_435, 2_179, 5
EVAL_SPLIT = "test"  # TVR's validation and test splits have the same shape


class Timer:
    """Wall and process CPU seconds of a block."""

    def __enter__(self):
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc):
        self.wall, self.cpu = time.perf_counter() - self.wall, time.process_time() - self.cpu


def uptime() -> str:
    return "load average " + " ".join(f"{value:.2f}" for value in os.getloadavg())


def corpus_files(workdir: Path, scale: float) -> tuple[FeatureFiles, Path]:
    """Writes the synthetic corpus once per (workdir, scale); later runs reuse it."""
    folder = workdir / f"tvr_scale{scale:g}"
    if not (folder / "queries.jsonl").exists():
        spec = SyntheticCorpusSpec(
            {"train": max(1, round(TVR_TRAIN_VIDEOS * scale)), "test": max(1, round(TVR_TEST_VIDEOS * scale))},
            captions_per_video=TVR_CAPTIONS_PER_VIDEO, video_dim=512, query_dim=512, frame_range=(20, 100),
            token_range=(0, 0), seed=1)
        with Timer() as timer:
            write_synthetic_corpus(folder, spec)
        print(f"wrote the synthetic features in {timer.wall:.1f} s")
    return FeatureFiles(folder / "videos.h5", folder / "queries.h5"), folder / "queries.jsonl"


def fresh_model(dataset, train_config: TrainConfig) -> tuple:
    torch.manual_seed(train_config.seed)
    model = create_model("amdnet", dataset.video_dim, dataset.query_dim)
    optimizer = BertAdam(model.parameter_groups(train_config.weight_decay), lr=train_config.lr,
                         max_grad_norm=train_config.max_grad_norm)
    return model.train(), optimizer


def training_loader(dataset, config: TrainConfig, num_workers: int) -> DataLoader:
    """The trainer's DataLoader (amdnet/train.py train_one_epoch)."""
    return DataLoader(dataset, batch_size=config.batch_size, shuffle=True, num_workers=num_workers,
                      collate_fn=collate_videos_with_captions, generator=torch.Generator().manual_seed(config.seed))


def model_steps(dataset, config: TrainConfig, batches: list[dict], threads: int) -> Timer:
    """Training steps on batches already in memory: the model's compute alone."""
    model, optimizer = fresh_model(dataset, config)
    with intra_op_threads(threads):
        training_step(model, optimizer, batches[0], 1, config.lr, torch.device("cpu"))  # warm-up
        with Timer() as timer:
            for batch in batches:
                training_step(model, optimizer, batch, 1, config.lr, torch.device("cpu"))
    return timer


def loader_steps(dataset, config: TrainConfig, steps: int, num_workers: int) -> tuple[Timer, int]:
    """Up to `steps` training steps through the DataLoader, as an epoch runs them (after one untimed step);
    returns the timer and the number of steps timed."""
    model, optimizer = fresh_model(dataset, config)
    timed = 0
    with intra_op_threads(config.threads):
        batches = iter(training_loader(dataset, config, num_workers))
        training_step(model, optimizer, next(batches), 1, config.lr, torch.device("cpu"))
        with Timer() as timer:
            for _, batch in zip(range(steps), batches):
                training_step(model, optimizer, batch, 1, config.lr, torch.device("cpu"))
                timed += 1
    return timer, timed


@torch.no_grad()
def validation_compute(model, batches: list[dict], chunk_size: int) -> Timer:
    """The model compute of a validation or evaluation: encoding + the score matrix, inputs in memory."""
    model.eval()
    with Timer() as timer:
        queries = torch.cat([model.represent_queries(batch) for batch in batches])
        videos = concat_rows([model.represent_videos(batch) for batch in batches])
        for start in range(0, queries.shape[0], chunk_size):
            score_videos(model, queries[start:start + chunk_size], videos, chunk_size)
    return timer


def report(label: str, timer: Timer, baseline: Timer | None = None, items: int = 0, unit: str = "steps"):
    rate = f", {items / timer.wall:.3f} {unit}/s" if items else ""
    ratio = f", {timer.wall / baseline.wall:.2f}x its baseline" if baseline else ""
    print(f"{label}: {timer.wall:.1f} s (CPU {timer.cpu:.1f} s){rate}{ratio}", flush=True)


def run(args):
    torch.set_num_threads(1)
    print(f"start: {uptime()}")
    config = TrainConfig(batch_size=args.batch_size, device="cpu", eval_chunk_size=args.chunk_size)
    files, queries_path = corpus_files(args.workdir, args.scale)

    print("\n-- data path")
    with Timer() as build:
        train_set = VideoCaptionDataset(files, queries_path, "train", inputs=AMDNET_INPUTS)
    report("building the training dataset", build)
    with Timer() as reads:
        batches = [batch for batch, _ in zip(training_loader(train_set, config, 0), range(args.steps))]
    report(f"reading {len(batches)} batches (DataLoader, no model)", reads, items=len(batches), unit="batches")

    print("\n-- model step (batches in memory)")
    step_timers = {threads: model_steps(train_set, config, batches[:args.model_steps], threads)
                   for threads in (1, 2)}
    for threads, timer in step_timers.items():
        report(f"{args.model_steps} steps, train.threads={threads}", timer, step_timers[1], args.model_steps)
    per_step = step_timers[1].wall / args.model_steps
    print(f"data path per batch: {reads.wall / len(batches):.3f} s = {reads.wall / len(batches) / per_step:.2f}"
          f" of a model step")

    print(f"\n-- epoch (up to {args.steps} steps through the DataLoader, train.threads=1; baseline: the model step)")
    for num_workers in (0, 1):
        timer, steps = loader_steps(train_set, config, args.steps, num_workers)
        step_baseline = Timer()
        step_baseline.wall = per_step * steps
        report(f"{steps} steps, num_workers={num_workers}", timer, step_baseline, steps)
    print(f"a TVR-shape epoch has {math.ceil(TVR_TRAIN_VIDEOS / args.batch_size)} steps")
    del batches

    print(f"\n-- per-epoch validation ({EVAL_SPLIT} split; baseline: encoding + score matrix, inputs in memory)")
    eval_set = VideoCaptionDataset(files, queries_path, EVAL_SPLIT, inputs=AMDNET_INPUTS)
    model, _ = fresh_model(eval_set, config)
    with Timer() as preload:
        preloaded = PreloadedSplit(eval_set)
    report("reading the split into memory (once per training run)", preload)
    eval_batches = list(DataLoader(preloaded, batch_size=args.chunk_size, collate_fn=collate_videos_with_captions))
    compute = validation_compute(model, eval_batches, args.chunk_size)
    report("model compute", compute)
    with Timer() as validation:
        metrics = split_metrics(model, preloaded, torch.device("cpu"), args.chunk_size)
    report("validation as the trainer runs it (split in memory)", validation, compute)
    with Timer() as reread:
        split_metrics(model, eval_set, torch.device("cpu"), args.chunk_size)
    report("validation reading the split's features again", reread, compute)
    del preloaded, eval_batches

    print(f"\n-- Evaluate ({metrics['R@1']:.1f} R@1 of an untrained model; baseline: the same model compute)")
    checkpoint = args.workdir / "benchmark.pt"
    save_checkpoint(checkpoint, model, config, (eval_set.video_dim, eval_set.query_dim))
    with Timer() as evaluation:
        evaluate(ModelSource.from_checkpoint(checkpoint), files, queries_path, EVAL_SPLIT, args.workdir / "benchmark_eval",
                 chunk_size=args.chunk_size, device="cpu")
    report(f"evaluate ({len(eval_set):,} videos, top-10 predictions with spans, JSONL)", evaluation, compute)

    print(f"\npeak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB; end: {uptime()}")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", type=float, default=1.0, help="fraction of TVR's video counts")
    parser.add_argument("--workdir", type=Path, help="where features are written (default: a temp dir)")
    parser.add_argument("--steps", type=int, default=40, help="training steps of the partial epochs")
    parser.add_argument("--model-steps", type=int, default=10, help="steps of the in-memory model step")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--chunk-size", type=int, default=1024)
    args = parser.parse_args()
    if args.workdir is None:
        with tempfile.TemporaryDirectory() as temporary:
            args.workdir = Path(temporary)
            run(args)
    else:
        args.workdir.mkdir(parents=True, exist_ok=True)
        run(args)


if __name__ == "__main__":
    main()
