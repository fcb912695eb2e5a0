"""Start-up of the entry points against `python -c "import torch"`, measured in the same run.

Each command runs as a user runs it (a fresh process from the repository root), once to warm the page
cache, then --repeats times in turn with the baseline, so all see the same machine load; the median
wall time is printed with its ratio to the baseline's and the target: within 2x the baseline + 1 s.

    no-op `make demo`: luigi --module tasks FullPipeline --dataset demo, then python -m tasks --dataset demo,
                       on a completed work folder (run `make demo` first)
    first answer:      python -m search --dataset demo "..." with the index built (built by the warm-up run)
    also, for the record: python -m pipeline.explain, python -m search index (both no-op)

    python benchmarks/startup.py [--dataset demo] [--repeats 5]
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def commands(dataset: str) -> dict[str, list[list[str]]]:
    python, luigi = str(BIN / "python"), str(BIN / "luigi")
    return {
        'baseline: python -c "import torch"': [[python, "-c", "import torch"]],
        "no-op make demo (luigi FullPipeline + python -m tasks)": [
            [luigi, "--module", "tasks", "FullPipeline", "--dataset", dataset],
            [python, "-m", "tasks", "--dataset", dataset]],
        "first answer: python -m search": [[python, "-m", "search", "--dataset", dataset, "a red square moving left"]],
        "python -m search index (up to date)": [[python, "-m", "search", "index", "--dataset", dataset]],
        "python -m pipeline.explain": [[python, "-m", "pipeline.explain", "--dataset", dataset]],
    }


def run(steps: list[list[str]]) -> float:
    """Wall seconds of the steps in turn; a failing step stops the benchmark with its output."""
    started = time.perf_counter()
    for step in steps:
        result = subprocess.run(step, cwd=REPO, capture_output=True, text=True, env={**os.environ})
        if result.returncode != 0:
            raise SystemExit(f"{' '.join(step)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="demo")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    table = commands(args.dataset)
    for steps in table.values():  # warm: page cache, the index built on first use
        run(steps)
    times: dict[str, list[float]] = {name: [] for name in table}
    for _ in range(args.repeats):
        for name, steps in table.items():
            times[name].append(run(steps))
    medians = {name: statistics.median(values) for name, values in times.items()}
    baseline = medians[next(iter(table))]
    target = 2 * baseline + 1
    print(f"load average {os.getloadavg()[0]:.1f}; median of {args.repeats} runs each, in turn")
    for name, median in medians.items():
        verdict = "" if median == baseline else f"  target <= {target:.2f} s: {'met' if median <= target else 'NOT met'}"
        print(f"{name:<58} {median:6.2f} s  ({median / baseline:4.2f}x baseline; "
              f"min {min(times[name]):.2f}, max {max(times[name]):.2f}){verdict}")


if __name__ == "__main__":
    main()
