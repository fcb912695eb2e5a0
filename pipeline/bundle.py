"""The PRVR feature bundle (MS-SL's release, reused by GMMFormer and AMDNet): import and export.

Layout of one collection (``tvr``, ``activitynet``, ``charades``), see the data-formats spec:

    TextData/<collection>{train,val,test}.caption.txt      "cap_id caption" per line, cap_id = <video_id>#enc#<k>
    TextData/roberta_<collection>_query_feat.hdf5          cap_id -> (L, D) token features
    TextData/clip_ViT_B_32_<collection>_query_feat.hdf5    cap_id -> (D,) one vector
    FeatureData/new_clip_vit_32_<collection>_vid_features.hdf5   video_id -> (T, D)
    FeatureData/<name>/  BigFile: shape.txt "N D", id.txt (N row ids), feature.bin (N x D float32),
                         video2frames.txt: a Python dict literal video_id -> ordered row ids

Import turns a bundle into our store (video and query feature files in the shared HDF5 formats,
queries.jsonl, videos.jsonl); export writes our features in the bundle layout.
"""

from __future__ import annotations

import ast
import ctypes
import json
import logging
import math
import os
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Callable, Iterable, Iterator, NamedTuple, TypeVar

import h5py
import numpy as np

from amdnet.atomic import atomic_path, write_jsonl_atomic, write_lines_atomic, write_text_atomic
from pipeline.datasets import SPLITS, AnnotationError
from pipeline.paths import confined, opaque_name, plain_name
from pipeline.text_files import text_lines
from storage import QUERY_GROUPS, FeatureFile, FeatureWriter, RaggedGroup

log = logging.getLogger("pipeline")
T = TypeVar("T")

CLIP_VIDEO = "clip"  # features.video value naming the CLIP video HDF5 rather than a BigFile folder
EXPORTED_BIGFILE = "features"  # name of the BigFile folder export writes under FeatureData/

BUNDLE_HINT = ("the PRVR feature bundle released with MS-SL (https://github.com/HuiGuanLab/ms-sl, section "
               "'Data Preparation'; AMDNet's CLIP features: https://github.com/songpipi/AMDNet): unpack a "
               "collection's folder so that TextData/ and FeatureData/ sit in features.bundle_dir")


class BundleError(ValueError):
    """A bundle file is missing, malformed or inconsistent; the message names the file and key."""


@dataclass(frozen=True)
class BundleLayout:
    """The files of one collection of a bundle; each is confined to the bundle's folders."""

    root: Path
    collection: str
    video: str = CLIP_VIDEO  # "clip" or a BigFile folder name under FeatureData/
    query: str = "clip"  # "clip" (one vector per caption) or "roberta" (token features)

    def __post_init__(self):
        plain_name(self.collection)  # it becomes part of file names: no '/', '..' or the like

    def captions(self, split: str) -> Path:
        return confined(self.root / "TextData", f"{self.collection}{split}.caption.txt")

    @property
    def query_file(self) -> Path:
        name = {"clip": f"clip_ViT_B_32_{self.collection}_query_feat.hdf5",
                "roberta": f"roberta_{self.collection}_query_feat.hdf5"}[self.query]
        return confined(self.root / "TextData", name)

    @property
    def video_source(self) -> Path:
        if self.video == CLIP_VIDEO:
            return confined(self.root / "FeatureData", f"new_clip_vit_32_{self.collection}_vid_features.hdf5")
        return confined(self.root / "FeatureData", self.video)

    def expected(self) -> list[Path]:
        bigfile = [] if self.video == CLIP_VIDEO else [self.video_source / name for name in BIGFILE_FILES]
        return [self.captions(split) for split in SPLITS] + [self.query_file] + (bigfile or [self.video_source])

    def check_present(self) -> None:
        missing = [path for path in self.expected() if not path.exists()]
        if missing:
            listing = "\n".join(f"  {path}" for path in missing)
            raise BundleError(f"feature bundle {self.root} (collection {self.collection!r}): "
                              f"{len(missing)} expected file(s) missing:\n{listing}\nHow to get them: {BUNDLE_HINT}")


# ---- BigFile -----------------------------------------------------------------------------------------

BIGFILE_FILES = ("shape.txt", "id.txt", "feature.bin", "video2frames.txt")


def read_bigfile(folder: Path) -> tuple[dict[str, list[str]], "BigFileRows"]:
    """video2frames (video id -> ordered row ids) and the rows of a BigFile folder, validated."""
    folder = Path(folder)
    try:
        n_rows, dim = (int(value) for value in (folder / "shape.txt").read_text().split())
    except ValueError:
        raise BundleError(f"{folder / 'shape.txt'}: expected two integers 'N D'") from None
    row_ids = (folder / "id.txt").read_text().split()
    if len(row_ids) != n_rows:
        raise BundleError(f"{folder / 'id.txt'}: {len(row_ids)} row ids, but shape.txt says {n_rows}")
    binary = folder / "feature.bin"
    if binary.stat().st_size != n_rows * dim * 4:
        raise BundleError(f"{binary}: {binary.stat().st_size} bytes, expected {n_rows} x {dim} float32 "
                          f"= {n_rows * dim * 4}")
    rows = BigFileRows(np.memmap(binary, dtype=np.float32, mode="r", shape=(n_rows, dim)),
                       {row_id: index for index, row_id in enumerate(row_ids)}, folder)
    return _read_video2frames(folder / "video2frames.txt"), rows


