import math

import pytest
import torch
import torch.nn.functional as F

from models import create_model, take_rows
from models.ms_sl import frame_nce_loss, key_clip_attention, paired_triplet_loss, proposal_windows
from models.registry import parameter_count
from model_batches import (CAPTION_TO_VIDEO, FRAME_LENGTHS, QUERY_DIM, VIDEO_DIM, check_one_optimiser_step,
                                 make_batch, video_batch)

pytestmark = pytest.mark.usefixtures("single_thread")
SMALL = {"hidden_size": 16, "map_size": 8, "max_frames": 16}


@pytest.mark.parametrize("video_dim, query_dim, expected", [(3072, 768, 4_852_992), (1024, 1024, 3_370_752)])
def test_parameter_count_matches_reference(video_dim, query_dim, expected):
    assert parameter_count(create_model("ms-sl", video_dim, query_dim)) == expected


def test_proposals_are_every_run_of_clips_shortest_first():
    weights, bounds = proposal_windows(3)
    assert bounds.tolist() == [[0, 0], [1, 1], [2, 2], [0, 1], [1, 2], [0, 2]]
    torch.testing.assert_close(weights, torch.tensor([
        [1, 0, 0], [0, 1, 0], [0, 0, 1], [0.5, 0.5, 0], [0, 0.5, 0.5], [1 / 3, 1 / 3, 1 / 3]]))
    assert proposal_windows(32)[0].shape == (528, 32)


def test_frame_nce_against_hand_computation():
    scores = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    row0 = math.log(math.exp(1) + math.exp(2) + math.exp(1) + math.exp(3)) - 1  # row 0 and column 0
    row1 = math.log(math.exp(3) + math.exp(4) + math.exp(2) + math.exp(4)) - 4
    assert frame_nce_loss(scores).item() == pytest.approx((row0 + row1) / 2, rel=1e-6)


def test_paired_triplet_against_hand_computation():
    scores = torch.tensor([[0.8, 0.5], [0.6, 0.4]])  # two captions: one negative each way
    wrong_vector = (max(0, 0.2 + 0.5 - 0.8) + max(0, 0.2 + 0.6 - 0.4)) / 2  # 0.2
    wrong_caption = (max(0, 0.2 + 0.6 - 0.8) + max(0, 0.2 + 0.5 - 0.4)) / 2  # 0.15
    for hard_pool in (None, 20):
        assert paired_triplet_loss(scores, 0.2, hard_pool).item() == pytest.approx(wrong_vector + wrong_caption)


def test_key_clip_attention_is_a_softmax_over_valid_frames():
    keys = torch.tensor([[1.0, 0.0], [0.0, 1.0], [5.0, 5.0]])
    values = torch.tensor([[1.0, 2.0], [3.0, 4.0], [100.0, 100.0]])
    mask = torch.tensor([True, True, False])  # the third frame is padding
    proposal = torch.tensor([2.0, 1.0])
    weights = torch.tensor([2.0, 1.0]).softmax(dim=0)  # unscaled key . proposal
    expected = weights[0] * values[0] + weights[1] * values[1]
    torch.testing.assert_close(key_clip_attention(proposal, keys, values, mask), expected)


def reference_score(model, batch, query: torch.Tensor, video: int) -> float:
    """MS-SL's inference score computed the long way, for one (unit query, video) pair: every proposal
    built explicitly, the best by cosine, its frame attention, 0.7 / 0.3."""
    clips = model.encode_clips(batch["clips"])[video]  # (N, d)
    n = clips.shape[0]
    proposals = [clips[start:start + length].mean(dim=0) for length in range(1, n + 1)
                 for start in range(n - length + 1)]
    cosines = torch.stack([F.cosine_similarity(query, p, dim=0) for p in proposals])
    best = int(cosines.argmax())
    keys, values, mask = model.encode_frames(batch)
    valid = int(mask[video].sum())
    weights = (keys[video, :valid] @ proposals[best]).softmax(dim=0)  # (F,)
    attended = weights @ values[video, :valid]
    return 0.7 * cosines[best].item() + 0.3 * F.cosine_similarity(query, attended, dim=0).item()


def test_score_equals_the_reference_computation_and_spans_its_key_proposal():
    model = create_model("ms-sl", VIDEO_DIM, QUERY_DIM, seed=0, **SMALL).eval()
    batch = make_batch()
    with torch.no_grad():
        videos = model.represent_videos(batch)
        queries = model.represent_queries(batch)
        scores = model.score(queries, videos)  # (6, 3)
        assert scores.shape == (6, 3)
        assert videos["frame_keys"].shape == (3, 16, 16) and videos["proposal_norms"].shape == (3, 36)
        for q in range(6):
            for v in range(3):
                assert scores[q, v].item() == pytest.approx(reference_score(model, batch, queries[q], v), abs=1e-5)
        pairs = take_rows(videos, CAPTION_TO_VIDEO)
        spans = model.spans(queries, pairs, None, "proposal")  # uniform clips: clip k covers [k/8, (k+1)/8]
        per_clip = torch.einsum("pd,pnd->pn", queries, pairs["clip_features"])
        best = model.proposal_cosines(per_clip, pairs["proposal_norms"]).argmax(dim=1)
        torch.testing.assert_close(spans, torch.stack([model.proposal_bounds[best, 0] / 8,
                                                       (model.proposal_bounds[best, 1] + 1) / 8], dim=1).float())
        assert model.spans(queries, pairs, None, "whole").tolist() == [[0.0, 1.0]] * 6
    with pytest.raises(ValueError, match="no span rule"):
        model.spans(queries, pairs, None, "anchor")


