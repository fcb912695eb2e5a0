import dataclasses

import pytest
import torch

from amdnet import AMDNet, ModelConfig, TrainConfig
from amdnet.losses import amdnet_loss
from amdnet.moments import clip_spans
from model_batches import CAPTION_TO_VIDEO, QUERY_DIM, VIDEO_DIM, make_batch
from models.configs import MODEL_FACTS
from models import RetrievalModel, concat_rows, create_model, list_models, model_class, register_model, take_rows

pytestmark = pytest.mark.usefixtures("single_thread")
SMALL = {"amdnet": {"hidden_size": 16, "map_size": 8}, "ms-sl": {"hidden_size": 16, "map_size": 8, "max_frames": 16},
         "gmmformer": {"hidden_size": 16, "map_size": 8, "max_frames": 16}, "clip-zero-shot": {"max_frames": 16}}


def build(name: str, **extra):
    query_dim = VIDEO_DIM if name == "clip-zero-shot" else QUERY_DIM
    return create_model(name, VIDEO_DIM, query_dim, seed=0, **SMALL[name], **extra)


def batch_for(model) -> dict:
    batch = make_batch()
    if model.query_input == "pooled":
        width = VIDEO_DIM if model.name == "clip-zero-shot" else QUERY_DIM
        batch["queries"], batch["token_mask"] = batch["queries"][:, 0, :width], None
        if model.name == "clip-zero-shot":
            batch["queries"] = torch.randn(6, VIDEO_DIM, generator=torch.Generator().manual_seed(1))
    return batch


def test_registered_models():
    assert list_models() == ["amdnet", "clip-zero-shot", "gmmformer", "ms-sl"]
    assert list_models(trainable=False) == ["clip-zero-shot"]
    with pytest.raises(KeyError, match="unknown model 'msl'; registered models: amdnet, clip-zero-shot"):
        create_model("msl", 4, 4)
    with pytest.raises(ValueError, match="already registered"):
        register_model("ms-sl")(model_class("ms-sl"))


@pytest.mark.parametrize("name", sorted(SMALL))
def test_options_are_checked_and_rebuild_the_model(name):
    with pytest.raises(ValueError, match="unknown .* keys: \\['hiden_size'\\]"):
        build(name, hiden_size=8)
    model = build(name)
    assert isinstance(model, RetrievalModel) and model.name == name
    query_dim = VIDEO_DIM if name == "clip-zero-shot" else QUERY_DIM
    rebuilt = create_model(name, VIDEO_DIM, query_dim, seed=0, **model.options)
    assert rebuilt.options == model.options
    assert all(torch.equal(value, rebuilt.state_dict()[key]) for key, value in model.state_dict().items())


def test_out_of_range_options_are_refused():
    with pytest.raises(ValueError, match="margin must be >= 0"):
        build("ms-sl", margin=-0.1)
    with pytest.raises(ValueError, match="dropout must be < 1"):
        build("gmmformer", dropout=1.0)


def test_a_seed_leaves_the_global_generator_alone():
    torch.manual_seed(11)
    expected = torch.rand(3)
    torch.manual_seed(11)
    build("ms-sl")
    torch.testing.assert_close(torch.rand(3), expected)


@pytest.mark.parametrize("name", sorted(SMALL))
def test_every_model_scores_and_spans_through_the_interface(name):
    """represent_videos in two batches joined equals one batch; score is (Q, V); spans are fractions."""
    model = build(name).eval()
    batch = batch_for(model)
    with torch.no_grad():
        whole = model.represent_videos(batch)
        parts = concat_rows([model.represent_videos(_videos(batch, [0])), model.represent_videos(_videos(batch, [1, 2]))])
        for key in whole:
            torch.testing.assert_close(parts[key], whole[key], msg=key)
        queries = model.represent_queries(batch)
        scores = model.score(queries, whole)
        assert scores.shape == (6, 3) and torch.isfinite(scores).all()
        assert torch.allclose(model.score(queries, take_rows(whole, slice(1, 3))), scores[:, 1:])
        for rule in model.span_rules:
            spans = model.spans(queries, take_rows(whole, CAPTION_TO_VIDEO), None, rule)
            assert spans.shape == (6, 2) and torch.all((0 <= spans) & (spans[:, :1] < spans[:, 1:]) & (spans <= 1))
    if model.trainable:
        terms = model.loss(batch, epoch=1)
        assert set(terms) == set(model.loss_terms) and torch.isfinite(terms["loss"])


