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
count); ``write`` adds one entry, ``write_many`` a block of them already laid out as the file stores
them (rows one after another), which it keeps as it is: no per-entry cost at all. The file is built as ``<name>.partial`` and renamed by ``finish()``, so a file under its final
name is complete; a killed writer resumes from its last commit, anything written after it cut off, and
ends with the same arrays as an uninterrupted run. ``FeatureFile`` opens a published file, reads each
group's ids and offsets once, and then reads an entry with one slice, many with one sorted pass.
"""

from __future__ import annotations

import json
import os
from collections import deque
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


class _Block:
    """Entries of one group given together: their rows one after another, rows per entry, their columns."""

    def __init__(self, data: np.ndarray, lengths: np.ndarray, entry_columns: dict[str, np.ndarray],
                 row_columns: dict[str, np.ndarray]):
        self.data = data  # (R, *row_shape), R = lengths.sum()
        self.lengths = lengths  # (n,) int64
        self.entry_columns = entry_columns  # name -> (n,)
        self.row_columns = row_columns  # name -> (R, ...)

    def __len__(self) -> int:
        return len(self.lengths)

    @property
    def nbytes(self) -> int:
        return self.data.nbytes + sum(value.nbytes for value in self.row_columns.values())

    def split(self, count: int) -> tuple["_Block", "_Block"]:
        """The first ``count`` entries and the rest, as views."""
        rows = int(self.lengths[:count].sum())
        entry_parts = [{name: value[part] for name, value in self.entry_columns.items()}
                       for part in (slice(None, count), slice(count, None))]
        row_parts = [{name: value[part] for name, value in self.row_columns.items()}
                     for part in (slice(None, rows), slice(rows, None))]
        return (_Block(self.data[:rows], self.lengths[:count], entry_parts[0], row_parts[0]),
                _Block(self.data[rows:], self.lengths[count:], entry_parts[1], row_parts[1]))


class _PendingGroup:
    """Entries of one group added since the last commit, in blocks as they came."""

    def __init__(self, name: str, kind: str):
        if kind not in (RAGGED, ROW):
            raise ValueError(f"group {name!r}: kind must be {RAGGED!r} or {ROW!r}, not {kind!r}")
        self.name, self.kind = name, kind
        self.blocks: deque[_Block] = deque()  # taken from the front, a block at a time
        self.count = 0  # entries in the blocks
        self.nbytes = 0

    def entry(self, data: np.ndarray, columns: dict[str, Any], entry_id: str) -> _Block:
        """One entry as a block: a scalar column is the entry's value, an array column one value per row."""
        data = np.asarray(data)
        if self.kind == RAGGED and data.ndim == 0:
            raise ValueError(f"group {self.name!r}, entry {entry_id!r}: a ragged entry needs a rows axis")
        entry = {name: np.asarray([value]) for name, value in columns.items() if np.ndim(value) == 0}
        rows = {name: np.asarray(value) for name, value in columns.items() if np.ndim(value) > 0}
        if self.kind == ROW:
            return self.block(data[None], None, entry, rows, [entry_id])
        return self.block(data, np.array([len(data)], np.int64), entry, rows, [entry_id])

    def block(self, data: np.ndarray, lengths: Iterable[int] | None, entry_columns: dict[str, Any],
              row_columns: dict[str, Any], entry_ids: list[str]) -> _Block:
        """Entries given together, checked: ``lengths`` rows each (None: one each, as in a row group)."""
        data = np.asarray(data)
        lengths = np.ones(len(data), np.int64) if lengths is None else np.asarray(lengths, np.int64).reshape(-1)
        if self.kind == ROW and row_columns:
            raise ValueError(f"group {self.name!r}: one-row entries take per-entry values only, not "
                             f"{sorted(row_columns)}")
        where = f"group {self.name!r}, entries {entry_ids[0]!r}.." if len(entry_ids) > 1 else \
            f"group {self.name!r}, entry {entry_ids[0]!r}" if entry_ids else f"group {self.name!r}"
        if len(lengths) != len(entry_ids) or data.ndim == 0 or int(lengths.sum()) != len(data) or (
                self.kind == ROW and np.any(lengths != 1)):
            raise ValueError(f"{where}: {len(data)} rows for {len(entry_ids)} entries of lengths summing to "
                             f"{int(lengths.sum())}")
        entry_columns = {name: np.asarray(value) for name, value in entry_columns.items()}
        row_columns = {name: np.asarray(value) for name, value in row_columns.items()}
        for name, value in [*entry_columns.items(), *row_columns.items()]:
            expected = len(entry_ids) if name in entry_columns else len(data)
            if value.ndim == 0 or len(value) != expected:
                raise ValueError(f"{where}: column {name!r} has {np.size(value)} values for {expected} "
                                 f"{'entries' if name in entry_columns else 'rows'}")
        earlier = self.column_names()
        if self.blocks and (set(entry_columns), set(row_columns)) != earlier:
            raise ValueError(f"{where}: columns {sorted([*entry_columns, *row_columns])} differ from the earlier "
                             f"entries' {sorted(earlier[0] | earlier[1])}")
        return _Block(data, lengths, entry_columns, row_columns)

    def add(self, block: _Block) -> None:
        self.blocks.append(block)
        self.count += len(block)
        self.nbytes += block.nbytes

    def take(self, count: int) -> "_PendingGroup":
        """The first ``count`` entries as a batch of their own; they leave this one."""
        batch = _PendingGroup(self.name, self.kind)
        while batch.count < count:
            block = self.blocks.popleft()
            if len(block) > count - batch.count:
                block, rest = block.split(count - batch.count)
                self.blocks.appendleft(rest)
            batch.add(block)
        self.count -= count
        self.nbytes = sum(block.nbytes for block in self.blocks)
        return batch

    def column_names(self) -> tuple[set[str], set[str]]:
        """(per-entry, per-row) column names of the entries (the blocks agree on them)."""
        first = self.blocks[0] if self.blocks else _Block(np.zeros(0), np.zeros(0, np.int64), {}, {})
        return set(first.entry_columns), set(first.row_columns)

    @property
    def entry_columns(self) -> dict[str, np.ndarray]:
        return self._joined("entry_columns")

    @property
    def row_columns(self) -> dict[str, np.ndarray]:
        return self._joined("row_columns")

    def _joined(self, columns: str) -> dict[str, np.ndarray]:
        names = getattr(self.blocks[0], columns) if self.blocks else {}
        return {name: _joined([getattr(block, columns)[name] for block in self.blocks]) for name in names}

    def lengths(self) -> np.ndarray:
        return _joined([block.lengths for block in self.blocks])

    def rows(self) -> np.ndarray:
        return _joined([block.data for block in self.blocks])


