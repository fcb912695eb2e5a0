"""Configuration dataclasses of AMDNet.

The field names are a contract: the pipeline YAML sections `model:` and `train:` map onto
`ModelConfig` and `TrainConfig` one to one. Input feature sizes are not configuration; they are
read from the feature files.
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

QUERY_POOLINGS = ("mean", "max", "first")
QUERY_INPUTS = ("pooled", "tokens")


@dataclass
class ModelConfig:
    hidden_size: int = 384
    map_size: int = 32  # number of clips each video is binned into
    n_moments: int = 4  # K span anchors, also the number of attention heads
    max_positions: int = 128  # rows of the position table (the first map_size are used)
    input_dropout: float = 0.2
    dropout: float = 0.2
    query_pooling: str = "mean"  # how (L, D) token queries become one vector, over valid tokens
    # Not in the reference: standardise each video input dimension with statistics of the training
    # clips (kept as buffers, so checkpoints carry them). Helps features with a large common
    # component, such as those of randomly initialised backbones.
    standardize_video: bool = False

    def __post_init__(self):
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
    lr: float = 3e-4
    batch_size: int = 128  # videos per batch; every caption of those videos comes along
    max_epochs: int = 200
    patience: int = 15  # epochs without a validation SumR gain before stopping
    seed: int = 9527
    weight_decay: float = 0.01
    warmup_proportion: float = 0.01
    max_grad_norm: float = 1.0
    lambda_nce: float = 0.04
    lambda_div: float = 1.0
    lambda_rel: float = 25.0
    rel_margin: float = 0.02
    div_target: float = 0.15
    query_input: str = "pooled"  # which group of the query HDF5 is read
    use_subtitles: bool = False
    # The three below change speed and memory only, never results.
    num_workers: int = 0
    device: str = "auto"
    eval_chunk_size: int = 1024

    def __post_init__(self):
        if self.query_input not in QUERY_INPUTS:
            raise ValueError(f"query_input must be one of {QUERY_INPUTS}, got {self.query_input!r}")
        if not 0.0 <= self.warmup_proportion < 1.0:
            raise ValueError(f"warmup_proportion must be in [0, 1), got {self.warmup_proportion}")


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
