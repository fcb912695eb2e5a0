"""Training loop: epochs over the train split, validation SumR for model selection and early stop,
atomic checkpoints, resumable so that an interrupted run ends exactly like an uninterrupted one."""
from __future__ import annotations

import logging
import math
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from amdnet.atomic import atomic_path, write_jsonl_atomic
from amdnet.config import RESULT_NEUTRAL_TRAIN_FIELDS, FeatureFiles, TrainConfig, config_from_dict, resolve_device
from amdnet.data import (
    VideoCaptionDataset,
    VideoInputs,
    clip_statistics,
    collate_videos_with_captions,
    input_dims,
    to_device,
)
from amdnet.evaluate import PreloadedSplit, intra_op_threads, split_metrics
from amdnet.metrics import format_metrics
from amdnet.optim import BertAdam, warmup_linear_factor
from models.checkpoints import ModelSource, save_checkpoint
from models.configs import AMDNET_LOSS_FIELDS, model_facts
from models.registry import RetrievalModel, create_model

log = logging.getLogger(__name__)

VAL_METRICS = ("R@1", "R@5", "R@10", "R@100", "SumR", "median_rank", "mean_rank")


@dataclass
class TrainingState:
    """Everything besides weights and optimizer moments that a resumed run needs."""
    epoch: int = 0  # last completed epoch
    best_sumr: float = 0.0  # as the reference: the first checkpoint is the first epoch with SumR > 0
    best_epoch: int = 0
    best_metrics: dict = field(default_factory=dict)
    epochs_without_improvement: int = 0
    stopped_early: bool = False
    history: list = field(default_factory=list)  # one log.jsonl record per completed epoch


def seed_everything(seed: int):
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def epoch_seed(seed: int, epoch: int) -> int:
    """Seed of everything random in one epoch (shuffle order, dropout), a function of (seed, epoch) only,
    so a resumed run draws the same numbers as an uninterrupted one."""
    return int(np.random.SeedSequence([seed, epoch]).generate_state(1)[0])


def result_relevant_settings(model_name: str, model_options: dict, train_config: TrainConfig) -> dict:
    """What a resumed run must share with the run it continues: the model and its (complete) options, and
    the train settings that change the weights. TrainConfig's AMDNet loss weights are not among them: a
    model's loss weights are its options."""
    ignored = set(RESULT_NEUTRAL_TRAIN_FIELDS) | set(AMDNET_LOSS_FIELDS)
    train_values = {k: v for k, v in asdict(train_config).items() if k not in ignored}
    return {"model": model_name, "options": model_options, "train": train_values}


def load_resumable_state(out_dir: Path, model: RetrievalModel, optimizer: BertAdam, train_config: TrainConfig,
                         device: torch.device) -> TrainingState:
    """Restores last.pt when it was written for the same model, options and result-relevant train
    settings, else starts fresh."""
    last_path = out_dir / "last.pt"
    if not last_path.exists():
        return TrainingState()
    stored = ModelSource.from_checkpoint(last_path)
    checkpoint = torch.load(last_path, map_location=device, weights_only=True)
    stored_settings = result_relevant_settings(stored.name, stored.options,
                                               config_from_dict(TrainConfig, checkpoint["train_config"]))
    if stored_settings != result_relevant_settings(model.name, model.options, train_config):
        log.warning("%s was written for another model or other settings; training from scratch", last_path)
        return TrainingState()
    model.load_state_dict(checkpoint["model"])
    optimizer.load_state_dict(checkpoint["optimizer"])
    log.info("resuming after epoch %d from %s", checkpoint["state"]["epoch"], last_path)
    return TrainingState(**checkpoint["state"])


def plot_curves(history: list[dict], loss_terms: tuple[str, ...], path: Path):
    from matplotlib.figure import Figure  # seconds to import: only a finished training draws its curves

    epochs = [record["epoch"] for record in history]
    figure = Figure(figsize=(11, 4))  # pyplot-free: the Agg canvas, no global figure state
    loss_axis, sumr_axis = figure.subplots(1, 2)
    for term in loss_terms:
        loss_axis.plot(epochs, [record[term] for record in history], label=term)
    loss_axis.set(xlabel="epoch", ylabel="training loss (epoch mean)", yscale="log")
    loss_axis.legend()
    sumr_axis.plot(epochs, [record["val_SumR"] for record in history], marker="o")
    sumr_axis.set(xlabel="epoch", ylabel="validation SumR")
    figure.tight_layout()
    with atomic_path(path) as temporary:
        figure.savefig(temporary, format="png", dpi=100)


def train_one_epoch(model: RetrievalModel, optimizer: BertAdam, dataset: VideoCaptionDataset, config: TrainConfig,
                    epoch: int, total_steps: int, device: torch.device, progress: bool) -> dict[str, float]:
    """One pass over the train split; returns the mean of each loss term and the last learning rate."""
    seed = epoch_seed(config.seed, epoch)
    torch.manual_seed(seed)  # dropout
    loader = DataLoader(dataset, batch_size=config.batch_size, shuffle=True, num_workers=config.num_workers,
                        collate_fn=collate_videos_with_captions, generator=torch.Generator().manual_seed(seed))
    model.train()
    sums = dict.fromkeys(model.loss_terms, 0.0)
    step = (epoch - 1) * len(loader)
    lr = config.lr
    for batch in tqdm(loader, desc=f"epoch {epoch}", disable=not progress, leave=False):
        step += 1
        lr = config.lr * warmup_linear_factor(step, total_steps, config.warmup_proportion)
        terms = training_step(model, optimizer, batch, epoch, lr, device)
        for name in sums:
            sums[name] += terms[name].item()
    return {name: total / len(loader) for name, total in sums.items()} | {"lr": lr}


