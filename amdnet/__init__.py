"""AMDNet for partially relevant video retrieval: model, losses, data, training and evaluation.

Importing the package costs nothing: `amdnet.atomic` or `amdnet.config` alone must not import torch
and matplotlib (every Luigi process imports them to check its stages). The model is imported on
first use; training and evaluation are `amdnet.train.train` and `amdnet.evaluate.evaluate`.
"""
from amdnet.config import FeatureFiles, ModelConfig, TrainConfig

__all__ = ["AMDNet", "FeatureFiles", "ModelConfig", "TrainConfig"]


def __getattr__(name: str):
    if name == "AMDNet":  # torch
        from amdnet.model import AMDNet

        return AMDNet
    raise AttributeError(f"module 'amdnet' has no attribute {name!r}")
