"""Every registered model's options and the facts a pipeline config is checked against, without torch.

A Luigi process loads and checks its config before it knows whether it will run a model at all, so
this module imports no model code: each model's options dataclass lives here (fields with ranges, as
amdnet.config's), and `MODEL_FACTS` says what each model reads and whether it trains. The registry
refuses a model class whose attributes disagree with its facts (models/registry.py), so the two cannot
drift apart.
"""
from __future__ import annotations

from dataclasses import dataclass

from amdnet.config import DEFAULT_SPAN_RULE, SPAN_RULES, ModelConfig, _check_ranges, ranged

DEFAULT_MODEL = "amdnet"
# AMDNet's loss weights are in the config's train section (where they were before there were other
# models); every other model keeps its loss weights among its own options.
AMDNET_LOSS_FIELDS = ("lambda_nce", "lambda_div", "lambda_rel", "rel_margin", "div_target")


class _TwoViewChecks:
    """The checks MS-SL's and GMMFormer's options share (both read a clip view and a frame view, with
    multi-head attention): field ranges, heads dividing the hidden size, clips within the position table."""

    def __post_init__(self):
        _check_ranges(self)
        if self.hidden_size % self.n_heads:
            raise ValueError(f"hidden_size ({self.hidden_size}) must be divisible by n_heads ({self.n_heads})")
        if self.map_size > self.max_frames:
            raise ValueError(f"map_size ({self.map_size}) exceeds max_frames ({self.max_frames}), the clip position table")


@dataclass
class MSSLConfig(_TwoViewChecks):
    hidden_size: int = ranged(384, minimum=1)
    n_heads: int = ranged(4, minimum=1)
    map_size: int = ranged(32, minimum=1)  # clips per video
    max_frames: int = ranged(128, minimum=1)  # frame rows per video; also the rows of both position tables
    max_tokens: int = ranged(30, minimum=1)  # query tokens kept
    input_dropout: float = ranged(0.1, minimum=0, below=1)
    dropout: float = ranged(0.1, minimum=0, below=1)
    margin: float = ranged(0.2, minimum=0)  # of both triplet losses
    hard_negative_start_epoch: int = ranged(20, minimum=0)  # 0-based, as the reference counts
    hard_pool_size: int = ranged(20, minimum=1)
    clip_nce_weight: float = ranged(0.02, minimum=0)
    frame_nce_weight: float = ranged(0.04, minimum=0)
    clip_scale_weight: float = ranged(0.7, minimum=0)
    frame_scale_weight: float = ranged(0.3, minimum=0)



@dataclass
class GMMFormerConfig(_TwoViewChecks):
    hidden_size: int = ranged(384, minimum=1)
    n_heads: int = ranged(4, minimum=1)
    map_size: int = ranged(32, minimum=1)
    max_frames: int = ranged(128, minimum=1)  # frame rows per video; also the rows of both position tables
    max_tokens: int = ranged(30, minimum=1)
    input_dropout: float = ranged(0.2, minimum=0, below=1)
    dropout: float = ranged(0.2, minimum=0, below=1)
    margin: float = ranged(0.1, minimum=0)
    hard_negative_start_epoch: int = ranged(30, minimum=0)  # 0-based, as the reference counts
    hard_pool_size: int = ranged(20, minimum=1)
    clip_nce_weight: float = ranged(0.05, minimum=0)
    frame_nce_weight: float = ranged(0.04, minimum=0)
    diversity_weight: float = ranged(0.001, minimum=0)  # of the query diversity loss
    diversity_margin: float = ranged(0.15, minimum=-1, maximum=1)  # a margin on cosines
    diversity_scale: float = ranged(32.0, above=0)
    clip_scale_weight: float = ranged(0.7, minimum=0)
    frame_scale_weight: float = ranged(0.3, minimum=0)



@dataclass
class ClipZeroShotConfig:
    max_frames: int = ranged(128, minimum=1)  # rows per video (the data layer mean-samples longer videos)
    max_scale: int = ranged(8, minimum=1)  # windows of 1, 2, 4, ... rows up to this many; 1: single rows only

    def __post_init__(self):
        _check_ranges(self)


@dataclass(frozen=True)
class ModelFacts:
    config: type  # the options dataclass: the config's model section, without `name`
    trainable: bool  # False: no Train stage; Evaluate and Index build the model from its options
    video_inputs: tuple[str, ...]  # what the batch must hold: "clips", "frames" (models/inputs.py)
    query_inputs: tuple[str, ...]  # the values train.query_input may take: "pooled", "tokens"
    span_rules: tuple[str, ...]  # how a retrieved video's moment may be chosen; the first is the default
    same_clip: bool = False  # visual and text features must come from one CLIP model (check_same_clip)

    @property
    def default_span_rule(self) -> str:
        return self.span_rules[0]


MODEL_FACTS = {
    "amdnet": ModelFacts(ModelConfig, True, ("clips",), ("pooled", "tokens"),
                         (DEFAULT_SPAN_RULE, *(rule for rule in SPAN_RULES if rule != DEFAULT_SPAN_RULE))),
    "ms-sl": ModelFacts(MSSLConfig, True, ("clips", "frames"), ("tokens",), ("proposal", "whole")),
    "gmmformer": ModelFacts(GMMFormerConfig, True, ("clips", "frames"), ("tokens",), ("grown", "best_clip", "whole")),
    "clip-zero-shot": ModelFacts(ClipZeroShotConfig, False, ("frames",), ("pooled",), ("best_window", "whole"),
                                 same_clip=True),
}


def model_facts(name: str) -> ModelFacts:
    if name not in MODEL_FACTS:
        raise ValueError(f"unknown model {name!r}; registered models: {', '.join(sorted(MODEL_FACTS))}")
    return MODEL_FACTS[name]


def model_options(config: dict) -> dict:
    """The options `create_model` takes, from a checked pipeline config: the named model's subsection
    of the model section, plus, for AMDNet, the loss weights of its train section."""
    name = config["model"]["name"]
    options = dict(config["model"][name])
    if name == "amdnet":
        options |= {key: config["train"][key] for key in AMDNET_LOSS_FIELDS}
    return options


def check_same_clip(config: dict) -> None:
    """Raise ValueError (one line) unless the pipeline config's visual and text features come from one
    CLIP model: a single visual part with backbone "clip", text.encoder "clip-text", the same model
    name and pretrained tag, and, for random weights (pretrained null), the same seed."""
    visual, text = config["visual"], config["text"]
    if text["encoder"] != "clip-text":
        raise ValueError(f"model clip-zero-shot compares CLIP text and image vectors, but text.encoder is "
                         f"{text['encoder']!r}: set text.encoder: clip-text")
    parts = visual["parts"]
    if len(parts) != 1 or next(iter(parts.values()))["backbone"] != "clip":
        described = ", ".join(f"{name} ({part['backbone']})" for name, part in parts.items())
        raise ValueError(f"model clip-zero-shot needs exactly one visual part with backbone clip, got {described}")
    (name, part), = parts.items()
    same = part["model"] == text["model"] and part["pretrained"] == text["pretrained"]
    if same and part["pretrained"] is None:
        same = part.get("seed", 0) == text.get("seed", 0)
    if not same:
        raise ValueError(f"model clip-zero-shot needs visual and text features from the same CLIP model: "
                         f"visual.parts.{name} is {part['model']}/{part['pretrained']} (seed {part.get('seed', 0)}), "
                         f"text is {text['model']}/{text['pretrained']} (seed {text.get('seed', 0)})")


