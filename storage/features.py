"""Feature files: per group, every entry's rows in one contiguous array plus an id/offset index.

A feature file (HDF5) holds one or more named groups (``""`` is the file's root); every group of a
file holds the same ids in the same order (a video's features and its mask, a caption's tokens and
its pooled vector). A group G is:

    G/data      (R, *row_shape)  the rows of all n entries, one entry after another (chunked, resizable)
    G/offsets   (n + 1,) int64   entry i is data[offsets[i]:offsets[i + 1]]; offsets[0] = 0
    G/ids       (n,) UTF-8       entry i's id: ids are data, so any string is an id ('/', '.', unicode)
    G/<column>  (n,)             one value per entry (``entry_columns``, e.g. duration), or
                (R, ...)         one value per row, sharing the offsets (``row_columns``, e.g. timestamps)

Group attributes: ``kind`` ("ragged": an entry is a (rows, *row_shape) array; "row": an entry is one
row, read as (*row_shape,)), ``entry_columns``, ``row_columns``. File attributes: ``format``,
``layout_version``, ``groups`` (JSON list), ``committed`` (entries durably written), ``complete``
(set by ``finish``), and the writer's own (stage, fingerprint, dim, ...).

Writing costs the bytes, not the entries: ``FeatureWriter`` keeps entries in memory and commits them in
batches (one slice assignment per array, the data flushed before the committed count that makes it
count). The file is built as ``<name>.partial`` and renamed by ``finish()``, so a file under its final
name is complete; a killed writer resumes from its last commit, anything written after it cut off, and
ends with the same arrays as an uninterrupted run. ``FeatureFile`` opens a published file, reads each
group's ids and offsets once, and then reads an entry with one slice, many with one sorted pass.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterable, Iterator

import h5py
import numpy as np

FORMAT = "prvr-ragged-features"
LAYOUT_VERSION = 1
ROOT = ""  # the group stored at the file's root
RAGGED, ROW = "ragged", "row"

_RESERVED_ATTRS = ("format", "layout_version", "groups", "committed", "complete")
_DATA_CHUNK_BYTES = 256 << 10  # small enough that reading one entry reads little more than it
_INDEX_CHUNK = 16384  # entries per chunk of offsets, ids and entry columns
_STRINGS = h5py.string_dtype("utf-8")
# gather reads one span covering the wanted rows when they fill at least this share of it.
_GATHER_SPAN_FILL = 0.25


class FeatureFileError(ValueError):
    """A feature file is missing, unreadable, of another layout, or lacks an id; the message names it."""


class FeatureFileBusy(RuntimeError):
    """Another process has the feature file open: it is in use, not corrupt."""


# ---- writing -----------------------------------------------------------------------------------------


class _PendingGroup:
    """Entries of one group added since the last commit."""

    def __init__(self, name: str, kind: str):
        if kind not in (RAGGED, ROW):
            raise ValueError(f"group {name!r}: kind must be {RAGGED!r} or {ROW!r}, not {kind!r}")
        self.name, self.kind = name, kind
        self.arrays: list[np.ndarray] = []
        self.entry_columns: dict[str, list] = {}
        self.row_columns: dict[str, list[np.ndarray]] = {}
        self.nbytes = 0

    def add(self, data: np.ndarray, columns: dict[str, Any], entry_id: str) -> None:
        data = np.asarray(data)
        if self.kind == RAGGED and data.ndim == 0:
            raise ValueError(f"group {self.name!r}, entry {entry_id!r}: a ragged entry needs a rows axis")
        entry = {name: value for name, value in columns.items() if np.ndim(value) == 0}
        rows = {name: np.asarray(value) for name, value in columns.items() if np.ndim(value) > 0}
        if self.kind == ROW and rows:
            raise ValueError(f"group {self.name!r}: one-row entries take per-entry values only, not {sorted(rows)}")
        for name, value in rows.items():
            if len(value) != len(data):
                raise ValueError(f"group {self.name!r}, entry {entry_id!r}: column {name!r} has {len(value)} "
                                 f"values for {len(data)} rows")
        if self.arrays and (set(entry), set(rows)) != (set(self.entry_columns), set(self.row_columns)):
            raise ValueError(f"group {self.name!r}, entry {entry_id!r}: columns {sorted(columns)} differ from "
                             f"the earlier entries' {sorted([*self.entry_columns, *self.row_columns])}")
        self.arrays.append(data)
        for name, value in entry.items():
            self.entry_columns.setdefault(name, []).append(value)
        for name, value in rows.items():
            self.row_columns.setdefault(name, []).append(value)
        self.nbytes += data.nbytes + sum(value.nbytes for value in rows.values())

    def take(self, count: int) -> "_PendingGroup":
        """The first ``count`` entries as a batch of their own; they leave this one."""
        batch = _PendingGroup(self.name, self.kind)
        batch.arrays, self.arrays = self.arrays[:count], self.arrays[count:]
        for source, target in ((self.entry_columns, batch.entry_columns), (self.row_columns, batch.row_columns)):
            for name, values in list(source.items()):
                target[name], source[name] = values[:count], values[count:]
                if not source[name]:
                    del source[name]  # the next entry may bring its own columns (and is checked against the file's)
        self.nbytes = sum(array.nbytes for array in self.arrays) + sum(
            value.nbytes for values in self.row_columns.values() for value in values)
        return batch

    def rows(self) -> np.ndarray:
        return np.stack(self.arrays) if self.kind == ROW else np.concatenate(self.arrays)


class FeatureWriter:
    """Builds one feature file, entry by entry, in batches; resumable after a kill.

    ``groups`` maps each group name to its kind (``RAGGED`` or ``ROW``); every entry is written to
    every group, the groups in any order, the entries in the same order in each. Use as a context
    manager; ``done(id)`` says whether an earlier run committed an entry (skip it: the rest must come
    in the same order as then), and ``finish()``, once every entry is written, publishes the file
    under its final name. Leaving the block otherwise commits the entries written so far.
    """

    def __init__(self, final: Path, attrs: dict[str, Any], groups: dict[str, str] | None = None,
                 batch_bytes: int = 32 << 20, batch_entries: int = 4096, resume: bool = True):
        self.final = Path(final)
        self.partial = self.final.with_name(self.final.name + ".partial")
        self.attrs = attrs
        self.kinds = dict(groups) if groups is not None else VIDEO_GROUPS
        self.batch_bytes, self.batch_entries = batch_bytes, batch_entries
        self.resume = resume  # False: an earlier run's partial file is started over, not resumed
        self._file: h5py.File | None = None
        self._committed: list[str] = []  # ids committed, in order
        self._done: set[str] = set()
        self._pending_ids: list[str] = []
        self._pending = {name: _PendingGroup(name, kind) for name, kind in self.kinds.items()}
        self._broken = False  # a commit failed part-way: nothing more is committed by this writer

    def __enter__(self) -> "FeatureWriter":
        self._file = self._open_partial()
        for name, value in self.attrs.items():
            self._file.attrs[name] = value
        return self

    def __exit__(self, *exc) -> None:
        if self._file is None:
            return
        try:
            if not self._broken:
                self._commit()  # keep what is complete, whatever ended the block
        finally:
            self._file.close()
            self._file = None

    def done(self, entry_id: str) -> bool:
        """Whether ``entry_id`` is written: by this writer, or committed by an earlier, interrupted one."""
        return entry_id in self._done

    @property
    def committed(self) -> int:
        return len(self._committed)

    def write(self, entry_id: str, data: np.ndarray, group: str = ROOT, **columns: Any) -> None:
        """Adds ``entry_id``'s ``data`` to ``group``: (rows, ...) for a ragged group, one row for a row
        group. A scalar column is one value for the entry; an array column has one value per row."""
        if group not in self._pending:
            raise ValueError(f"{self.partial}: group {group!r} is not one of this file's {sorted(self.kinds)}")
        pending = self._pending[group]
        position = len(pending.arrays)
        if position == len(self._pending_ids):
            if entry_id in self._done:
                raise ValueError(f"{self.partial}: entry {entry_id!r} written twice")
            self._pending_ids.append(entry_id)
            self._done.add(entry_id)  # from here on "done" means written; committed is what survives a kill
        elif self._pending_ids[position] != entry_id:
            raise ValueError(f"{self.partial}: group {group!r} got entry {entry_id!r} where the other groups "
                             f"have {self._pending_ids[position]!r}: write entries in one order")
        pending.add(data, columns, entry_id)
        if self._complete_entries() == len(self._pending_ids) and (
                len(self._pending_ids) >= self.batch_entries
                or sum(group.nbytes for group in self._pending.values()) >= self.batch_bytes):
            self._commit()

    def finish(self) -> None:
        """Commits what is left and publishes the file under its final name."""
        incomplete = [name for name, group in self._pending.items() if len(group.arrays) < len(self._pending_ids)]
        if incomplete:
            raise ValueError(f"{self.partial}: entry {self._pending_ids[-1]!r} has no data in group(s) {incomplete}")
        self._commit()
        for name, kind in self.kinds.items():
            if _group_path(name) + "data" not in self._file:
                _create_group(self._file, name, _PendingGroup(name, kind))  # an empty file still has its groups
        self._file.attrs["complete"] = True
        self._file.close()
        self._file = None
        os.replace(self.partial, self.final)

    # -- the partial file --

    def _open_partial(self) -> h5py.File:
        try:
            file = h5py.File(self.partial, "a")
        except BlockingIOError:
            # HDF5's own file lock: a file another process holds is in use, never corrupt.
            raise FeatureFileBusy(f"{self.partial} is open in another process (HDF5 file lock); not "
                                  f"touching it") from None
        except OSError:
            file = self._restart(None)  # a kill during a write can leave the partial file unreadable
        committed = _resumable_ids(file, self.kinds) if self.resume else None
        if committed is None:  # not ours, another set of groups, cut in the middle of a commit, or not wanted
            file = self._restart(file)
            committed = []
        self._committed, self._done = committed, set(committed)
        return file

    def _restart(self, file: h5py.File | None) -> h5py.File:
        if file is not None:
            file.close()
        self.partial.unlink(missing_ok=True)
        file = h5py.File(self.partial, "w")
        file.attrs.update(format=FORMAT, layout_version=LAYOUT_VERSION, groups=json.dumps(list(self.kinds)),
                          committed=0)
        return file

    def _complete_entries(self) -> int:
        return min(len(group.arrays) for group in self._pending.values())

    def _commit(self) -> None:
        """Writes the entries every group has, data first: the committed count is flushed after them."""
        count = self._complete_entries()
        if count == 0:
            return
        self._broken = True
        start = len(self._committed)
        ids = self._pending_ids[:count]
        for name, pending in self._pending.items():
            batch = pending.take(count)
            path = _group_path(name)
            if path + "data" not in self._file:
                _create_group(self._file, name, batch)
            _append(self._file, path, batch, ids, start)
        self._file.flush()
        self._file.attrs["committed"] = start + count
        self._file.flush()
        self._broken = False
        self._committed += ids
        self._pending_ids = self._pending_ids[count:]


def _group_path(name: str) -> str:
    return f"{name}/" if name else ""


def _create_group(file: h5py.File, name: str, batch: _PendingGroup) -> None:
    """The group's datasets, shaped after the first batch's entries."""
    path = _group_path(name)
    group = file.require_group(name) if name else file
    placeholder = np.zeros((), np.float32) if batch.kind == ROW else np.zeros(0, np.float32)  # of a group with no entries
    sample = batch.arrays[0] if batch.arrays else placeholder
    row_shape = sample.shape if batch.kind == ROW else sample.shape[1:]
    row_bytes = max(1, sample.dtype.itemsize * int(np.prod(row_shape)))
    file.create_dataset(path + "data", (0, *row_shape), dtype=sample.dtype, maxshape=(None, *row_shape),
                        chunks=(max(1, _DATA_CHUNK_BYTES // row_bytes), *row_shape))
    file.create_dataset(path + "offsets", data=np.zeros(1, np.int64), maxshape=(None,), chunks=(_INDEX_CHUNK,))
    file.create_dataset(path + "ids", (0,), dtype=_STRINGS, maxshape=(None,), chunks=(_INDEX_CHUNK,))
    for column, values in batch.entry_columns.items():
        file.create_dataset(path + column, (0,), dtype=np.asarray(values).dtype, maxshape=(None,),
                            chunks=(_INDEX_CHUNK,))
    for column, values in batch.row_columns.items():
        value_shape = values[0].shape[1:]
        file.create_dataset(path + column, (0, *value_shape), dtype=values[0].dtype, maxshape=(None, *value_shape),
                            chunks=(_INDEX_CHUNK, *value_shape))
    group.attrs.update(kind=batch.kind, entry_columns=json.dumps(sorted(batch.entry_columns)),
                       row_columns=json.dumps(sorted(batch.row_columns)))


def _append(file: h5py.File, path: str, batch: _PendingGroup, ids: list[str], start: int) -> None:
    """One slice assignment per dataset of the group."""
    _check_columns(file, path, batch)
    lengths = np.array([1 if batch.kind == ROW else len(array) for array in batch.arrays], np.int64)
    offsets = file[path + "offsets"]
    first_row = int(offsets[start])
    _extend(offsets, start + 1, first_row + np.cumsum(lengths))
    _extend(file[path + "data"], first_row, batch.rows())
    _extend(file[path + "ids"], start, np.array(ids, dtype=object))
    for column, values in batch.entry_columns.items():
        _extend(file[path + column], start, np.asarray(values))
    for column, values in batch.row_columns.items():
        _extend(file[path + column], first_row, np.concatenate(values))


def _check_columns(file: h5py.File, path: str, batch: _PendingGroup) -> None:
    attrs = (file[path] if path else file).attrs
    stored = (set(json.loads(attrs["entry_columns"])), set(json.loads(attrs["row_columns"])))
    if (set(batch.entry_columns), set(batch.row_columns)) != stored:
        raise ValueError(f"{file.filename}: group {path.rstrip('/')!r} has columns {sorted(stored[0] | stored[1])}, "
                         f"an entry brought {sorted([*batch.entry_columns, *batch.row_columns])}")


def _extend(dataset: h5py.Dataset, at: int, values: np.ndarray) -> None:
    dataset.resize(at + len(values), axis=0)
    if len(values):
        dataset[at:at + len(values)] = values


def _resumable_ids(file: h5py.File, kinds: dict[str, str]) -> list[str] | None:
    """The committed ids of a partial file, everything after them cut off; None if the file cannot be
    resumed (not this format, other groups, or arrays shorter than the committed count says)."""
    attrs = file.attrs
    if attrs.get("format") != FORMAT or attrs.get("layout_version") != LAYOUT_VERSION or "committed" not in attrs:
        return None
    if json.loads(attrs.get("groups", "[]")) != list(kinds):
        return None
    count = int(attrs["committed"])
    ids = None
    for name, kind in kinds.items():
        path = _group_path(name)
        if path + "data" not in file:
            if count:
                return None
            continue
        group = file[path] if path else file
        offsets = file[path + "offsets"]
        if group.attrs.get("kind") != kind or len(offsets) < count + 1 or len(file[path + "ids"]) < count:
            return None
        rows = int(offsets[count])
        columns = [*json.loads(group.attrs["entry_columns"]), *json.loads(group.attrs["row_columns"])]
        lengths = {"offsets": count + 1, "data": rows, "ids": count,
                   **{column: count for column in json.loads(group.attrs["entry_columns"])},
                   **{column: rows for column in json.loads(group.attrs["row_columns"])}}
        if any(path + column not in file for column in columns):
            return None
        if any(len(file[path + dataset]) < length for dataset, length in lengths.items()):
            return None
        for dataset, length in lengths.items():
            file[path + dataset].resize(length, axis=0)
        group_ids = list(file[path + "ids"].asstr()[:count]) if count else []
        if ids is not None and group_ids != ids:
            return None
        ids = group_ids
    return ids or []


# ---- reading -----------------------------------------------------------------------------------------


class FeatureFile:
    """A published feature file, opened once; ``group(name)`` gives a group's entries by id.

    The HDF5 handle is reopened in each process that uses it (DataLoader workers never share one);
    the index read at opening travels with the object when it is pickled.
    """

    def __init__(self, path: Path):
        self.path = Path(path)
        self._handle: h5py.File | None = None
        self._pid: int | None = None
        self._datasets: dict[str, h5py.Dataset] = {}
        attrs = self.file.attrs
        _check_layout(self.path, attrs, self.file)
        self.attrs = {name: value for name, value in attrs.items() if name not in _RESERVED_ATTRS}
        self.groups: list[str] = json.loads(attrs["groups"])
        self._groups: dict[str, RaggedGroup] = {}

    @property
    def file(self) -> h5py.File:
        """This process's open handle."""
        if self._pid != os.getpid():
            self._handle, self._pid = None, os.getpid()  # inherited across a fork: never reused
        if self._handle is None:
            self._handle = _open_for_reading(self.path)
            self._datasets = {}
        return self._handle

    def dataset(self, name: str) -> h5py.Dataset:
        """This process's open dataset ``name``: opened once, as opening costs more than a small read."""
        file = self.file
        if name not in self._datasets:
            self._datasets[name] = file[name]
        return self._datasets[name]

    def group(self, name: str = ROOT) -> "RaggedGroup":
        if name not in self._groups:
            if name not in self.groups:
                raise FeatureFileError(f"{self.path}: no group {name!r} (it has {self.groups})")
            self._groups[name] = RaggedGroup(self, name)
        return self._groups[name]

    def close(self) -> None:
        if self._handle is not None and self._pid == os.getpid():
            self._handle.close()
        self._handle, self._datasets = None, {}

    def __enter__(self) -> "FeatureFile":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_handle": None, "_pid": None, "_datasets": {}}


