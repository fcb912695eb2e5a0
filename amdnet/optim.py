"""BERT-style Adam and the warm-up/linear-decay learning-rate schedule used by AMDNet."""
from __future__ import annotations

import torch
import torch.nn as nn


class BertAdam(torch.optim.Optimizer):
    """Adam as in the original BERT code: no bias correction, per-parameter gradient clipping,
    decoupled weight decay added to the update. The learning rate in each group is the already
    scheduled one (the trainer sets it before every step)."""

    def __init__(self, params, lr: float, betas=(0.9, 0.999), eps: float = 1e-6,
                 weight_decay: float = 0.0, max_grad_norm: float = 1.0):
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, max_grad_norm=max_grad_norm)
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None if closure is None else closure()
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for param in group["params"]:
                if param.grad is None:
                    continue
                grad = param.grad
                if group["max_grad_norm"] > 0:
                    # Clipped per parameter tensor, not globally: that is BERT's rule.
                    grad_norm = grad.norm()
                    grad = grad * (group["max_grad_norm"] / (grad_norm + 1e-6)).clamp(max=1.0)
                state = self.state[param]
                if not state:
                    state["exp_avg"] = torch.zeros_like(param)
                    state["exp_avg_sq"] = torch.zeros_like(param)
                exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
                exp_avg.mul_(beta1).add_(grad, alpha=1 - beta1)
                exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
                update = exp_avg / (exp_avg_sq.sqrt() + group["eps"])
                if group["weight_decay"] > 0:
                    update = update + group["weight_decay"] * param
                param.add_(update, alpha=-group["lr"])
        return loss


# The reference exempts parameters from weight decay by name: "bias", "LayerNorm.weight" and
# "LayerNorm.bias". Its LayerNorm before the global-vector linear is named in lower case, so that rule
# misses its weight, which is decayed. We keep that: it decides whether a run matches the reference.
DECAYED_LAYER_NORMS = ("global_norm",)


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two groups: weight decay on weights (and on the DECAYED_LAYER_NORMS' weights), none on biases
    and other LayerNorm parameters."""
    no_decay_ids = {id(module.weight) for name, module in model.named_modules()
                    if isinstance(module, nn.LayerNorm) and name not in DECAYED_LAYER_NORMS}
    no_decay_ids |= {id(p) for name, p in model.named_parameters() if name.endswith("bias")}
    decayed = [p for p in model.parameters() if id(p) not in no_decay_ids]
    not_decayed = [p for p in model.parameters() if id(p) in no_decay_ids]
    return [{"params": decayed, "weight_decay": weight_decay},
            {"params": not_decayed, "weight_decay": 0.0}]


def warmup_linear_factor(update: int, total_updates: int, warmup_proportion: float) -> float:
    """Learning-rate multiplier of the 1-based `update` of `total_updates`.

    As in the reference, update k is scheduled at progress (k - 1) / total_updates: the first update
    has factor 0, the factor rises linearly to 1.0 at progress warmup_proportion, then falls linearly
    towards 0.0 at progress 1, which no update reaches (the last one has 1 / total_updates / (1 - warmup)).
    """
    if not 1 <= update <= total_updates:
        raise ValueError(f"update must be in [1, {total_updates}], got {update}")
    progress = (update - 1) / total_updates
    if progress < warmup_proportion:
        return progress / warmup_proportion
    return (1.0 - progress) / (1.0 - warmup_proportion)
