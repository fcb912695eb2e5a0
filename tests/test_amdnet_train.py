import json

import pytest
import torch

from amdnet import AMDNet, TrainConfig
from amdnet.evaluate import evaluate
from amdnet.train import train
from amdnet.cli import main
from amdnet.data import VideoCaptionDataset, VideoInputs, collate_videos_with_captions
from amdnet.optim import BertAdam
from amdnet.synthetic import SyntheticCorpusSpec, write_synthetic_corpus
from amdnet.train import TrainingState, training_step
from models import create_model
from models.checkpoints import ModelSource

N_VAL_VIDEOS = 40
# AMDNet's create_model options: its ModelConfig fields and its loss weights.
SMALL_MODEL = {"hidden_size": 32, "input_dropout": 0.0, "dropout": 0.1, "lambda_nce": 1.0}


def small_train_config(**overrides) -> TrainConfig:
    values = dict(lr=3e-3, batch_size=32, max_epochs=8, patience=100, device="cpu")
    return TrainConfig(**(values | overrides))


def run_training(config: TrainConfig, files, queries_path, out_dir, **options):
    return train("amdnet", SMALL_MODEL, config, files, queries_path, out_dir, progress=False, **options)


pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """Each caption is generated from one segment of its video (partial relevance)."""
    spec = SyntheticCorpusSpec({"train": 160, "val": N_VAL_VIDEOS, "test": 20}, captions_per_video=2)
    return write_synthetic_corpus(tmp_path_factory.mktemp("corpus"), spec)


@pytest.fixture(scope="module")
def trained_run(corpus, tmp_path_factory):
    files, queries_path = corpus
    out_dir = tmp_path_factory.mktemp("run")
    summary = run_training(small_train_config(), files, queries_path, out_dir)
    return summary, out_dir


