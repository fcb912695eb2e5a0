"""AMDNet in the model family: the network of amdnet/model.py (unchanged, so existing checkpoints load
into it) with the common interface of models/registry.py on top.

Options are ModelConfig's fields plus the loss weights, which amdnet/config.py keeps in TrainConfig
(lambda_nce, lambda_div, lambda_rel, rel_margin, div_target): a model's losses belong to the model here.
"""
from __future__ import annotations

from dataclasses import asdict

import torch
import torch.nn.functional as F

from amdnet.config import ModelConfig, TrainConfig, config_from_dict
from amdnet.losses import amdnet_loss, max_dot_scores
from amdnet.model import AMDNet
from amdnet.moments import DEFAULT_SPAN_RULE, SPAN_RULES, moment_spans
from models.registry import RetrievalModel, Rows, register_model

LOSS_FIELDS = ("lambda_nce", "lambda_div", "lambda_rel", "rel_margin", "div_target")


def _reference(hidden_size: int, dropout: float, lr: float, max_epochs: int, patience: int, seed: int,
               lambda_nce: float) -> dict:
    """A row of the reference-settings table in docs/amdnet.md."""
    return {
        "model": {"hidden_size": hidden_size, "input_dropout": dropout, "dropout": dropout, "lambda_nce": lambda_nce},
        "train": {"lr": lr, "batch_size": 128, "max_epochs": max_epochs, "patience": patience, "seed": seed,
                  "weight_decay": 0.01, "warmup_proportion": 0.01, "max_grad_norm": 1.0, "query_input": "pooled"},
        "inputs": {"video": "CLIP ViT-B/32 image features per frame", "video_dim": 512, "query_dim": 512,
                   "query": "one CLIP ViT-B/32 text vector per query"},
    }


@register_model("amdnet")
class AMDNetModel(AMDNet, RetrievalModel):
    Config = ModelConfig
    video_inputs = ("clips",)
    query_input = "pooled"
    span_rules = SPAN_RULES
    default_span_rule = DEFAULT_SPAN_RULE
    loss_terms = ("loss", "nce", "div", "rel")
    reference_datasets = {
        "tvr": _reference(384, 0.2, 3e-4, 200, 15, 9527, 0.04),
        "activitynet": _reference(256, 0.2, 2.5e-4, 100, 15, 3407, 0.02),
        "charades": _reference(256, 0.15, 2.5e-4, 100, 10, 3407, 0.02),
    }

    def __init__(self, config: ModelConfig, video_dim: int, query_dim: int, loss_config: TrainConfig | None = None):
        super().__init__(config, video_dim, query_dim)
        self.loss_config = TrainConfig() if loss_config is None else loss_config

    @classmethod
    def build(cls, video_dim: int, query_dim: int, **options) -> "AMDNetModel":
        loss_options = {key: options.pop(key) for key in LOSS_FIELDS if key in options}
        return cls(config_from_dict(ModelConfig, options), video_dim, query_dim,
                   config_from_dict(TrainConfig, loss_options))

    @property
    def options(self) -> dict:
        return asdict(self.config) | {key: getattr(self.loss_config, key) for key in LOSS_FIELDS}

    def represent_videos(self, batch: dict) -> Rows:
        videos = self.encode_videos(batch["clips"])
        return {"clip_features": F.normalize(videos.clip_features, dim=-1),  # (B, N, d)
                "proposals": F.normalize(videos.proposals, dim=-1),  # (B, K, d)
                "centers": videos.centers, "widths": videos.widths}  # (B, K)

    def represent_queries(self, batch: dict) -> torch.Tensor:
        return F.normalize(self.encode_queries(batch["queries"], batch.get("token_mask")), dim=-1)  # (Nq, d)

    def score(self, queries: torch.Tensor, videos: Rows) -> torch.Tensor:
        return max_dot_scores(queries, videos["clip_features"])  # (Q, V): best clip cosine

    def spans(self, queries: torch.Tensor, videos: Rows, clip_spans: torch.Tensor | None, rule: str, *,
              pair_videos: torch.Tensor | None = None) -> torch.Tensor:
        self.check_rule(rule)
        return moment_spans(rule, queries, videos["clip_features"], videos["proposals"], videos["centers"],
                            videos["widths"], pair_videos=pair_videos, clip_spans=clip_spans)

    def loss(self, batch: dict, epoch: int) -> dict[str, torch.Tensor]:
        token_mask = batch.get("token_mask")
        # The query projection runs twice, as in the reference: each loss sees its own dropout mask.
        score_queries = self.encode_queries(batch["queries"], token_mask)  # (Nq, d)
        relevance_queries = self.encode_queries(batch["queries"], token_mask)  # (Nq, d)
        terms = amdnet_loss(score_queries, self.encode_videos(batch["clips"]), batch["caption_to_video"],
                            self.loss_config, relevance_queries=relevance_queries)
        return dict(zip(self.loss_terms, terms))
