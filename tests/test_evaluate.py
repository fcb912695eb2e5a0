"""Evaluate's scores, ranks, predictions and moment metrics, each checked against an independent computation."""
import json

import numpy as np
import pytest
import torch

from amdnet import TrainConfig
from amdnet.evaluate import evaluate
from amdnet.data import VideoCaptionDataset, VideoInputs, bin_clips
from amdnet.evaluate import EncodedSplit, encode_split, prediction_lines, rank_split
from amdnet.moments import SPAN_RULES
from amdnet.synthetic import SAMPLE_FPS, SyntheticCorpusSpec, write_synthetic_corpus
from models import create_model
from models.checkpoints import ModelSource, save_checkpoint
from storage import FeatureFile

MAP_SIZE = 8
MODEL = {"hidden_size": 16, "map_size": MAP_SIZE, "n_moments": 4, "input_dropout": 0.0, "dropout": 0.0}
INPUTS = VideoInputs(("clips",), MAP_SIZE)
N_VIDEOS, CAPTIONS_PER_VIDEO, SEGMENTS = 12, 3, 4

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """Synthetic test split whose queries carry the [start, end] seconds of the segment they describe;
    the first query has none (a dataset may lack some)."""
    spec = SyntheticCorpusSpec({"test": N_VIDEOS}, captions_per_video=CAPTIONS_PER_VIDEO,
                               segments_per_video=SEGMENTS, seed=3)
    files, queries_path = write_synthetic_corpus(tmp_path_factory.mktemp("corpus"), spec)
    records = [json.loads(line) for line in queries_path.read_text().splitlines()]
    videos = FeatureFile(files.video).group()
    for record in records[1:]:
        num_frames = videos.lengths[videos.position(record["video_id"])]
        segment = int(record["text"].split()[1])
        rows = np.flatnonzero(np.arange(num_frames) * SEGMENTS // num_frames == segment)
        record["ts"] = [rows[0] / SAMPLE_FPS, (rows[-1] + 1) / SAMPLE_FPS]
    queries_path.write_text("".join(json.dumps(record) + "\n" for record in records))
    return files, queries_path, {record["cap_id"]: record["ts"] for record in records}


def write_checkpoint(path, corpus, change_weights=None):
    """A randomly initialised (seeded) model saved as Train saves it (change_weights edits it first): its
    ModelSource."""
    torch.manual_seed(0)
    model = create_model("amdnet", 16, 12, **MODEL)
    if change_weights is not None:
        with torch.no_grad():
            change_weights(model)
    save_checkpoint(path, model, TrainConfig(device="cpu"), (16, 12))
    return ModelSource.from_checkpoint(path)


def randomise_norm_gains(model):
    """As after training: LayerNorm gains away from 1, so output norms differ from clip to clip."""
    for module in model.modules():
        if isinstance(module, torch.nn.LayerNorm):
            module.weight.uniform_(0.2, 2.0)


def video_durations(files) -> dict[str, float]:
    videos = FeatureFile(files.video).group()
    return dict(zip(videos.ids, videos.column("duration")))


def read_predictions(out_dir) -> list[dict]:
    return [json.loads(line) for line in (out_dir / "predictions.jsonl").read_text().splitlines()]


def clip_cosines(model, files, dataset) -> np.ndarray:
    """(Nq, Nv, N) cosines computed independently: raw (unnormalised) outputs of one video at a
    time, normalised in numpy. Asserts that the norms differ, or normalising would not matter."""
    videos, pooled = FeatureFile(files.video).group(), FeatureFile(files.query).group("pooled")
    with torch.no_grad():
        clips = np.stack([model.encode_videos(torch.from_numpy(bin_clips(videos.read(v), MAP_SIZE))[None])
                          .clip_features[0].numpy() for v in dataset.video_ids]).astype(np.float64)  # (Nv, N, d)
        cap_ids = [c for captions in dataset.captions for c in captions]
        queries = model.encode_queries(torch.stack([torch.from_numpy(pooled.read(c)) for c in cap_ids]))
    queries = queries.numpy().astype(np.float64)  # (Nq, d)
    clip_norms, query_norms = np.linalg.norm(clips, axis=-1), np.linalg.norm(queries, axis=-1)
    assert np.ptp(clip_norms, axis=1).min() > 0.05 and np.ptp(query_norms) > 0.1, \
        "the test needs norms that differ between clips and between queries"
    return np.einsum("qd,vnd->qvn", queries / query_norms[:, None], clips / clip_norms[..., None])


def test_scores_equal_cosines_computed_independently_from_raw_model_outputs(corpus, tmp_path):
    files, queries_path, _ = corpus
    checkpoint = write_checkpoint(tmp_path / "model.pt", corpus, randomise_norm_gains)
    model = checkpoint.load(16, 12)
    dataset = VideoCaptionDataset(files, queries_path, "test", inputs=INPUTS)
    encoded = encode_split(model, dataset, torch.device("cpu"), batch_size=5)
    ranks, top_videos, top_scores = rank_split(model, encoded, chunk_size=4, top_k=N_VIDEOS)
    cosines = clip_cosines(model, files, dataset).max(axis=2)  # (Nq, Nv)

    assert encoded.cap_ids == [c for captions in dataset.captions for c in captions]
    np.testing.assert_allclose(top_scores.numpy(), np.take_along_axis(cosines, top_videos.numpy(), axis=1), atol=1e-5)
    np.testing.assert_array_equal(top_videos.numpy(), np.argsort(-cosines, axis=1, kind="stable"))
    relevant = np.repeat(np.arange(N_VIDEOS), CAPTIONS_PER_VIDEO)
    expected_ranks = 1 + (cosines > cosines[np.arange(len(relevant)), relevant][:, None]).sum(axis=1)
    np.testing.assert_array_equal(ranks.numpy(), expected_ranks)


def test_best_clip_spans_are_the_rows_of_the_clip_that_matches_best(corpus, tmp_path):
    """Spans in predictions.jsonl: the feature rows averaged into the best clip, in seconds."""
    files, queries_path, _ = corpus
    checkpoint = write_checkpoint(tmp_path / "model.pt", corpus, randomise_norm_gains)
    evaluate(checkpoint, files, queries_path, "test", tmp_path, chunk_size=4, device="cpu", span_rule="best_clip")
    model = checkpoint.load(16, 12)
    dataset = VideoCaptionDataset(files, queries_path, "test", inputs=INPUTS)
    best_clip = clip_cosines(model, files, dataset).argmax(axis=2)  # (Nq, Nv)
    position = {video_id: index for index, video_id in enumerate(dataset.video_ids)}
    durations = video_durations(files)
    for query, prediction in enumerate(read_predictions(tmp_path)):
        for entry in prediction["top10"]:
            video = position[entry["video_id"]]
            num_frames = dataset.num_frames[video]
            weights = bin_clips(np.eye(num_frames, dtype=np.float32), MAP_SIZE)[best_clip[query, video]]
            rows = np.flatnonzero(weights)
            seconds_per_row = durations[entry["video_id"]] / num_frames
            assert entry["span"] == pytest.approx([rows[0] * seconds_per_row, (rows[-1] + 1) * seconds_per_row])


def test_tied_scores_rank_by_video_index_in_ranks_and_top10(corpus, tmp_path):
    """An all-zero model scores every video 0: rank and top-10 order must both follow the video index."""
    files, queries_path, _ = corpus
    checkpoint = write_checkpoint(tmp_path / "zero.pt", corpus,
                                  lambda model: [parameter.zero_() for parameter in model.parameters()])
    metrics = evaluate(checkpoint, files, queries_path, "test", tmp_path / "out", chunk_size=5, device="cpu")
    predictions = read_predictions(tmp_path / "out")
    video_ids = [f"test_video{n:06d}" for n in range(N_VIDEOS)]
    for prediction in predictions:
        assert [entry["video_id"] for entry in prediction["top10"]] == video_ids[:10]
        assert all(entry["score"] == 0.0 for entry in prediction["top10"])
        assert prediction["rank"] == video_ids.index(prediction["video_id"]) + 1
    assert metrics["R@1"] == pytest.approx(100 / N_VIDEOS)


@pytest.mark.parametrize("broken", ["video_projection", "query_projection", "anchor_head"])
def test_a_model_giving_nan_is_a_clear_error_and_writes_nothing(corpus, tmp_path, broken):
    files, queries_path, _ = corpus

    def poison(model):
        next(getattr(model, broken).parameters()).view(-1)[0] = float("nan")

    checkpoint = write_checkpoint(tmp_path / "nan.pt", corpus, poison)
    message = r"nan\.pt: the model gives non-finite .* \(first: (video|caption) 'test_video"
    with pytest.raises(ValueError, match=message):
        evaluate(checkpoint, files, queries_path, "test", tmp_path / "out", device="cpu")
    assert not (tmp_path / "out" / "predictions.jsonl").exists() and not (tmp_path / "out" / "metrics.json").exists()


def iou(span, truth) -> float:
    intersection = max(0.0, min(span[1], truth[1]) - max(span[0], truth[0]))
    return intersection / ((span[1] - span[0]) + (truth[1] - truth[0]) - intersection)


@pytest.mark.parametrize("span_rule", SPAN_RULES)
def test_moment_metrics_measure_the_spans_predictions_show(corpus, tmp_path, span_rule):
    files, queries_path, truths = corpus
    checkpoint = write_checkpoint(tmp_path / "model.pt", corpus)
    metrics = evaluate(checkpoint, files, queries_path, "test", tmp_path, chunk_size=4, device="cpu",
                       span_rule=span_rule)
    moments = metrics["moments"]
    assert metrics["span_rule"] == span_rule and set(moments["rules"]) == set(SPAN_RULES)
    assert moments["n_queries"] == N_VIDEOS * CAPTIONS_PER_VIDEO - 1  # the first query has no ts
    predictions = [p for p in read_predictions(tmp_path) if truths[p["cap_id"]] is not None]
    ious = {}  # IoU of each query's own video's span, as predictions.jsonl shows it (ranks <= 10 only)
    for prediction in predictions:
        for entry in prediction["top10"]:
            if entry["video_id"] == prediction["video_id"]:
                ious[prediction["cap_id"]] = iou(entry["span"], truths[prediction["cap_id"]])
    ranks = {p["cap_id"]: p["rank"] for p in predictions}
    assert any(rank == 1 for rank in ranks.values())
    used = moments["rules"][span_rule]
    for k in (1, 5, 10):
        for threshold in (0.5, 0.7):
            hits = sum(ranks[c] <= k and ious[c] >= threshold for c in ious)
            assert used[f"IoU>={threshold} R@{k}"] == pytest.approx(100 * hits / len(predictions))
    top1 = [ious[c] for c in ious if ranks[c] == 1]
    assert used["mean IoU top-1"] == pytest.approx(np.mean(top1))

    # The whole-video baseline, from the ground truth alone: IoU = moment length / video length.
    durations = video_durations(files)
    whole_ious = {p["cap_id"]: (truths[p["cap_id"]][1] - truths[p["cap_id"]][0]) / durations[p["video_id"]]
                  for p in predictions}
    whole_hits = sum(ranks[c] <= 100 and whole_ious[c] >= 0.5 for c in whole_ious)
    assert moments["rules"]["whole"]["IoU>=0.5 R@100"] == pytest.approx(100 * whole_hits / len(predictions))
    assert moments["rules"]["whole"]["mean IoU top-1"] == pytest.approx(
        np.mean([whole_ious[c] for c in whole_ious if ranks[c] == 1]))
    assert json.loads((tmp_path / "metrics.json").read_text()) == metrics


def test_predicted_spans_follow_the_span_rule(corpus, tmp_path):
    files, queries_path, _ = corpus
    checkpoint = write_checkpoint(tmp_path / "model.pt", corpus)
    spans = {}
    for rule in ("whole", "best_clip"):
        evaluate(checkpoint, files, queries_path, "test", tmp_path / rule, device="cpu", span_rule=rule)
        spans[rule] = [entry["span"] for p in read_predictions(tmp_path / rule) for entry in p["top10"]]
    durations = video_durations(files)
    whole = [[0.0, durations[entry["video_id"]]] for p in read_predictions(tmp_path / "whole") for entry in p["top10"]]
    np.testing.assert_allclose(spans["whole"], whole, rtol=1e-6)
    # Best clip: one clip of 8 over 20..60 rows: between 2 and 8 rows of 1/3 s.
    lengths = [end - start for start, end in spans["best_clip"]]
    assert min(lengths) >= 2 / SAMPLE_FPS - 1e-6 and max(lengths) <= 8 / SAMPLE_FPS + 1e-6


def test_unknown_span_rule_is_refused_before_any_work(corpus, tmp_path):
    files, queries_path, _ = corpus
    source = ModelSource("amdnet", {}, "pooled", False, str(tmp_path / "missing.pt"))
    with pytest.raises(ValueError, match="model 'amdnet' has no span rule 'middle'; choose one of grown, "):
        evaluate(source, files, queries_path, "test", tmp_path, span_rule="middle")


def test_prediction_lines_are_what_json_dumps_writes_for_their_records():
    """predictions.jsonl is formatted directly (no json.dumps per record): ids that need escaping and
    float scores and spans come out as json.dumps writes them."""
    torch.manual_seed(0)
    model = create_model("amdnet", 16, 12, **MODEL).eval()
    with torch.no_grad():
        videos = model.represent_videos({"clips": torch.randn(3, MAP_SIZE, 16)})
        queries = model.represent_queries({"queries": torch.randn(2, 12)})
    cap_ids, video_ids = ['cap "1"', "cap\\2\n"], ["vid\u00e9o", 'v"1', "v\t2"]
    encoded = EncodedSplit(queries, torch.tensor([0, 2]), cap_ids, videos, None)
    ranks, top_videos, top_scores = rank_split(model, encoded, chunk_size=4, top_k=3)
    lines = list(prediction_lines(model, encoded, video_ids, [10.0, 20.5, 3.25], ranks.tolist(), top_videos,
                                  top_scores, "grown"))
    assert len(lines) == 2
    for line, cap_id, own_video in zip(lines, cap_ids, [0, 2]):
        record = json.loads(line)
        assert line == json.dumps(record) + "\n"
        assert record["cap_id"] == cap_id and record["video_id"] == video_ids[own_video]
        assert sorted(entry["video_id"] for entry in record["top10"]) == sorted(video_ids)
        assert all(0 <= entry["span"][0] < entry["span"][1] for entry in record["top10"])
