"""Speed of one AMDNet training epoch and one full evaluation at TVR scale, on synthetic features.

TVR scale: 17,435 train videos x 5 captions, 2,179 test videos x 5 captions (10,895 queries),
512-d frame features with T in [20, 100], 512-d pooled query features, reference TVR config.

    python benchmarks/amdnet_speed.py --scale 0.1          # quick smoke run
    python benchmarks/amdnet_speed.py --workdir /tmp/tvr   # full scale, keeps the features for reruns
"""
from __future__ import annotations

import argparse
import math
import resource
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from amdnet import AMDNet, FeatureFiles, ModelConfig, TrainConfig
from amdnet.evaluate import evaluate
from amdnet.config import resolve_device
from amdnet.data import VideoCaptionDataset, collate_videos_with_captions
from amdnet.optim import BertAdam, parameter_groups
from amdnet.synthetic import SyntheticCorpusSpec, write_synthetic_corpus
from amdnet.train import save_checkpoint, train_one_epoch, training_step

TVR_TRAIN_VIDEOS, TVR_TEST_VIDEOS, TVR_CAPTIONS_PER_VIDEO = 17_435, 2_179, 5


def peak_memory_report(device: torch.device) -> str:
    rss_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # ru_maxrss is KiB on Linux
    report = f"peak RSS {rss_gib:.2f} GiB"
    if device.type == "cuda":
        report += f", CUDA max allocated {torch.cuda.max_memory_allocated(device) / 2**30:.2f} GiB"
    return report


def timed(label: str, function, *args, **kwargs):
    started = time.perf_counter()
    result = function(*args, **kwargs)
    seconds = time.perf_counter() - started
    print(f"{label}: {seconds:.1f} s", flush=True)
    return result, seconds


def compute_only_steps_per_second(model, optimizer, dataset, config: TrainConfig, device, n_batches: int = 8):
    """The baseline: training steps on batches already in memory, so data loading costs nothing."""
    loader = DataLoader(dataset, batch_size=config.batch_size, shuffle=True, collate_fn=collate_videos_with_captions)
    batches = [batch for batch, _ in zip(loader, range(n_batches))]
    started = time.perf_counter()
    for batch in batches:
        training_step(model, optimizer, batch, config, config.lr, device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return len(batches) / (time.perf_counter() - started)


def corpus_files(workdir: Path, scale: float):
    """Writes the synthetic corpus once per (workdir, scale); later runs reuse it."""
    folder = workdir / f"tvr_scale{scale:g}"
    spec = SyntheticCorpusSpec(
        {"train": max(1, round(TVR_TRAIN_VIDEOS * scale)), "test": max(1, round(TVR_TEST_VIDEOS * scale))},
        captions_per_video=TVR_CAPTIONS_PER_VIDEO, video_dim=512, query_dim=512, frame_range=(20, 100),
        token_range=(0, 0), seed=1)
    if (folder / "queries.jsonl").exists():
        return FeatureFiles(folder / "videos.h5", folder / "queries.h5"), folder / "queries.jsonl"
    (files, queries_path), _ = timed("writing synthetic features", write_synthetic_corpus, folder, spec)
    return files, queries_path


def run(args):
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    model_config = ModelConfig()
    train_config = TrainConfig(batch_size=args.batch_size, num_workers=args.num_workers, device=str(device),
                               eval_chunk_size=args.chunk_size)
    files, queries_path = corpus_files(args.workdir, args.scale)
    train_set, _ = timed("indexing train split", VideoCaptionDataset, files, queries_path, "train")
    model = AMDNet(model_config, train_set.video_dim, train_set.query_dim).to(device)
    optimizer = BertAdam(parameter_groups(model, train_config.weight_decay), lr=train_config.lr)
    steps = math.ceil(len(train_set) / train_config.batch_size)

    baseline = compute_only_steps_per_second(model, optimizer, train_set, train_config, device)
    _, epoch_seconds = timed("training epoch", train_one_epoch, model, optimizer, train_set, train_config,
                             1, steps * train_config.max_epochs, device, True)
    checkpoint = args.workdir / "benchmark.pt"
    save_checkpoint(checkpoint, model, model_config, train_config, (train_set.video_dim, train_set.query_dim))
    metrics, eval_seconds = timed("full evaluation (index + encode + rank + write)", evaluate, checkpoint, files,
                                  queries_path, "test", args.workdir / "benchmark_eval",
                                  chunk_size=args.chunk_size, device=str(device))

    print(f"\ndevice {device}, torch threads {torch.get_num_threads()}, scale {args.scale:g}")
    print(f"train: {len(train_set):,} videos, {steps} steps of {args.batch_size} videos:"
          f" {epoch_seconds:.1f} s/epoch, {steps / epoch_seconds:.2f} steps/s")
    print(f"baseline (same steps on batches already in memory): {baseline:.2f} steps/s;"
          f" ratio epoch/baseline {steps / epoch_seconds / baseline:.2f} (1.00 = data loading fully hidden)")
    print(f"evaluation: {metrics['n_queries']:,} queries x {metrics['n_videos']:,} videos: {eval_seconds:.1f} s")
    print(peak_memory_report(device))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", type=float, default=1.0, help="fraction of TVR's video counts")
    parser.add_argument("--workdir", type=Path, help="where features are written (default: a temp dir)")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--chunk-size", type=int, default=1024)
    parser.add_argument("--num-workers", type=int, default=0)
    parser.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    parser.add_argument("--device", default="auto")
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
