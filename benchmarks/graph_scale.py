"""The whole Luigi graph at the size of a real dataset, on a synthetic collection, stage by stage.

    python benchmarks/graph_scale.py --shape tvr --form bundle           # TVR's released-bundle shape
    python benchmarks/graph_scale.py --shape tvr --form raw --scale 0.1  # raw videos, a tenth of TVR
    python benchmarks/graph_scale.py --videos 2000 --queries 10000 --form raw --epochs 1
    python benchmarks/graph_scale.py --shape tvr --scale 0.02            # a quick smoke run

Shapes (videos train + val, captions train + val, feature rows T per video):
  tvr          17,435 + 2,179 videos, 87,175 + 10,895 captions, T = 20-80 (TVR's PRVR split; val is also test)
  activitynet  15,000 + 5,000 videos, 75,000 + 25,000 captions, T = 60-300 (longer videos)
  --videos N --queries M: N videos (8 in 9 train), M captions spread evenly, T = 20-80
``--scale f`` keeps a fraction f of the videos and captions (at least 8 and 16).

The generator (``write_bundle``, ``write_raw``) is seeded and cheap:
  - every video has a random "topic" vector; its T rows are the topic plus unit Gaussian noise, and each
    of its captions is the mean of a random window of its rows plus noise (so training learns
    something and validation SumR stays above 0), with a random span ``ts`` and a text of random words;
  - form ``bundle`` writes the PRVR feature bundle as MS-SL released it (docs/data-formats.md): the
    caption files ``TextData/<name>{train,val,test}.caption.txt`` (test = val, as TVR's PRVR split),
    ``TextData/clip_ViT_B_32_<name>_query_feat.hdf5`` (cap_id -> 512-d) and
    ``FeatureData/new_clip_vit_32_<name>_vid_features.hdf5`` (video id -> (T, 512)), which ImportBundle reads;
  - form ``raw`` writes TVR's own annotation files (``tvr_{train,val}_release.jsonl``,
    ``tvqa_preprocessed_subtitles.jsonl`` with 2-6 sentences a video) and ``videos/<vid>.mp4``: four
    distinct tiny H.264 clips (96 x 64, 6 fps, lengths giving T rows at 3 fps) hard-linked as every
    video, so that decoding is cheap and the per-video overheads show. Its config uses the tests' tiny
    CLIP (TinyViT-32-test, random weights) for frames and text, at 64 px and 3 fps, so no weights are needed.
A collection is generated once per (shape, form, scale) under ``<scratch>/data-...`` and reused; the
work folder ``<scratch>/work-...`` is deleted first (``--keep-work`` keeps it, so stages already
complete are not rerun).

Each stage runs as its own process (``--child``: ``luigi.build`` of that one task with a local scheduler,
its upstream stages already complete), so its wall time and peak RSS (``ru_maxrss`` from ``wait4``: the
largest single process of its tree, decoding workers included) are its own. Outputs are found through
the stage manifests, ``<workdir>/<name>/<stage>/<fingerprint>/manifest.json``. Columns:
  items    what the stage handles (videos, captions, queries x videos, epochs x videos)
  build s  the manifest's ``seconds`` (the stage's build alone); wall s: the whole process, start-up
           (imports, building the graph, fingerprints) included
  over imports MB  peak RSS less that of a process importing the same modules (``--imports``): the
           stage's own data, to compare with the largest array it must hold
  MB       bytes the stage wrote (its folder; for extraction, the cache entries), or for Train and
           Evaluate the feature bytes they read; MB/s over build seconds
  baseline measured in this same run, and ratio = build s / baseline s:
           writers (ImportBundle, QueryFeatures, SubtitleFeatures, VisualPart assembly, ExportBundle):
             the same bytes written as one contiguous float32 HDF5 dataset, after a sync, in the
             page-cache state the stage left (``contiguous_write_seconds``: good to about 2x);
             the note "writers alone" is the time the stage spent inside the writer classes' methods
             (``timed_writers``: reading inputs and model compute left out) against the same baseline
           extraction shards: decoding + the model alone, one video after another in this process
             (each distinct clip timed, times the videos linking it); "ms/video over" is the overhead
           Train: epochs x (forward + backward of every step on batches already in memory + the
             validation's compute); per-epoch rows compare log.jsonl's epoch seconds and the
             validation (the trainer's own ``split_metrics``, timed here) with their compute
           Evaluate: the model's encoding of every test video and query + the score matrix
           no-op rerun and explain: ``os.stat`` of every input file (what fingerprints read)
The no-op rerun is ``luigi --module tasks FullPipeline`` once everything is complete, and explain is
``python -m pipeline.explain`` (``make explain``), both timed as the user runs them; start-up alone
(``python -c "import tasks"``) is printed beside them. Print ``uptime`` with the table: the machine's
load inflates absolute times, the ratios much less.
"""
from __future__ import annotations

import argparse
import functools
import inspect
import json
import math
import os
import random
import resource
import shutil
import subprocess
import sys
import time
import traceback
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import h5py
import numpy as np
import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

DIM = 512  # CLIP ViT-B/32 rows and caption vectors in the bundle form
RAW_MODEL = "TinyViT-32-test"  # the tests' tiny CLIP (extractors/open_clip_configs), random weights
RAW_SIZE, RAW_FPS, CLIP_SOURCE_FPS = 64, 3.0, 6
WORDS = ("man woman dog car door phone table walks runs opens talks sits kitchen street red blue "
         "glass laughs looks turns picks hands book bed window coffee music office stairs").split()


