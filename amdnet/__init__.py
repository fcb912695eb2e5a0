"""AMDNet for partially relevant video retrieval: model, losses, data, training and evaluation."""
from amdnet.config import FeatureFiles, ModelConfig, TrainConfig
from amdnet.evaluate import evaluate
from amdnet.model import AMDNet
from amdnet.train import train

__all__ = ["AMDNet", "FeatureFiles", "ModelConfig", "TrainConfig", "evaluate", "train"]
