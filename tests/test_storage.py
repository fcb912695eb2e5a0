"""Feature files (storage): ragged groups written in batches, published only when complete, resumed
after a kill with the same result, read one entry or many at a time."""

import signal
import subprocess
import sys
import textwrap

import h5py
import numpy as np
import pytest

from amdnet.atomic import atomic_path
from storage import QUERY_GROUPS, RAGGED, ROW, FeatureFile, FeatureFileBusy, FeatureFileError, FeatureWriter

ODD_IDS = ["a/b", "..", ".", "a%2Fb", "/abs", "", " ", "x\ny", "ünï/cødé", "tokens", "data", "#enc#0", "v" * 5000]


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


def test_a_file_is_published_by_finish_only_and_a_partial_one_is_never_read(tmp_path):
    final = tmp_path / "features.h5"
    with FeatureWriter(final, {"dim": 3}) as writer:
        writer.write("v1", np.ones((2, 3), np.float32), timestamps=np.array([0.5, 1.5]), duration=2.0)
    assert not final.exists() and writer.partial.exists()
    with pytest.raises(FeatureFileError, match="incompletely written"):
        FeatureFile(writer.partial)  # even if someone renamed it
    with FeatureWriter(final, {"dim": 3}) as writer:
        assert writer.done("v1") and not writer.done("v2")
        writer.write("v2", np.zeros((1, 3), np.float32), timestamps=np.array([0.5]), duration=1.0)
        writer.finish()
    assert final.exists() and not writer.partial.exists()
    with FeatureFile(final) as features:
        videos = features.group()
        assert videos.ids == ["v1", "v2"] and features.attrs["dim"] == 3
        np.testing.assert_array_equal(videos.read("v1", "timestamps"), [0.5, 1.5])
        np.testing.assert_array_equal(videos.column("duration"), [2.0, 1.0])
        np.testing.assert_array_equal(videos.lengths, [2, 1])


def test_any_id_round_trips_as_data(tmp_path):
    final = tmp_path / "queries.h5"
    with FeatureWriter(final, {}, groups=QUERY_GROUPS, batch_entries=4) as writer:
        for index, entry_id in enumerate(ODD_IDS):
            writer.write(entry_id, np.full(3, index, np.float32), group="pooled")
            writer.write(entry_id, np.full((index % 3 + 1, 3), index, np.float32), group="tokens")
        writer.finish()
    with FeatureFile(final) as queries:
        tokens, pooled = queries.group("tokens"), queries.group("pooled")
        assert tokens.ids == pooled.ids == ODD_IDS
        for index, entry_id in enumerate(ODD_IDS):
            assert pooled.read(entry_id).tolist() == [index] * 3
            assert tokens.read(entry_id).shape == (index % 3 + 1, 3) and (tokens.read(entry_id) == index).all()
        assert "a" not in tokens and "b" not in pooled
    with h5py.File(final) as f:
        assert sorted(f) == ["pooled", "tokens"] and sorted(f["tokens"]) == ["data", "ids", "offsets"]


def test_gather_equals_reading_one_entry_at_a_time(tmp_path):
    rng = np.random.default_rng(0)
    final = tmp_path / "features.h5"
    entries = {f"v{index}": rng.standard_normal((int(rng.integers(0, 6)), 4)).astype(np.float32) for index in range(300)}
    with FeatureWriter(final, {}, batch_entries=37) as writer:
        for video_id, rows in entries.items():
            writer.write(video_id, rows, timestamps=np.arange(len(rows)) / 3.0)
        writer.finish()
    videos = FeatureFile(final).group()
    for wanted in (list(entries)[::-1], ["v250", "v3", "v3", "v120"], ["v7"], []):  # dense, sparse, one, none
        gathered = videos.gather(wanted)
        assert len(gathered) == len(wanted)
        for video_id, rows in zip(wanted, gathered):
            np.testing.assert_array_equal(rows, videos.read(video_id))
            np.testing.assert_array_equal(rows, entries[video_id])
        for video_id, stamps in zip(wanted, videos.gather(wanted, "timestamps")):
            np.testing.assert_array_equal(stamps, np.arange(len(entries[video_id])) / 3.0)
    assert [video_id for video_id, _ in videos.iterate(list(entries), batch_entries=50)] == list(entries)


def test_empty_entries_and_an_empty_file(tmp_path):
    final = tmp_path / "subtitles.h5"
    with FeatureWriter(final, {}, groups={"features": RAGGED, "mask": RAGGED}) as writer:
        writer.write("none", np.zeros((0, 2), np.float32), group="features")
        writer.write("none", np.zeros(0, np.uint8), group="mask")
        writer.write("some", np.ones((3, 2), np.float32), group="features")
        writer.write("some", np.ones(3, np.uint8), group="mask")
        writer.finish()
    with FeatureFile(final) as subtitles:
        assert subtitles.group("features").read("none").shape == (0, 2)
        assert subtitles.group("mask").read("none").shape == (0,)
        assert [rows.shape for rows in subtitles.group("features").gather(["some", "none"])] == [(3, 2), (0, 2)]
    empty = tmp_path / "empty.h5"
    with FeatureWriter(empty, {"dim": 8}, groups=QUERY_GROUPS) as writer:
        writer.finish()
    with FeatureFile(empty) as queries:
        assert len(queries.group("tokens")) == 0 and queries.group("pooled").gather([]) == []