def _read_video2frames(path: Path) -> dict[str, list[str]]:
    # A Python literal, so parsed as one: evaluating it would run whatever the file holds.
    try:
        mapping = ast.literal_eval(path.read_text())
    except (ValueError, SyntaxError) as err:
        raise BundleError(f"{path}: not a Python dict literal ({err})") from None
    if not isinstance(mapping, dict) or not all(isinstance(rows, (list, tuple)) for rows in mapping.values()):
        raise BundleError(f"{path}: expected a dict mapping video ids to lists of row ids")
    return {str(video_id): [str(row) for row in rows] for video_id, rows in mapping.items()}


@dataclass
class BigFileRows:
    matrix: np.ndarray  # (N, D) float32, memory-mapped
    index_of: dict[str, int]
    folder: Path

    def positions(self, video_id: str, row_ids: list[str]) -> list[int]:
        """The positions in the matrix of one video's rows, in video2frames order."""
        unknown = [row for row in row_ids if row not in self.index_of]
        if unknown:
            raise BundleError(f"{self.folder / 'video2frames.txt'}: video {video_id!r} lists row {unknown[0]!r}, "
                              f"which is not in id.txt")
        return [self.index_of[row] for row in row_ids]

    def read(self, positions: np.ndarray) -> np.ndarray:
        """(len(positions), D) float32: the rows at ``positions``, gathered into one array."""
        return np.asarray(self.matrix[positions])


class BigFileWriter:
    """Writes a BigFile folder video by video: the rows go to feature.bin as they come (float32), so
    only the ids and row counts stay in memory; row ids are ``<video_id>_<index>``. Made by
    ``bigfile_writer``."""

    def __init__(self, binary):
        self._binary = binary
        self.rows: dict[str, int] = {}  # video id -> T, in the order written
        self.dim: int | None = None

    def write(self, video_id: str, features: np.ndarray) -> None:
        features = np.asarray(features, dtype=np.float32)  # (T, D)
        if self.dim is None:
            self.dim = features.shape[1]
        if features.ndim != 2 or features.shape[1] != self.dim:
            raise BundleError(f"BigFile: video {video_id!r} has rows of shape {features.shape[1:]}, the first "
                              f"video's are ({self.dim},)")
        self._binary.write(np.ascontiguousarray(features).data)
        self.rows[video_id] = len(features)


@contextmanager
def bigfile_writer(folder: Path) -> Iterator[BigFileWriter]:
    """A ``BigFileWriter`` into ``folder``; feature.bin, then the text files, are published when the block
    ends without an error."""
    folder.mkdir(parents=True, exist_ok=True)
    with atomic_path(folder / "feature.bin") as temporary, open(temporary, "wb") as binary:
        writer = BigFileWriter(binary)
        yield writer
    # Written a video at a time: TVR's 1.2M row ids as Python strings would take about 100 MB.
    write_lines_atomic(folder / "id.txt", _id_txt(writer.rows))
    write_lines_atomic(folder / "video2frames.txt", _video2frames_txt(writer.rows))
    write_text_atomic(folder / "shape.txt", f"{sum(writer.rows.values())} {writer.dim}\n")


def _row_ids(video_id: str, count: int) -> list[str]:
    return [f"{video_id}_{index}" for index in range(count)]


def _id_txt(rows: dict[str, int]) -> Iterator[str]:
    """id.txt in pieces: every video's row ids in order, one space apart, then a newline."""
    separator = ""
    for video_id, count in rows.items():
        if count:
            yield separator + " ".join(_row_ids(video_id, count))
            separator = " "
    yield "\n"


def _video2frames_txt(rows: dict[str, int]) -> Iterator[str]:
    """video2frames.txt in pieces: ``repr`` of the dict video id -> its row ids, then a newline."""
    yield "{"
    for position, (video_id, count) in enumerate(rows.items()):
        yield f"{', ' if position else ''}{video_id!r}: {_row_ids(video_id, count)!r}"
    yield "}\n"


# ---- import ------------------------------------------------------------------------------------------


class BundleQuery(NamedTuple):
    """A query of a caption file (import) or of queries.jsonl (export). A tuple, not a dict: the
    stages hold every query throughout, and TVR's 98k as dicts (json.loads gives each its own key
    strings) took about 80 MB beside batches of 32 to 64 MB."""

    cap_id: str
    video_id: str  # the cap_id before its first '#'
    text: str
    split: str

    def record(self) -> dict:
        """The query as queries.jsonl lists it (the bundle has no times)."""
        return {"cap_id": self.cap_id, "video_id": self.video_id, "text": self.text, "ts": None, "split": self.split}


def read_caption_file(path: Path, split: str) -> list[dict]:
    """Queries of one caption file: ``cap_id caption`` per line, video id = cap_id before the first '#'."""
    return [query.record() for _, query in _caption_lines(path, split, {})]


