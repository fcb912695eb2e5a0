"""Model registry and the interface every retrieval model follows.

A model lives in its own small module, subclasses `RetrievalModel` and registers itself under a name:

    @register_model("ms-sl")
    class MSSL(RetrievalModel): ...

Train, Evaluate and the search index then build any model by name, with the input sizes read from the
feature files and the options of the config's `model:` section:

    model = create_model("ms-sl", video_dim=3072, query_dim=768, seed=2018, margin=0.1)

The interface (shapes: B videos in a batch, V videos represented, Q / P queries, d model size; the
batch dictionary is described in models/inputs.py):

    model.video_inputs, model.query_input   what the batch must hold ("clips"/"frames"; "pooled"/"tokens")
    model.represent_videos(batch) -> dict   tensors with leading axis B: what the index stores for a video
    model.represent_queries(batch) -> (Nq, d) what a query becomes (the search encodes its text into this)
    model.score(queries (Q, d), videos: dict of V rows) -> (Q, V)   the ranking score
    model.spans(queries (P, d), videos: dict of P rows, clip_spans (P, N, 2), rule, pair_videos=None) -> (P, 2)
                                            each (query, video) pair's moment, [start, end] fractions;
                                            with pair_videos (P,), videos and clip_spans hold V rows, one
                                            per video, and pair_videos names each pair's (Evaluate: the
                                            pairs of a video share its rows, amdnet.moments.per_video_pairs)
    model.span_rules, model.default_span_rule
    model.trainable                         False: no Train stage, represent/score right after features
    model.loss(batch, epoch) -> dict        trainable models: {"loss": total, <term>: value, ...},
                                            keys model.loss_terms; epoch counts from 1
    model.parameter_groups(weight_decay)    the optimiser's groups (BertAdam, amdnet.optim)
    model.options                           the keyword options that rebuild it with create_model
    type(model).reference_hparams(dataset)  {"model": options, "train": TrainConfig values, "inputs": recipe}

Evaluate and search compute the same numbers because both call `score` and `spans` on rows of the
same `represent_videos` output; `take_rows` and `concat_rows` slice and join such dictionaries.
"""
from __future__ import annotations

import abc
import importlib
from dataclasses import asdict
from typing import Callable

import torch
import torch.nn as nn

from amdnet.config import config_from_dict
from amdnet.optim import parameter_groups
from models.configs import MODEL_FACTS

Rows = dict[str, torch.Tensor]

_MODELS: dict[str, type] = {}


class RetrievalModel(nn.Module, abc.ABC):
    """Base of every registered model; subclasses set the class attributes and implement the methods
    that raise here. `Config` is the model's options dataclass (fields with ranges, amdnet.config)."""

    name: str = ""
    Config: type
    trainable: bool = True
    video_inputs: tuple[str, ...] = ("clips",)
    query_input: str = "tokens"
    span_rules: tuple[str, ...] = ("whole",)
    default_span_rule: str = "whole"
    loss_terms: tuple[str, ...] = ("loss",)
    reference_datasets: dict[str, dict] = {}

    @classmethod
    def build(cls, video_dim: int, query_dim: int, **options) -> "RetrievalModel":
        """The model for inputs of these sizes; unknown or out-of-range options raise ValueError."""
        return cls(config_from_dict(cls.Config, options), video_dim, query_dim)

    @property
    def options(self) -> dict:
        return asdict(self.config)

    @classmethod
    def reference_hparams(cls, dataset: str) -> dict:
        """The reference code's settings for `dataset` ("tvr", "activitynet", "charades")."""
        if dataset not in cls.reference_datasets:
            raise ValueError(f"{cls.name}: no reference settings for dataset {dataset!r}; "
                             f"known: {', '.join(cls.reference_datasets)}")
        return cls.reference_datasets[dataset]

    def parameter_groups(self, weight_decay: float) -> list[dict]:
        return parameter_groups(self, weight_decay)

    @abc.abstractmethod
    def represent_videos(self, batch: dict) -> Rows:
        """See the module docstring."""

    @abc.abstractmethod
    def represent_queries(self, batch: dict) -> torch.Tensor:
        """See the module docstring."""

    @abc.abstractmethod
    def score(self, queries: torch.Tensor, videos: Rows) -> torch.Tensor:
        """See the module docstring."""

    @abc.abstractmethod
    def spans(self, queries: torch.Tensor, videos: Rows, clip_spans: torch.Tensor | None, rule: str, *,
              pair_videos: torch.Tensor | None = None) -> torch.Tensor:
        """See the module docstring."""

    def loss(self, batch: dict, epoch: int) -> dict[str, torch.Tensor]:
        raise TypeError(f"model {self.name!r} is not trainable: it has no loss")

    def check_rule(self, rule: str) -> None:
        if rule not in self.span_rules:
            raise ValueError(f"model {self.name!r} has no span rule {rule!r}; choose one of {', '.join(self.span_rules)}")


