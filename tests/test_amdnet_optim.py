import pytest
import torch
import torch.nn as nn

from amdnet import AMDNet, ModelConfig
from amdnet.optim import BertAdam, parameter_groups, warmup_linear_factor


def test_schedule_peaks_at_warmup_end_and_ends_at_zero():
    total = 1000
    assert warmup_linear_factor(10, total, 0.01) == 1.0
    assert warmup_linear_factor(total, total, 0.01) == 0.0
    assert warmup_linear_factor(5, total, 0.01) == pytest.approx(0.5)
    assert warmup_linear_factor(1, total, 0.01) == pytest.approx(0.1)
    assert warmup_linear_factor(505, total, 0.01) == pytest.approx(0.5)
    factors = [warmup_linear_factor(step, total, 0.01) for step in range(10, total + 1)]
    assert all(a > b for a, b in zip(factors, factors[1:]))
    with pytest.raises(ValueError):
        warmup_linear_factor(0, total, 0.01)


def test_bert_adam_step_without_bias_correction_and_with_per_parameter_clipping():
    weight = nn.Parameter(torch.tensor([1.0, -2.0]))
    optimizer = BertAdam([weight], lr=0.1, weight_decay=0.01, max_grad_norm=1.0)
    weight.grad = torch.tensor([3.0, 4.0])  # norm 5: clipped to norm 1
    optimizer.step()
    grad = torch.tensor([3.0, 4.0]) / (5.0 + 1e-6)  # clip coefficient max_norm / (norm + 1e-6)
    first, second = 0.1 * grad, 0.001 * grad ** 2  # no bias correction
    update = first / (second.sqrt() + 1e-6) + 0.01 * torch.tensor([1.0, -2.0])
    torch.testing.assert_close(weight.data, torch.tensor([1.0, -2.0]) - 0.1 * update)


def test_no_weight_decay_on_biases_and_layer_norm():
    model = AMDNet(ModelConfig(hidden_size=16), video_dim=6, query_dim=5)
    decayed, not_decayed = parameter_groups(model, 0.01)
    names = {id(p): name for name, p in model.named_parameters()}
    decayed_names = {names[id(p)] for p in decayed["params"]}
    not_decayed_names = {names[id(p)] for p in not_decayed["params"]}
    assert decayed["weight_decay"] == 0.01 and not_decayed["weight_decay"] == 0.0
    assert "self_attention.query.weight" in decayed_names and "position_table.weight" in decayed_names
    assert {"self_attention.query.bias", "video_norm.weight", "query_projection.norm.weight"} <= not_decayed_names
    assert len(decayed_names) + len(not_decayed_names) == len(list(model.parameters()))
