import pytest
import torch
import torch.nn as nn

from amdnet import AMDNet, ModelConfig
from amdnet.optim import BertAdam, parameter_groups, warmup_linear_factor


def test_schedule_is_the_references_one_update_behind():
    """Update k uses progress (k - 1) / T: the first update has factor 0, the last a small positive one."""
    total = 1000
    assert warmup_linear_factor(1, total, 0.01) == 0.0
    assert warmup_linear_factor(6, total, 0.01) == pytest.approx(0.5)
    assert warmup_linear_factor(11, total, 0.01) == 1.0  # progress 10 / 1000: the end of the warm-up
    assert warmup_linear_factor(506, total, 0.01) == pytest.approx(0.5)
    assert warmup_linear_factor(total, total, 0.01) == pytest.approx(1 / total / 0.99)
    factors = [warmup_linear_factor(update, total, 0.01) for update in range(11, total + 1)]
    assert all(a > b > 0 for a, b in zip(factors, factors[1:]))
    assert warmup_linear_factor(1, 5, 0.0) == 1.0  # no warm-up: the first update runs at full rate
    for outside in (0, total + 1):
        with pytest.raises(ValueError):
            warmup_linear_factor(outside, total, 0.01)


def test_bert_adam_step_without_bias_correction_and_with_per_parameter_clipping():
    weight = nn.Parameter(torch.tensor([1.0, -2.0]))
    optimizer = BertAdam([weight], lr=0.1, weight_decay=0.01, max_grad_norm=1.0)
    weight.grad = torch.tensor([3.0, 4.0])  # norm 5: clipped to norm 1
    optimizer.step()
    grad = torch.tensor([3.0, 4.0]) / (5.0 + 1e-6)  # clip coefficient max_norm / (norm + 1e-6)
    first, second = 0.1 * grad, 0.001 * grad ** 2  # no bias correction
    update = first / (second.sqrt() + 1e-6) + 0.01 * torch.tensor([1.0, -2.0])
    torch.testing.assert_close(weight.data, torch.tensor([1.0, -2.0]) - 0.1 * update)


def test_weight_decay_exempts_the_parameters_the_reference_exempts():
    """Biases and LayerNorm weights are not decayed, except the weight of the LayerNorm before the
    global-vector linear, which the reference's name-based rule misses."""
    model = AMDNet(ModelConfig(hidden_size=16, standardize_video=True), video_dim=6, query_dim=5)
    decayed, not_decayed = parameter_groups(model, 0.01)
    names = {id(p): name for name, p in model.named_parameters()}
    assert decayed["weight_decay"] == 0.01 and not_decayed["weight_decay"] == 0.0
    assert sorted(names[id(p)] for p in decayed["params"]) == sorted([
        "query_projection.linear.weight", "video_projection.linear.weight", "position_table.weight",
        "global_norm.weight", "global_linear.weight", "anchor_head.weight",
        *(f"{block}.{linear}.weight" for block in ("self_attention", "moment_attention")
          for linear in ("query", "key", "value", "dense"))])
    not_decayed_names = sorted(names[id(p)] for p in not_decayed["params"])
    assert not_decayed_names == sorted(
        [name for name in names.values() if name.endswith(".bias")]
        + ["query_projection.norm.weight", "video_projection.norm.weight", "video_norm.weight",
           "self_attention.norm.weight", "moment_attention.norm.weight"])