def _caption_lines(path: Path, split: str, video_ids: dict[str, str]) -> list[tuple[int, BundleQuery]]:
    """``read_caption_file`` with the line of each query; ``video_ids`` gives (and gets) one string per
    video id, which its queries share."""
    queries, seen = [], {}
    for line_no, line in enumerate(text_lines(path, AnnotationError), start=1):
        if not line.strip():
            continue
        cap_id, _, text = line.strip().partition(" ")
        if not text.strip():
            raise AnnotationError(f"{path}:{line_no}: expected 'cap_id caption', got {line.strip()!r}")
        if cap_id in seen:
            raise AnnotationError(f"{path}:{line_no}: duplicate caption id {cap_id} (first at line {seen[cap_id]})")
        seen[cap_id] = line_no
        video_id = cap_id.split("#", 1)[0]
        queries.append((line_no, BundleQuery(cap_id, video_ids.setdefault(video_id, video_id), text.strip(), split)))
    return queries


def _read_captions(layout: "BundleLayout") -> list[BundleQuery]:
    """The queries of every split's caption file. A caption id in two files (TVR's and Charades' val
    and test are one file) must carry the same text in both: it is one query listed in two splits."""
    queries: list[BundleQuery] = []
    first: dict[str, tuple[int, int]] = {}  # cap_id -> (its first query's index in queries, its line)
    video_ids: dict[str, str] = {}
    for split in SPLITS:
        path = layout.captions(split)
        for line_no, query in _caption_lines(path, split, video_ids):
            earlier = first.get(query.cap_id)
            if earlier is None:
                first[query.cap_id] = (len(queries), line_no)
            elif queries[earlier[0]].text != query.text:
                where = f"{layout.captions(queries[earlier[0]].split)}:{earlier[1]}"
                raise AnnotationError(f"{path}:{line_no}: caption id {query.cap_id} is also at {where} with another "
                                      f"text")
            queries.append(query)
    return queries


def _one_per_caption(queries: list[BundleQuery]) -> list[BundleQuery]:
    """The first of the queries listed under one caption id in several splits (its features are one)."""
    return list({query.cap_id: query for query in reversed(queries)}.values())[::-1]


def _short_caption_key(cap_id: str) -> str:
    """``<vid>#enc#<k>`` -> ``<vid>#<k>``, the other form some query files use."""
    return cap_id.replace("#enc#", "#", 1)


def import_bundle(layout: BundleLayout, out_dir: Path, rows_per_second: float, attrs: dict) -> dict:
    """Writes video_features.h5, query_features.h5, queries.jsonl and videos.jsonl into ``out_dir``.

    Captions whose video or query features are missing are left out and listed in the returned
    report; a split left without any caption is an error.
    """
    layout.check_present()
    queries = _read_captions(layout)
    with _VideoSource(layout) as videos, KeyedH5(layout.query_file) as query_file:
        missing_videos = sorted({q.video_id for q in queries} - videos.ids)
        query_keys = {q.cap_id: _query_key(query_file.keys, q.cap_id) for q in queries}
        missing_captions = sorted(cap_id for cap_id, key in query_keys.items() if key is None)
        kept = [q for q in queries if q.video_id in videos.ids and query_keys[q.cap_id] is not None]
        _check_splits_filled(kept, layout)
        video_ids = list(dict.fromkeys(q.video_id for q in kept))
        video_rows = _write_videos(videos, video_ids, out_dir / "video_features.h5", rows_per_second,
                                   {**attrs, "backbone": f"bundle:{layout.video}", "fps": rows_per_second})
        _write_queries(query_file, layout, _one_per_caption(kept), query_keys, out_dir / "query_features.h5", attrs)
    write_jsonl_atomic(out_dir / "queries.jsonl", (query.record() for query in kept))
    splits: dict[str, set[str]] = {}
    for query in kept:
        splits.setdefault(query.video_id, set()).add(query.split)
    source = str(layout.video_source)
    write_jsonl_atomic(out_dir / "videos.jsonl", (  # a video in val and test is listed under test, as datasets do
        {"video_id": video_id, "path": source, "duration": video_rows[video_id] / rows_per_second,
         "split": "test" if "test" in splits[video_id] else min(splits[video_id])} for video_id in video_ids))
    for what, ids in (("videos without features", missing_videos), ("captions without features", missing_captions)):
        if ids:
            log.warning("feature bundle %s: %d %s left out (e.g. %s)", layout.root, len(ids), what, ids[0])
    return {"inputs": {"captions": len(queries), "videos": len(video_ids), "queries_kept": len(kept)},
            "missing": {"video_features": missing_videos, "query_features": missing_captions}}


def _query_key(keys: set[str], cap_id: str) -> str | None:
    for key in (cap_id, _short_caption_key(cap_id)):
        if key in keys:
            return key
    return None


def _check_splits_filled(kept: list[BundleQuery], layout: BundleLayout) -> None:
    empty = [split for split in SPLITS if not any(q.split == split for q in kept)]
    if empty:
        raise BundleError(f"feature bundle {layout.root}: no caption of split(s) {', '.join(empty)} has both video "
                          f"features in {layout.video_source} and query features in {layout.query_file}")


