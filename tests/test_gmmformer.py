import math

import pytest
import torch

from model_batches import (CAPTION_TO_VIDEO, FRAME_LENGTHS, QUERY_DIM, VIDEO_DIM, check_one_optimiser_step,
                           make_batch, video_batch)
from models import create_model, take_rows
from models.gmmformer import gaussian_position_weights, query_diversity_loss
from models.losses import hard_negatives_on, sampled_negative_scores, triplet_loss
from models.registry import parameter_count

pytestmark = pytest.mark.usefixtures("single_thread")
SMALL = {"hidden_size": 16, "map_size": 8, "max_frames": 16}


@pytest.mark.parametrize("video_dim, query_dim, expected", [(3072, 768, 12_848_256), (1024, 1024, 11_366_016)])
def test_parameter_count_matches_reference(video_dim, query_dim, expected):
    assert parameter_count(create_model("gmmformer", video_dim, query_dim)) == expected


def test_gaussian_weights_are_the_references_mask_for_full_sequences():
    """Query position i: a normal density over the key grid linspace(0, 1, n), centre i / n, sigma =
    width / 9, divided by its row maximum."""
    n, width = 4, 0.5
    weights = gaussian_position_weights(torch.tensor([n]), n, width)[0, 0]  # (n, n)
    sigma = width / 9
    grid = [j / (n - 1) for j in range(n)]
    for i in range(n):
        density = [math.exp(-(g - i / n) ** 2 / (2 * sigma ** 2)) / (sigma * math.sqrt(2 * math.pi)) for g in grid]
        expected = [value / max(density) for value in density]
        assert weights[i].tolist() == pytest.approx(expected, rel=1e-5, abs=1e-30)


def test_gaussian_weights_of_a_shorter_sequence_use_its_own_length():
    padded = gaussian_position_weights(torch.tensor([3, 5]), 5, 1.0)[:, 0]  # (2, 5, 5)
    alone = gaussian_position_weights(torch.tensor([3]), 3, 1.0)[0, 0]  # (3, 3)
    torch.testing.assert_close(padded[0, :3, :3], alone)
    assert torch.all(padded[0, :, 3:] == 0)  # keys past the end


def test_triplet_against_hand_computation_with_hard_negatives():
    scores = torch.tensor([[0.9, 0.3], [0.5, 0.6], [0.2, 0.65]])  # 3 captions x 2 videos
    caption_to_video = torch.tensor([0, 0, 1])
    caption_side = (0 + max(0, 0.1 + 0.6 - 0.5) + max(0, 0.1 + 0.2 - 0.65)) / 3  # the one other video
    video0 = max(0, 0.1 + 0.2 - (0.9 + 0.5) / 2)  # its hardest other caption: 0.2
    video1 = max(0, 0.1 + 0.6 - 0.65)  # hardest of 0.3 and 0.6
    loss = triplet_loss(scores, caption_to_video, margin=0.1, hard=True, hard_pool_size=20)
    assert loss.item() == pytest.approx(caption_side + (video0 + video1) / 2, rel=1e-6)


def test_negative_sampling_draws_from_the_hard_pool_only_when_hard():
    scores = torch.tensor([[0.9, 0.1, 0.8, 0.3, 0.7]]).repeat(400, 1)  # the positive is column 0
    positive = torch.zeros(400, dtype=torch.long)
    torch.manual_seed(0)
    hard = sampled_negative_scores(scores, positive, hard_pool_size=2)  # the two best wrong columns
    assert sorted(set(hard.tolist())) == pytest.approx([0.7, 0.8])
    uniform = sampled_negative_scores(scores, positive, hard_pool_size=None)  # any wrong column
    assert sorted(set(uniform.tolist())) == pytest.approx([0.1, 0.3, 0.7, 0.8])
    assert not hard_negatives_on(epoch=30, hard_negative_start_epoch=30)  # 0-based epoch 29
    assert hard_negatives_on(epoch=31, hard_negative_start_epoch=30)


def test_query_diversity_against_hand_computation():
    queries = torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.0, 2.0]])
    caption_to_video = torch.tensor([0, 0, 1])  # captions 0 and 1 share a video: cosine 0.6
    expected = 2 * math.log(1 + math.exp(2.0 * (0.6 + 0.1))) / 3
    assert query_diversity_loss(queries, caption_to_video, margin=0.1, scale=2.0).item() == pytest.approx(expected)


def test_forward_shapes_scores_and_spans():
    model = create_model("gmmformer", VIDEO_DIM, QUERY_DIM, seed=0, **SMALL).eval()
    batch = make_batch()
    with torch.no_grad():
        videos = model.represent_videos(batch)
        queries = model.represent_queries(batch)
        assert {key: tuple(value.shape) for key, value in videos.items()} == {
            "clip_features": (3, 8, 16), "video_vector": (3, 16)}
        scores = model.score(queries, videos)
        clip_cos = torch.einsum("qd,vnd->qvn", queries, videos["clip_features"]).amax(dim=-1)
        torch.testing.assert_close(scores, 0.7 * clip_cos + 0.3 * queries @ videos["video_vector"].T)
        pairs = take_rows(videos, CAPTION_TO_VIDEO)
        best = torch.einsum("pd,pnd->pn", queries, pairs["clip_features"]).argmax(dim=1)
        spans = model.spans(queries, pairs, None, "best_clip")
        torch.testing.assert_close(spans, torch.stack([best / 8, (best + 1) / 8], dim=1).float())


