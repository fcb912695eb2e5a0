"""HDF5 feature files (one dataset per video id or caption id), built resumably.

A feature file appears under its final name only when it is complete. It is built in a
``<name>.partial`` file that a rerun resumes (entries are marked complete only after their data is
written), then renamed; an interrupted run therefore never leaves a file that looks finished.
Readers (``amdnet.data``) open the published files lazily, once per process.

Entries are named by ``entry_name``: an id (a video id, a caption id) is an opaque key, escaped so
that no id can create a nested group or name another entry; writers and readers all go through it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from pipeline.paths import opaque_name

_COMPLETE = "_complete"


class FeatureFileBusy(RuntimeError):
    """Another process has the feature file open: it is in use, not corrupt."""


def entry_name(entry_id: str, group: str | None = None) -> str:
    """The HDF5 name of an id's entry, e.g. ``tokens/<escaped cap_id>``; ``group`` is ours, never data."""
    name = opaque_name(str(entry_id))
    return name if group is None else f"{group}/{name}"


class FeatureWriter:
    """Builds one HDF5 feature file entry by entry; resumable after a crash.

    Use as a context manager; call ``finish()`` once every entry is written to publish the file.
    Entries are addressed by id and an optional group (``write(cap_id, tokens, group="tokens")``).
    """

    def __init__(self, final: Path, attrs: dict[str, Any]):
        self.final = Path(final)
        self.partial = self.final.with_name(self.final.name + ".partial")
        self.attrs = attrs
        self._file: h5py.File | None = None

    def __enter__(self) -> "FeatureWriter":
        self._file = self._open_partial()
        for name, value in self.attrs.items():
            self._file.attrs[name] = value
        return self

    def __exit__(self, *exc) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def _open_partial(self) -> h5py.File:
        try:
            file = h5py.File(self.partial, "a")
        except BlockingIOError:
            # HDF5's own file lock: a file another process holds is in use, never corrupt.
            raise FeatureFileBusy(f"{self.partial} is open in another process (HDF5 file lock); not "
                                  f"touching it") from None
        except OSError:
            # A kill during a write can leave the partial file unreadable: start it over.
            self.partial.unlink(missing_ok=True)
            file = h5py.File(self.partial, "w")
        self._drop_incomplete(file)
        return file

    @staticmethod
    def _drop_incomplete(file: h5py.File) -> None:
        incomplete = []
        file.visititems(lambda name, obj: incomplete.append(name)
                        if isinstance(obj, h5py.Dataset) and not obj.attrs.get(_COMPLETE) else None)
        for name in incomplete:
            del file[name]

    def done(self, entry_id: str, group: str | None = None) -> bool:
        key = entry_name(entry_id, group)
        return key in self._file and bool(self._file[key].attrs.get(_COMPLETE))

    def write(self, entry_id: str, data: np.ndarray, group: str | None = None, **attrs: Any) -> None:
        key = entry_name(entry_id, group)
        if key in self._file:
            del self._file[key]
        dataset = self._file.create_dataset(key, data=data)
        for name, value in attrs.items():
            dataset.attrs[name] = value
        dataset.attrs[_COMPLETE] = True
        self._file.flush()

    def finish(self) -> None:
        self._file.close()
        self._file = None
        os.replace(self.partial, self.final)