def test_leaving_the_block_keeps_the_complete_entries_only(tmp_path):
    final = tmp_path / "queries.h5"
    with pytest.raises(RuntimeError):
        with FeatureWriter(final, {}, groups=QUERY_GROUPS) as writer:
            writer.write("q1", np.ones((2, 3), np.float32), group="tokens")
            writer.write("q1", np.ones(3, np.float32), group="pooled")
            writer.write("q2", np.ones((2, 3), np.float32), group="tokens")  # its pooled vector never comes
            raise RuntimeError("the encoder failed")
    with FeatureWriter(final, {}, groups=QUERY_GROUPS) as writer:
        assert writer.done("q1") and not writer.done("q2")
        with pytest.raises(ValueError, match="written twice"):
            writer.write("q1", np.ones(3, np.float32), group="pooled")


def _entries(count):
    rng = np.random.default_rng(1)
    return [(f"v{number}", rng.standard_normal((int(rng.integers(0, 4)), 3)).astype(np.float32))
            for number in range(count)]


def test_write_many_gives_the_file_that_writing_entry_by_entry_gives(tmp_path):
    entries = _entries(23)
    one, many = tmp_path / "one" / "videos.h5", tmp_path / "many" / "videos.h5"
    one.parent.mkdir()
    many.parent.mkdir()
    with FeatureWriter(one, {"dim": 3}, batch_entries=5) as writer:
        for entry_id, rows in entries:
            writer.write(entry_id, rows, timestamps=np.arange(len(rows)) * 0.5, duration=len(rows) * 2.0)
        writer.finish()
    with FeatureWriter(many, {"dim": 3}, batch_entries=5) as writer:
        for start, stop in ((0, 1), (1, 4), (4, 13), (13, 14), (14, 23)):  # blocks that straddle the commits
            block = entries[start:stop]
            lengths = [len(rows) for _, rows in block]
            writer.write_many([entry_id for entry_id, _ in block], np.concatenate([rows for _, rows in block]),
                              lengths, entry_columns={"duration": np.array(lengths) * 2.0},
                              row_columns={"timestamps": np.concatenate([np.arange(n) * 0.5 for n in lengths])})
        writer.finish()
    (one_arrays, one_attrs), (many_arrays, many_attrs) = _arrays(one), _arrays(many)
    assert one_attrs == many_attrs and sorted(one_arrays) == sorted(many_arrays)
    for name, array in one_arrays.items():
        assert many_arrays[name].dtype == array.dtype and many_arrays[name].tolist() == array.tolist(), name


def test_write_many_checks_what_write_checks(tmp_path):
    with FeatureWriter(tmp_path / "queries.h5", {}, groups=QUERY_GROUPS) as writer:
        writer.write_many(["a", "b"], np.ones((3, 2), np.float32), [1, 2], group="tokens")
        with pytest.raises(ValueError, match="3 rows for 2 entries of lengths summing to 4"):
            writer.write_many(["c", "d"], np.ones((3, 2), np.float32), [2, 2], group="tokens")
        with pytest.raises(ValueError, match="written twice"):
            writer.write_many(["c", "a"], np.ones((2, 2), np.float32), [1, 1], group="tokens")
        with pytest.raises(ValueError, match="got entry 'b' where the other groups have 'a'"):
            writer.write_many(["b", "a"], np.ones((2, 2), np.float32), group="pooled")
        with pytest.raises(ValueError, match="column 'n' has 1 values for 2 entries"):
            writer.write_many(["a", "b"], np.ones((2, 2), np.float32), group="pooled", entry_columns={"n": [1]})
        writer.write_many(["a", "b"], np.ones((2, 2), np.float32), group="pooled")
        writer.write("c", np.ones((1, 2), np.float32), group="tokens")
        writer.write("c", np.ones(2, np.float32), group="pooled")
        writer.finish()
    with FeatureFile(tmp_path / "queries.h5") as queries:
        assert queries.group("tokens").ids == ["a", "b", "c"] and queries.group("tokens").lengths.tolist() == [1, 2, 1]