@dataclass(frozen=True)
class Shape:
    name: str
    videos: dict[str, int]  # split -> videos (train, val)
    captions: dict[str, int]  # split -> captions
    rows: tuple[int, int]  # T range, inclusive

    def scaled(self, scale: float) -> "Shape":
        videos = {split: max(8, round(n * scale)) for split, n in self.videos.items()}
        captions = {split: max(2 * videos[split], round(n * scale)) for split, n in self.captions.items()}
        return Shape(self.name, videos, captions, self.rows)

    @property
    def n_videos(self) -> int:
        return sum(self.videos.values())

    @property
    def n_captions(self) -> int:
        return sum(self.captions.values())


SHAPES = {
    "tvr": Shape("tvr", {"train": 17_435, "val": 2_179}, {"train": 87_175, "val": 10_895}, (20, 80)),
    "activitynet": Shape("activitynet", {"train": 15_000, "val": 5_000}, {"train": 75_000, "val": 25_000},
                         (60, 300)),
}


# ---- the synthetic collection -------------------------------------------------------------------------


@dataclass
class Caption:
    cap_id: str
    video_id: str
    text: str
    ts: tuple[float, float]
    vector: np.ndarray  # (DIM,) float32


def _captions_per_video(n_videos: int, n_captions: int) -> list[int]:
    base, extra = divmod(n_captions, n_videos)
    return [base + (index < extra) for index in range(n_videos)]


def _video_ids(shape: Shape) -> dict[str, list[str]]:
    ids, start = {}, 0
    for split, count in shape.videos.items():
        ids[split] = [f"show{(start + i) % 40:02d}_s01e{(start + i) // 40 % 99:02d}_clip_{start + i:06d}"
                      for i in range(count)]
        start += count
    return ids


def _synthetic_videos(shape: Shape, seed: int, rows_of=None):
    """Yields (split, video_id, rows (T, DIM) or None, [Caption]); ``rows_of(video index)`` fixes T
    (the raw form: the length of the clip the video links), else T is drawn from the shape's range."""
    rng = np.random.default_rng(seed)
    index = 0
    for split, ids in _video_ids(shape).items():
        for video_id, n_caps in zip(ids, _captions_per_video(len(ids), shape.captions[split])):
            n_rows = rows_of(index) if rows_of else int(rng.integers(shape.rows[0], shape.rows[1] + 1))
            topic = rng.standard_normal(DIM, dtype=np.float32)
            rows = topic + rng.standard_normal((n_rows, DIM), dtype=np.float32)  # (T, DIM)
            captions = []
            for k in range(n_caps):
                start = int(rng.integers(0, n_rows))
                end = int(rng.integers(start + 1, n_rows + 1))
                vector = rows[start:end].mean(axis=0) + 0.5 * rng.standard_normal(DIM, dtype=np.float32)
                text = " ".join(rng.choice(WORDS, size=int(rng.integers(5, 12))))
                captions.append(Caption(f"{video_id}#enc#{k}", video_id, text,
                                        (start / RAW_FPS, end / RAW_FPS), vector.astype(np.float32)))
            yield split, video_id, rows, captions
            index += 1


def write_bundle(root: Path, shape: Shape, seed: int = 0) -> None:
    """The PRVR feature bundle of collection ``shape.name`` (MS-SL's layout) under ``root``."""
    text_dir, feature_dir = root / "TextData", root / "FeatureData"
    text_dir.mkdir(parents=True, exist_ok=True)
    feature_dir.mkdir(parents=True, exist_ok=True)
    name = shape.name
    lines: dict[str, list[str]] = {split: [] for split in shape.videos}
    with h5py.File(feature_dir / f"new_clip_vit_32_{name}_vid_features.hdf5.partial", "w") as videos, \
            h5py.File(text_dir / f"clip_ViT_B_32_{name}_query_feat.hdf5.partial", "w") as queries:
        for split, video_id, rows, captions in _synthetic_videos(shape, seed):
            videos.create_dataset(video_id, data=rows)
            for caption in captions:
                queries.create_dataset(caption.cap_id, data=caption.vector)
                lines[split].append(f"{caption.cap_id} {caption.text}\n")
    for split, split_lines in lines.items():
        (text_dir / f"{name}{split}.caption.txt").write_text("".join(split_lines))
    (text_dir / f"{name}test.caption.txt").write_text("".join(lines["val"]))  # TVR's PRVR test set is its val
    for partial in (*feature_dir.glob("*.partial"), *text_dir.glob("*.partial")):
        partial.rename(partial.with_suffix(""))


def _make_clips(folder: Path, rows: tuple[int, int]) -> list[tuple[Path, float]]:
    """Four distinct tiny H.264 clips whose lengths give T rows at 3 fps across ``rows``; (path, duration)."""
    import imageio_ffmpeg

    from extractors.decode import probe_video

    folder.mkdir(parents=True, exist_ok=True)
    clips = []
    for index, n_rows in enumerate(np.linspace(rows[0], rows[1], 4).round().astype(int)):
        path = folder / f"clip{index}_{n_rows}.mp4"
        if not path.exists():
            pattern = ("testsrc2", "rgbtestsrc", "smptebars", "testsrc")[index]
            subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-y", "-loglevel", "error", "-f", "lavfi", "-i",
                            f"{pattern}=size=96x64:rate={CLIP_SOURCE_FPS}:duration={n_rows / RAW_FPS:g}",
                            "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p", str(path)], check=True)
        clips.append((path, probe_video(path).duration))
    return clips


