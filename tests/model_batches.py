"""Small batches in the models' batch format (models/inputs.py) and the optimiser-step check shared by
the tests of the trainable models."""
from __future__ import annotations

import torch

from amdnet.optim import BertAdam, warmup_linear_factor
from amdnet.data import collate_frames

VIDEO_DIM, QUERY_DIM = 12, 10
CAPTION_TO_VIDEO = torch.tensor([0, 0, 1, 2, 2, 2])
TOKEN_LENGTHS = torch.tensor([4, 6, 3, 5, 2, 6])
FRAME_LENGTHS = (5, 9, 7)


def make_batch(seed: int = 0, map_size: int = 8) -> dict:
    """3 videos of 5, 9 and 7 frame rows, 6 captions of 2-6 tokens (padding zero, as collate gives)."""
    generator = torch.Generator().manual_seed(seed)
    frames, frame_mask = collate_frames([torch.randn(n, VIDEO_DIM, generator=generator) for n in FRAME_LENGTHS])
    token_mask = torch.arange(int(TOKEN_LENGTHS.max())) < TOKEN_LENGTHS.unsqueeze(1)  # (6, 6)
    tokens = torch.randn(6, 6, QUERY_DIM, generator=generator) * token_mask.unsqueeze(-1)
    return {"clips": torch.randn(len(FRAME_LENGTHS), map_size, VIDEO_DIM, generator=generator),
            "frames": frames, "frame_mask": frame_mask, "queries": tokens, "token_mask": token_mask,
            "caption_to_video": CAPTION_TO_VIDEO.clone()}


def video_batch(batch: dict, index: list[int]) -> dict:
    """The videos `index` of a batch alone, frames cut to their own longest row count."""
    length = int(batch["frame_mask"][index].sum(dim=1).max())
    return {"clips": batch["clips"][index], "frames": batch["frames"][index, :length],
            "frame_mask": batch["frame_mask"][index, :length]}


def check_one_optimiser_step(model, batch: dict, base_lr: float, weight_decay: float = 0.01) -> None:
    """BertAdam updates at the reference schedule (warm-up 1% of 100 updates, then linear decay): update 1
    has learning rate 0, so nothing moves; update 51 has base_lr * (1 - 0.5) / (1 - 0.01), and every
    parameter moves by exactly -lr * (m / (sqrt(v) + 1e-6) + decay * p), m and v the moment averages
    (0.9 / 0.999, no bias correction) of its gradients clipped to norm 1, decay 0.01 on weights and
    none on biases and LayerNorm parameters."""
    groups = model.parameter_groups(weight_decay)
    decay_of = {id(p): group["weight_decay"] for group in groups for p in group["params"]}
    named = list(model.named_parameters())
    assert len(decay_of) == len(named)
    for name, p in named:
        exempt = name.endswith("bias") or ".norm." in name
        assert decay_of[id(p)] == (0.0 if exempt else weight_decay), name
    optimizer = BertAdam(groups, lr=base_lr, max_grad_norm=1.0)
    model.train()
    first = {id(p): torch.zeros_like(p) for _, p in named}
    second = {id(p): torch.zeros_like(p) for _, p in named}
    for update, expected_factor in ((1, 0.0), (51, 0.5 / 0.99)):
        factor = warmup_linear_factor(update, 100, 0.01)
        assert factor == expected_factor
        torch.manual_seed(update)
        optimizer.zero_grad(set_to_none=True)
        model.loss(batch, epoch=1)["loss"].backward()
        before = {id(p): p.detach().clone() for _, p in named}
        for group in optimizer.param_groups:
            group["lr"] = base_lr * factor
        optimizer.step()
        for name, p in named:
            assert p.grad is not None, f"{name} gets no gradient"
            clipped = p.grad * min(1.0, 1.0 / (p.grad.norm().item() + 1e-6))
            first[id(p)] = 0.9 * first[id(p)] + 0.1 * clipped
            second[id(p)] = 0.999 * second[id(p)] + 0.001 * clipped ** 2
            step = first[id(p)] / (second[id(p)].sqrt() + 1e-6) + decay_of[id(p)] * before[id(p)]
            torch.testing.assert_close(p.detach(), before[id(p)] - base_lr * factor * step, msg=name)
            if factor == 0.0:
                assert torch.equal(p.detach(), before[id(p)]), name
    assert any(not torch.equal(p.detach(), before[id(p)]) for _, p in named)