# A writer in a child process: WRITTEN entries (seeded by their number), committed every 7; it says when
# two batches are committed and goes on writing, so that the kill lands in the middle of its work.
_WRITER = textwrap.dedent("""
    import sys, time
    import numpy as np
    from storage import FeatureWriter, QUERY_GROUPS

    def entry(number):
        rng = np.random.default_rng(number)
        return rng.standard_normal((int(rng.integers(0, 9)), 5)).astype(np.float32), rng.standard_normal(5)

    def write(path, numbers, slow, block=1):
        with FeatureWriter(path, {"stage": "test"}, groups=QUERY_GROUPS, batch_entries=7) as writer:
            todo = [number for number in numbers if not writer.done(f"q/{number}")]
            for start in range(0, len(todo), block):
                numbers = todo[start:start + block]
                ids, (tokens, pooled) = [f"q/{number}" for number in numbers], zip(*map(entry, numbers))
                if block == 1:
                    writer.write(ids[0], tokens[0], group="tokens", length=len(tokens[0]))
                    writer.write(ids[0], pooled[0], group="pooled")
                else:  # many entries at once
                    lengths = [len(rows) for rows in tokens]
                    writer.write_many(ids, np.concatenate(tokens), lengths, group="tokens",
                                      entry_columns={"length": lengths})
                    writer.write_many(ids, np.stack(pooled), group="pooled")
                if slow and writer.committed >= 14:
                    print("committed", flush=True)
                    slow = False
                if slow is False:
                    time.sleep(0.002)
            writer.finish()

    if __name__ == "__main__":
        write(sys.argv[1], range(int(sys.argv[2])), slow=True, block=int(sys.argv[3]))
""")


def _arrays(path):
    with h5py.File(path) as f:
        found = {}
        f.visititems(lambda name, node: found.update({name: node[()]}) if isinstance(node, h5py.Dataset) else None)
        return found, dict(f.attrs)


@pytest.mark.parametrize("block", [1, 5], ids=["write", "write_many"])
def test_a_killed_writer_resumes_to_the_same_file_as_an_uninterrupted_one(tmp_path, block):
    script = tmp_path / "writer.py"
    script.write_text(_WRITER)
    n_entries = 400
    killed, whole = tmp_path / "killed" / "queries.h5", tmp_path / "whole" / "queries.h5"
    killed.parent.mkdir()
    whole.parent.mkdir()
    child = subprocess.Popen([sys.executable, str(script), str(killed), str(n_entries), str(block)],
                             stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline() == "committed\n"
        child.send_signal(signal.SIGKILL)
    finally:
        child.wait()
    assert child.returncode == -signal.SIGKILL and not killed.exists()
    sys.path.insert(0, str(tmp_path))
    try:
        import writer as child_code
    finally:
        sys.path.remove(str(tmp_path))
    with FeatureWriter(killed, {"stage": "test"}, groups=QUERY_GROUPS) as resumed:
        assert 14 <= resumed.committed < n_entries  # what the child had committed, no more
    child_code.write(killed, range(n_entries), slow=None, block=block)
    child_code.write(whole, range(n_entries), slow=None)  # entry by entry: write_many gives the same file
    (killed_arrays, killed_attrs), (whole_arrays, whole_attrs) = _arrays(killed), _arrays(whole)
    assert killed_attrs == whole_attrs and sorted(killed_arrays) == sorted(whole_arrays)
    for name, array in whole_arrays.items():
        assert killed_arrays[name].dtype == array.dtype, name
        if array.dtype == object:  # the ids: strings
            assert killed_arrays[name].tolist() == array.tolist(), name
        else:
            assert killed_arrays[name].tobytes() == array.tobytes(), name
    assert len(whole_arrays["tokens/ids"]) == n_entries


def test_an_unreadable_partial_file_is_started_over(tmp_path):
    final = tmp_path / "features.h5"
    (tmp_path / "features.h5.partial").write_bytes(b"\x89HDF garbage from a kill")
    with FeatureWriter(final, {}) as writer:
        assert writer.committed == 0
        writer.write("v", np.ones((2, 2), np.float32))
        writer.finish()
    assert FeatureFile(final).group().read("v").tolist() == [[1.0, 1.0]] * 2


def test_a_partial_file_another_process_holds_is_busy_not_corrupt(tmp_path):
    final = tmp_path / "features.h5"
    with FeatureWriter(final, {}) as writer:
        writer.write("v", np.ones((2, 2), np.float32))
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


def test_a_file_of_the_old_layout_is_refused_in_one_line(tmp_path):
    old = tmp_path / "features.h5"
    with h5py.File(old, "w") as f:  # one dataset per video, as before layout 1
        f.create_dataset("video1", data=np.ones((2, 3), np.float32)).attrs["duration"] = 1.0
    with pytest.raises(FeatureFileError) as refused:
        FeatureFile(old)
    message = str(refused.value)
    assert "\n" not in message and str(old) in message and "old layout" in message and "rerun the stage" in message


def test_readers_name_the_file_and_what_is_missing(tmp_path):
    final = tmp_path / "queries.h5"
    with FeatureWriter(final, {}, groups={"pooled": ROW}) as writer:
        writer.write("q1", np.ones(3, np.float32), group="pooled")
        writer.finish()
    queries = FeatureFile(final)
    with pytest.raises(FeatureFileError, match=rf"{final}, group 'pooled': no entry 'q2'"):
        queries.group("pooled").read("q2")
    with pytest.raises(FeatureFileError, match=rf"{final}: no group 'tokens'"):
        queries.group("tokens")
    (tmp_path / "broken.h5").write_bytes(b"not hdf5")
    with pytest.raises(FeatureFileError, match="broken.h5: not a readable HDF5 file"):
        FeatureFile(tmp_path / "broken.h5")
    with pytest.raises(FeatureFileError, match="missing.h5: no such feature file"):
        FeatureFile(tmp_path / "missing.h5")