def write_raw(root: Path, shape: Shape, seed: int = 0) -> None:
    """TVR's annotation files and one hard-linked tiny clip per video under ``root``."""
    clips = _make_clips(root / "clips", shape.rows)
    video_dir = root / "videos"
    video_dir.mkdir(parents=True, exist_ok=True)
    clip_rng = random.Random(seed)
    clip_of = [clip_rng.randrange(len(clips)) for _ in range(shape.n_videos)]
    rows_of = [max(1, int(clips[c][1] * RAW_FPS)) for c in clip_of]
    files = {split: open(root / f"tvr_{split}_release.jsonl", "w") for split in shape.videos}
    subtitle_rng = np.random.default_rng(seed + 1)
    desc_id = 0
    with open(root / "tvqa_preprocessed_subtitles.jsonl", "w") as subtitles:
        for index, (split, video_id, _, captions) in enumerate(_synthetic_videos(shape, seed, rows_of.__getitem__)):
            path, duration = clips[clip_of[index]]
            link = video_dir / f"{video_id}.mp4"
            if not link.exists():
                os.link(path, link)
            for caption in captions:
                start, end = caption.ts
                files[split].write(json.dumps({"desc_id": desc_id, "desc": caption.text, "vid_name": video_id,
                                               "duration": duration, "ts": [start, min(end, duration)],
                                               "type": "v"}) + "\n")
                desc_id += 1
            n_sentences = int(subtitle_rng.integers(2, 7))
            edges = np.sort(subtitle_rng.uniform(0, duration, 2 * n_sentences)).round(2)
            subtitles.write(json.dumps({"vid_name": video_id, "sub": [
                {"text": " ".join(subtitle_rng.choice(WORDS, size=6)), "start": float(edges[2 * i]),
                 "end": float(edges[2 * i + 1])} for i in range(n_sentences)]}) + "\n")
    for file in files.values():
        file.close()


def collection(scratch: Path, shape: Shape, form: str, tag: str) -> Path:
    """The generated data root, made once (a ``.complete`` marker is written last)."""
    root = scratch / f"data-{tag}"
    if (root / ".complete").exists():
        return root
    shutil.rmtree(root, ignore_errors=True)
    started = time.perf_counter()
    (write_bundle if form == "bundle" else write_raw)(root, shape)
    (root / ".complete").write_text("")
    print(f"generated the {form} collection in {root} ({time.perf_counter() - started:.0f} s, "
          f"{_folder_bytes(root) / 1e6:,.0f} MB)", flush=True)
    return root


def dataset_config(scratch: Path, data_root: Path, shape: Shape, form: str, tag: str, epochs: int) -> tuple[Path, str]:
    """A config based on configs/tvr.yaml for the collection; returns (its path, the --set overrides)."""
    config = yaml.safe_load((REPO / "configs" / "tvr.yaml").read_text())
    config.update(name=shape.name, workdir=str(scratch / f"work-{tag}"))
    config["data"]["root"] = str(data_root)
    config["features"]["collection"] = shape.name
    if form == "bundle":
        config["features"].update(source="bundle", bundle_dir=".")
    else:
        config["data"]["video_ext"] = [".mp4"]
        config["visual"].update(fps=RAW_FPS, size=RAW_SIZE, num_workers=2, batch_size=64,
                                parts={"clip": {"backbone": "clip", "model": RAW_MODEL, "pretrained": None}})
        config["text"] = {"encoder": "clip-text", "model": RAW_MODEL, "pretrained": None}
    config["train"]["max_epochs"] = epochs
    path = scratch / f"{tag}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path, ""


# ---- running stages --------------------------------------------------------------------------------


@dataclass
class Run:
    wall: float
    peak_rss_mb: float
    ok: bool
    log: Path
    writer_seconds: float | None = None  # inside the feature writers' methods (``timed_writers``)
    imports_rss_mb: float | None = None  # a process importing the same modules and doing nothing


# A process's ru_maxrss starts at its parent's RSS when it was forked, so commands are started by this
# small launcher (a fresh interpreter importing nothing heavy), which reports its child's wait4 figures.
_LAUNCHER = """
import json, os, subprocess, sys, time
started = time.perf_counter()
process = subprocess.Popen(sys.argv[2:])
_, status, usage = os.wait4(process.pid, 0)
with open(sys.argv[1], "w") as report:
    json.dump({"wall": time.perf_counter() - started, "maxrss_kib": usage.ru_maxrss}, report)
sys.exit(os.waitstatus_to_exitcode(status))
"""


def run_process(command: list[str], log: Path) -> Run:
    """Runs ``command`` from the repository root; its wall time and the peak RSS of its process tree."""
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    figures = log.with_suffix(".rusage.json")
    with open(log, "w") as output:
        result = subprocess.run([sys.executable, "-c", _LAUNCHER, str(figures), *command], cwd=REPO, env=env,
                                stdout=output, stderr=subprocess.STDOUT)
    measured = json.loads(figures.read_text())
    return Run(measured["wall"], measured["maxrss_kib"] / 1024, result.returncode == 0, log)


def child(spec: str) -> None:
    """``--child``: builds one task (or its shard tasks) with the local scheduler, in this process, and
    writes the seconds its feature writers took to ``spec["writer_seconds"]``."""
    import luigi

    import tasks

    spec = json.loads(spec)
    task = getattr(tasks, spec["task"])(dataset=spec["dataset"], set=spec["set"], **spec.get("params", {}))
    todo = task.requires()["shards"] if spec.get("shards") else [task]
    with timed_writers() as writer_seconds:
        ok = luigi.build(todo, local_scheduler=True, workers=1, log_level="WARNING")
    Path(spec["writer_seconds"]).write_text(json.dumps(writer_seconds))
    Path(spec["modules"]).write_text("\n".join(sorted(name for name in sys.modules if name != "__main__")))
    raise SystemExit(0 if ok else 1)


