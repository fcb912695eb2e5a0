import math

import pytest
import torch
import torch.nn.functional as F

from amdnet import TrainConfig
from amdnet.losses import (amdnet_loss, diversity_loss, info_nce_loss, max_dot_scores, relevance_loss)
from amdnet.model import VideoEncoding


@pytest.fixture
def batch():
    generator = torch.Generator().manual_seed(0)
    queries = torch.randn(5, 4, generator=generator)  # (Nq, d)
    clip_features = torch.randn(3, 6, 4, generator=generator)  # (B, N, d)
    caption_to_video = torch.tensor([0, 0, 1, 2, 2])
    return queries, clip_features, caption_to_video


def test_max_dot_scores_against_loop(batch):
    queries, clip_features, _ = batch
    scores = max_dot_scores(queries, clip_features)
    for i in range(5):
        for j in range(3):
            assert scores[i, j].item() == pytest.approx(max((queries[i] @ clip_features[j, n]).item()
                                                            for n in range(6)), rel=1e-5)


def test_info_nce_against_loop(batch):
    queries, clip_features, caption_to_video = batch
    scores = max_dot_scores(queries, clip_features)
    text_to_video = sum(math.log(sum(math.exp(scores[i, j]) for j in range(3))) - scores[i, caption_to_video[i]]
                        for i in range(5)) / 5
    video_to_text = 0.0
    for j in range(3):
        everything = math.log(sum(math.exp(scores[i, j]) for i in range(5)))
        own = math.log(sum(math.exp(scores[i, j]) for i in range(5) if caption_to_video[i] == j))
        video_to_text += (everything - own) / 3
    assert info_nce_loss(scores, caption_to_video).item() == pytest.approx(float(text_to_video + video_to_text), rel=1e-5)


def test_diversity_against_loop():
    masks = torch.rand(2, 3, 8) + 0.01
    expected = 0.0
    for b in range(2):
        normalised = [masks[b, k] / masks[b, k].sum() for k in range(3)]
        for k in range(3):
            for m in range(3):
                expected += ((normalised[k] @ normalised[m]).item() - (0.15 if k == m else 0.0)) ** 2 / 2
    assert diversity_loss(masks, 0.15).item() == pytest.approx(expected, rel=1e-5)


def test_relevance_against_loop(batch):
    queries, _, caption_to_video = batch
    proposals = torch.randn(3, 4, 4)  # (B, K, d)
    global_vector = torch.randn(3, 4)
    expected = 0.0
    for i in range(5):
        video = caption_to_video[i]
        positive = max(F.cosine_similarity(queries[i], proposals[video, m], dim=0).item() for m in range(4))
        reference = F.cosine_similarity(queries[i], global_vector[video], dim=0).item()
        expected += max(0.0, 0.02 + reference - positive) / 5
    loss = relevance_loss(queries, proposals, global_vector, caption_to_video, margin=0.02)
    assert loss.item() == pytest.approx(expected, rel=1e-5)


def test_total_is_the_weighted_sum_of_terms(batch):
    queries, clip_features, caption_to_video = batch
    masks = torch.rand(3, 4, 6) + 0.01
    videos = VideoEncoding(clip_features, torch.randn(3, 4), torch.rand(3, 4), torch.rand(3, 4), masks,
                           torch.randn(3, 4, 4))
    config = TrainConfig(lambda_nce=0.5, lambda_div=2.0, lambda_rel=3.0)
    terms = amdnet_loss(queries, videos, caption_to_video, config)
    assert terms.total.item() == pytest.approx(0.5 * terms.nce.item() + 2.0 * terms.div.item()
                                               + 3.0 * terms.rel.item(), rel=1e-6)
    assert terms.div.item() == pytest.approx(diversity_loss(masks, 0.15).item())
