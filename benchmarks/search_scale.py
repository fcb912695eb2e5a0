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

from search.approximate import ApproximateScorer, ApproximateSettings, build_approximate, streamed_top_k
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
    for name, value in defaults.items():
        parser.add_argument(f"--{name.replace('_', '-')}", type=type(value), default=value,
                            help=f"search.approximate.{name} (default {value})")
    args = parser.parse_args()
    settings = ApproximateSettings(**{name: getattr(args, name) for name in defaults})
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; {settings}", flush=True)
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