def import_modules(listing: str) -> None:
    """``--imports FILE``: imports the modules a stage's process had loaded, and nothing else:
    the peak RSS of the code and libraries alone, which a stage's own data comes on top of."""
    import importlib

    for name in Path(listing).read_text().split():
        try:
            importlib.import_module(name)
        except Exception:  # noqa: BLE001 - a module that only imports inside its package's context
            pass


def _writer_classes() -> list[type]:
    """Every class that writes feature bytes: ours (ragged files), the bundle's (one dataset per key, BigFile)."""
    from pipeline.bundle import BigFileWriter, KeyedH5Writer
    from storage.features import FeatureWriter

    return [FeatureWriter, KeyedH5Writer, BigFileWriter]


@contextmanager
def timed_writers() -> Iterator[dict[str, float]]:
    """Times the public methods of the writer classes (nested calls counted once) while the block runs:
    what a stage spends writing, beside its reading and model compute. -> class name -> seconds."""
    seconds: dict[str, float] = {}
    depth = [0]
    originals = []

    def timed(cls, function):
        @functools.wraps(function)
        def wrapper(*args, **kwargs):
            depth[0] += 1
            started = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                depth[0] -= 1
                if depth[0] == 0:
                    seconds[cls.__name__] = seconds.get(cls.__name__, 0.0) + time.perf_counter() - started
        return wrapper

    for cls in _writer_classes():
        for name, function in list(vars(cls).items()):
            if inspect.isfunction(function) and (not name.startswith("_") or name in ("__enter__", "__exit__")):
                originals.append((cls, name, function))
                setattr(cls, name, timed(cls, function))
    try:
        yield seconds
    finally:
        for cls, name, function in originals:
            setattr(cls, name, function)


def stage_folder(workdir: Path, name: str, stage: str) -> Path | None:
    """The newest complete folder of ``stage``, found by its manifest."""
    manifests = sorted((workdir / name / stage).glob("*/manifest.json"), key=lambda path: path.stat().st_mtime)
    return manifests[-1].parent if manifests else None


def _folder_bytes(folder: Path | None) -> int:
    if folder is None or not folder.exists():
        return 0
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file())


def _h5_bytes(folder: Path | None) -> int:
    """Bytes of the feature files in a stage folder (what a writer's baseline writes again)."""
    if folder is None:
        return 0
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file()
               and path.suffix in (".h5", ".hdf5", ".bin"))


# ---- baselines -------------------------------------------------------------------------------------


