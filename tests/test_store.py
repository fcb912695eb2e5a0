"""Feature files appear under their final name only when complete, and resume after a crash."""

import subprocess
import sys

import h5py
import numpy as np
import pytest

from amdnet.atomic import atomic_path
from pipeline.store import FeatureFileBusy, FeatureWriter, entry_name


def test_atomic_path_publishes_only_on_success(tmp_path):
    final = tmp_path / "out.json"
    with pytest.raises(RuntimeError):
        with atomic_path(final) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed")
    assert not final.exists() and list(tmp_path.iterdir()) == []
    with atomic_path(final) as tmp:
        tmp.write_text("whole")
    assert final.read_text() == "whole"


def test_writer_publishes_on_finish_only(tmp_path):
    final = tmp_path / "features.h5"
    with FeatureWriter(final, {"dim": 3}) as writer:
        writer.write("v1", np.ones((2, 3), np.float32), timestamps=np.array([0.5, 1.5]))
        assert not final.exists()
    assert not final.exists() and writer.partial.exists()
    with FeatureWriter(final, {"dim": 3}) as writer:
        assert writer.done("v1") and not writer.done("v2")
        writer.write("v2", np.zeros((1, 3), np.float32))
        writer.finish()
    assert final.exists() and not writer.partial.exists()
    with h5py.File(final) as f:
        assert sorted(f) == ["v1", "v2"] and f.attrs["dim"] == 3
        np.testing.assert_array_equal(f["v1"].attrs["timestamps"], [0.5, 1.5])


def test_writer_drops_entries_whose_write_was_interrupted(tmp_path):
    final = tmp_path / "features.h5"
    with FeatureWriter(final, {}) as writer:
        writer.write("done", np.ones(3, np.float32))
    with h5py.File(writer.partial, "a") as f:  # what a kill between data and completion mark leaves
        f.create_dataset("half", data=np.ones(3, np.float32))
    with FeatureWriter(final, {}) as writer:
        assert writer.done("done") and not writer.done("half")
        assert "half" not in writer._file


def test_writer_restarts_an_unreadable_partial_file(tmp_path):
    final = tmp_path / "features.h5"
    (tmp_path / "features.h5.partial").write_bytes(b"\x89HDF garbage from a kill")
    with FeatureWriter(final, {}) as writer:
        writer.write("v", np.ones(2, np.float32))
        writer.finish()
    with h5py.File(final) as f:
        assert f["v"][()].tolist() == [1.0, 1.0]


def test_writer_keys_are_opaque_ids(tmp_path):
    final = tmp_path / "features.h5"
    ids = ["a/b", "..", ".", "a%2Fb", "/abs", "x"]
    with FeatureWriter(final, {}) as writer:
        for index, entry_id in enumerate(ids):
            writer.write(entry_id, np.full(2, index, np.float32))
            writer.write(entry_id, np.full(3, index, np.float32), group="tokens")
        assert all(writer.done(entry_id) and writer.done(entry_id, group="tokens") for entry_id in ids)
        assert not writer.done("a") and not writer.done("b", group="tokens")
        writer.finish()
    with h5py.File(final) as f:
        assert len(f) == len(ids) + 1 and len(f["tokens"]) == len(ids)  # no id made a group of its own
        for index, entry_id in enumerate(ids):
            assert f[entry_name(entry_id)][()].tolist() == [index] * 2
            assert f[entry_name(entry_id, "tokens")][()].tolist() == [index] * 3


def test_a_partial_file_another_process_holds_is_busy_not_corrupt(tmp_path):
    final = tmp_path / "features.h5"
    with FeatureWriter(final, {}) as writer:
        writer.write("v", np.ones(2, np.float32))
    holder = subprocess.Popen([sys.executable, "-c", "import h5py, sys, time\n"
                               "f = h5py.File(sys.argv[1], 'a'); print('open', flush=True); time.sleep(60)",
                               str(writer.partial)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "open\n"
        with pytest.raises(FeatureFileBusy, match="open in another process"):
            FeatureWriter(final, {}).__enter__()
        assert writer.partial.exists()
    finally:
        holder.kill()
        holder.wait()
    with FeatureWriter(final, {}) as writer:  # the holder is gone: resumes what it had
        assert writer.done("v")