def test_a_video_is_represented_alike_alone_and_in_a_padded_batch():
    model = create_model("ms-sl", VIDEO_DIM, QUERY_DIM, seed=0, **SMALL).eval()
    batch = make_batch()
    with torch.no_grad():
        together = model.represent_videos(batch)
        for video in range(len(FRAME_LENGTHS)):
            alone = model.represent_videos(video_batch(batch, [video]))
            for key in together:
                torch.testing.assert_close(alone[key][0], together[key][video], msg=key)


def test_loss_terms_follow_the_reference_weights_and_are_deterministic():
    model = create_model("ms-sl", VIDEO_DIM, QUERY_DIM, seed=0, **SMALL)
    batch = make_batch()
    values = []
    for _ in range(2):
        torch.manual_seed(7)
        terms = model.loss(batch, epoch=1)
        values.append({name: value.item() for name, value in terms.items()})
    assert values[0] == values[1]
    assert set(values[0]) == set(model.loss_terms)
    assert values[0]["loss"] == pytest.approx(sum(v for k, v in values[0].items() if k != "loss"), rel=1e-6)
    model.eval()  # no dropout: the NCE terms are the weighted InfoNCE of the model's own scores
    terms = model.loss(batch, epoch=1)
    heavier = create_model("ms-sl", VIDEO_DIM, QUERY_DIM, seed=0, **SMALL, clip_nce_weight=0.04,
                           frame_nce_weight=0.08).eval()
    doubled = heavier.loss(batch, epoch=1)
    for term in ("clip_nce", "frame_nce"):
        assert doubled[term].item() == pytest.approx(2 * terms[term].item(), rel=1e-5)


def test_one_optimiser_step_follows_the_reference_schedule():
    model = create_model("ms-sl", VIDEO_DIM, QUERY_DIM, seed=0, **SMALL)
    check_one_optimiser_step(model, make_batch(), base_lr=model.reference_hparams("tvr")["train"]["lr"])


def test_reference_settings_per_dataset():
    tvr, activitynet, charades = (create_model("ms-sl", 1024, 1024).reference_hparams(name)
                                  for name in ("tvr", "activitynet", "charades"))
    assert tvr["model"]["margin"] == 0.1 and activitynet["model"]["margin"] == 0.2
    assert (charades["model"]["clip_scale_weight"], charades["model"]["frame_scale_weight"]) == (0.5, 0.5)
    assert tvr["train"] | {"seed": 0} == charades["train"] | {"seed": 0}
    assert (tvr["train"]["lr"], tvr["train"]["patience"], tvr["train"]["max_epochs"]) == (2.5e-4, 10, 100)
    for settings in (tvr, activitynet, charades):
        model = create_model("ms-sl", settings["inputs"]["video_dim"], settings["inputs"]["query_dim"],
                             **settings["model"])
        assert (model.config.hidden_size, model.config.hard_negative_start_epoch) == (384, 20)


def test_token_queries_are_required():
    model = create_model("ms-sl", VIDEO_DIM, QUERY_DIM, **SMALL)
    batch = make_batch()
    batch["queries"] = batch["queries"][:, 0]
    with pytest.raises(ValueError, match="query_input: tokens"):
        model.represent_queries(batch)


def test_loss_composes_the_terms_from_the_right_scores():
    """Without dropout and with a hard pool of 1 every negative is the hardest, so the loss is
    deterministic: it must equal the four terms computed from explicitly built proposals and frame vectors."""
    from amdnet.losses import info_nce_loss
    from models.losses import triplet_loss

    model = create_model("ms-sl", VIDEO_DIM, QUERY_DIM, seed=0, **SMALL, hard_pool_size=1).eval()
    batch = make_batch()
    terms = model.loss(batch, epoch=21)  # hard negatives from 0-based epoch 20
    queries = model.encode_queries(batch)  # (6, d)
    clips = model.encode_clips(batch["clips"])  # (3, 8, d)
    proposals = torch.stack([torch.stack([clips[v, start:start + length].mean(dim=0) for length in range(1, 9)
                                          for start in range(9 - length)]) for v in range(3)])  # (3, 36, d)
    cos = F.cosine_similarity(queries[:, None, None], proposals[None], dim=-1)  # (6, 3, 36)
    dot = (queries[:, None, None] * proposals[None]).sum(dim=-1)
    keys, values, mask = model.encode_frames(batch)
    attended = []
    for q, v in enumerate(CAPTION_TO_VIDEO.tolist()):
        proposal = proposals[v, cos[q, v].argmax()]
        weights = (keys[v] @ proposal).masked_fill(~mask[v], float("-inf")).softmax(dim=0)
        attended.append(weights @ values[v])
    attended = torch.stack(attended)  # (6, d): caption q's own-video frame vector
    frame_cos = F.cosine_similarity(queries[:, None], attended[None], dim=-1)  # (6, 6)
    expected = {"clip_nce": 0.02 * info_nce_loss(dot.amax(dim=-1), CAPTION_TO_VIDEO),
                "clip_trip": triplet_loss(cos.amax(dim=-1), CAPTION_TO_VIDEO, 0.2, True, 1),
                "frame_nce": 0.04 * frame_nce_loss(queries @ attended.T),
                "frame_trip": paired_triplet_loss(frame_cos, 0.2, 1)}
    for name, value in expected.items():
        assert terms[name].item() == pytest.approx(value.item(), rel=1e-5, abs=1e-7), name
    assert terms["loss"].item() == pytest.approx(sum(v.item() for v in expected.values()), rel=1e-5)