def contiguous_write_seconds(folder: Path, n_bytes: int) -> float:
    """Writes ``n_bytes`` as one contiguous float32 HDF5 dataset (N, 512), by 32 MB slices, and closes it.

    Unsynced writes land in the page cache, so what they cost is finding free pages: the stage's own
    dirty pages are written back first (``os.sync``, not timed), so that the baseline does not pay for
    them, and it then writes once, as the stage did, into a memory full of cached files. Measured on the
    idle VM with 13 GB cached, 2.4 GB took 5.0 s this way, then 0.7 s and 0.9 s into the pages the
    first write freed: a ratio is good to about 2x; benchmarks/write_speed.py compares the writer
    with the contiguous write on its own, interleaved."""
    rows = max(1, n_bytes // (4 * DIM))
    block = np.random.default_rng(0).standard_normal((min(rows, 2**14), DIM), dtype=np.float32)
    path = folder / "contiguous_baseline.h5"
    os.sync()
    started = time.perf_counter()
    with h5py.File(path, "w") as file:
        dataset = file.create_dataset("rows", shape=(rows, DIM), dtype=np.float32)
        for start in range(0, rows, len(block)):
            stop = min(rows, start + len(block))
            dataset[start:stop] = block[: stop - start]
    seconds = time.perf_counter() - started
    path.unlink()
    return seconds


def stat_seconds(paths: list[Path]) -> float:
    started = time.perf_counter()
    for path in paths:
        os.stat(path)
    return time.perf_counter() - started


def _amdnet(config: dict, video_dim: int, query_dim: int):
    from models import create_model
    from models.configs import model_options

    return create_model("amdnet", video_dim, query_dim, seed=0, **model_options(config))


def encode_and_score_seconds(config: dict, n_videos: int, n_queries: int, video_dim: int, query_dim: int,
                             threads: int) -> float:
    """The model alone on a split: every video and query encoded, the full score matrix (best clip
    cosine per query and video), on tensors already in memory, ``threads`` intra-op threads."""
    import torch
    import torch.nn.functional as F

    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        model = _amdnet(config, video_dim, query_dim).eval()
        chunk = config["evaluate"]["chunk_size"]
        map_size = model.config.map_size
        generator = torch.Generator().manual_seed(0)
        videos = torch.randn(n_videos, map_size, video_dim, generator=generator)  # (Nv, N, Dv)
        queries = torch.randn(n_queries, query_dim, generator=generator)  # (Nq, Dq)
        started = time.perf_counter()
        with torch.no_grad():
            clips = torch.cat([F.normalize(model.encode_videos(videos[s:s + chunk]).clip_features, dim=-1)
                               for s in range(0, n_videos, chunk)])  # (Nv, N, d)
            encoded = torch.cat([F.normalize(model.encode_queries(queries[s:s + chunk]), dim=-1)
                                 for s in range(0, n_queries, chunk)])  # (Nq, d)
            flat = clips.flatten(0, 1).T  # (d, Nv*N)
            for s in range(0, n_queries, chunk):
                (encoded[s:s + chunk] @ flat).view(-1, n_videos, map_size).amax(dim=-1)  # (q, Nv)
        return time.perf_counter() - started
    finally:
        torch.set_num_threads(previous)


def train_steps_seconds(config: dict, n_videos: int, captions_per_video: int, video_dim: int, query_dim: int,
                        threads: int, timed_steps: int = 12) -> float:
    """Forward + backward + optimizer step of one epoch's steps, on batches already in memory: the
    mean of ``timed_steps`` steps (after 2 warm-up steps) times the epoch's step count."""
    import torch

    from amdnet.optim import BertAdam
    from amdnet.train import training_step
    from pipeline.config import train_config

    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        settings = train_config(config)
        model = _amdnet(config, video_dim, query_dim).train()
        optimizer = BertAdam(model.parameter_groups(settings.weight_decay), lr=settings.lr,
                             max_grad_norm=settings.max_grad_norm)
        batch_videos = min(settings.batch_size, n_videos)
        steps = math.ceil(n_videos / settings.batch_size)
        generator = torch.Generator().manual_seed(0)
        batch = {"clips": torch.randn(batch_videos, model.config.map_size, video_dim, generator=generator),
                 "queries": torch.randn(batch_videos * captions_per_video, query_dim, generator=generator),
                 "token_mask": None,
                 "caption_to_video": torch.arange(batch_videos).repeat_interleave(captions_per_video)}
        for _ in range(2):
            training_step(model, optimizer, batch, 1, settings.lr, torch.device("cpu"))
        timed_steps = min(timed_steps, steps)
        started = time.perf_counter()
        for _ in range(timed_steps):
            training_step(model, optimizer, batch, 1, settings.lr, torch.device("cpu"))
        return (time.perf_counter() - started) / timed_steps * steps
    finally:
        torch.set_num_threads(previous)


def training_threads(config: dict) -> int:
    """The intra-op threads Train uses: its setting where the config has one, else the trainer's constant."""
    import amdnet.train

    return config["train"].get("threads") or getattr(amdnet.train, "TRAINING_THREADS", 1)


def validation_seconds(config_path: Path, overrides: str, threads: int) -> float:
    """The trainer's own per-epoch validation (``split_metrics`` on the val split, a fresh model) on
    the features Train reads, timed in this process."""
    import torch

    import tasks
    from amdnet.data import VideoCaptionDataset, VideoInputs
    from amdnet.evaluate import split_metrics
    from pipeline.config import train_config

    task = tasks.Train(dataset=str(config_path), set=overrides)
    settings = train_config(task.config)
    files = tasks._feature_files(task)  # the files Train reads, as Train finds them
    inputs = VideoInputs(("clips",), task.config["model"]["amdnet"]["map_size"])
    val_set = VideoCaptionDataset(files, task.upstream_dir("dataset") / "queries.jsonl", "val", inputs,
                                  settings.query_input, settings.use_subtitles)
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        model = _amdnet(task.config, val_set.video_dim, val_set.query_dim).eval()
        started = time.perf_counter()
        split_metrics(model, val_set, torch.device("cpu"), settings.eval_chunk_size)
        return time.perf_counter() - started
    finally:
        torch.set_num_threads(previous)


def decode_and_model_seconds(config: dict, data_root: Path, n_videos_of: dict[Path, int]) -> float:
    """Decoding + the model alone, video after video in this process: each distinct clip decoded and
    encoded (best of 3) as extraction samples it, times the videos that link it."""
    import torch

    from extractors.decode import decode_frames, sample_times
    from pipeline.features import _create_extractor
    from pipeline.backbones import part_settings

    visual = part_settings(config["visual"], "clip")
    extractor = _create_extractor({**visual, "device": "cpu"})
    total = 0.0
    previous = torch.get_num_threads()
    torch.set_num_threads(1)  # as each of the stage's processes would share the 2 cores
    try:
        for path, count in n_videos_of.items():
            from extractors.decode import probe_video

            times = sample_times(probe_video(path).duration, visual["fps"])
            best = math.inf
            for _ in range(3):
                started = time.perf_counter()
                extractor.encode(decode_frames(path, times, short_side=visual["size"]).frames)
                best = min(best, time.perf_counter() - started)
            total += best * count
    finally:
        torch.set_num_threads(previous)
    return total


# ---- the table -------------------------------------------------------------------------------------


@dataclass
class Row:
    stage: str
    items: str = ""
    n_items: float = 0
    build: float | None = None
    wall: float | None = None
    mb: float | None = None
    rss_mb: float | None = None
    imports_rss_mb: float | None = None
    baseline: str = ""
    baseline_s: float | None = None
    note: str = ""
    extra: dict = field(default_factory=dict)

    def cells(self) -> list[str]:
        seconds = self.build if self.build is not None else self.wall
        rate = f"{self.n_items / seconds:,.0f}" if seconds and self.n_items else ""
        mb_rate = f"{self.mb / seconds:,.1f}" if seconds and self.mb else ""
        ratio = f"{seconds / self.baseline_s:.2f}" if seconds and self.baseline_s else ""
        over_imports = None if self.rss_mb is None or self.imports_rss_mb is None else self.rss_mb - self.imports_rss_mb
        return [self.stage, self.items, _num(self.build), _num(self.wall), rate, _num(self.mb, 0), mb_rate,
                _num(self.rss_mb, 0), _num(over_imports, 0), self.baseline, _num(self.baseline_s), ratio, self.note]


def _num(value: float | None, digits: int = 1) -> str:
    return "" if value is None else f"{value:,.{digits}f}"


HEADER = ["stage", "items", "build s", "wall s", "items/s", "MB", "MB/s", "peak RSS MB", "over imports MB",
          "baseline", "baseline s", "ratio", "note"]


def print_table(rows: list[Row], title: str) -> None:
    lines = [title, "", "| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    lines += ["| " + " | ".join(row.cells()) + " |" for row in rows]
    print("\n".join(lines), flush=True)


# ---- the benchmark ---------------------------------------------------------------------------------


@dataclass
class StageSpec:
    key: str  # --skip-stage name
    task: str
    stage: str  # folder name under <workdir>/<name>/
    needs: tuple[str, ...]
    params: dict = field(default_factory=dict)
    shards: bool = False  # only the task's shard tasks


def stage_specs(form: str) -> list[StageSpec]:
    if form == "bundle":
        return [StageSpec("import", "ImportBundle", "bundle", ()),
                StageSpec("train", "Train", "train", ("import",)),
                StageSpec("evaluate", "Evaluate", "evaluate", ("train",)),
                StageSpec("export", "ExportBundle", "bundle_export", ("import",))]
    return [StageSpec("dataset", "PrepareDataset", "dataset", ()),
            StageSpec("extract", "VisualPart", "visual-clip", ("dataset",), {"part": "clip"}, shards=True),
            StageSpec("assemble", "VisualPart", "visual-clip", ("extract",), {"part": "clip"}),
            StageSpec("visual", "VisualFeatures", "visual", ("assemble",)),
            StageSpec("queries", "QueryFeatures", "queries", ("dataset",)),
            StageSpec("subtitles", "SubtitleFeatures", "subtitles", ("dataset",)),
            StageSpec("train", "Train", "train", ("visual", "queries")),
            StageSpec("evaluate", "Evaluate", "evaluate", ("train",)),
            StageSpec("export", "ExportBundle", "bundle_export", ("visual", "queries")),
            StageSpec("index", "Index", "index", ("train", "visual"))]


def skipped_closure(specs: list[StageSpec], skip: set[str]) -> set[str]:
    """The stages skipped and every stage that needs one of them."""
    skipped = set(skip)
    for spec in specs:
        if any(need in skipped for need in spec.needs):
            skipped.add(spec.key)
    return skipped


class Benchmark:
    def __init__(self, args, shape: Shape):
        self.args, self.shape, self.form = args, shape, args.form
        self.tag = f"{shape.name}-{args.form}-{shape.n_videos}v{shape.n_captions}q"
        self.scratch = args.scratch
        self.scratch.mkdir(parents=True, exist_ok=True)
        self.data_root = collection(self.scratch, shape, self.form, self.tag)
        self.config_path, self.overrides = dataset_config(self.scratch, self.data_root, shape, self.form, self.tag,
                                                          args.epochs)
        from pipeline.config import load_config

        self.config = load_config(str(self.config_path), self.overrides)
        self.workdir = Path(self.config["workdir"])
        if not args.keep_work:
            shutil.rmtree(self.workdir, ignore_errors=True)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.logs = self.scratch / f"logs-{self.tag}"
        self.logs.mkdir(exist_ok=True)
        self.rows: list[Row] = []

    # -- helpers
    def folder(self, stage: str) -> Path | None:
        return stage_folder(self.workdir, self.shape.name, stage)

    def manifest(self, stage: str) -> dict:
        folder = self.folder(stage)
        return json.loads((folder / "manifest.json").read_text()) if folder else {}

    def run_stage(self, spec: StageSpec) -> Run:
        writer_seconds, modules = self.logs / f"{spec.key}.writers.json", self.logs / f"{spec.key}.modules.txt"
        for path in (writer_seconds, modules):
            path.unlink(missing_ok=True)
        payload = json.dumps({"task": spec.task, "dataset": str(self.config_path), "set": self.overrides,
                              "params": spec.params, "shards": spec.shards, "writer_seconds": str(writer_seconds),
                              "modules": str(modules)})
        run = run_process([sys.executable, str(Path(__file__).resolve()), "--child", payload],
                          self.logs / f"{spec.key}.log")
        if writer_seconds.is_file():
            run.writer_seconds = sum(json.loads(writer_seconds.read_text()).values())
        if modules.is_file():
            run.imports_rss_mb = run_process([sys.executable, str(Path(__file__).resolve()), "--imports",
                                              str(modules)], self.logs / f"{spec.key}.imports.log").peak_rss_mb
        status = "ok" if run.ok else f"FAILED (log: {run.log})"
        print(f"  {spec.key:<10} {run.wall:8.1f} s  peak RSS {run.peak_rss_mb:,.0f} MB  {status}", flush=True)
        if not run.ok:
            print("".join(run.log.read_text().splitlines(keepends=True)[-25:]), flush=True)
        return run

    def measured(self, label: str, function, *args) -> float | None:
        """A baseline, or None (said on the console) when measuring it failed: the table still prints."""
        try:
            return function(*args)
        except Exception:  # noqa: BLE001 - a benchmark reports what it could not measure and goes on
            print(f"  baseline {label!r} could not be measured:\n{traceback.format_exc()}", flush=True)
            return None

    # -- the stages
    def run(self) -> None:
        specs = stage_specs(self.form)
        skipped = skipped_closure(specs, set(self.args.skip_stage))
        print(f"stages ({self.config_path}):", flush=True)
        for spec in specs:
            if spec.key in skipped:
                continue
            run = self.run_stage(spec)
            row = self.describe(spec, run)
            row.wall, row.rss_mb, row.imports_rss_mb = run.wall, run.peak_rss_mb, run.imports_rss_mb
            if not run.ok:
                row.note = f"FAILED, see {run.log}"
                self.rows.append(row)
                skipped |= skipped_closure(specs, {spec.key})
                continue
            self.rows.append(row)
            if spec.key == "train":
                self.rows += self.train_epoch_rows()
            print_table(self.rows, "so far:")
        if not {"noop"} & set(self.args.skip_stage) and not skipped & {s.key for s in specs}:
            self.rows += self.noop_rows()

    def describe(self, spec: StageSpec, run: Run) -> Row:
        shape = self.shape
        folder = self.folder(spec.stage)
        manifest = self.manifest(spec.stage) if spec.key != "extract" else {}
        build = manifest.get("seconds")
        name = spec.task if spec.key not in ("extract", "assemble") else f"VisualPart {spec.key}"
        row = Row(name, build=build)
        captions = shape.n_captions
        if spec.key in ("import", "export"):
            row.items, row.n_items = f"{shape.n_videos:,} videos + {captions:,} captions", shape.n_videos + captions
            self.writer_baseline(row, _h5_bytes(folder), run)
        elif spec.key == "dataset":
            row.items, row.n_items = f"{shape.n_videos:,} videos", shape.n_videos
            row.mb = _folder_bytes(folder) / 1e6
            row.baseline, row.baseline_s = "os.stat of the videos", stat_seconds(self.input_files())
        elif spec.key == "extract":
            cache = self.workdir / shape.name / "cache"
            row.items, row.n_items, row.mb = f"{shape.n_videos:,} videos", shape.n_videos, _folder_bytes(cache) / 1e6
            row.build = None  # the shard tasks: their process is the measure
            links = self.clip_links()
            row.baseline = "decoding + model alone"
            row.baseline_s = self.measured("decode + model", decode_and_model_seconds, self.config, self.data_root,
                                           links)
            if row.baseline_s is not None:
                row.note = f"{(run.wall - row.baseline_s) / shape.n_videos * 1000:.1f} ms/video over"
        elif spec.key in ("assemble", "visual", "subtitles"):
            row.items, row.n_items = f"{shape.n_videos:,} videos", shape.n_videos
            self.writer_baseline(row, _h5_bytes(folder), run)
        elif spec.key == "queries":
            row.items, row.n_items = f"{captions:,} queries", captions
            self.writer_baseline(row, _h5_bytes(folder), run)
        elif spec.key == "train":
            epochs = len(self.train_log())
            train_videos = shape.videos["train"]
            row.items, row.n_items = f"{epochs} x {train_videos:,} videos", epochs * train_videos
            row.mb = self.feature_bytes() / 1e6
            compute = self.epoch_compute()
            row.baseline = "epochs x (steps + validation compute)"
            row.baseline_s = None if compute is None else epochs * compute
        elif spec.key == "evaluate":
            queries, videos = shape.captions["val"], shape.videos["val"]
            row.items, row.n_items = f"{queries:,} x {videos:,}", queries
            row.mb = self.feature_bytes() / 1e6
            row.baseline = "encoding + score matrix"
            row.baseline_s = self.measured("evaluate compute", encode_and_score_seconds, self.config, videos,
                                           queries, *self.dims(), _default_threads())
        elif spec.key == "index":
            row.items, row.n_items = f"{shape.videos['val']:,} videos", shape.videos["val"]
            row.mb = _folder_bytes(folder) / 1e6
        return row

    def writer_baseline(self, row: Row, n_bytes: int, run: Run) -> None:
        row.mb = n_bytes / 1e6
        row.baseline = "one contiguous HDF5 write"
        row.baseline_s = self.measured("contiguous write", contiguous_write_seconds, self.scratch, n_bytes)
        if run.writer_seconds is not None and row.baseline_s:
            row.note = f"writers alone {run.writer_seconds:.1f} s = {run.writer_seconds / row.baseline_s:.2f}x"

    def dims(self) -> tuple[int, int]:
        if self.form == "bundle":
            return DIM, DIM
        from pipeline.features import text_encoder

        dim = text_encoder(self.config["text"]).dim
        return dim, dim  # the tiny CLIP: its image and text towers share the embedding size

    def feature_bytes(self) -> int:
        stages = ("bundle",) if self.form == "bundle" else ("visual-clip", "queries")
        return sum(_h5_bytes(self.folder(stage)) for stage in stages)

    def train_log(self) -> list[dict]:
        folder = self.folder("train")
        path = folder / "log.jsonl" if folder else None
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path else []

    def _train_compute_parts(self) -> tuple[float | None, float | None]:
        if not hasattr(self, "_parts"):
            threads = training_threads(self.config)
            shape = self.shape
            per_video = max(1, round(shape.captions["train"] / shape.videos["train"]))
            steps = self.measured("train steps", train_steps_seconds, self.config, shape.videos["train"], per_video,
                                  *self.dims(), threads)
            validation = self.measured("validation compute", encode_and_score_seconds, self.config,
                                       shape.videos["val"], shape.captions["val"], *self.dims(), threads)
            self._parts = steps, validation
        return self._parts

    def epoch_compute(self) -> float | None:
        steps, validation = self._train_compute_parts()
        return None if steps is None or validation is None else steps + validation

    def train_epoch_rows(self) -> list[Row]:
        shape, history = self.shape, self.train_log()
        steps, validation_compute = self._train_compute_parts()
        rows = []
        if history and "seconds" in history[0]:
            epoch_s = float(np.median([record["seconds"] for record in history]))
            compute = self.epoch_compute()
            rows.append(Row("Train: one epoch (log.jsonl)", f"{shape.videos['train']:,} videos + validation",
                            shape.videos["train"], build=epoch_s, baseline="steps + validation compute",
                            baseline_s=compute, note=f"steps alone {_num(steps)} s" if steps else ""))
        threads = training_threads(self.config)
        validation = self.measured("validation", validation_seconds, self.config_path, self.overrides, threads)
        rows.append(Row("Train: per-epoch validation", f"{shape.captions['val']:,} x {shape.videos['val']:,}",
                        shape.captions["val"], build=validation, baseline="encoding + score matrix",
                        baseline_s=validation_compute, note=f"{threads} thread(s), timed in-process"))
        return rows

    def input_files(self) -> list[Path]:
        """What the fingerprints of the graph's first stage stat: the videos, or the bundle's files,
        and the annotation files."""
        return [path for path in self.data_root.rglob("*") if path.is_file() and path.parent.name != "clips"]

    def clip_links(self) -> dict[Path, int]:
        counts: dict[int, int] = {}
        by_inode: dict[int, Path] = {}
        for path in (self.data_root / "clips").glob("*.mp4"):
            by_inode[path.stat().st_ino] = path
        for path in (self.data_root / "videos").glob("*.mp4"):
            counts[path.stat().st_ino] = counts.get(path.stat().st_ino, 0) + 1
        return {by_inode[inode]: count for inode, count in counts.items()}

    def noop_rows(self) -> list[Row]:
        luigi = str(Path(sys.executable).parent / "luigi")
        common = ["--dataset", str(self.config_path), "--set", self.overrides]
        files = self.input_files()
        stat_s = stat_seconds(files)
        rows = []
        startup = run_process([sys.executable, "-c", "import tasks"], self.logs / "startup.log")
        for label, command in (("no-op rerun (FullPipeline)", [luigi, "--module", "tasks", "FullPipeline", *common]),
                               ("make explain", [sys.executable, "-m", "pipeline.explain", *common])):
            run = run_process(command, self.logs / f"{label.split()[0]}.log")
            ran = [stage for stage in self.stage_folders_changed_since(run)] if "rerun" in label else []
            note = f"start-up alone {startup.wall:.1f} s" + ("" if run.ok else f"; FAILED, see {run.log}")
            if ran:
                note += f"; RAN {', '.join(ran)}"
            rows.append(Row(label, f"{len(files):,} input files", len(files), wall=run.wall, rss_mb=run.peak_rss_mb,
                            baseline="os.stat of the inputs", baseline_s=stat_s, note=note))
            print(f"  {label:<28} {run.wall:8.1f} s  {'ok' if run.ok else 'FAILED'}", flush=True)
        return rows

    def stage_folders_changed_since(self, run: Run) -> list[str]:
        """Stages whose manifest is newer than the start of ``run`` (a no-op rerun must have none)."""
        since = time.time() - run.wall
        return sorted({path.parent.parent.name for path in (self.workdir / self.shape.name).glob("*/*/manifest.json")
                       if path.stat().st_mtime >= since})


def _default_threads() -> int:
    import torch

    return torch.get_num_threads()


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", choices=sorted(SHAPES), help="a named shape (default tvr, unless --videos)")
    parser.add_argument("--videos", type=int, help="a custom shape: this many videos (with --queries)")
    parser.add_argument("--queries", type=int, help="a custom shape: this many captions")
    parser.add_argument("--form", choices=("bundle", "raw"), default="bundle")
    parser.add_argument("--scale", type=float, default=1.0, help="run this fraction of the shape")
    parser.add_argument("--epochs", type=int, default=2, help="train.max_epochs")
    parser.add_argument("--skip-stage", nargs="*", default=[], metavar="STAGE",
                        help="stages not run (with every stage after them that needs them): bundle form import "
                             "train evaluate export; raw form dataset extract assemble visual queries subtitles "
                             "train evaluate export index; and noop (the no-op rerun and explain)")
    parser.add_argument("--scratch", type=Path, default=Path("/tmp/graph_scale"),
                        help="generated collections, configs, work folders and logs")
    parser.add_argument("--keep-work", action="store_true", help="keep the work folder (complete stages are reused)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--imports", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if (args.videos is None) != (args.queries is None):
        parser.error("--videos and --queries go together")
    if args.videos is not None and args.shape is not None:
        parser.error("give --shape or --videos/--queries, not both")
    return args


def chosen_shape(args) -> Shape:
    if args.videos is None:
        shape = SHAPES[args.shape or "tvr"]
    else:
        val = max(1, args.videos // 9)
        val_captions = max(1, round(args.queries * val / args.videos))
        shape = Shape("custom", {"train": args.videos - val, "val": val},
                      {"train": args.queries - val_captions, "val": val_captions}, (20, 80))
    return shape.scaled(args.scale) if args.scale != 1.0 else shape


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.child:
        child(args.child)
        return
    if args.imports:
        import_modules(args.imports)
        return
    shape = chosen_shape(args)
    started = time.perf_counter()
    benchmark = Benchmark(args, shape)
    benchmark.run()
    uptime = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    title = (f"graph_scale: shape {shape.name} x{args.scale:g}, form {args.form}: {shape.videos['train']:,} + "
             f"{shape.videos['val']:,} videos, {shape.captions['train']:,} + {shape.captions['val']:,} captions, "
             f"T = {shape.rows[0]}-{shape.rows[1]}; {args.epochs} epoch(s); {os.cpu_count()} CPUs; "
             f"total {time.perf_counter() - started:.0f} s; uptime: {uptime}")
    print()
    print_table(benchmark.rows, title)
    print(f"\nself peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:,.0f} MB; logs in {benchmark.logs}")


if __name__ == "__main__":
    main()