class _Hdf5Calls:
    """The HDF5 C functions ``KeyedH5.locate`` and ``KeyedH5Writer.write`` call for every dataset, called directly (ctypes) in the
    very library h5py uses: looked up through h5py's own extension module, whose dependencies the
    symbol lookup searches. h5py's wrappers (an object with a registry entry and a lock per handle)
    cost as much again as the calls themselves, which is most of an import's time with 100k captions."""

    HADDR_UNDEF = 2**64 - 1  # an address HDF5 has not allocated
    H5P_DEFAULT = 0
    H5S_ALL = 0
    MAX_RANK = 32

    def __init__(self):
        lib = ctypes.CDLL(h5py.h5d.__file__)
        hid, herr = ctypes.c_int64, ctypes.c_int
        signatures = {"H5Dopen2": (hid, [hid, ctypes.c_char_p, hid]), "H5Dclose": (herr, [hid]),
                      "H5Dget_space": (hid, [hid]), "H5Dget_type": (hid, [hid]),
                      "H5Dget_offset": (ctypes.c_uint64, [hid]), "H5Dget_storage_size": (ctypes.c_uint64, [hid]),
                      "H5Sget_simple_extent_dims": (ctypes.c_int, [hid, ctypes.c_void_p, ctypes.c_void_p]),
                      "H5Sclose": (herr, [hid]), "H5Tequal": (ctypes.c_int, [hid, hid]), "H5Tclose": (herr, [hid]),
                      "H5Dcreate2": (hid, [hid, ctypes.c_char_p, hid, hid, hid, hid, hid]),
                      "H5Pset_evict_on_close": (herr, [hid, ctypes.c_bool]),
                      "H5Dwrite": (herr, [hid, hid, hid, hid, hid, ctypes.c_void_p])}
        for name, (restype, argtypes) in signatures.items():
            function = getattr(lib, name)
            function.restype, function.argtypes = restype, argtypes
            setattr(self, name, function)


_HDF5: _Hdf5Calls | None = None  # bound on first use


def _hdf5_calls() -> _Hdf5Calls:
    global _HDF5
    if _HDF5 is None:
        _HDF5 = _Hdf5Calls()
    return _HDF5


