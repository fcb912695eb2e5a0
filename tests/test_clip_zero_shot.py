import pytest
import torch
import torch.nn.functional as F

from models import create_model, take_rows
from models.clip_zero_shot import window_scales
from models.configs import check_same_clip
from amdnet.data import collate_frames


def one_hot(index: int, dim: int = 8) -> torch.Tensor:
    return F.one_hot(torch.tensor(index), dim).float()


def zero_shot_batch(videos: list[torch.Tensor], queries: torch.Tensor) -> dict:
    frames, frame_mask = collate_frames(videos)
    return {"frames": frames, "frame_mask": frame_mask, "queries": queries}


def test_it_is_training_free():
    model = create_model("clip-zero-shot", 8, 8)
    assert not model.trainable and sum(1 for _ in model.parameters()) == 0
    with pytest.raises(TypeError, match="not trainable"):
        model.loss({}, epoch=1)
    with pytest.raises(ValueError, match="512-d and the query features 768-d"):
        create_model("clip-zero-shot", 512, 768)


def test_window_scales_are_powers_of_two():
    assert window_scales(8, 128) == [1, 2, 4, 8]
    assert window_scales(6, 128) == [1, 2, 4]
    assert window_scales(64, 5) == [1, 2, 4]


def test_single_rows_find_the_right_video_and_row():
    """Video 1's row 3 is the query's direction: video 1 ranks first and the span is row 3 of its 5."""
    videos = [torch.stack([one_hot(i) for i in (0, 1, 2)]) * 3.0,  # rows need not be unit vectors
              torch.stack([one_hot(i) for i in (4, 5, 6, 7, 3)]) * 0.5 + 0.01]
    model = create_model("clip-zero-shot", 8, 8, max_scale=1, max_frames=16)
    batch = zero_shot_batch(videos, torch.stack([one_hot(3) * 2.0, one_hot(1)]))
    represented = model.represent_videos(batch)
    queries = model.represent_queries(batch)
    scores = model.score(queries, represented)  # (2, 2)
    assert scores.argmax(dim=1).tolist() == [1, 0]
    pairs = take_rows(represented, torch.tensor([1, 0]))
    spans = model.spans(queries, pairs, None, model.default_span_rule)
    torch.testing.assert_close(spans, torch.tensor([[4 / 5, 5 / 5], [1 / 3, 2 / 3]]))
    assert scores[0, 1].item() == pytest.approx(F.cosine_similarity(one_hot(3), videos[1][4], dim=0).item())


def test_multiple_scales_pick_the_span_the_whole_moment_covers():
    """Rows 2-5 of a 10-row video each hold the query's direction plus their own noise: each row alone
    has cosine 1/sqrt(1 + 0.9^2) = 0.74 with it, their mean 1/sqrt(1 + 0.9^2/4) = 0.91. The best window
    is the 4-row one over rows 2-5, span [0.2, 0.6]; with single rows only, one row of them wins."""
    direction = one_hot(0, 16)
    rows = [one_hot(6 + i, 16) for i in range(10)]  # unrelated content
    for row in range(2, 6):
        rows[row] = direction + 0.9 * one_hot(1 + row, 16)  # noise in its own dimension
    video = torch.stack(rows)  # (10, 16)
    batch = zero_shot_batch([video, video.flip(0)[:7]], direction.unsqueeze(0))
    multi = create_model("clip-zero-shot", 16, 16, max_scale=8, max_frames=16)
    represented = multi.represent_videos(batch)
    query = multi.represent_queries(batch)
    pair = take_rows(represented, torch.tensor([0]))
    torch.testing.assert_close(multi.spans(query, pair, None, "best_window"), torch.tensor([[0.2, 0.6]]))
    assert multi.score(query, represented)[0, 0].item() == pytest.approx((1 + 0.9 ** 2 / 4) ** -0.5, rel=1e-5)
    single = create_model("clip-zero-shot", 16, 16, max_scale=1, max_frames=16)
    span = single.spans(query, take_rows(single.represent_videos(batch), torch.tensor([0])), None, "best_window")
    assert span[0, 1] - span[0, 0] == pytest.approx(0.1) and 0.2 <= span[0, 0] <= 0.5
    assert single.score(query, single.represent_videos(batch))[0, 0].item() == pytest.approx(
        (1 + 0.9 ** 2) ** -0.5, rel=1e-5)


def test_windows_never_run_past_a_short_video():
    """A 3-row video in a batch padded to 16 rows: no window of 4 or 8 rows, none past row 3."""
    model = create_model("clip-zero-shot", 8, 8, max_scale=8, max_frames=16)
    represented = model.represent_videos(zero_shot_batch([torch.ones(3, 8), torch.ones(12, 8)],
                                                         torch.ones(1, 8)))
    valid_spans = represented["window_spans"][0][represented["window_valid"][0]]  # (windows, 2)
    assert len(valid_spans) == 3 + 2  # 3 single rows, 2 pairs
    assert valid_spans[:, 1].max().item() == pytest.approx(1.0)
    assert represented["windows"].shape[1] == sum(16 - scale + 1 for scale in (1, 2, 4, 8))


CLIP = {"backbone": "clip", "model": "ViT-B-32", "pretrained": "openai", "seed": 0}


def config(part: dict | None = None, parts: dict | None = None, **text) -> dict:
    text = {"encoder": "clip-text", "model": "ViT-B-32", "pretrained": "openai", "seed": 0} | text
    return {"visual": {"parts": parts if parts is not None else {"clip": CLIP | (part or {})}}, "text": text}


def test_same_clip_model_is_accepted():
    check_same_clip(config())
    check_same_clip(config({"pretrained": None, "seed": 3}, pretrained=None, seed=3))  # one random CLIP


@pytest.mark.parametrize("bad, expected", [
    (config(encoder="hf-text", model="roberta-base"), "text.encoder is 'hf-text'"),
    (config(model="ViT-L-14"), "visual.parts.clip is ViT-B-32/openai"),
    (config(pretrained="laion2b_s34b_b79k"), "text is ViT-B-32/laion2b_s34b_b79k"),
    (config({"pretrained": None}, pretrained=None, seed=1), "(seed 0), text is ViT-B-32/None (seed 1)"),
    (config(parts={"resnet": {"backbone": "resnet152"}}), "resnet (resnet152)"),
    (config(parts={"clip": CLIP, "i3d": {"backbone": "i3d"}}), "exactly one visual part"),
])
def test_a_mismatched_clip_config_is_refused_in_one_line(bad, expected):
    with pytest.raises(ValueError) as error:
        check_same_clip(bad)
    assert expected in str(error.value) and "\n" not in str(error.value)