def test_training_learns_partially_relevant_retrieval(trained_run):
    summary, out_dir = trained_run
    chance_r1 = 100.0 / N_VAL_VIDEOS
    assert summary["best_val_metrics"]["R@1"] > 10 * chance_r1
    assert summary["epochs_run"] == 8 and not summary["stopped_early"]
    log = [json.loads(line) for line in (out_dir / "log.jsonl").read_text().splitlines()]
    assert [record["epoch"] for record in log] == list(range(1, 9))
    assert log[-1]["loss"] < log[0]["loss"]
    # The last of 8 x 5 updates runs at progress 39/40 of the schedule: a small positive rate.
    assert log[-1]["lr"] == pytest.approx(3e-3 * (1 / 40) / (1 - 0.01))
    best = max(log, key=lambda record: record["val_SumR"])
    assert summary["best_epoch"] == best["epoch"]
    assert (out_dir / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_checkpoints_load_with_weights_only(trained_run):
    _, out_dir = trained_run
    for name in ("best.pt", "last.pt"):
        checkpoint = torch.load(out_dir / name, weights_only=True)
        source = ModelSource.from_checkpoint(out_dir / name)
        model = source.load(checkpoint["video_dim"], checkpoint["query_dim"])
        assert isinstance(model, AMDNet) and checkpoint["train_config"]["lr"] == 3e-3
        assert (source.name, source.options["hidden_size"], source.options["lambda_nce"]) == ("amdnet", 32, 1.0)
    assert torch.load(out_dir / "last.pt", weights_only=True)["state"]["epoch"] == 8


def test_evaluate_writes_metrics_and_predictions(trained_run, corpus, tmp_path):
    _, run_dir = trained_run
    files, queries_path = corpus
    metrics = evaluate(ModelSource.from_checkpoint(run_dir / "best.pt"), files, queries_path, "test", tmp_path, chunk_size=7, device="cpu")
    assert metrics["n_queries"] == 40 and metrics["n_videos"] == 20 and metrics["split"] == "test"
    assert metrics["R@1"] > 5 * 100.0 / 20
    assert json.loads((tmp_path / "metrics.json").read_text()) == metrics
    predictions = [json.loads(line) for line in (tmp_path / "predictions.jsonl").read_text().splitlines()]
    assert len(predictions) == 40
    ranks = [p["rank"] for p in predictions]
    assert sum(rank == 1 for rank in ranks) / 40 * 100 == pytest.approx(metrics["R@1"])
    for prediction in predictions:
        assert len(prediction["top10"]) == 10
        scores = [entry["score"] for entry in prediction["top10"]]
        assert scores == sorted(scores, reverse=True)
        if prediction["rank"] == 1:
            assert prediction["top10"][0]["video_id"] == prediction["video_id"]
        for entry in prediction["top10"]:
            start, end = entry["span"]
            assert 0.0 <= start <= end <= 60 / 3.0  # at most 60 frames sampled at 3 fps


def test_evaluation_does_not_depend_on_chunk_size(trained_run, corpus, tmp_path):
    _, run_dir = trained_run
    files, queries_path = corpus
    small = evaluate(ModelSource.from_checkpoint(run_dir / "best.pt"), files, queries_path, "val", tmp_path / "a", chunk_size=3, device="cpu")
    large = evaluate(ModelSource.from_checkpoint(run_dir / "best.pt"), files, queries_path, "val", tmp_path / "b", chunk_size=1000, device="cpu")
    assert small == large


def test_resumed_run_equals_uninterrupted_run(corpus, tmp_path):
    files, queries_path = corpus
    config = small_train_config(max_epochs=3, batch_size=64)
    run_training(config, files, queries_path, tmp_path / "straight")
    run_training(config, files, queries_path, tmp_path / "resumed", epoch_limit=1)
    assert torch.load(tmp_path / "resumed" / "last.pt", weights_only=True)["state"]["epoch"] == 1
    summary = run_training(config, files, queries_path, tmp_path / "resumed")
    assert summary["epochs_run"] == 3

    straight = torch.load(tmp_path / "straight" / "last.pt", weights_only=True)
    resumed = torch.load(tmp_path / "resumed" / "last.pt", weights_only=True)
    for name, weight in straight["model"].items():
        torch.testing.assert_close(resumed["model"][name], weight, rtol=1e-5, atol=1e-6)
    straight_log = [json.loads(line) for line in (tmp_path / "straight" / "log.jsonl").read_text().splitlines()]
    resumed_log = [json.loads(line) for line in (tmp_path / "resumed" / "log.jsonl").read_text().splitlines()]
    for a, b in zip(straight_log, resumed_log, strict=True):
        for key in ("loss", "nce", "div", "rel", "lr", "val_SumR"):
            assert a[key] == pytest.approx(b[key], rel=1e-5)


def _log(run_dir):
    return [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("patience", [0, 2])
def test_early_stopping_after_patience_plus_one_epochs_without_gain(corpus, tmp_path, patience):
    """As the reference: stop once the epochs without a validation SumR gain exceed the patience."""
    files, queries_path = corpus
    # At lr 1e-12 every update is below float32 resolution: the weights, so the SumR, never change.
    frozen = small_train_config(lr=1e-12, max_epochs=6, patience=patience, batch_size=80)
    summary = run_training(frozen, files, queries_path, tmp_path)
    assert summary["stopped_early"] and summary["epochs_run"] == patience + 2
    # The initial best SumR is 0, so the first epoch (SumR > 0) is the one selected and saved.
    assert summary["best_epoch"] == 1 and TrainingState().best_sumr == 0.0
    assert torch.load(tmp_path / "best.pt", weights_only=True)["epoch"] == 1
    assert len({record["val_SumR"] for record in _log(tmp_path)}) == 1


def test_first_update_has_learning_rate_zero_and_last_a_small_positive_one(corpus, tmp_path):
    """One update per epoch (the whole train split in one batch), so the log holds every update's rate."""
    files, queries_path = corpus
    config = small_train_config(max_epochs=3, batch_size=160, lr=1e-2)
    run_training(config, files, queries_path, tmp_path)
    lrs = [record["lr"] for record in _log(tmp_path)]
    assert lrs == pytest.approx([0.0, 1e-2 * (2 / 3) / 0.99, 1e-2 * (1 / 3) / 0.99])


def test_training_step_runs_the_query_projection_twice_with_independent_dropout(corpus):
    files, queries_path = corpus
    dataset = VideoCaptionDataset(files, queries_path, "train", query_input="pooled", use_subtitles=False,
                                  inputs=VideoInputs(("clips",), map_size=32))
    batch = collate_videos_with_captions([dataset[i] for i in range(4)])
    model = create_model("amdnet", dataset.video_dim, dataset.query_dim, hidden_size=32, input_dropout=0.5).train()
    outputs = []
    model.query_projection.register_forward_hook(lambda module, inputs, output: outputs.append(output))
    optimizer = BertAdam(model.parameter_groups(0.01), lr=1e-3)
    training_step(model, optimizer, batch, 1, 1e-3, torch.device("cpu"))
    assert len(outputs) == 2
    assert outputs[0].shape == outputs[1].shape == (len(batch["caption_to_video"]), 32)
    assert not torch.equal(outputs[0], outputs[1])  # two dropout masks


@pytest.mark.parametrize("threads", [1, 2])
def test_training_runs_on_its_configured_thread_count_whatever_the_callers(corpus, tmp_path, threads):
    """The intra-op thread count changes float results, so it comes from train.threads, not the machine."""
    files, queries_path = corpus
    torch.set_num_threads(3 - threads)  # the caller's; the single_thread fixture restores its own afterwards
    seen = set()
    hook = torch.nn.modules.module.register_module_forward_hook(
        lambda module, inputs, output: seen.add(torch.get_num_threads()))
    try:
        run_training(small_train_config(max_epochs=1, batch_size=160, threads=threads), files, queries_path, tmp_path)
    finally:
        hook.remove()
    assert seen == {threads}  # training and validation alike
    assert torch.get_num_threads() == 3 - threads  # given back


def test_cli_train_then_evaluate(corpus, tmp_path, capsys):
    files, queries_path = corpus
    common = ["--video-features", str(files.video), "--query-features", str(files.query),
              "--queries", str(queries_path)]
    main(["train", *common, "--out", str(tmp_path / "run"), "--no-progress", "--set", "max_epochs=1",
          "--set", "model.hidden_size=16", "--set", "query_input=tokens", "--set", "batch_size=80",
          "--set", "device=cpu"])
    checkpoint = torch.load(tmp_path / "run" / "best.pt", weights_only=True)
    assert checkpoint["model_name"] == "amdnet" and checkpoint["model_options"]["hidden_size"] == 16
    assert checkpoint["train_config"]["query_input"] == "tokens"
    main(["evaluate", *common, "--checkpoint", str(tmp_path / "run" / "best.pt"), "--split", "test",
          "--out", str(tmp_path / "eval"), "--device", "cpu"])
    assert "test (40 queries x 20 videos)" in capsys.readouterr().out
    assert (tmp_path / "eval" / "predictions.jsonl").exists()
    with pytest.raises(SystemExit, match="unknown key"):
        main(["train", *common, "--out", str(tmp_path / "x"), "--set", "hidden=3"])


def test_cli_summary_counts_any_registered_model(capsys):
    main(["summary", "--model", "ms-sl", "--video-dim", "3072", "--query-dim", "768"])
    assert capsys.readouterr().out.rstrip().endswith("Total parameters: 4,852,992")
    main(["summary", "--model", "gmmformer", "--video-dim", "1024", "--query-dim", "1024"])
    assert capsys.readouterr().out.rstrip().endswith("Total parameters: 11,366,016")
    with pytest.raises(SystemExit, match="unknown model 'msl'"):
        main(["summary", "--model", "msl"])
