"""pipeline.explain on the tiny demo: which stages will run and why, and --force."""

import json
import threading
import time

import luigi
import pytest
import yaml

import tasks
from conftest import REPO, TINY, _merge
from pipeline.config import load_config
from pipeline.explain import FORCED_SUFFIX, explain, force, format_report, main
from pipeline.stage import stage_lock


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """A tiny demo config whose whole graph has run once."""
    folder = tmp_path_factory.mktemp("explain")
    config = _merge(yaml.safe_load((REPO / "configs" / "demo.yaml").read_text()), TINY)
    config["workdir"] = str(folder / "work")
    path = folder / "tiny.yaml"
    path.write_text(yaml.safe_dump(config))
    assert luigi.build([tasks.Evaluate(dataset=str(path))], local_scheduler=True, log_level="WARNING")
    return str(path)


def _will_run(config, overrides=""):
    """Stage name -> its changes, for the stages that will run."""
    return {status.stage.stage: status.changes for status in explain(tasks.Evaluate(dataset=config, set=overrides))
            if not status.complete}


def test_a_finished_graph_is_all_complete(built):
    statuses = explain(tasks.Evaluate(dataset=built))
    assert sorted(status.stage.stage for status in statuses) == sorted(
        ["demo_data", "dataset", "visual-clip", "visual", "queries", "subtitles", "train", "evaluate"])
    assert all(status.complete for status in statuses)


class _ChangedFingerprint:
    """Equal to any (before, now) pair of two different fingerprints."""

    def __eq__(self, other):
        return isinstance(other, tuple) and len(other) == 2 and other[0] != other[1] and all(other)


def test_a_training_setting_is_named_for_train_and_evaluate_only(built):
    assert _will_run(built, "train.lr=0.001") == {
        "train": {"config.train.lr": (load_config(built)["train"]["lr"], 0.001)},
        "evaluate": {"upstream.train": _ChangedFingerprint()},
    }


def test_a_visual_setting_is_named_where_it_is_read_and_upstream_elsewhere(built):
    will_run = _will_run(built, "visual.size=96")
    assert set(will_run) == {"visual-clip", "visual", "train", "evaluate"}  # not queries, not subtitles
    assert will_run["visual-clip"] == {"config.visual.size": (64, 96)}
    assert set(will_run["visual"]) == {"upstream.part-clip"}
    assert set(will_run["train"]) == {"upstream.visual"}
    assert set(will_run["evaluate"]) == {"upstream.train", "upstream.visual"}
    report = format_report(explain(tasks.Evaluate(dataset=built, set="visual.size=96")))
    assert "visual.size: 64 -> 96" in report and "upstream visual-clip changed" in report


def test_the_nearest_earlier_run_is_the_one_with_fewest_differences(built):
    assert luigi.build([tasks.Train(dataset=built, set="train.lr=0.001")], local_scheduler=True, log_level="WARNING")
    # Two runs of train exist: the config's lr (2 differences from this) and lr=1e-3 (1 difference).
    assert _will_run(built, "train.lr=0.001 train.max_epochs=3")["train"] == {"config.train.max_epochs": (2, 3)}
    lr = load_config(built)["train"]["lr"]
    assert _will_run(built, f"train.lr={lr} train.max_epochs=3")["train"] == {"config.train.max_epochs": (2, 3)}
    statuses = explain(tasks.Evaluate(dataset=built, set="train.lr=0.01 train.max_epochs=3"))
    (train,) = [status for status in statuses if status.stage.stage == "train"]
    assert set(train.changes) == {"config.train.lr", "config.train.max_epochs"}


def test_command_line_prints_each_stage_and_the_reason(built, capsys):
    main(["--dataset", built, "--set", "train.patience=5"])
    lines = capsys.readouterr().out.splitlines()
    assert len([line for line in lines if "complete" in line]) == 6
    assert len([line for line in lines if "will run" in line]) == 2
    assert any("train.patience: 2 -> 5" in line for line in lines)


def test_force_reruns_the_stage_and_what_depends_on_it_and_nothing_else(built, run_stages):
    evaluate = tasks.Evaluate(dataset=built)
    with pytest.raises(ValueError, match="--force visual-clipp: no such stage"):
        force(evaluate, ["visual-clipp"])
    old_train = tasks.Train(dataset=built).out_dir
    part = tasks.VisualPart(dataset=built, part="clip")
    moved = force(evaluate, ["visual-clip"])
    stage_folders, cache_folders = moved[:4], moved[4:]
    assert sorted(folder.parent.name for folder, _ in stage_folders) == ["evaluate", "train", "visual", "visual-clip"]
    assert not old_train.exists()
    for _, destination in stage_folders:  # moved whole, manifest and all, beside the stage's other runs
        assert FORCED_SUFFIX in destination.name and (destination / "manifest.json").is_file()
    # The part's cache entries too: a forced part decodes its videos again.
    assert [folder for folder, _ in cache_folders] == [part.cache.folder] and not part.cache.folder.exists()
    report = format_report(explain(evaluate))
    assert report.count("forced: nothing changed since") == 4
    assert run_stages.build([evaluate]) == ["evaluate", "train", "visual", "visual-clip"]
    assert len(json.loads((part.out_dir / "manifest.json").read_text())["decoded"]) == 8
    assert json.loads((old_train / "manifest.json").read_text())["fingerprint"] == old_train.name
    assert run_stages.build([evaluate]) == []


def test_force_waits_for_a_run_that_holds_the_stage_lock(built):
    """A folder being written is never moved under its writer: force takes the stage's lock first."""
    evaluate = tasks.Evaluate(dataset=built)
    folder = evaluate.out_dir
    locked, release = threading.Event(), threading.Event()

    def writer():
        with stage_lock(folder):
            locked.set()
            release.wait(timeout=30)

    thread = threading.Thread(target=writer)
    thread.start()
    locked.wait(timeout=30)
    threading.Timer(1.0, release.set).start()
    started = time.monotonic()
    moved = force(evaluate, ["evaluate"])
    thread.join()
    assert time.monotonic() - started >= 0.9  # it waited for the writer to let go
    assert [source for source, _ in moved] == [folder] and not folder.exists()