def _open_for_reading(path: Path) -> h5py.File:
    if not path.is_file():
        raise FeatureFileError(f"{path}: no such feature file")
    try:
        return h5py.File(path, "r")
    except OSError as err:
        raise FeatureFileError(f"{path}: not a readable HDF5 file ({err})") from None


def _check_layout(path: Path, attrs, file: h5py.File) -> None:
    if attrs.get("format") != FORMAT:
        if "format" not in attrs and len(file):
            raise FeatureFileError(f"{path}: written in the old layout (one HDF5 dataset per entry); rerun the "
                                   f"stage that wrote it (delete its folder) to write layout {LAYOUT_VERSION}")
        raise FeatureFileError(f"{path}: not a feature file of this project (format {attrs.get('format')!r})")
    if attrs.get("layout_version") != LAYOUT_VERSION:
        raise FeatureFileError(f"{path}: feature layout version {attrs.get('layout_version')}, this code reads "
                               f"version {LAYOUT_VERSION}; rerun the stage that wrote it")
    if not attrs.get("complete"):
        raise FeatureFileError(f"{path}: an incompletely written feature file; rerun the stage that writes it")


class RaggedGroup:
    """One group of a feature file: ids, offsets and per-entry columns in memory, rows read on demand."""

    def __init__(self, feature_file: FeatureFile, name: str):
        self.feature_file, self.name = feature_file, name
        self._path = _group_path(name)
        file = feature_file.file
        try:
            node = file[self._path] if self._path else file
            self.kind = node.attrs["kind"]
            self.entry_columns = json.loads(node.attrs["entry_columns"])
            self.row_columns = json.loads(node.attrs["row_columns"])
            self.offsets = file[self._path + "offsets"][()].astype(np.int64)  # (n + 1,)
            self.ids: list[str] = list(file[self._path + "ids"].asstr()[()])
            data = file[self._path + "data"]
            self.row_shape, self.dtype = data.shape[1:], data.dtype
        except KeyError as err:
            raise FeatureFileError(f"{self.where}: not a feature group ({err})") from None
        if len(self.offsets) != len(self.ids) + 1:
            raise FeatureFileError(f"{self.where}: {len(self.ids)} ids but {len(self.offsets)} offsets")
        self.index = {entry_id: row for row, entry_id in enumerate(self.ids)}
        self._columns: dict[str, np.ndarray] = {}

    @property
    def where(self) -> str:
        return f"{self.feature_file.path}, group {self.name!r}" if self.name else str(self.feature_file.path)

    @property
    def lengths(self) -> np.ndarray:
        """(n,) rows per entry."""
        return np.diff(self.offsets)

    @property
    def dim(self) -> int | None:
        """The last axis of a row (the feature dimension), None for scalar rows."""
        return self.row_shape[-1] if self.row_shape else None

    def __len__(self) -> int:
        return len(self.ids)

    def __contains__(self, entry_id: str) -> bool:
        return entry_id in self.index

    def position(self, entry_id: str) -> int:
        try:
            return self.index[entry_id]
        except KeyError:
            raise FeatureFileError(f"{self.where}: no entry {entry_id!r}") from None

    def column(self, name: str) -> np.ndarray:
        """(n,) the per-entry column ``name`` (e.g. duration), in id order."""
        if name not in self.entry_columns:
            raise FeatureFileError(f"{self.where}: no per-entry column {name!r} (it has {self.entry_columns})")
        if name not in self._columns:
            self._columns[name] = self.feature_file.file[self._path + name][()]
        return self._columns[name]

    def read(self, entry_id: str, column: str = "data") -> np.ndarray:
        """One entry's rows (one slice): (rows, *row_shape), or (*row_shape,) in a row group; ``column``
        names a per-row column (e.g. timestamps) to read instead of the data."""
        dataset = self._dataset(column)
        index = self.position(entry_id)
        if self.kind == ROW:
            return dataset[index]
        return dataset[int(self.offsets[index]):int(self.offsets[index + 1])]

    def gather(self, entry_ids: Iterable[str], column: str = "data") -> list[np.ndarray]:
        """The entries of ``entry_ids`` (as ``read`` gives them), read in one pass in file order."""
        dataset = self._dataset(column)
        positions = np.array([self.position(entry_id) for entry_id in entry_ids], np.int64)
        starts, ends = self.offsets[positions], self.offsets[positions + 1]
        if not len(positions):
            return []
        low, high = int(starts.min()), int(ends.max())
        if int(np.sum(ends - starts)) >= _GATHER_SPAN_FILL * (high - low):
            block = dataset[low:high]
            entries = [block[start - low:end - low] for start, end in zip(starts.tolist(), ends.tolist())]
        else:  # few rows spread wide: each entry on its own, in file order
            order = np.argsort(starts, kind="stable")
            pieces = {int(i): dataset[int(starts[i]):int(ends[i])] for i in order}
            entries = [pieces[i] for i in range(len(positions))]
        return [entry[0] for entry in entries] if self.kind == ROW else entries

    def iterate(self, entry_ids: Iterable[str], column: str = "data",
                batch_entries: int = _INDEX_CHUNK) -> Iterator[tuple[str, np.ndarray]]:
        """(id, entry) for ``entry_ids`` in their order, gathered ``batch_entries`` at a time: reads
        everything in few passes while holding only a batch in memory."""
        entry_ids = list(entry_ids)
        for start in range(0, len(entry_ids), batch_entries):
            batch = entry_ids[start:start + batch_entries]
            yield from zip(batch, self.gather(batch, column))

    def items(self, column: str = "data") -> Iterator[tuple[str, np.ndarray]]:
        """(id, entry) for every entry, in file order."""
        return self.iterate(self.ids, column)

    def _dataset(self, column: str) -> h5py.Dataset:
        if column != "data" and column not in self.row_columns:
            raise FeatureFileError(f"{self.where}: no per-row column {column!r} (it has {self.row_columns})")
        return self.feature_file.dataset(self._path + column)


# ---- the files the pipeline writes ------------------------------------------------------------------

VIDEO_GROUPS = {ROOT: RAGGED}  # per video (T, D) rows, with timestamps (T,) and duration
QUERY_GROUPS = {"tokens": RAGGED, "pooled": ROW}  # per caption its tokens (L, D) and pooled vector (D,)
SUBTITLE_GROUPS = {"features": RAGGED, "mask": RAGGED}  # per video (T, D) and (T,) on the visual grid