def _joined(arrays: list[np.ndarray]) -> np.ndarray:
    return arrays[0] if len(arrays) == 1 else np.concatenate(arrays)


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
        pending = self._group(group)
        self._add(pending, [entry_id], pending.entry(data, columns, entry_id))

    def write_many(self, entry_ids: list[str], data: np.ndarray, lengths: Iterable[int] | None = None,
                   group: str = ROOT, entry_columns: dict[str, Any] | None = None,
                   row_columns: dict[str, Any] | None = None) -> None:
        """Adds many entries at once, as ``write`` would one by one but without a per-entry cost: ``data``
        holds their rows one after another, (R, ...) with ``lengths[i]`` rows for entry i (a row group:
        (n, ...), one row each, ``lengths`` None); ``entry_columns`` (n,) and ``row_columns`` (R, ...)
        arrays. The arrays are kept, not copied, until committed: do not change them afterwards."""
        pending = self._group(group)
        entry_ids = list(entry_ids)
        self._add(pending, entry_ids, pending.block(data, lengths, entry_columns or {}, row_columns or {}, entry_ids))

    def _group(self, group: str) -> _PendingGroup:
        if group not in self._pending:
            raise ValueError(f"{self.partial}: group {group!r} is not one of this file's {sorted(self.kinds)}")
        return self._pending[group]

    def _add(self, pending: _PendingGroup, entry_ids: list[str], block: _Block) -> None:
        """Adds a checked block of ``entry_ids`` to ``pending``: the ids the other groups have already
        got must come in their order, the others are new; commits when a batch is full."""
        position = pending.count
        known = self._pending_ids[position:position + len(entry_ids)]
        if entry_ids[:len(known)] != known:
            index = next(i for i, (got, wanted) in enumerate(zip(entry_ids, known)) if got != wanted)
            raise ValueError(f"{self.partial}: group {pending.name!r} got entry {entry_ids[index]!r} where the other "
                             f"groups have {known[index]!r}: write entries in one order")
        new = entry_ids[len(known):]
        if len(set(new)) != len(new) or not self._done.isdisjoint(new):
            raise ValueError(f"{self.partial}: entry {_first_repeated(new, self._done)!r} written twice")
        self._pending_ids += new
        self._done.update(new)  # from here on "done" means written; committed is what survives a kill
        pending.add(block)
        if self._complete_entries() == len(self._pending_ids) and (
                len(self._pending_ids) >= self.batch_entries
                or sum(group.nbytes for group in self._pending.values()) >= self.batch_bytes):
            self._commit()

    def finish(self) -> None:
        """Commits what is left and publishes the file under its final name."""
        incomplete = [name for name, group in self._pending.items() if group.count < len(self._pending_ids)]
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
        return min(group.count for group in self._pending.values())

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


