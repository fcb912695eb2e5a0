"""Feature-file writing and reading speed at TVR's shapes, against the contiguous write of the same bytes.

For each shape, the entries (views into one random pool, so that generating them costs nothing) are
written three ways, in the same run: as one contiguous HDF5 dataset in 32 MB slices (the baseline,
benchmarks/baselines.py), through ``storage.FeatureWriter`` (what every feature stage writes; these two
twice each, interleaved, the faster of each counted), and,
for the query shapes, in the feature bundle's own layout, one HDF5 dataset per id (ExportBundle). Then
the written file is read back: every entry by ``gather`` and 5,000 random entries one ``read`` each.

    python benchmarks/write_speed.py                  # pooled 98k x 512, tokens 10k x ~20 x 768, videos 20k x 20..80 x 512
    python benchmarks/write_speed.py --scale 0.1      # a tenth of every count, for a quick look

Shapes (TVR, from issue 16): 98,070 queries with one 512-d CLIP vector each; RoBERTa tokens (L = 10..30,
768-d), scaled to 10k queries here (98k would be 6 GB); 19,614 videos of T = 20..80 CLIP rows.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from baselines import contiguous_write_seconds  # noqa: E402
from pipeline.bundle import write_keyed_h5  # noqa: E402
from storage import QUERY_GROUPS, VIDEO_GROUPS, FeatureFile, FeatureWriter  # noqa: E402

_POOL_BYTES = 256 << 20
_RANDOM_READS = 5000
_REPEATS = 2  # each write is timed this many times; the fastest counts


def entries(n: int, lengths: tuple[int, int] | None, dim: int, seed: int) -> tuple[list[str], list[np.ndarray]]:
    """n ids and arrays: (L, dim) with L uniform in ``lengths``, or (dim,) when ``lengths`` is None."""
    rng = np.random.default_rng(seed)
    pool = rng.standard_normal(_POOL_BYTES // 4 // dim * dim, dtype=np.float32).reshape(-1, dim)  # (P, dim)
    counts = rng.integers(lengths[0], lengths[1] + 1, n) if lengths else np.ones(n, np.int64)
    starts = rng.integers(0, len(pool) - counts.max(), n)
    arrays = [pool[start:start + count] for start, count in zip(starts, counts)]
    if lengths is None:
        arrays = [array[0] for array in arrays]
    return [f"video{index:06d}#enc#{index % 5}" for index in range(n)], arrays


def ours_seconds(path: Path, ids: list[str], arrays: list[np.ndarray], group: str, kinds: dict) -> float:
    """Seconds for FeatureWriter to write the entries (with timestamps and duration for videos), published."""
    clock = time.perf_counter()
    with FeatureWriter(path, {"stage": "benchmark"}, groups=kinds) as writer:
        for entry_id, array in zip(ids, arrays):
            if kinds is VIDEO_GROUPS:
                writer.write(entry_id, array, timestamps=np.arange(len(array)) / 3.0, duration=len(array) / 3.0)
            else:
                writer.write(entry_id, array, group=group)
        writer.finish()
    return time.perf_counter() - clock


def bundle_seconds(path: Path, ids: list[str], arrays: list[np.ndarray]) -> float:
    clock = time.perf_counter()
    write_keyed_h5(path, zip(ids, arrays), {})
    seconds = time.perf_counter() - clock
    path.unlink()
    return seconds


def read_figures(path: Path, group: str, ids: list[str], seed: int) -> tuple[float, float]:
    """(seconds to open + gather every entry, microseconds per random single-entry read)."""
    clock = time.perf_counter()
    entries_group = FeatureFile(path).group(group)
    for _ in entries_group.iterate(ids):
        pass
    gather = time.perf_counter() - clock
    wanted = np.random.default_rng(seed).choice(ids, size=min(_RANDOM_READS, len(ids)), replace=False)
    clock = time.perf_counter()
    for entry_id in wanted:
        entries_group.read(entry_id)
    return gather, (time.perf_counter() - clock) / len(wanted) * 1e6


def run_shape(name: str, n: int, lengths, dim: int, group: str, kinds: dict, folder: Path, bundle: bool) -> dict:
    ids, arrays = entries(n, lengths, dim, seed=len(name))
    rows = [array if array.ndim == 2 else array[None] for array in arrays]
    megabytes = sum(array.nbytes for array in arrays) / 1e6
    baseline, ours = [], []
    for repeat in range(_REPEATS):  # interleaved, so that both see the same state of the page cache
        baseline.append(contiguous_write_seconds(folder / f"{name}-contiguous.h5", rows))
        if repeat:
            (folder / f"{name}.h5").unlink()
        ours.append(ours_seconds(folder / f"{name}.h5", ids, arrays, group, kinds))
    baseline, ours = min(baseline), min(ours)
    result = {"shape": name, "entries": n, "MB": megabytes, "contiguous_s": baseline, "ours_s": ours,
              "ratio": ours / baseline}
    result["gather_s"], result["read_us"] = read_figures(folder / f"{name}.h5", group, ids, seed=1)
    (folder / f"{name}.h5").unlink()
    if bundle:
        result["bundle_s"] = bundle_seconds(folder / f"{name}-bundle.h5", ids, arrays)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", type=float, default=1.0, help="multiplies every entry count")
    parser.add_argument("--workdir", default=None, help="scratch folder (default: a temporary one)")
    parser.add_argument("--no-bundle", action="store_true", help="skip the one-dataset-per-id bundle layout")
    args = parser.parse_args()
    shapes = [("pooled 98k x 512", 98070, None, 512, "pooled", {"pooled": QUERY_GROUPS["pooled"]}, True),
              ("tokens 10k x 10..30 x 768", 10000, (10, 30), 768, "tokens", {"tokens": QUERY_GROUPS["tokens"]}, True),
              ("videos 20k x 20..80 x 512", 19614, (20, 80), 512, "", VIDEO_GROUPS, False)]
    print(f"load before: {os.getloadavg()[0]:.2f} (1 min), {os.cpu_count()} cores")
    header = (f"{'shape':28s} {'entries':>8s} {'MB':>7s} {'contiguous s':>12s} {'ours s':>7s} {'ratio':>6s} "
              f"{'bundle s':>9s} {'gather all s':>12s} {'read 1 us':>9s}")
    print(header)
    with tempfile.TemporaryDirectory(dir=args.workdir) as scratch:
        for name, n, lengths, dim, group, kinds, bundle in shapes:
            r = run_shape(name.split()[0], max(1, int(n * args.scale)), lengths, dim, group, kinds, Path(scratch),
                          bundle and not args.no_bundle)
            bundle_text = f"{r['bundle_s']:9.2f}" if "bundle_s" in r else f"{'-':>9s}"
            print(f"{name:28s} {r['entries']:8d} {r['MB']:7.0f} {r['contiguous_s']:12.2f} {r['ours_s']:7.2f} "
                  f"{r['ratio']:6.2f} {bundle_text} {r['gather_s']:12.2f} {r['read_us']:9.0f}", flush=True)
    print(f"load after: {os.getloadavg()[0]:.2f} (1 min)")


if __name__ == "__main__":
    main()
