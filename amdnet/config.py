"""Configuration dataclasses of AMDNet.

The field names are a contract: the pipeline YAML sections `model:` and `train:` map onto
`ModelConfig` and `TrainConfig` one to one. Input feature sizes are not configuration; they are
read from the feature files. Every numeric field carries its valid range (`Range`, in the field's
metadata): the dataclasses check it on construction, and the pipeline's config schema reads the same
ranges, so a value is checked once, in one place, whichever way it arrives.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

QUERY_POOLINGS = ("mean", "max", "first")
QUERY_INPUTS = ("pooled", "tokens")
# How amdnet/moments.py chooses a retrieved video's [start, end]; here so that configs are checked
# without importing torch. "grown" with half the best cosine beat the anchors on the demo's
# validation split (fractions 0 to 0.95 tried; see the README's "Moment quality"), so it is the
# default of evaluate and search.
SPAN_RULES = ("anchor", "whole", "best_clip", "grown")
DEFAULT_SPAN_RULE = "grown"


@dataclass(frozen=True)
class Range:
    """Valid numeric values: ``minimum <= x <= maximum``, ``x > above``, ``x < below`` (None: no bound).
    NaN and infinities are never valid."""

    minimum: float | None = None
    maximum: float | None = None
    above: float | None = None
    below: float | None = None

    def violation(self, value) -> str | None:
        """None when ``value`` is valid, else what it must be, e.g. "must be >= 1 (got 0)"."""
        if isinstance(value, float) and not math.isfinite(value):
            return f"must be a finite number (got {value})"
        # Written as "not (value ok)" so that anything incomparable fails too.
        for bound, ok, sign in ((self.minimum, lambda b: value >= b, ">="), (self.maximum, lambda b: value <= b, "<="),
                                (self.above, lambda b: value > b, ">"), (self.below, lambda b: value < b, "<")):
            if bound is not None and not ok(bound):
                return f"must be {sign} {bound:g} (got {value:g})"
        return None


def ranged(default, **bounds):
    """A dataclass field with a default and a valid range, e.g. ``ranged(0.2, minimum=0, below=1)``."""
    return field(default=default, metadata={"range": Range(**bounds)})


def field_range(config_field) -> Range | None:
    return config_field.metadata.get("range")


def _check_ranges(config) -> None:
    for config_field in fields(config):
        valid = field_range(config_field)
        problem = valid and valid.violation(getattr(config, config_field.name))
        if problem:
            raise ValueError(f"{config_field.name} {problem}")


@dataclass
class ModelConfig:
    hidden_size: int = ranged(384, minimum=1)
    map_size: int = ranged(32, minimum=1)  # number of clips each video is binned into
    n_moments: int = ranged(4, minimum=1)  # K span anchors, also the number of attention heads
    max_positions: int = ranged(128, minimum=1)  # rows of the position table (the first map_size are used)
    input_dropout: float = ranged(0.2, minimum=0, below=1)
    dropout: float = ranged(0.2, minimum=0, below=1)
    query_pooling: str = "mean"  # how (L, D) token queries become one vector, over valid tokens
    # Not in the reference: standardise each video input dimension with statistics of the training
    # clips (kept as buffers, so checkpoints carry them). Helps features with a large common
    # component, such as those of randomly initialised backbones.
    standardize_video: bool = False

    def __post_init__(self):
        _check_ranges(self)
        if self.query_pooling not in QUERY_POOLINGS:
            raise ValueError(f"query_pooling must be one of {QUERY_POOLINGS}, got {self.query_pooling!r}")
        if self.hidden_size % self.n_moments:
            raise ValueError(
                f"hidden_size ({self.hidden_size}) must be divisible by n_moments ({self.n_moments}),"
                " one attention head per moment")
        if self.map_size > self.max_positions:
            raise ValueError(f"map_size ({self.map_size}) exceeds max_positions ({self.max_positions})")


@dataclass
class TrainConfig:
    lr: float = ranged(3e-4, above=0)
    batch_size: int = ranged(128, minimum=1)  # videos per batch; every caption of those videos comes along
    max_epochs: int = ranged(200, minimum=1)
    patience: int = ranged(15, minimum=0)  # stop once more than this many epochs in a row bring no validation SumR gain
    seed: int = ranged(9527, minimum=0)
    weight_decay: float = ranged(0.01, minimum=0)
    warmup_proportion: float = ranged(0.01, minimum=0, below=1)
    max_grad_norm: float = ranged(1.0, above=0)
    lambda_nce: float = ranged(0.04, minimum=0)
    lambda_div: float = ranged(1.0, minimum=0)
    lambda_rel: float = ranged(25.0, minimum=0)
    rel_margin: float = ranged(0.02, minimum=0)
    div_target: float = ranged(0.15, minimum=0)
    query_input: str = "pooled"  # which group of the query HDF5 is read
    use_subtitles: bool = False
    # Intra-op threads of training (and its validation). The count splits float reductions differently,
    # so it changes the trained weights: a run is reproducible for a given value, whatever the machine.
    threads: int = ranged(1, minimum=1)
    # The three below change speed and memory only, never results.
    num_workers: int = ranged(0, minimum=0)
    device: str = "auto"
    eval_chunk_size: int = ranged(1024, minimum=1)

    def __post_init__(self):
        _check_ranges(self)
        if self.query_input not in QUERY_INPUTS:
            raise ValueError(f"query_input must be one of {QUERY_INPUTS}, got {self.query_input!r}")


# Fields that do not influence the trained weights; a resumed run may change them freely.
RESULT_NEUTRAL_TRAIN_FIELDS = ("num_workers", "device", "eval_chunk_size")


@dataclass
class FeatureFiles:
    """The HDF5 feature files one run reads (formats in the project's common data contract)."""
    video: Path
    query: Path
    subtitle: Path | None = None

    def __post_init__(self):
        self.video = Path(self.video)
        self.query = Path(self.query)
        self.subtitle = None if self.subtitle is None else Path(self.subtitle)


def resolve_device(device: str) -> torch.device:
    """The value of a `device` setting: "auto" means the GPU when there is one, else the CPU;
    anything else ("cpu", "cuda:1") is passed to torch as is."""
    import torch  # keeps this module importable (and config loading fast) without loading torch

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def config_from_dict(config_class, values: dict):
    """Builds a config dataclass from a plain dict, rejecting unknown keys by name."""
    known = {field.name for field in fields(config_class)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"unknown {config_class.__name__} keys: {unknown}; known keys: {sorted(known)}")
    return config_class(**values)
