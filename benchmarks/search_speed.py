"""Search latency: end to end on the demo index, and scoring alone on large synthetic indexes.

1. Demo, end to end (text encoding + model query embedding + scoring + moment spans), warm, one
   query at a time as the server answers them: p50 / p95 over the demo's query texts.
2. Many clients (`--clients 50`): a real server (`python -m search serve`, uvicorn on 127.0.0.1, its own
   process) answering a bounded number of requests from 1 client, then from 50 at once (threads, one
   connection per request), in the same run: throughput (searches/s), p50/p95 latency, the ratio of
   the throughputs, and that every request was answered (200).
3. Scoring alone (`ExactScorer.top_k`: one matrix product over every clip, max per video, top-k) on
   synthetic indexes of 10k and 100k videos x 32 clips, d = 384, against the raw matrix product of the
   same size measured in the same run, query by query in turn; the ratio of the p50s is printed.

    python benchmarks/search_speed.py                        # after `make demo` (builds the index if needed)
    python benchmarks/search_speed.py --sizes 10000 --queries 100 --skip-demo
    python benchmarks/search_speed.py --sizes "" --skip-demo --clients 50 --requests 200
"""
from __future__ import annotations

import argparse
import http.client
import json
import os
import resource
import socket
import subprocess
import sys
import threading
import time
from urllib.parse import quote
from pathlib import Path

import numpy as np
import torch

from search.searcher import ExactScorer


def percentiles(seconds: list[float]) -> tuple[float, float]:
    milliseconds = 1000 * np.asarray(seconds)
    return float(np.percentile(milliseconds, 50)), float(np.percentile(milliseconds, 95))


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # ru_maxrss is KiB on Linux


def demo_searcher(dataset: str, overrides: str, index_dir: str | None):
    """The demo's searcher (its index built if needed), or one on an index folder given as it is."""
    from pipeline.config import load_config
    from search.cli import index_task, open_searcher
    from search.searcher import Searcher

    if index_dir is None:
        return open_searcher(index_task(dataset, overrides))
    return Searcher(Path(index_dir), span_rule=load_config(dataset, overrides)["evaluate"]["span_rule"])


def demo_end_to_end(searcher, n_queries: int, k: int) -> None:
    manifest = json.loads((searcher.index_dir / "manifest.json").read_text())
    dataset_dir = Path(manifest["upstream"]["dataset"])  # the query texts of the indexed dataset
    texts = [json.loads(line)["text"] for line in (dataset_dir / "queries.jsonl").read_text().splitlines()]
    texts = [texts[i % len(texts)] for i in range(n_queries)]
    for text in texts[:5]:  # warm: first calls pay for lazy initialisation
        searcher.search(text, k)
    total, encoding = [], []
    for text in texts:
        started = time.perf_counter()
        query = searcher.encode_query(searcher.check_query(text))
        encoded = time.perf_counter()
        scores, rows = searcher.scorer.top_k(query, k)
        searcher.hits(query[0], scores[0], rows[0])
        finished = time.perf_counter()
        total.append(finished - started)
        encoding.append(encoded - started)
    p50, p95 = percentiles(total)
    e50, e95 = percentiles(encoding)
    print(f"demo end to end ({len(searcher.video_ids)} videos x {searcher.scorer.n_clips} clips, "
          f"{n_queries} queries, k={k}): p50 {p50:.1f} ms, p95 {p95:.1f} ms "
          f"(of which text encoding + query embedding: p50 {e50:.1f} ms, p95 {e95:.1f} ms)", flush=True)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _get(port: int, path: str) -> int:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    connection.request("GET", path)
    response = connection.getresponse()
    response.read()
    connection.close()
    return response.status