class KeyedH5:
    """A bundle HDF5 file of one dataset per key (a video's rows, a caption's vector), read by key.

    The bundle holds about 100k datasets of a few KB, so what a read costs is the per-dataset calls, not
    the bytes. Each dataset is opened once (``locate``, with HDF5's C calls, see ``_Hdf5Calls``); when
    its bytes lie in one allocated block of the file (contiguous layout, hence no filters, no external
    storage; what h5py writes by default) they are read with one ``os.preadv`` at its offset, straight
    into the array that gathers a batch of them (``read_rows``), else through HDF5's own read. Both
    give the same array: the stored values in the stored dtype (``read``), or cast to float32
    (``read_rows``).

    The file is opened with evict-on-close: a dataset's object header leaves HDF5's metadata cache
    when ``locate`` closes it. Each is opened once, so keeping it gains nothing, and the cache (it
    counts a header's bytes on disk, about a tenth of what the decoded header takes) would otherwise
    hold some 30k of them, about 120 MB.
    """

    def __init__(self, path: Path):
        self.path = path
        self._file = _open_evicting(path)
        self._file_id = self._file.id.id  # the HDF5 handle, for ``_Hdf5Calls``
        self._fd = os.open(path, os.O_RDONLY)
        self.keys = set(self._file)  # listed once: a lookup per caption would cost an HDF5 call each
        self._user_block = self._file.userblock_size > 0
        self._dtypes: list[tuple[h5py.h5t.TypeID, np.dtype]] = []  # dtypes seen, by their HDF5 type
        self._dims = (ctypes.c_uint64 * _Hdf5Calls.MAX_RANK)()

    def __enter__(self) -> "KeyedH5":
        return self

    def __exit__(self, *exc) -> None:
        os.close(self._fd)
        self._file.close()

    def locate(self, key: str) -> "StoredArray":
        """The shape, dtype and place of dataset ``key``, from one open."""
        calls = _hdf5_calls()
        dataset = calls.H5Dopen2(self._file_id, key.encode(), calls.H5P_DEFAULT)
        if dataset < 0:
            raise BundleError(f"{self.path}: dataset {key!r} cannot be opened")
        try:
            space = calls.H5Dget_space(dataset)
            rank = calls.H5Sget_simple_extent_dims(space, self._dims, None)
            calls.H5Sclose(space)
            hdf5_type = calls.H5Dget_type(dataset)
            dtype = self._dtype(hdf5_type, key)
            calls.H5Tclose(hdf5_type)
            offset = calls.H5Dget_offset(dataset)  # undefined unless contiguous (not chunked, compact, external)
            stored_bytes = calls.H5Dget_storage_size(dataset)
        finally:
            calls.H5Dclose(dataset)
        if rank < 0:
            raise BundleError(f"{self.path}: dataset {key!r} has no simple shape")
        shape = tuple(self._dims[:rank])
        nbytes = math.prod(shape) * dtype.itemsize
        # In a file with a user block an unallocated dataset's offset is defined (HDF5 adds the block's
        # size to its undefined address): there, the stored size must be the array's.
        if offset == calls.HADDR_UNDEF or not nbytes or dtype.kind not in "fiu" or (
                self._user_block and stored_bytes != nbytes):
            return StoredArray(key, shape, dtype, None, h5py.h5d.open(self._file.id, key.encode()))
        return StoredArray(key, shape, dtype, offset, None)

    def read(self, key: str) -> np.ndarray:
        """Dataset ``key`` as stored (shape and dtype)."""
        stored = self.locate(key)
        array = np.empty(stored.shape, stored.dtype)
        self._read_into(stored, array)
        return array

    def read_rows(self, entries: list["StoredArray"], dim: int) -> np.ndarray:
        """(R, dim) float32: the values of ``entries`` one after another (each a whole number of rows of
        ``dim``), read straight into one array."""
        sizes = [math.prod(stored.shape) for stored in entries]
        rows = np.empty((sum(sizes) // dim, dim), np.float32)
        flat, start = rows.reshape(-1), 0
        for stored, size in zip(entries, sizes):
            self._read_into(stored, flat[start:start + size])
            start += size
        return rows

    def _read_into(self, stored: "StoredArray", out: np.ndarray) -> None:
        """``stored``'s values into ``out`` (C-contiguous, as many values), cast to its dtype."""
        if not out.size:
            return
        target = out if out.dtype == stored.dtype else np.empty(out.shape, stored.dtype)
        if stored.offset is None:
            stored.dataset.read(h5py.h5s.ALL, h5py.h5s.ALL, target.reshape(stored.shape))
        elif os.preadv(self._fd, [target.reshape(-1).view(np.uint8)], stored.offset) != target.nbytes:
            raise BundleError(f"{self.path}: dataset {stored.key!r} ends past the end of the file (a truncated copy?)")
        if target is not out:
            out[...] = target

    def _dtype(self, hdf5_type: int, key: str) -> np.dtype:
        """The numpy dtype of an HDF5 type handle: converting one costs more than comparing it with the few seen."""
        for seen, dtype in self._dtypes:
            if _hdf5_calls().H5Tequal(hdf5_type, seen.id) > 0:
                return dtype
        seen = h5py.h5d.open(self._file.id, key.encode()).get_type()
        self._dtypes.append((seen, seen.dtype))
        return seen.dtype


def _open_evicting(path: Path) -> h5py.File:
    """``path`` opened read-only, its objects evicted from the metadata cache when closed."""
    access = h5py.h5p.create(h5py.h5p.FILE_ACCESS)
    if _hdf5_calls().H5Pset_evict_on_close(access.id, True) < 0:
        raise RuntimeError("HDF5 refused the evict-on-close file access property")
    try:
        return h5py.File(h5py.h5f.open(os.fsencode(path), h5py.h5f.ACC_RDONLY, fapl=access))
    except OSError:  # open in this process without it (HDF5 refuses a second value), or no HDF5 file:
        return h5py.File(path, "r")  # then opened as before, which reports the latter as it always did


class StoredArray(NamedTuple):
    """Where a dataset of a ``KeyedH5`` file is: its bytes at ``offset`` in the file, or (None) behind
    ``dataset``, read through HDF5."""

    key: str
    shape: tuple[int, ...]
    dtype: np.dtype
    offset: int | None
    dataset: h5py.h5d.DatasetID | None


# Import reads and writes this many bytes of features at a time: about the most of them it holds at once
# (twice that for CLIP queries, whose pooled vector is a copy). Its writers commit at this size too, so
# that a batch read is committed, and freed, before the next is read.
_IMPORT_BATCH_BYTES = 32 << 20


def _import_batches(items: Iterable[T], nbytes: Callable[[T], int]) -> Iterator[list[T]]:
    """``items`` in runs of about ``_IMPORT_BATCH_BYTES`` by ``nbytes(item)``."""
    batch, total = [], 0
    for item in items:
        batch.append(item)
        total += nbytes(item)
        if total >= _IMPORT_BATCH_BYTES:
            yield batch
            batch, total = [], 0
    if batch:
        yield batch


def _float32_bytes(stored: "StoredArray") -> int:
    return math.prod(stored.shape) * 4


class _VideoSource:
    """The bundle's video features, from the CLIP HDF5 file or a BigFile folder, by video id."""

    def __init__(self, layout: BundleLayout):
        self.layout = layout
        self._file: KeyedH5 | None = None

    def __enter__(self) -> "_VideoSource":
        if self.layout.video == CLIP_VIDEO:
            self._file = KeyedH5(self.layout.video_source)
            self.ids = self._file.keys
        else:
            self.video2frames, self.rows = read_bigfile(self.layout.video_source)
            self.ids = set(self.video2frames)
        return self

    def __exit__(self, *exc) -> None:
        if self._file is not None:
            self._file.__exit__(*exc)

    def shape(self, video_id: str) -> tuple[int, ...]:
        """(T, D) of a video, without reading its rows."""
        if self._file is not None:
            return self._file.locate(video_id).shape
        return len(self.video2frames[video_id]), self.rows.matrix.shape[1]

    def batches(self, video_ids: list[str], dim: int) -> Iterator["_VideoBatch"]:
        """``video_ids`` in their order, about ``_IMPORT_BATCH_BYTES`` at a time, unread; each video's
        shape is checked: (T, D), T > 0, D = ``dim``."""
        source = self.layout.video_source  # resolved once: it is only named in errors
        if self._file is None:
            for ids in _import_batches(video_ids, lambda video_id: len(self.video2frames[video_id]) * dim * 4):
                positions = [self.rows.positions(video_id, self.video2frames[video_id]) for video_id in ids]
                for video_id, rows in zip(ids, positions):
                    _check_shape((len(rows), dim), 2, dim, source, "video", video_id)
                every = np.array([position for rows in positions for position in rows], np.int64)  # (R,)
                yield _VideoBatch(ids, np.array([len(rows) for rows in positions]), partial(self.rows.read, every))
            return

        def located(video_id: str) -> StoredArray:
            stored = self._file.locate(video_id)
            _check_shape(stored.shape, 2, dim, source, "video", video_id)
            return stored

        for batch in _import_batches(map(located, video_ids), _float32_bytes):
            yield _VideoBatch([stored.key for stored in batch], np.array([stored.shape[0] for stored in batch]),
                              partial(self._file.read_rows, batch, dim))


class _VideoBatch(NamedTuple):
    """Videos imported together, not read yet: reading is left to the code that writes them, so that
    no batch's rows outlive its write (see ``_write_video_batch``)."""

    ids: list[str]
    lengths: np.ndarray  # (n,) T per video
    read: Callable[[], np.ndarray]  # () -> (R, D) float32, the videos' rows one after another


def _write_videos(videos: _VideoSource, video_ids: list[str], path: Path, rows_per_second: float,
                  attrs: dict) -> dict[str, int]:
    """A (T, D) entry per video with sample timestamps; returns T per video."""
    dim = videos.shape(video_ids[0])[-1]
    rows: dict[str, int] = {}
    with FeatureWriter(path, {**attrs, "dim": dim}, batch_bytes=_IMPORT_BATCH_BYTES) as writer:
        for video_id in video_ids:
            if writer.done(video_id):  # written before an interruption
                rows[video_id] = videos.shape(video_id)[0]
        for batch in videos.batches([v for v in video_ids if not writer.done(v)], dim):
            _write_video_batch(writer, batch, rows_per_second)
            rows.update(zip(batch.ids, batch.lengths.tolist()))
        writer.finish()
    return rows


def _write_video_batch(writer: FeatureWriter, batch: _VideoBatch, rows_per_second: float) -> None:
    """Reads a batch and hands it to the writer. A batch is at least ``_IMPORT_BATCH_BYTES``, the
    writer's batch, so it is committed at once and its rows are freed when this returns, before the
    next is read."""
    features, lengths = batch.read(), batch.lengths  # (R, D), (n,)
    row_in_video = np.arange(len(features)) - np.repeat(np.cumsum(lengths) - lengths, lengths)  # (R,)
    writer.write_many(batch.ids, features, lengths, entry_columns={"duration": lengths / rows_per_second},
                      row_columns={"timestamps": (row_in_video + 0.5) / rows_per_second})


def _write_queries(query_file: KeyedH5, layout: BundleLayout, queries: list[BundleQuery], keys: dict[str, str],
                   path: Path, attrs: dict) -> None:
    """tokens/<cap_id> (L, D) and pooled/<cap_id> (D,): RoBERTa tokens are mean-pooled; a CLIP vector
    is its own pooled vector and a one-token sequence."""
    ndim = 2 if layout.query == "roberta" else 1
    layer = -2 if layout.query == "roberta" else -1
    dim = query_file.locate(keys[queries[0].cap_id]).shape[-1]
    source = layout.query_file  # resolved once: it is only named in errors

    def located(cap_id: str) -> tuple[str, StoredArray]:
        stored = query_file.locate(keys[cap_id])
        # Some releases store the CLIP vector as (1, D): its values are read as (D,).
        shape = (math.prod(stored.shape),) if ndim == 1 and stored.shape[:1] == (1,) else stored.shape
        _check_shape(shape, ndim, dim, source, "caption", keys[cap_id])
        return cap_id, stored

    with FeatureWriter(path, {**attrs, "model": f"bundle:{layout.query}", "dim": dim, "layer": layer},
                       groups=QUERY_GROUPS, batch_bytes=_IMPORT_BATCH_BYTES) as writer:
        todo = [query.cap_id for query in queries if not writer.done(query.cap_id)]
        for batch in _import_batches(map(located, todo), lambda item: _float32_bytes(item[1])):
            _write_query_batch(writer, query_file, batch, ndim, dim)
        writer.finish()


def _write_query_batch(writer: FeatureWriter, query_file: KeyedH5, batch: list[tuple[str, "StoredArray"]], ndim: int,
                       dim: int) -> None:
    """Reads a batch of captions and hands both groups to the writer, which commits them at once (as
    ``_write_video_batch``): the arrays are freed when this returns, before the next batch is read."""
    ids, stored = [cap_id for cap_id, _ in batch], [stored for _, stored in batch]
    tokens = query_file.read_rows(stored, dim)  # (R, D), a caption's L rows after another's
    lengths = np.array([stored.shape[0] if ndim == 2 else 1 for stored in stored])
    writer.write_many(ids, tokens, lengths, group="tokens")
    if ndim == 1:  # the mean of one token, as ``mean`` computes it (0 + x, so -0.0 becomes 0.0)
        pooled = tokens + np.float32(0)
    else:
        pooled = np.stack([caption.mean(axis=0) for caption in np.split(tokens, np.cumsum(lengths)[:-1])])
    writer.write_many(ids, pooled, group="pooled")  # (n, D)


def _check_shape(shape: tuple[int, ...], ndim: int, dim: int, source: Path, what: str, key: str) -> None:
    # The message is formatted on failure only: this runs for every caption.
    if len(shape) != ndim or shape[0] == 0:
        expected = "(T, D)" if ndim == 2 else "(D,)"
        raise BundleError(f"{source}: {what} {key!r}: expected shape {expected}, got {shape}")
    if shape[-1] != dim:
        raise BundleError(f"{source}: {what} {key!r}: dimension {shape[-1]}, but the first entry has {dim}")


# ---- export ------------------------------------------------------------------------------------------


def bundle_caption_ids(queries: list[BundleQuery]) -> dict[str, str]:
    """Our cap_id -> the bundle's ``<video_id>#enc#<k>`` (k counts a video's captions in manifest order);
    the reference code reads the video id from the caption id, so ids such as TVR's desc_id are renamed.
    A query listed in two splits (val and test from one file) keeps one id."""
    per_video: dict[str, int] = {}
    renamed = {}
    for query in queries:
        if query.cap_id in renamed:
            continue
        k = per_video.get(query.video_id, 0)
        per_video[query.video_id] = k + 1
        renamed[query.cap_id] = f"{query.video_id}#enc#{k}"
    return renamed


def read_export_queries(path: Path) -> list[BundleQuery]:
    """The queries of a queries.jsonl we wrote, as export uses them; a video id's and a split's string
    is shared by their queries."""
    shared: dict[str, str] = {}
    queries = []
    with open(path, encoding="utf-8") as lines:
        for line in lines:
            if line.strip():
                record = json.loads(line)
                queries.append(BundleQuery(record["cap_id"], shared.setdefault(record["video_id"], record["video_id"]),
                                           record["text"], shared.setdefault(record["split"], record["split"])))
    return queries


def export_bundle(video_features: Path, query_features: Path, queries_file: Path, layout: BundleLayout) -> dict:
    """Writes caption files, both query HDF5 files, the CLIP-named video HDF5 and a BigFile folder from
    the feature files and the queries of ``queries_file`` (a queries.jsonl).

    File names are those the reference code opens, whatever encoder made the features (the HDF5
    attributes keep the real model names). Queries whose video or caption has no features are left out,
    and so are those of videos whose id the reference format cannot hold as it is (a '/', '%', space or
    control character: its HDF5 keys and BigFile rows are the raw ids).
    """
    text_dir, feature_dir = layout.root / "TextData", layout.root / "FeatureData"
    text_dir.mkdir(parents=True, exist_ok=True)
    feature_dir.mkdir(parents=True, exist_ok=True)
    queries = read_export_queries(queries_file)
    with FeatureFile(video_features) as video_file, FeatureFile(query_features) as query_file:
        video_group, tokens, pooled = video_file.group(), query_file.group("tokens"), query_file.group("pooled")
        exportable = {video_id: _exportable_id(video_id) for video_id in {q.video_id for q in queries}}
        unexportable = sorted(video_id for video_id, ok in exportable.items() if not ok)
        kept = [q for q in queries if exportable[q.video_id] and q.video_id in video_group and q.cap_id in pooled]
        renamed, captions = bundle_caption_ids(kept), _one_per_caption(kept)
        _check_one_query_per_id(kept)
        for split in SPLITS:
            write_lines_atomic(layout.captions(split), (f"{renamed[q.cap_id]} {' '.join(q.text.split())}\n"
                                                        for q in kept if q.split == split))
        caption_ids = [q.cap_id for q in captions]
        bundle_ids = [renamed[cap_id] for cap_id in caption_ids]
        for query, group in (("roberta", tokens), ("clip", pooled)):
            with keyed_h5_writer(BundleLayout(layout.root, layout.collection, query=query).query_file,
                                 query_file.attrs) as writer:
                _export_entries(group, caption_ids, lambda i, entry: writer.write(bundle_ids[i], entry))
        video_ids = list(dict.fromkeys(q.video_id for q in kept))
        # One pass over the videos writes both video layouts, a batch of them in memory at a time.
        with keyed_h5_writer(BundleLayout(layout.root, layout.collection).video_source, video_file.attrs) as keyed, \
                bigfile_writer(feature_dir / EXPORTED_BIGFILE) as bigfile:
            def write_video(i: int, features: np.ndarray) -> None:
                keyed.write(video_ids[i], features)
                bigfile.write(video_ids[i], features)

            _export_entries(video_group, video_ids, write_video)
    write_lines_atomic(text_dir / "cap_ids.tsv", (f"{ours}\t{theirs}\n" for ours, theirs in renamed.items()))
    if unexportable:
        log.warning("bundle export: %d video id(s) the reference format cannot hold left out (e.g. %r)",
                    len(unexportable), unexportable[0])
    return {"inputs": {"queries": len(queries), "videos": len(video_ids)}, "exported_queries": len(kept),
            "left_out_queries": len(queries) - len(kept), "unexportable_video_ids": unexportable}


# Export reads our feature files this many bytes at a time: the most of them it holds at once.
_EXPORT_BATCH_BYTES = 64 << 20


def _export_entries(group: RaggedGroup, entry_ids: list[str], write: Callable[[int, np.ndarray], None]) -> None:
    """``write(i, entry)`` for each ``entry_ids[i]`` in order, the entries gathered about
    ``_EXPORT_BATCH_BYTES`` at a time (by the mean entry)."""
    row_bytes = group.dtype.itemsize * math.prod(group.row_shape)
    entry_bytes = max(1, row_bytes * int(group.offsets[-1]) // max(1, len(group)))
    per_batch = max(1, _EXPORT_BATCH_BYTES // entry_bytes)
    for start in range(0, len(entry_ids), per_batch):
        _export_batch(group, entry_ids[start:start + per_batch], start, write)


def _export_batch(group: RaggedGroup, entry_ids: list[str], first: int,
                  write: Callable[[int, np.ndarray], None]) -> None:
    """One batch: its entries are views of one block read, freed when this returns, so a batch is
    never read while the one before is still held."""
    for i, entry in enumerate(group.gather(entry_ids), start=first):
        write(i, entry)


def _check_one_query_per_id(queries: list[BundleQuery]) -> None:
    """A caption id listed in several splits must be one query (same video, same text) in all of them."""
    first: dict[str, BundleQuery] = {}
    for query in queries:
        earlier = first.setdefault(query.cap_id, query)
        if (earlier.video_id, earlier.text) != (query.video_id, query.text):
            raise BundleError(f"query id {query.cap_id} is in split {earlier.split} (video {earlier.video_id}) "
                              f"and in split {query.split} (video {query.video_id}) with another video or text")


def _exportable_id(video_id: str) -> bool:
    """Whether the reference format holds the id as it is: one HDF5 key, one whitespace-free BigFile row."""
    return opaque_name(video_id) == video_id and not any(char.isspace() for char in video_id)


# HDF5 keeps a dataset up to 64 KiB inside its object header ("compact"): no allocation of its own.
_COMPACT_MAX_BYTES = 60_000


class KeyedH5Writer:
    """Writes one dataset per key, the layout the reference code reads; made by ``keyed_h5_writer``.

    Each dataset is made with HDF5's C calls (``_Hdf5Calls``), compact when small and without
    modification times, its HDF5 type and dataspace made once per dtype and shape: about a fifth of
    what ``create_dataset`` costs a dataset, which is what these files' writing time is made of (there
    is one per caption)."""

    def __init__(self, file: h5py.File):
        self._file = file
        self._compact, self._contiguous = (h5py.h5p.create(h5py.h5p.DATASET_CREATE) for _ in range(2))
        self._compact.set_layout(h5py.h5d.COMPACT)
        for plist in (self._compact, self._contiguous):
            plist.set_obj_track_times(False)
        self._utf8_names = h5py.h5p.create(h5py.h5p.LINK_CREATE)
        self._utf8_names.set_char_encoding(h5py.h5t.CSET_UTF8)
        self._types: dict[np.dtype, h5py.h5t.TypeID] = {}
        self._spaces: dict[tuple[int, ...], h5py.h5s.SpaceID] = {}

    def write(self, key: str, array: np.ndarray) -> None:
        array = np.ascontiguousarray(array)
        if array.dtype not in self._types:
            self._types[array.dtype] = h5py.h5t.py_create(array.dtype)
        if array.shape not in self._spaces:
            self._spaces[array.shape] = h5py.h5s.create_simple(array.shape)
        calls, hdf5_type = _hdf5_calls(), self._types[array.dtype].id
        dcpl = self._compact if array.nbytes <= _COMPACT_MAX_BYTES else self._contiguous
        dataset = calls.H5Dcreate2(self._file.id.id, key.encode(), hdf5_type, self._spaces[array.shape].id,
                                   self._utf8_names.id, dcpl.id, calls.H5P_DEFAULT)
        if dataset < 0:
            raise BundleError(f"{self._file.filename}: dataset {key!r} cannot be made (a key written twice?)")
        try:
            if array.size and calls.H5Dwrite(dataset, hdf5_type, calls.H5S_ALL, calls.H5S_ALL, calls.H5P_DEFAULT,
                                             array.ctypes.data) < 0:
                raise BundleError(f"{self._file.filename}: dataset {key!r} could not be written")
        finally:
            calls.H5Dclose(dataset)


@contextmanager
def keyed_h5_writer(path: Path, attrs: dict) -> Iterator[KeyedH5Writer]:
    """A ``KeyedH5Writer`` into ``path``, published when the block ends without an error."""
    with atomic_path(path) as temporary, h5py.File(temporary, "w") as file:
        file.attrs.update(attrs)
        yield KeyedH5Writer(file)


def write_keyed_h5(path: Path, entries: Iterable[tuple[str, np.ndarray]], attrs: dict) -> None:
    with keyed_h5_writer(path, attrs) as writer:
        for key, array in entries:
            writer.write(key, array)
