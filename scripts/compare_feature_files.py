"""Whether two HDF5 feature files hold the same datasets (values, dtypes, shapes) and attributes.

    python scripts/compare_feature_files.py A.h5 B.h5 [--ignore-attr seconds ...]

Prints each difference, one a line (the largest absolute difference of float datasets that differ),
and exits 1 if there is any: a check that a change to a writer leaves its outputs as they were.
"""

from __future__ import annotations

import argparse
import sys

import h5py
import numpy as np


def _items(file: h5py.File) -> dict[str, h5py.HLObject]:
    found = {"/": file}
    file.visititems(lambda name, item: found.__setitem__(name, item))
    return found


def _same(a, b) -> bool:
    a, b = np.asarray(a), np.asarray(b)
    return a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a, b)


def _difference(name: str, a: np.ndarray, b: np.ndarray) -> str:
    if a.dtype != b.dtype or a.shape != b.shape:
        return f"{name}: {a.dtype} {a.shape} vs {b.dtype} {b.shape}"
    if a.dtype.kind == "f":
        return f"{name}: values differ, largest absolute difference {np.max(np.abs(a - b)):.3g}"
    return f"{name}: values differ at {int(np.count_nonzero(a != b))} of {a.size} places"


def differences(path_a: str, path_b: str, ignored_attrs: set[str]) -> list[str]:
    found = []
    with h5py.File(path_a, "r") as file_a, h5py.File(path_b, "r") as file_b:
        items_a, items_b = _items(file_a), _items(file_b)
        found += [f"{name}: only in {path_a}" for name in sorted(items_a.keys() - items_b.keys())]
        found += [f"{name}: only in {path_b}" for name in sorted(items_b.keys() - items_a.keys())]
        for name in sorted(items_a.keys() & items_b.keys()):
            a, b = items_a[name], items_b[name]
            if isinstance(a, h5py.Dataset) and isinstance(b, h5py.Dataset):
                values_a, values_b = a[()], b[()]
                if not _same(values_a, values_b):
                    found.append(_difference(name, np.asarray(values_a), np.asarray(values_b)))
            elif isinstance(a, h5py.Dataset) != isinstance(b, h5py.Dataset):
                found.append(f"{name}: a dataset in one file, a group in the other")
            for attr in sorted((a.attrs.keys() | b.attrs.keys()) - ignored_attrs):
                if attr not in a.attrs or attr not in b.attrs or not _same(a.attrs[attr], b.attrs[attr]):
                    found.append(f"{name} attribute {attr!r}: {a.attrs.get(attr)!r} vs {b.attrs.get(attr)!r}")
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("a")
    parser.add_argument("b")
    parser.add_argument("--ignore-attr", action="append", default=[], help="an attribute not compared")
    args = parser.parse_args()
    found = differences(args.a, args.b, set(args.ignore_attr))
    print("\n".join(found) if found else f"{args.a} and {args.b}: the same datasets and attributes")
    sys.exit(1 if found else 0)


if __name__ == "__main__":
    main()