def training_step(model: RetrievalModel, optimizer: BertAdam, batch: dict, epoch: int, lr: float,
                  device: torch.device) -> dict[str, torch.Tensor]:
    """One optimisation step on a collated batch (B videos with all their captions): the model's loss
    terms (`model.loss`, epoch counted from 1), the total's gradients, one BertAdam update at rate lr."""
    terms = model.loss(to_device(batch, device), epoch)
    optimizer.zero_grad(set_to_none=True)
    terms["loss"].backward()
    for group in optimizer.param_groups:
        group["lr"] = lr
    optimizer.step()
    return terms


def train(model_name: str, model_options: dict, train_config: TrainConfig, files: FeatureFiles,
          queries_path: Path, out_dir: Path, progress: bool = True, epoch_limit: int | None = None) -> dict:
    """Trains the registered model `model_name` (create_model options `model_options`) on split 'train',
    selects on split 'val'; writes best.pt, last.pt (models.checkpoints), log.jsonl, curves.png.

    Resumes from out_dir/last.pt when it was written for the same model, options and result-relevant
    train settings. `epoch_limit` stops this call after that many epochs (for time-sliced jobs); calling
    again continues the same run.

    Returns {"best_epoch", "best_val_metrics", "epochs_run", "stopped_early"}.
    """
    facts = model_facts(model_name)
    if not facts.trainable:
        raise ValueError(f"model {model_name!r} is training-free: there is nothing to train (evaluate it "
                         f"with ModelSource.training_free)")
    if train_config.query_input not in facts.query_inputs:
        raise ValueError(f"model {model_name!r} reads {' or '.join(facts.query_inputs)} queries, but "
                         f"train.query_input is {train_config.query_input!r}")
    # Intra-op threads split float reductions differently, so the thread count changes the trained weights
    # (the reduced demo of tests/test_pipeline.py, seed 3407: best epoch 22 with 1 thread, 12 with 2, R@1
    # 14.8 vs 16.4). It is a setting (train.threads), so a run does not depend on the machine's core count.
    with intra_op_threads(train_config.threads):
        return _train(model_name, model_options, train_config, files, queries_path, Path(out_dir), progress,
                      epoch_limit)


def _train(model_name: str, model_options: dict, train_config: TrainConfig, files: FeatureFiles,
           queries_path: Path, out_dir: Path, progress: bool, epoch_limit: int | None) -> dict:
    out_dir.mkdir(parents=True, exist_ok=True)
    device = resolve_device(train_config.device)
    # Seeded, then built from torch's global generator: the initial weights of a (seed, model) pair.
    seed_everything(train_config.seed)
    dims = input_dims(files, train_config.query_input, train_config.use_subtitles)
    model = create_model(model_name, *dims, **model_options)
    dataset_options = dict(inputs=VideoInputs.of(model), query_input=train_config.query_input,
                           use_subtitles=train_config.use_subtitles)
    train_set = VideoCaptionDataset(files, queries_path, "train", **dataset_options)
    val_set = PreloadedSplit(VideoCaptionDataset(files, queries_path, "val", **dataset_options))  # read once
    if model.options.get("standardize_video"):  # AMDNet's option: statistics of the training clips
        model.set_video_statistics(*clip_statistics(train_set))
    model = model.to(device)
    optimizer = BertAdam(model.parameter_groups(train_config.weight_decay), lr=train_config.lr,
                         max_grad_norm=train_config.max_grad_norm)
    state = load_resumable_state(out_dir, model, optimizer, train_config, device)
    total_steps = math.ceil(len(train_set) / train_config.batch_size) * train_config.max_epochs

    last_epoch_this_call = train_config.max_epochs if epoch_limit is None else state.epoch + epoch_limit
    while not state.stopped_early and state.epoch < min(train_config.max_epochs, last_epoch_this_call):
        epoch = state.epoch + 1
        started = time.perf_counter()
        losses = train_one_epoch(model, optimizer, train_set, train_config, epoch, total_steps, device, progress)
        metrics = split_metrics(model, val_set, device, train_config.eval_chunk_size)
        state.history.append({"epoch": epoch, **losses, **{f"val_{k}": metrics[k] for k in VAL_METRICS},
                              "seconds": time.perf_counter() - started})
        state.epoch = epoch
        if metrics["SumR"] > state.best_sumr:
            state.best_sumr, state.best_epoch, state.best_metrics = metrics["SumR"], epoch, metrics
            state.epochs_without_improvement = 0
            save_checkpoint(out_dir / "best.pt", model, train_config, dims, epoch=epoch, val_metrics=metrics)
        else:
            state.epochs_without_improvement += 1
        # As the reference: stop once the epochs without a gain EXCEED the patience (patience + 1 of them).
        state.stopped_early = state.epochs_without_improvement > train_config.patience
        save_checkpoint(out_dir / "last.pt", model, train_config, dims, optimizer=optimizer.state_dict(),
                        state=asdict(state))
        write_jsonl_atomic(out_dir / "log.jsonl", state.history)
        log.info("epoch %d loss %.4f val %s", epoch, losses["loss"], format_metrics(metrics))

    if state.history:  # drawn once at the end: plotting every epoch costs more than a small epoch
        plot_curves(state.history, model.loss_terms, out_dir / "curves.png")
    finished = state.stopped_early or state.epoch >= train_config.max_epochs
    if finished and state.best_epoch == 0:
        raise RuntimeError(f"no epoch of {state.epoch} reached a validation SumR above 0, so there is no "
                           f"checkpoint to select: see {out_dir / 'log.jsonl'}")
    return {"best_epoch": state.best_epoch, "best_val_metrics": state.best_metrics,
            "epochs_run": state.epoch, "stopped_early": state.stopped_early}
