"""Baselines other benchmarks measure a stage against in the same run.

``contiguous_write_seconds``: the time to write a set of entries' bytes as ONE contiguous HDF5
dataset, in large slices; what no feature writer can beat by much, so every writer is given as a
ratio to it (benchmarks/write_speed.py, and the graph-scale benchmark per writing stage).
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Sequence

import h5py
import numpy as np

_SLICE_BYTES = 32 << 20  # rows gathered per write: large enough that the per-call cost vanishes


def contiguous_write_seconds(path: Path, arrays: Sequence[np.ndarray]) -> float:
    """Seconds to write ``arrays`` (entries (rows, *row_shape); a one-row entry (D,) passed as (1, D))
    one after another into one contiguous dataset at ``path``, file closed; the file is then removed."""
    path = Path(path)
    row_shape, dtype = arrays[0].shape[1:], arrays[0].dtype
    total = sum(len(array) for array in arrays)
    row_bytes = max(1, dtype.itemsize * int(np.prod(row_shape)))
    rows_per_slice = max(1, _SLICE_BYTES // row_bytes)
    start_clock = time.perf_counter()
    with h5py.File(path, "w") as file:
        dataset = file.create_dataset("data", (total, *row_shape), dtype=dtype)  # contiguous, not chunked
        pending, pending_rows, at = [], 0, 0
        for array in arrays:
            pending.append(array)
            pending_rows += len(array)
            if pending_rows >= rows_per_slice:
                dataset[at:at + pending_rows] = np.concatenate(pending)
                at, pending, pending_rows = at + pending_rows, [], 0
        if pending:
            dataset[at:at + pending_rows] = np.concatenate(pending)
    seconds = time.perf_counter() - start_clock
    path.unlink()
    return seconds