def _load(port: int, texts: list[str], clients: int, requests: int, k: int) -> dict:
    """`requests` searches from `clients` threads at once; their latencies, statuses and the wall time."""
    latencies, statuses, lock = [], [], threading.Lock()
    counter = iter(range(requests))

    def client() -> None:
        for i in counter:  # the shared iterator hands out the requests; next() is atomic under the GIL
            started = time.perf_counter()
            status = _get(port, f"/api/search?q={quote(texts[i % len(texts)])}&k={k}")
            with lock:
                latencies.append(time.perf_counter() - started)
                statuses.append(status)

    threads = [threading.Thread(target=client) for _ in range(clients)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - started
    p50, p95 = percentiles(latencies)
    return {"throughput": len(latencies) / wall, "p50": p50, "p95": p95,
            "answered": sum(status == 200 for status in statuses), "requests": requests}


def concurrent_clients(dataset: str, overrides: str, clients: int, requests: int, k: int) -> None:
    """A real server in its own process; 1 client, then `clients` at once, in the same run."""
    port = _free_port()
    server = subprocess.Popen([sys.executable, "-m", "search", "serve", "--dataset", dataset, "--set", overrides,
                               "--port", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 600
        while True:
            try:
                if _get(port, "/api/info") == 200:
                    break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(f"the server did not start: {server.stderr.read().decode()}")
                time.sleep(0.5)
        texts = demo_texts(dataset, overrides)
        _load(port, texts, 4, 20, k)  # warm
        single = _load(port, texts, 1, max(20, requests // 5), k)
        many = _load(port, texts, clients, requests, k)
    finally:
        server.terminate()
        server.wait(timeout=30)
    for name, result in (("1 client", single), (f"{clients} clients", many)):
        print(f"server, {name}: {result['throughput']:.1f} searches/s, p50 {result['p50']:.0f} ms, "
              f"p95 {result['p95']:.0f} ms, {result['answered']}/{result['requests']} answered", flush=True)
    print(f"throughput {clients} clients / 1 client: {many['throughput'] / single['throughput']:.2f}x "
          f"(load average {os.getloadavg()[0]:.1f})", flush=True)


def demo_texts(dataset: str, overrides: str) -> list[str]:
    from search.cli import index_task

    folder = index_task(dataset, overrides).upstream_dir("dataset")
    return [json.loads(line)["text"] for line in (folder / "queries.jsonl").read_text().splitlines()]


def synthetic_scoring(n_videos: int, n_clips: int, dim: int, n_queries: int, k: int) -> None:
    generator = torch.Generator().manual_seed(0)
    clips = torch.randn(n_videos * n_clips, dim, generator=generator)  # (V*N, d)
    clips /= clips.norm(dim=1, keepdim=True)
    scorer = ExactScorer(clips.numpy().reshape(n_videos, n_clips, dim))  # shares the memory, no copy
    flat = scorer.flat
    queries = torch.randn(n_queries, 1, dim, generator=generator)
    queries /= queries.norm(dim=-1, keepdim=True)
    for query in queries[:3]:  # warm
        scorer.top_k(query, k)
        _ = query @ flat.T
    scoring, raw = [], []
    for query in queries:  # in turn, so both see the same machine load
        started = time.perf_counter()
        scorer.top_k(query, k)
        middle = time.perf_counter()
        _ = query @ flat.T  # (1, V*N): the baseline, the product alone
        raw.append(time.perf_counter() - middle)
        scoring.append(middle - started)
    s50, s95 = percentiles(scoring)
    r50, r95 = percentiles(raw)
    size_gib = flat.numel() * flat.element_size() / 2**30
    print(f"scoring {n_videos:,} videos x {n_clips} clips, d={dim} ({size_gib:.2f} GiB float32), {n_queries} queries: "
          f"p50 {s50:.1f} ms, p95 {s95:.1f} ms; raw matmul p50 {r50:.1f} ms, p95 {r95:.1f} ms; "
          f"ratio p50 {s50 / r50:.2f}x; peak RSS so far {peak_rss_gib():.2f} GiB", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="demo")
    parser.add_argument("--set", default="", help="config overrides of the demo run")
    parser.add_argument("--queries", type=int, default=100)
    parser.add_argument("--sizes", default="10000,100000", help="synthetic index sizes, videos")
    parser.add_argument("--clips", type=int, default=32)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("-k", type=int, default=10)
    parser.add_argument("--index", help="an index folder to time instead of the dataset's (built if needed)")
    parser.add_argument("--skip-demo", action="store_true")
    parser.add_argument("--clients", type=int, default=0, help="also measure a real server: this many clients vs 1")
    parser.add_argument("--requests", type=int, default=200, help="requests of the many clients (1 client: a fifth)")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads", flush=True)
    if not args.skip_demo:
        demo_end_to_end(demo_searcher(args.dataset, args.set, args.index), args.queries, args.k)
    if args.clients:
        concurrent_clients(args.dataset, args.set, args.clients, args.requests, args.k)
    for size in (int(value) for value in args.sizes.split(",") if value):
        synthetic_scoring(size, args.clips, args.dim, args.queries, args.k)


if __name__ == "__main__":
    main()