def _first_repeated(entry_ids: list[str], earlier: set[str]) -> str | None:
    seen: set[str] = set()
    for entry_id in entry_ids:
        if entry_id in earlier or entry_id in seen:
            return entry_id
        seen.add(entry_id)
    return None


def _group_path(name: str) -> str:
    return f"{name}/" if name else ""


def _create_group(file: h5py.File, name: str, batch: _PendingGroup) -> None:
    """The group's datasets, shaped after the first batch's entries."""
    path = _group_path(name)
    group = file.require_group(name) if name else file
    sample = batch.blocks[0].data if batch.blocks else np.zeros(0, np.float32)  # a group with no entries: scalar rows
    row_shape = sample.shape[1:]
    row_bytes = max(1, sample.dtype.itemsize * int(np.prod(row_shape)))
    file.create_dataset(path + "data", (0, *row_shape), dtype=sample.dtype, maxshape=(None, *row_shape),
                        chunks=(max(1, _DATA_CHUNK_BYTES // row_bytes), *row_shape))
    file.create_dataset(path + "offsets", data=np.zeros(1, np.int64), maxshape=(None,), chunks=(_INDEX_CHUNK,))
    file.create_dataset(path + "ids", (0,), dtype=_STRINGS, maxshape=(None,), chunks=(_INDEX_CHUNK,))
    for column, values in batch.entry_columns.items():
        file.create_dataset(path + column, (0,), dtype=values.dtype, maxshape=(None,),
                            chunks=(_INDEX_CHUNK,))
    for column, values in batch.row_columns.items():
        value_shape = values.shape[1:]
        file.create_dataset(path + column, (0, *value_shape), dtype=values.dtype, maxshape=(None, *value_shape),
                            chunks=(_INDEX_CHUNK, *value_shape))
    entry_columns, row_columns = batch.column_names()
    group.attrs.update(kind=batch.kind, entry_columns=json.dumps(sorted(entry_columns)),
                       row_columns=json.dumps(sorted(row_columns)))


def _append(file: h5py.File, path: str, batch: _PendingGroup, ids: list[str], start: int) -> None:
    """One slice assignment per dataset of the group."""
    _check_columns(file, path, batch)
    lengths = batch.lengths()
    offsets = file[path + "offsets"]
    first_row = int(offsets[start])
    _extend(offsets, start + 1, first_row + np.cumsum(lengths))
    _extend(file[path + "data"], first_row, batch.rows())
    _extend(file[path + "ids"], start, np.array(ids, dtype=object))
    for column, values in batch.entry_columns.items():
        _extend(file[path + column], start, values)
    for column, values in batch.row_columns.items():
        _extend(file[path + column], first_row, values)


def _check_columns(file: h5py.File, path: str, batch: _PendingGroup) -> None:
    attrs = (file[path] if path else file).attrs
    stored = (set(json.loads(attrs["entry_columns"])), set(json.loads(attrs["row_columns"])))
    brought = batch.column_names()
    if brought != stored:
        raise ValueError(f"{file.filename}: group {path.rstrip('/')!r} has columns {sorted(stored[0] | stored[1])}, "
                         f"an entry brought {sorted(brought[0] | brought[1])}")


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