def test_a_video_is_represented_alike_alone_and_in_a_padded_batch():
    """Deliberately unlike the reference, whose frame Gaussians span the batch's padded length."""
    model = create_model("gmmformer", VIDEO_DIM, QUERY_DIM, seed=0, **SMALL).eval()
    batch = make_batch()
    with torch.no_grad():
        together = model.represent_videos(batch)
        for video in range(len(FRAME_LENGTHS)):
            alone = model.represent_videos(video_batch(batch, [video]))
            for key in together:
                torch.testing.assert_close(alone[key][0], together[key][video], msg=key)


def test_loss_terms_are_deterministic_and_sum_to_the_total():
    model = create_model("gmmformer", VIDEO_DIM, QUERY_DIM, seed=0, **SMALL)
    batch = make_batch()
    values = []
    for _ in range(2):
        torch.manual_seed(3)
        values.append({name: value.item() for name, value in model.loss(batch, epoch=40).items()})
    assert values[0] == values[1]
    assert set(values[0]) == set(model.loss_terms)
    assert values[0]["loss"] == pytest.approx(sum(v for k, v in values[0].items() if k != "loss"), rel=1e-6)
    assert values[0]["query_div"] > 0  # videos 0 and 2 have several captions


def test_one_optimiser_step_follows_the_reference_schedule():
    model = create_model("gmmformer", VIDEO_DIM, QUERY_DIM, seed=0, **SMALL)
    check_one_optimiser_step(model, make_batch(), base_lr=model.reference_hparams("tvr")["train"]["lr"])


def test_same_seed_same_weights():
    first = create_model("gmmformer", VIDEO_DIM, QUERY_DIM, seed=5, **SMALL).state_dict()
    second = create_model("gmmformer", VIDEO_DIM, QUERY_DIM, seed=5, **SMALL).state_dict()
    other = create_model("gmmformer", VIDEO_DIM, QUERY_DIM, seed=6, **SMALL).state_dict()
    assert all(torch.equal(first[key], second[key]) for key in first)
    assert not torch.equal(first["clip_projection.linear.weight"], other["clip_projection.linear.weight"])


def test_reference_settings_per_dataset():
    hparams = {name: create_model("gmmformer", 1024, 1024).reference_hparams(name)
               for name in ("tvr", "activitynet", "charades")}
    assert [hparams[name]["train"]["lr"] for name in hparams] == [3e-4, 2.5e-4, 2.5e-4]
    assert [hparams[name]["model"]["hard_negative_start_epoch"] for name in hparams] == [30, 20, 100]
    assert hparams["charades"]["model"]["dropout"] == 0.15
    assert (hparams["activitynet"]["model"]["clip_nce_weight"], hparams["activitynet"]["model"]["diversity_weight"],
            hparams["activitynet"]["model"]["diversity_margin"]) == (0.02, 0.015, 0.2)
    for settings in hparams.values():
        assert settings["train"]["seed"] == 9527 and settings["train"]["patience"] == 10
        create_model("gmmformer", settings["inputs"]["video_dim"], settings["inputs"]["query_dim"], **settings["model"])


def test_loss_composes_the_terms_from_the_right_scores():
    """Deterministic without dropout and with a hard pool of 1 (every negative the hardest)."""
    from amdnet.losses import info_nce_loss

    model = create_model("gmmformer", VIDEO_DIM, QUERY_DIM, seed=0, **SMALL, hard_pool_size=1).eval()
    batch = make_batch()
    terms = model.loss(batch, epoch=31)
    queries = model.encode_queries(batch)  # (6, d)
    clips = model.encode_clips(batch["clips"])  # (3, 8, d)
    video = model.encode_frames(batch)  # (3, d)
    clip_cos = torch.nn.functional.cosine_similarity(queries[:, None, None], clips[None], dim=-1).amax(dim=-1)
    clip_dot = (queries[:, None, None] * clips[None]).sum(dim=-1).amax(dim=-1)  # (6, 3)
    frame_cos = torch.nn.functional.cosine_similarity(queries[:, None], video[None], dim=-1)  # (6, 3)
    expected = {"clip_nce": 0.05 * info_nce_loss(clip_dot, CAPTION_TO_VIDEO),
                "clip_trip": triplet_loss(clip_cos, CAPTION_TO_VIDEO, 0.1, True, 1),
                "frame_nce": 0.04 * info_nce_loss(queries @ video.T, CAPTION_TO_VIDEO),
                "frame_trip": triplet_loss(frame_cos, CAPTION_TO_VIDEO, 0.1, True, 1),
                "query_div": 0.001 * query_diversity_loss(queries, CAPTION_TO_VIDEO, 0.15, 32.0)}
    for name, value in expected.items():
        assert terms[name].item() == pytest.approx(value.item(), rel=1e-5, abs=1e-7), name


def test_uniform_video_side_negatives_are_other_videos_captions():
    from models.losses import video_negative_scores

    scores = torch.arange(12.0).view(4, 3)  # 4 captions x 3 videos
    own = torch.tensor([[1, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]], dtype=torch.bool)
    torch.manual_seed(0)
    drawn = [set() for _ in range(3)]
    for _ in range(200):
        for video, value in enumerate(video_negative_scores(scores, own, hardest=False).tolist()):
            drawn[video].add(value)
    assert drawn == [{6.0, 9.0}, {1.0, 4.0, 10.0}, {2.0, 5.0, 8.0}]
    assert video_negative_scores(scores, own, hardest=True).tolist() == [9.0, 10.0, 8.0]
