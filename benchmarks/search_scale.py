"""Approximate against exact search at scale: recall@10, latency, build time, disk and memory.

The collections are synthetic, with the structure that makes multi-vector search hard and that
real clip embeddings have (all vectors unit length, d = 384, 32 clips per video):

- topics: V / 200 topic directions, random unit vectors; every video belongs to one topic, so about
  200 videos compete for each query's top 10;
- a video's mean is its topic plus noise of norm 1.0 (cosine 0.71 to its topic, 0.5 between two
  videos of one topic);
- its clips are an AR(1) walk around that mean: clip_t = normalise(mean + 0.8 * w_t), with
  w_t = normalise(0.9 * w_{t-1} + 0.44 * u_t) for random unit u_t: neighbouring clips have cosine
  about 0.96, clips far apart in the video 0.61 (one shot drifting into the next);
- a query is one chosen clip of one chosen video plus noise of norm 1.2 (cosine 0.64 to its clip),
  the way a caption is near, not on, what the model embeds for the described moment.

Stored as the index stores clip embeddings for approximate search (float16, (V, N, d), contiguous
in an HDF5 file) under --workdir (default /work/bench, outside the repository). Exact top-10 (the
reference) is computed by streaming the collection once for all queries; at the sizes that fit in
RAM the float32 collection is kept too, so float16 storage is measured against float32 exact.

    python benchmarks/search_scale.py --sizes 100000,1000000 --queries 200

With --growth, it measures an index that grows (search/index.py, approximate.update_approximate): a
base collection of --base videos gets `growth` x base videos added (of topics the base does not
have: new footage), and the first stage is updated (the base's, with the added videos' vectors
added under new ids, its quantiser kept) or built anew on the grown collection. Both are timed and
their recall@10 measured against the exact top-10 of the grown collection, on queries from base
videos and from added ones; the ratio of the times is printed. The rows of the grown collection are
written once (an incremental index copies the unchanged rows, a full rebuild writes them all: the same
cost; a full rebuild also encodes every video through the model, which synthetic clips skip).

    OMP_NUM_THREADS=1 python benchmarks/search_scale.py --growth 0.01 --base 100000   # 1% added to 100k
    OMP_NUM_THREADS=1 python benchmarks/search_scale.py --growth 0.1,0.25,0.5,1,2 --base 20000 --nprobe 96

(One OpenMP thread: on the 2-core machine shared with other jobs, FAISS's two spinning threads made
a 3k-video build take 61 s instead of 5 s. The figures are in search/approximate.py's docstring.)
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import h5py
import numpy as np
import torch

from search.approximate import (ApproximateScorer, ApproximateSettings, build_approximate, streamed_top_k,
                                update_approximate)
from search.index import memory_map

N_CLIPS, DIM = 32, 384
VIDEOS_PER_TOPIC = 200
VIDEO_NOISE, CLIP_NOISE, CLIP_CORRELATION, QUERY_NOISE = 1.0, 0.8, 0.9, 1.2
CHUNK = 4096  # videos generated at a time: about 200 MB of float32
FLOAT32_UP_TO = 100_000  # collections kept in float32 too (5 GB at 100k)


def unit(vectors: torch.Tensor) -> torch.Tensor:
    return vectors / vectors.norm(dim=-1, keepdim=True)


def random_unit(generator: torch.Generator, *shape: int) -> torch.Tensor:
    return unit(torch.randn(*shape, DIM, generator=generator))


def generate_chunk(seed: int, chunk: int, n_videos: int, topics: torch.Tensor) -> torch.Tensor:
    """(n_videos, N, d) float32 unit clip embeddings of one chunk; the same for the same (seed, chunk)."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + chunk)
    means = unit(topics[torch.randint(len(topics), (n_videos,), generator=generator)]
                 + VIDEO_NOISE * random_unit(generator, n_videos))  # (B, d)
    walk = torch.empty(n_videos, N_CLIPS, DIM)  # (B, N, d)
    walk[:, 0] = random_unit(generator, n_videos)
    step = (1 - CLIP_CORRELATION ** 2) ** 0.5
    for clip in range(1, N_CLIPS):
        walk[:, clip] = unit(CLIP_CORRELATION * walk[:, clip - 1] + step * random_unit(generator, n_videos))
    return unit(means[:, None] + CLIP_NOISE * walk)  # (B, N, d)