def register_model(name: str) -> Callable[[type], type]:
    """Class decorator: make `cls` buildable as `create_model(name, ...)`. `name` must have its entry
    in models.configs.MODEL_FACTS, and the class must agree with it."""

    def register(cls: type) -> type:
        if name in _MODELS:
            raise ValueError(f"model name {name!r} is already registered by {_MODELS[name].__qualname__}")
        if not issubclass(cls, RetrievalModel):
            raise TypeError(f"{cls.__qualname__} must subclass RetrievalModel")
        _check_facts(name, cls)
        cls.name = name
        _MODELS[name] = cls
        return cls

    return register


def _check_facts(name: str, cls: type) -> None:
    facts = MODEL_FACTS.get(name)
    if facts is None:
        raise TypeError(f"model {name!r} has no entry in models.configs.MODEL_FACTS (what configs are checked against)")
    agrees = (cls.Config is facts.config and cls.trainable == facts.trainable
              and tuple(cls.video_inputs) == facts.video_inputs and cls.query_input in facts.query_inputs
              and set(cls.span_rules) == set(facts.span_rules) and cls.default_span_rule == facts.default_span_rule)
    if not agrees:
        raise TypeError(f"{cls.__qualname__} disagrees with models.configs.MODEL_FACTS[{name!r}]: {facts}")


def _load_models() -> None:
    """Import every model module named in MODEL_FACTS, so that each registers itself (once)."""
    for name in MODEL_FACTS:
        if name not in _MODELS:
            importlib.import_module(f"models.{name.replace('-', '_')}")


def list_models(trainable: bool | None = None) -> list[str]:
    """Registered model names, sorted; only the trainable (or only the training-free) ones when given."""
    _load_models()
    return sorted(name for name, cls in _MODELS.items() if trainable is None or cls.trainable == trainable)


def model_class(name: str) -> type:
    _load_models()
    if name not in _MODELS:
        raise KeyError(f"unknown model {name!r}; registered models: {', '.join(list_models())}")
    return _MODELS[name]


def create_model(name: str, video_dim: int, query_dim: int, seed: int | None = None, **options) -> RetrievalModel:
    """Build the model registered as `name` for video/query inputs of these sizes. With `seed`, its
    random initial weights are drawn from a generator seeded with it, leaving torch's global state alone."""
    cls = model_class(name)
    if seed is None:
        return cls.build(video_dim, query_dim, **options)
    # extractors.registry.seeded_random_init does the same; importing it would load every backbone library.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return cls.build(video_dim, query_dim, **options)


def take_rows(videos: Rows, index: torch.Tensor | slice) -> Rows:
    """The same rows of every tensor of a represent_videos dictionary."""
    return {key: value[index] for key, value in videos.items()}


def concat_rows(parts: list[Rows]) -> Rows:
    """represent_videos dictionaries of successive batches joined along the video axis."""
    return {key: torch.cat([part[key] for part in parts]) for key in parts[0]}


# Elements of the (Q, V, ...) intermediate one scoring call may hold: 2^25 float32 values are 128 MiB.
SCORE_BUDGET = 2 ** 25


def score_in_chunks(score: Callable[[torch.Tensor, Rows], torch.Tensor], queries: torch.Tensor, videos: Rows,
                    elements_per_pair: int) -> torch.Tensor:
    """score(queries, rows) over slices of the videos, so that Q x v x elements_per_pair stays within
    SCORE_BUDGET whatever Q and V the caller passes: (Q, V)."""
    n_videos = next(iter(videos.values())).shape[0]
    step = max(1, SCORE_BUDGET // max(1, queries.shape[0] * elements_per_pair))
    return torch.cat([score(queries, take_rows(videos, slice(start, start + step)))
                      for start in range(0, n_videos, step)], dim=1)


def token_model_reference(options: dict, lr: float, seed: int, video: str, video_dim: int, query_dim: int) -> dict:
    """A reference_hparams row of a model trained as MS-SL's and GMMFormer's references train (100 epochs
    of 128 videos, patience 10, BertAdam with 1% warm-up) on RoBERTa token queries."""
    return {
        "model": options,
        "train": {"lr": lr, "batch_size": 128, "max_epochs": 100, "patience": 10, "seed": seed,
                  "weight_decay": 0.01, "warmup_proportion": 0.01, "max_grad_norm": 1.0, "query_input": "tokens"},
        "inputs": {"video": video, "video_dim": video_dim, "query_dim": query_dim,
                   "query": f"RoBERTa token features ({query_dim}-d), at most 30 tokens"},
    }


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
