"""Where the model of Evaluate, Index and the search comes from: a checkpoint that Train wrote, or, for
a training-free model, its name and options. `ModelSource` is that one description: the stages pass
it on and an index records it (`to_json`), so a searcher builds exactly the model Evaluate scored with.

A checkpoint (torch.save of plain tensors, numbers and dicts, so torch.load(weights_only=True) reads it):

    model          the state dict
    model_name     the registry name; model_options: the options create_model rebuilds it with
    train_config   TrainConfig as a dict (query_input and use_subtitles say what the data layer feeds it)
    video_dim, query_dim   the input sizes it was built for
    ...            what the trainer adds (epoch, val_metrics, optimizer, state)

Checkpoints written before the registry have no model_name: they are AMDNet's, with `model_config`
and the loss weights in train_config, and load as such.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from amdnet.atomic import atomic_path
from amdnet.config import TrainConfig
from models.configs import AMDNET_LOSS_FIELDS, model_facts, model_options


@dataclass(frozen=True)
class ModelSource:
    name: str
    options: dict = field(hash=False)
    query_input: str  # which query group the data layer reads ("pooled" or "tokens")
    use_subtitles: bool  # whether a video's input rows carry its subtitle features beside the visual ones
    checkpoint: str | None = None  # a Train checkpoint; None: a training-free model built from its options

    @classmethod
    def from_checkpoint(cls, path: Path) -> "ModelSource":
        state = read_checkpoint(path)
        train = state["train_config"]
        if "model_name" in state:
            name, options = state["model_name"], state["model_options"]
        else:  # before the registry: AMDNet, its loss weights among the train settings
            name, options = "amdnet", {**state["model_config"], **{key: train[key] for key in AMDNET_LOSS_FIELDS if key in train}}
        return cls(name, options, train.get("query_input", "pooled"), bool(train.get("use_subtitles", False)), str(path))

    @classmethod
    def training_free(cls, config: dict) -> "ModelSource":
        """The model of a checked pipeline config whose model is not trained (model.name's facts)."""
        name = config["model"]["name"]
        if model_facts(name).trainable:
            raise ValueError(f"model {name!r} is trained: its source is the checkpoint Train writes")
        # Training settings do not apply: it reads the one query input it has, and no subtitles.
        return cls(name, model_options(config), model_facts(name).query_inputs[0], False)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "ModelSource":
        return cls(**json.loads(text))

    def load(self, video_dim: int, query_dim: int, device: str | None = None):
        """The model, in eval mode, for features of these sizes (on `device`, default the CPU). A checkpoint
        built for other sizes raises ValueError naming both."""
        import torch

        from models.registry import create_model

        if self.checkpoint is None:
            model = create_model(self.name, video_dim, query_dim, **self.options)
        else:
            state = read_checkpoint(self.checkpoint)
            if (state["video_dim"], state["query_dim"]) != (video_dim, query_dim):
                raise ValueError(f"{self.checkpoint} expects video/query dims {state['video_dim']}/{state['query_dim']}, "
                                 f"but the features give {video_dim}/{query_dim}")
            model = create_model(self.name, video_dim, query_dim, **self.options)
            model.load_state_dict(state["model"])
        return model.to(torch.device(device or "cpu")).eval()


def read_checkpoint(path: Path) -> dict:
    import torch

    return torch.load(path, map_location="cpu", weights_only=True, mmap=True)


def save_checkpoint(path: Path, model, train_config: TrainConfig, input_dims: tuple[int, int], **extra) -> None:
    """Writes `model` (a RetrievalModel) atomically in the layout above."""
    import torch

    checkpoint = {"model": model.state_dict(), "model_name": model.name, "model_options": model.options,
                  "train_config": asdict(train_config), "video_dim": input_dims[0], "query_dim": input_dims[1], **extra}
    with atomic_path(path) as temporary:
        torch.save(checkpoint, temporary)