def generate(folder: Path, n_videos: int, n_queries: int, seed: int = 0) -> None:
    """collection.h5 (float16; float32 too up to FLOAT32_UP_TO), queries.npy and exact.npz, once."""
    if (folder / "exact.npz").is_file():
        return
    folder.mkdir(parents=True, exist_ok=True)
    topics = random_unit(torch.Generator().manual_seed(seed - 1), max(1, n_videos // VIDEOS_PER_TOPIC))  # (T, d)
    dtypes = ("float16", "float32") if n_videos <= FLOAT32_UP_TO else ("float16",)
    started = time.perf_counter()
    files = {dtype: h5py.File(folder / f"collection-{dtype}.h5.partial", "w") for dtype in dtypes}
    arrays = {dtype: file.create_dataset("clip_embeddings", (n_videos, N_CLIPS, DIM), dtype=dtype)
              for dtype, file in files.items()}
    for chunk, start in enumerate(range(0, n_videos, CHUNK)):
        clips = generate_chunk(seed, chunk, min(CHUNK, n_videos - start), topics)
        for array in arrays.values():
            array[start:start + len(clips)] = clips.numpy()
    for dtype, file in files.items():
        file.close()
        os.replace(folder / f"collection-{dtype}.h5.partial", folder / f"collection-{dtype}.h5")
    print(f"{n_videos:,} videos generated in {time.perf_counter() - started:.0f} s", flush=True)
    generator = torch.Generator().manual_seed(seed - 2)
    rows = torch.randperm(n_videos, generator=generator)[:n_queries].sort().values.numpy()
    with h5py.File(folder / "collection-float16.h5", "r") as file:
        chosen = torch.from_numpy(file["clip_embeddings"][rows].astype(np.float32))  # (Q, N, d)
    sources = chosen[torch.arange(n_queries), torch.randint(N_CLIPS, (n_queries,), generator=generator)]  # (Q, d)
    queries = unit(sources + QUERY_NOISE * random_unit(generator, n_queries))  # (Q, d)
    np.save(folder / "queries.npy", queries.numpy())
    reference = {}
    for dtype in dtypes:
        started = time.perf_counter()
        with h5py.File(folder / f"collection-{dtype}.h5", "r") as file:
            scores, videos = streamed_top_k(file["clip_embeddings"], queries, 10)
        reference[f"{dtype}_videos"], reference[f"{dtype}_scores"] = videos.numpy(), scores.numpy()
        reference[f"{dtype}_seconds"] = time.perf_counter() - started
        print(f"exact top-10 of {n_queries} queries by streaming {dtype}: "
              f"{reference[f'{dtype}_seconds']:.0f} s", flush=True)
    np.savez(folder / "exact.npz.partial.npz", **reference)
    os.replace(folder / "exact.npz.partial.npz", folder / "exact.npz")


def memory_gib() -> dict:
    """This process's peak resident set (VmHWM: anonymous + file-backed pages, so it counts the pages of
    the memory-mapped clips a search touched, which the kernel may drop at any time) and its anonymous
    resident set now (what it cannot drop), GiB."""
    status = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines())
    kib = {name: int(status[name].split()[0]) for name in ("VmHWM", "RssAnon", "RssFile")}
    return {"peak_rss": kib["VmHWM"] / 2**20, "anon_rss": kib["RssAnon"] / 2**20}


def recall_at_k(found: np.ndarray, reference: np.ndarray) -> float:
    """Mean over queries of |found top-k  &  reference top-k| / k; both (Q, k) video rows."""
    return float(np.mean([len(set(a) & set(b)) / len(b) for a, b in zip(found.tolist(), reference.tolist())]))


def timed_queries(scorer, queries: torch.Tensor, k: int) -> tuple[np.ndarray, list[float]]:
    """Each query alone, as the server answers them: (Q, k) rows found and the seconds of each."""
    for query in queries[:5]:  # warm: lazy initialisation
        scorer.top_k(query[None], k)
    rows, seconds = [], []
    for query in queries:
        started = time.perf_counter()
        _, found = scorer.top_k(query[None], k)
        seconds.append(time.perf_counter() - started)
        rows.append(found[0].numpy())
    return np.stack(rows), seconds


def exact_in_memory(folder: Path, n_queries: int) -> dict:
    """ExactScorer on the float32 collection read into RAM (what an exact index does)."""
    from search.searcher import ExactScorer

    with h5py.File(folder / "collection-float32.h5", "r") as file:
        scorer = ExactScorer(file["clip_embeddings"][()])
    queries = torch.from_numpy(np.load(folder / "queries.npy"))[:n_queries]
    found, seconds = timed_queries(scorer, queries, 10)
    reference = np.load(folder / "exact.npz")["float32_videos"][:n_queries]
    return {"recall": recall_at_k(found, reference), "seconds": seconds, "build_s": 0.0,
            "disk_bytes": (folder / "collection-float32.h5").stat().st_size, **memory_gib()}


def build_first_stage(folder: Path, settings) -> dict:
    """Builds the first stage once (its report is kept next to it): the table and the sweep share it."""
    report_path = first_stage_path(folder, settings).with_suffix(".json")
    if report_path.is_file():
        return json.loads(report_path.read_text())
    started = time.perf_counter()
    with h5py.File(folder / "collection-float16.h5", "r") as file:
        report = build_approximate(file["clip_embeddings"], first_stage_path(folder, settings), settings)
    report = {**report, "build_s": time.perf_counter() - started, "build_peak_rss": memory_gib()["peak_rss"]}
    report_path.write_text(json.dumps(report))
    return report


def first_stage_path(folder: Path, settings) -> Path:
    return folder / f"approximate-s{settings.segment_clips}-m{settings.memory_gb:g}.faiss"


def approximate_search(folder: Path, settings, reference_dtype: str) -> dict:
    """ApproximateScorer over the memory-mapped float16 collection, as the Searcher opens it."""
    path = folder / "collection-float16.h5"
    with h5py.File(path, "r") as file:
        clips = memory_map(path, file, "clip_embeddings")  # (V, N, d) float16
    scorer = ApproximateScorer(first_stage_path(folder, settings), clips, settings)
    queries = torch.from_numpy(np.load(folder / "queries.npy"))
    found, seconds = timed_queries(scorer, queries, 10)
    reference = np.load(folder / "exact.npz")[f"{reference_dtype}_videos"]
    return {"recall": recall_at_k(found, reference), "seconds": seconds,
            "disk_bytes": path.stat().st_size + first_stage_path(folder, settings).stat().st_size, **memory_gib()}


def in_fresh_process(function, *args):
    """Runs function(*args) in a new interpreter, so that its peak memory is its own."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(function, *args).result()


def sweep(folder: Path, settings, reference_dtype: str, segment_sizes: list[int]) -> None:
    """The choices behind the defaults: what the first stage indexes (segments of how many clips) and
    how much of it a query reads (nprobe lists, candidates), by recall@10 and latency."""
    from dataclasses import replace

    print("| segment_clips | first stage | build min | nprobe | candidates | recall@10 | p50 ms | p95 ms |\n"
          "|---|---|---|---|---|---|---|---|", flush=True)
    for segment_clips in segment_sizes:
        built = replace(settings, segment_clips=segment_clips)
        build = in_fresh_process(build_first_stage, folder, built)
        for nprobe in (16, 32, 64, 128):
            for candidates in (256, 512, 1024):
                result = approximate_search(folder, replace(built, nprobe=nprobe, candidates=candidates),
                                            reference_dtype)
                p50, p95 = (float(np.percentile(1000 * np.asarray(result["seconds"]), q)) for q in (50, 95))
                print(f"| {segment_clips} | {build['factory']} | {build['build_s'] / 60:.1f} | {nprobe} | "
                      f"{candidates} | {result['recall']:.3f} | {p50:.1f} | {p95:.1f} |", flush=True)


def table_row(size: int, method: str, result: dict) -> str:
    p50, p95 = (float(np.percentile(1000 * np.asarray(result["seconds"]), q)) for q in (50, 95))
    return (f"| {size:,} | {method} | {result['recall']:.3f} | {p50:.1f} | {p95:.1f} | "
            f"{result['build_s'] / 60:.1f} | {result['disk_bytes'] / 2**30:.1f} | "
            f"{result['peak_rss']:.2f} | {result['anon_rss']:.2f} |")


def write_collection(path: Path, n_videos: int, seed: int, topics: torch.Tensor) -> None:
    """(n_videos, N, d) float16 clips in an index-like contiguous HDF5 file, once."""
    if path.is_file():
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    with h5py.File(partial, "w") as file:
        array = file.create_dataset("clip_embeddings", (n_videos, N_CLIPS, DIM), dtype="float16")
        for chunk, start in enumerate(range(0, n_videos, CHUNK)):
            array[start:start + min(CHUNK, n_videos - start)] = generate_chunk(seed, chunk, min(CHUNK, n_videos - start),
                                                                               topics).numpy()
    os.replace(partial, path)


def clip_queries(clips: np.ndarray, n_queries: int, seed: int) -> torch.Tensor:
    """(Q, d) queries: a random clip of each of Q random videos of ``clips`` plus noise, as generate()."""
    generator = torch.Generator().manual_seed(seed)
    rows = torch.randperm(len(clips), generator=generator)[:n_queries].sort().values.numpy()
    chosen = torch.from_numpy(np.asarray(clips[rows], dtype=np.float32))  # (Q, N, d)
    sources = chosen[torch.arange(len(rows)), torch.randint(N_CLIPS, (len(rows),), generator=generator)]
    return unit(sources + QUERY_NOISE * random_unit(generator, len(rows)))


def growth_run(folder: Path, base_size: int, growth: float, n_queries: int, settings) -> dict:
    """Base + growth x base videos: the first stage updated from the base's against built anew."""
    added_size = max(1, round(growth * base_size))
    base_path = folder / "base.h5"
    write_collection(base_path, base_size, 0, random_unit(torch.Generator().manual_seed(-1),
                                                          max(1, base_size // VIDEOS_PER_TOPIC)))
    added_path = folder / f"added-{added_size}.h5"
    write_collection(added_path, added_size, 1, random_unit(torch.Generator().manual_seed(-3),
                                                            max(1, added_size // VIDEOS_PER_TOPIC)))
    base_stage = folder / "base.faiss"
    report_path = folder / "base.json"
    if not report_path.is_file():
        with h5py.File(base_path, "r") as file:
            report_path.write_text(json.dumps(build_approximate(memory_map(base_path, file, "clip_embeddings"),
                                                                base_stage, settings)))
    base_report = json.loads(report_path.read_text())
    grown_path = folder / f"grown-{added_size}.h5"
    started = time.perf_counter()
    with h5py.File(base_path, "r") as base, h5py.File(added_path, "r") as added, \
            h5py.File(grown_path, "w") as grown:  # the rows, as an index build writes them
        array = grown.create_dataset("clip_embeddings", (base_size + added_size, N_CLIPS, DIM), dtype="float16")
        for source, offset in ((base, 0), (added, base_size)):
            clips = source["clip_embeddings"]
            for start in range(0, len(clips), CHUNK):
                block = clips[start:start + CHUNK]
                array[offset + start:offset + start + len(block)] = block
    rows_s = time.perf_counter() - started
    with h5py.File(grown_path, "r") as file:
        clips = memory_map(grown_path, file, "clip_embeddings")  # (V + A, N, d)
    started = time.perf_counter()
    full = build_approximate(clips, folder / "full.faiss", settings)
    full_s = time.perf_counter() - started
    reused = np.concatenate([np.arange(base_size), np.full(added_size, -1)])  # the base's rows, then the added
    started = time.perf_counter()
    updated = update_approximate(base_stage, base_report, reused, clips, folder / "updated.faiss", settings)
    update_s = time.perf_counter() - started
    half = n_queries // 2
    queries = torch.cat([clip_queries(clips[:base_size], half, 10), clip_queries(clips[base_size:], half, 11)])
    _, exact = streamed_top_k(clips, queries, 10)  # (Q, 10)
    result = {"base": base_size, "added": added_size, "rows_s": rows_s, "full_s": full_s, "update_s": update_s,
              "full_factory": full["factory"], "updated_factory": updated["factory"]}
    for name in ("full", "updated"):
        found, seconds = timed_queries(ApproximateScorer(folder / f"{name}.faiss", clips, settings), queries, 10)
        result[f"{name}_recall_base"] = recall_at_k(found[:half], exact.numpy()[:half])
        result[f"{name}_recall_added"] = recall_at_k(found[half:], exact.numpy()[half:])
        result[f"{name}_p50_ms"] = 1000 * float(np.median(seconds))
    grown_path.unlink()  # as big as the base: one grown collection on disk at a time
    return result


def growth_table(args, settings) -> None:
    print("| base | added | first stage: full rebuild | updated | update / full time | rows written | "
          "recall@10 full (base / added queries) | updated | p50 ms full / updated |\n"
          "|---|---|---|---|---|---|---|---|---|", flush=True)
    for growth in (float(value) for value in args.growth.split(",")):
        r = growth_run(Path(args.workdir) / f"growth-{args.base}", args.base, growth, args.queries, settings)
        print(f"| {r['base']:,} | {r['added']:,} ({100 * growth:g}%) | {r['full_s']:.1f} s ({r['full_factory']}) | "
              f"{r['update_s']:.1f} s ({r['updated_factory']}) | {r['update_s'] / r['full_s']:.3f} | "
              f"{r['rows_s']:.1f} s | {r['full_recall_base']:.3f} / {r['full_recall_added']:.3f} | "
              f"{r['updated_recall_base']:.3f} / {r['updated_recall_added']:.3f} | "
              f"{r['full_p50_ms']:.1f} / {r['updated_p50_ms']:.1f} |", flush=True)


def main() -> None:
    from pipeline.config import SCHEMA

    defaults = {name: key.default for name, key in SCHEMA["search"]["approximate"].items()}
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="10000,100000,1000000", help="collection sizes, videos")
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--exact-queries", type=int, default=50, help="queries timed for exact search in RAM")
    parser.add_argument("--workdir", default="/work/bench", help="where the synthetic collections go (big)")
    parser.add_argument("--sweep", action="store_true", help="instead of the table: recall and latency of "
                                                             "segment_clips x nprobe x candidates")
    parser.add_argument("--sweep-segments", default="32,8,4", help="segment_clips values the sweep builds")
    parser.add_argument("--growth", default="", help="instead of the table: growth ratios (0.01 = 1%% added) of "
                                                     "an index updated against rebuilt")
    parser.add_argument("--base", type=int, default=100_000, help="videos before the growth (--growth)")
    for name, value in defaults.items():
        parser.add_argument(f"--{name.replace('_', '-')}", type=type(value), default=value,
                            help=f"search.approximate.{name} (default {value})")
    args = parser.parse_args()
    settings = ApproximateSettings(**{name: getattr(args, name) for name in defaults})
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; {settings}", flush=True)
    if args.growth:
        growth_table(args, settings)
        return
    rows = ["| videos | search | recall@10 | p50 ms | p95 ms | build min | disk GiB | peak RSS GiB | anon RSS GiB |",
            "|---|---|---|---|---|---|---|---|---|"]
    for size in (int(value) for value in args.sizes.split(",") if value):
        folder = Path(args.workdir) / str(size)
        generate(folder, size, args.queries)
        reference = np.load(folder / "exact.npz")
        float32 = "float32_videos" in reference.files
        if args.sweep:
            sweep(folder, settings, "float32" if float32 else "float16",
                  [int(value) for value in args.sweep_segments.split(",")])
            continue
        if float32:
            rows.append(table_row(size, "exact (float32 in RAM)",
                                  in_fresh_process(exact_in_memory, folder, args.exact_queries)))
            rows.append(f"| {size:,} | exact, float16 clips, streamed | "
                        f"{recall_at_k(reference['float16_videos'], reference['float32_videos']):.3f} | "
                        f"one pass: {reference['float16_seconds']:.0f} s for all {args.queries} queries | | | | | |")
        else:
            rows.append(f"| {size:,} | exact, float16 clips, streamed (the reference) | 1 | "
                        f"one pass: {reference['float16_seconds']:.0f} s for all {args.queries} queries | | 0 | "
                        f"{(folder / 'collection-float16.h5').stat().st_size / 2**30:.1f} | | |")
        build = in_fresh_process(build_first_stage, folder, settings)
        print(f"{size:,}: built {build}", flush=True)
        search = in_fresh_process(approximate_search, folder, settings, "float32" if float32 else "float16")
        rows.append(table_row(size, f"approximate ({build['factory']}, nprobe {settings.nprobe}, "
                                    f"{settings.candidates} candidates)", {**search, "build_s": build["build_s"]}))
        print("\n".join(rows), flush=True)


if __name__ == "__main__":
    main()