@pytest.mark.parametrize("name", sorted(SMALL))
def test_spans_of_pairs_sharing_their_videos_rows_are_each_videos_spans_alone(name):
    """pair_videos (Evaluate's form: V rows, each pair naming its video) gives every pair the span that
    its video's pairs get alone, bit for bit, in any pair order; and the spans of the per-pair form."""
    model = build(name).eval()
    batch = batch_for(model)
    pair_queries = torch.tensor([3, 0, 5, 1, 2, 4, 0, 3])  # (P,)
    pair_videos = torch.tensor([2, 0, 2, 1, 2, 0, 0, 2])  # (P,): video 1 has one pair
    fractions = torch.stack([clip_spans(frames, 8) for frames in (9, 30, 5)])  # (V, N, 2), each video its own
    with torch.no_grad():
        videos, queries = model.represent_videos(batch), model.represent_queries(batch)
        for rule in model.span_rules:
            shared = model.spans(queries[pair_queries], videos, fractions, rule, pair_videos=pair_videos)  # (P, 2)
            for video in range(3):
                pairs = (pair_videos == video).nonzero().flatten()
                alone = model.spans(queries[pair_queries[pairs]], take_rows(videos, slice(video, video + 1)),
                                    fractions[video:video + 1], rule, pair_videos=torch.zeros(len(pairs), dtype=torch.long))
                assert torch.equal(shared[pairs], alone), (rule, video)
            own_rows = model.spans(queries[pair_queries], take_rows(videos, pair_videos), fractions[pair_videos], rule)
            torch.testing.assert_close(shared, own_rows, msg=rule)
            empty = model.spans(queries[:0], videos, fractions, rule, pair_videos=pair_videos[:0])
            assert empty.shape == (0, 2), rule


def _videos(batch: dict, index: list[int]) -> dict:
    return {"clips": batch["clips"][index], "frames": batch["frames"][index], "frame_mask": batch["frame_mask"][index]}


def test_amdnet_loads_existing_checkpoints_and_scores_as_evaluate_does():
    plain = AMDNet(ModelConfig(hidden_size=16, map_size=8), VIDEO_DIM, QUERY_DIM)
    model = create_model("amdnet", VIDEO_DIM, QUERY_DIM, hidden_size=16, map_size=8)
    model.load_state_dict(plain.state_dict())  # the same parameter names: today's best.pt files load
    plain.eval(), model.eval()
    batch = batch_for(model)
    with torch.no_grad():
        videos = model.represent_videos(batch)
        queries = model.represent_queries(batch)
        expected_queries = torch.nn.functional.normalize(plain.encode_queries(batch["queries"]), dim=-1)
        expected_clips = torch.nn.functional.normalize(plain.encode_videos(batch["clips"]).clip_features, dim=-1)
        torch.testing.assert_close(model.score(queries, videos), torch.einsum("qd,vnd->qvn", expected_queries, expected_clips).amax(dim=-1))
    torch.manual_seed(4)
    terms = model.loss(batch, epoch=1)
    torch.manual_seed(4)
    expected = amdnet_loss(plain.encode_queries(batch["queries"]), plain.encode_videos(batch["clips"]),
                           batch["caption_to_video"], TrainConfig(), plain.encode_queries(batch["queries"]))
    assert terms["loss"].item() == pytest.approx(expected.total.item(), rel=1e-6)


def test_amdnet_takes_its_loss_weights_as_options():
    model = create_model("amdnet", 512, 512, hidden_size=256, lambda_nce=0.02, rel_margin=0.05)
    assert model.loss_config.lambda_nce == 0.02 and model.loss_config.rel_margin == 0.05
    assert model.options["lambda_nce"] == 0.02 and model.options["hidden_size"] == 256


@pytest.mark.parametrize("name", sorted(SMALL))
@pytest.mark.parametrize("dataset", ["tvr", "activitynet", "charades"])
def test_reference_settings_build_and_fit_the_trainer(name, dataset):
    settings = model_class(name).reference_hparams(dataset)
    train_fields = {field.name for field in dataclasses.fields(TrainConfig)}
    assert set(settings["train"]) <= train_fields
    TrainConfig(**settings["train"])
    model = create_model(name, settings["inputs"].get("video_dim", 8), settings["inputs"].get("query_dim", 8),
                         **settings["model"])
    assert all(model.options[key] == value for key, value in settings["model"].items())
    with pytest.raises(ValueError, match="no reference settings for dataset 'msrvtt'"):
        model_class(name).reference_hparams("msrvtt")


@pytest.mark.parametrize("name", ["ms-sl", "clip-zero-shot"])
def test_scores_are_the_same_computed_in_small_slices(name, monkeypatch):
    """Models with large (Q, V, ...) intermediates score slices of videos within models.registry.SCORE_BUDGET."""
    model = build(name).eval()
    batch = batch_for(model)
    with torch.no_grad():
        videos, queries = model.represent_videos(batch), model.represent_queries(batch)
        whole = model.score(queries, videos)
        monkeypatch.setattr("models.registry.SCORE_BUDGET", 1)  # one video per slice
        torch.testing.assert_close(model.score(queries, videos), whole)


def test_a_model_must_agree_with_the_facts_configs_are_checked_against(monkeypatch):
    class Odd(model_class("gmmformer")):
        video_inputs = ("pixels",)

    with pytest.raises(TypeError, match="'odd' has no entry in models.configs.MODEL_FACTS"):
        register_model("odd")(Odd)
    monkeypatch.setitem(MODEL_FACTS, "odd", MODEL_FACTS["gmmformer"])
    with pytest.raises(TypeError, match="Odd disagrees with models.configs.MODEL_FACTS\\['odd'\\]"):
        register_model("odd")(Odd)
    monkeypatch.undo()
    assert "odd" not in list_models()
